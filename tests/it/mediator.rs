//! Mediator: real credo-ts 0.6.3 agents as recipient and sender, and a raw DIDComm client for the
//! delivery guarantees (redelivery until `messages-received`, nothing lost across a restart) and
//! bad input.

use std::process::Command;
use std::time::Duration;

use idstack::didcomm::client::{self, pickup, AgentKey, MediatorConnection};
use serde_json::{json, Value};

use crate::common::{expect_problem, LineChild, Server, ADMIN_TOKEN};
use crate::interop::interop_dir;

/// A credo-mediation.mjs agent driven line by line.
pub(crate) struct Credo(LineChild);

impl Credo {
    pub(crate) fn spawn(label: &str) -> Self {
        assert!(
            interop_dir()
                .join("credo/node_modules/@credo-ts/didcomm")
                .exists(),
            "credo-ts is not installed: run tests/interop/install.sh"
        );
        let mut cmd = Command::new("node");
        cmd.current_dir(interop_dir())
            .args(["credo/credo-mediation.mjs", "--label", label]);
        Credo(LineChild::spawn(cmd))
    }

    pub(crate) fn ask(&mut self, cmd: Value) -> Value {
        self.0.ask(&cmd)
    }

    pub(crate) fn ok(&mut self, cmd: Value) -> Value {
        let r = self.ask(cmd.clone());
        assert_eq!(r["ok"], true, "{cmd} -> {r}");
        r
    }
}

impl Drop for Credo {
    fn drop(&mut self) {
        // a moment for a clean shutdown before LineChild kills it
        self.0.tell(&json!({"cmd": "shutdown"}));
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) async fn invitation(s: &Server, query: &str) -> String {
    let r: Value = crate::common::client()
        .get(s.url(&format!("/api/mediator/invitation{query}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = r["invitation_url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&s.url("/didcomm?oob=")), "{url}");
    let services = r["invitation"]["services"].as_array().unwrap();
    assert!(services.iter().any(|s| s["serviceEndpoint"]
        .as_str()
        .unwrap()
        .ends_with("/didcomm/ws")));
    url
}

async fn stats(s: &Server) -> Value {
    crate::common::client()
        .get(s.url("/api/mediator/stats"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Recipient `pickup`/`transport` connected through our mediator, a sender connected to it through
/// the recipient's invitation (so through our routing keys); messages sent online, then offline.
fn credo_round(s_inv: &str, pickup: &str, transport: &str, offline_check: impl Fn(u64)) {
    let mut alice = Credo::spawn("alice");
    let mut bob = Credo::spawn("bob");
    let started = alice.ok(json!({"cmd": "start", "mediatorInvitationUrl": s_inv, "pickup": pickup, "transport": transport}));
    assert!(
        !started["routing_keys"].as_array().unwrap().is_empty(),
        "{started}"
    );
    bob.ok(json!({"cmd": "start", "mediatorInvitationUrl": null, "pickup": "none", "transport": "http"}));
    let inv = alice.ok(json!({"cmd": "createInvitation"}));
    let conn = bob.ok(json!({"cmd": "receiveInvitation", "invitationUrl": inv["invitation_url"]}));
    let cid = conn["connection_id"].as_str().unwrap().to_string();
    for i in 0..5 {
        bob.ok(
            json!({"cmd": "sendMessage", "connectionId": cid, "content": format!("online-{i}")}),
        );
    }
    let got = alice.ok(json!({"cmd": "messages", "expect": 5, "timeoutMs": 20000}));
    let texts: Vec<&str> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for i in 0..5 {
        assert!(texts.contains(&format!("online-{i}").as_str()), "{texts:?}");
    }
    // Offline: pickup stopped and the socket closed; the messages wait in our queue.
    alice.ok(json!({"cmd": "stopPickup"}));
    for i in 0..3 {
        bob.ok(
            json!({"cmd": "sendMessage", "connectionId": cid, "content": format!("offline-{i}")}),
        );
    }
    offline_check(3);
    alice.ok(json!({"cmd": "startPickup"}));
    let got = alice.ok(json!({"cmd": "messages", "expect": 8, "timeoutMs": 20000}));
    let texts: Vec<&str> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for i in 0..3 {
        assert!(
            texts.contains(&format!("offline-{i}").as_str()),
            "{texts:?}"
        );
    }
    // Akrida's check: a trust ping to the mediator, answered.
    alice.ok(json!({"cmd": "pingMediator", "timeoutMs": 10000}));
}

async fn wait_queued(s: &Server, want: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = stats(s).await;
        if st["queued_messages"].as_u64() == Some(want) {
            return st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue never reached {want}: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credo_recipient_live_mode_over_websocket_and_offline_queue() {
    let s = Server::start().await;
    let inv = invitation(&s, "").await;
    let rt = tokio::runtime::Handle::current();
    let s_ref = &s;
    tokio::task::block_in_place(|| {
        credo_round(&inv, "live", "ws", |n| {
            let st = rt.block_on(wait_queued(s_ref, n));
            assert_eq!(st["live_sockets"], 0, "{st}");
        })
    });
    let st = wait_queued(&s, 0).await;
    assert!(st["forwarded_total"].as_u64().unwrap() >= 8, "{st}");
    assert!(st["acknowledged_total"].as_u64().unwrap() >= 8, "{st}");
    assert!(st["mediations_granted"].as_u64().unwrap() >= 1, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credo_recipient_polling_over_http_and_offline_queue() {
    let s = Server::start().await;
    let inv = invitation(&s, "").await;
    let rt = tokio::runtime::Handle::current();
    let s_ref = &s;
    tokio::task::block_in_place(|| {
        credo_round(&inv, "polling", "http", |n| {
            rt.block_on(wait_queued(s_ref, n));
        })
    });
    wait_queued(&s, 0).await;
}

/// Connects, gets mediation, registers a fresh recipient key; returns (connection, recipient key).
async fn mediated(s: &Server) -> (MediatorConnection, AgentKey) {
    let inv = invitation(s, "").await;
    let mut conn = MediatorConnection::connect(reqwest::Client::new(), &inv, "raw")
        .await
        .unwrap();
    let rks = conn.mediate().await.unwrap();
    assert_eq!(rks.len(), 1);
    let recipient = AgentKey::generate();
    assert_eq!(
        conn.keylist_update(&recipient.verkey, "add").await.unwrap(),
        "success"
    );
    assert_eq!(
        conn.keylist_update(&recipient.verkey, "add").await.unwrap(),
        "no_change"
    );
    (conn, recipient)
}

async fn send_forward(
    s: &Server,
    conn: &MediatorConnection,
    recipient: &AgentKey,
    text: &str,
) -> reqwest::Response {
    let sender = AgentKey::generate();
    let inner = sender
        .pack(&client::basic_message(text), &recipient.verkey_bytes())
        .unwrap();
    let env = client::forward_envelope(&inner, &recipient.verkey, &conn.routing_keys[0]).unwrap();
    crate::common::client()
        .post(s.url("/didcomm"))
        .header("content-type", client::CONTENT_TYPE)
        .body(env)
        .send()
        .await
        .unwrap()
}

fn contents(recipient: &AgentKey, atts: &[(String, Value)]) -> Vec<String> {
    atts.iter()
        .map(|(_, env)| {
            let (m, _) = recipient.unpack(env.to_string().as_bytes()).unwrap();
            m["content"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn unacknowledged_messages_come_back_on_reconnect_and_survive_a_restart() {
    let s = Server::start().await;
    let (conn, recipient) = mediated(&s).await;
    for t in ["a", "b"] {
        assert_eq!(send_forward(&s, &conn, &recipient, t).await.status(), 202);
    }
    // Live mode: the socket gets the queue pushed; we drop it without messages-received.
    let t = Duration::from_secs(10);
    let mut ws = conn.websocket().await.unwrap();
    let (ping, _) = ws.call(pickup::ping(), "ping_response", t).await.unwrap();
    assert!(ping["~thread"]["thid"].is_string());
    ws.live(true).await.unwrap();
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        let m = ws.recv(t).await.unwrap();
        if m["@type"].as_str().unwrap().ends_with("/delivery") {
            delivered.extend(pickup::attachments(&m));
        }
    }
    assert_eq!(contents(&recipient, &delivered), vec!["a", "b"]);
    // A message forwarded while the socket is live arrives at once.
    assert_eq!(send_forward(&s, &conn, &recipient, "c").await.status(), 202);
    let live = loop {
        let m = ws.recv(t).await.unwrap();
        if m["@type"].as_str().unwrap().ends_with("/delivery") {
            break pickup::attachments(&m);
        }
    };
    assert_eq!(contents(&recipient, &live), vec!["c"]);
    ws.close().await;
    assert_eq!(
        stats(&s).await["queued_messages"],
        3,
        "handing a message to a socket must not delete it"
    );

    // Reconnect: all three again, same ids; acknowledge only the first.
    let mut ws = conn.websocket().await.unwrap();
    ws.live(true).await.unwrap();
    let mut again = Vec::new();
    while again.len() < 3 {
        let m = ws.recv(t).await.unwrap();
        if m["@type"].as_str().unwrap().ends_with("/delivery") {
            again.extend(pickup::attachments(&m));
        }
    }
    let ids: Vec<String> = again.iter().map(|(id, _)| id.clone()).collect();
    let first_ids: Vec<String> = delivered
        .iter()
        .chain(live.iter())
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(ids, first_ids, "redelivery keeps message ids (idempotent)");
    let (status, _) = ws
        .call(pickup::messages_received(&ids[..1]), "/status", t)
        .await
        .unwrap();
    assert_eq!(
        status["message_count"], 0,
        "the other two are in flight on this socket: {status}"
    );
    ws.close().await;
    assert_eq!(stats(&s).await["queued_messages"], 2);

    // Restart between forward and pickup: nothing is lost.
    let dir = s.stop();
    let s = Server::builder().dir(dir).start().await;
    assert_eq!(stats(&s).await["queued_messages"], 2);
    // Polling over HTTP (pickup 2.0 with return-route) on the restarted node, new address.
    let mut conn = conn;
    conn.invitation.http_endpoint = s.url("/didcomm");
    let st = conn
        .request(pickup::status_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st["message_count"], 2, "{st}");
    let d = conn
        .request(pickup::delivery_request(10))
        .await
        .unwrap()
        .unwrap();
    let atts = pickup::attachments(&d);
    assert_eq!(contents(&recipient, &atts), vec!["b", "c"]);
    let ids: Vec<String> = atts.iter().map(|(id, _)| id.clone()).collect();
    let st = conn
        .request(pickup::messages_received(&ids))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st["message_count"], 0, "{st}");
    let st = stats(&s).await;
    assert_eq!(st["queued_messages"], 0, "{st}");
    assert!(st["connections"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let s = Server::builder()
        .env("IDSTACK__MEDIATOR__MAX_QUEUE_PER_RECIPIENT", "2")
        .env("IDSTACK__MEDIATOR__MAX_MESSAGE_BYTES", "20000")
        .start()
        .await;
    let c = crate::common::client();
    let post = |body: Vec<u8>, ct: &'static str| {
        c.post(s.url("/didcomm"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let (conn, recipient) = mediated(&s).await;
    assert_eq!(
        send_forward(&s, &conn, &recipient, "kept").await.status(),
        202
    );

    expect_problem(
        post(b"garbage".to_vec(), client::CONTENT_TYPE)
            .await
            .unwrap(),
        400,
        "didcomm_unpack_failed",
    )
    .await;
    expect_problem(
        post(b"{}".to_vec(), "text/plain").await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    expect_problem(
        post(vec![b'x'; 30_000], client::CONTENT_TYPE)
            .await
            .unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    // An envelope for a key the mediator does not hold.
    let stranger = AgentKey::generate();
    let env = stranger
        .pack(
            &json!({"@type": "https://didcomm.org/trust_ping/1.0/ping", "@id": "x1234567"}),
            &AgentKey::generate().verkey_bytes(),
        )
        .unwrap();
    expect_problem(
        post(env, client::CONTENT_TYPE).await.unwrap(),
        404,
        "didcomm_unknown_recipient",
    )
    .await;
    // A well-formed envelope whose ciphertext was tampered with (or whose sender was forged).
    let mut env: Value = serde_json::from_slice(
        &stranger
            .pack(&client::basic_message("x"), &conn.mediator_key)
            .unwrap(),
    )
    .unwrap();
    let ct = env["ciphertext"].as_str().unwrap().to_string();
    env["ciphertext"] = json!(format!(
        "{}{}",
        if ct.starts_with('A') { "B" } else { "A" },
        &ct[1..]
    ));
    expect_problem(
        post(env.to_string().into_bytes(), client::CONTENT_TYPE)
            .await
            .unwrap(),
        400,
        "didcomm_unpack_failed",
    )
    .await;
    // An authenticated message from a key that never connected.
    let env = stranger
        .pack(&pickup::status_request(), &conn.mediator_key)
        .unwrap();
    expect_problem(
        post(env, client::CONTENT_TYPE).await.unwrap(),
        403,
        "didcomm_no_connection",
    )
    .await;
    // Anoncrypted non-forward.
    let env = idstack::didcomm::envelope::pack(
        pickup::status_request().to_string().as_bytes(),
        &[conn.mediator_key],
        None,
    )
    .unwrap();
    expect_problem(
        post(env, client::CONTENT_TYPE).await.unwrap(),
        400,
        "didcomm_bad_message",
    )
    .await;
    // Forward to a key nobody registered.
    let other = AgentKey::generate();
    let r = send_forward(&s, &conn, &other, "nobody").await;
    expect_problem(r, 404, "didcomm_unknown_recipient").await;
    // Keylist update for a key another connection owns.
    let (conn2, _) = mediated(&s).await;
    assert_eq!(
        conn2
            .keylist_update(&recipient.verkey, "add")
            .await
            .unwrap(),
        "client_error"
    );
    assert_eq!(
        conn2
            .keylist_update(&recipient.verkey, "remove")
            .await
            .unwrap(),
        "no_change"
    );
    // Queue limit (2): the second fits, the third is refused.
    assert_eq!(
        send_forward(&s, &conn, &recipient, "kept-2").await.status(),
        202
    );
    expect_problem(
        send_forward(&s, &conn, &recipient, "too many").await,
        507,
        "mediator_queue_full",
    )
    .await;
    // Single-use invitations work once.
    let once = invitation(&s, "?single_use=true").await;
    MediatorConnection::connect(reqwest::Client::new(), &once, "first")
        .await
        .unwrap();
    let err = MediatorConnection::connect(reqwest::Client::new(), &once, "second")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("410"), "{err}");
    expect_problem(
        c.get(s.url("/api/mediator/invitation?handshake=carrier-pigeon"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
        400,
        "invalid_query",
    )
    .await;
    // A garbage WebSocket frame gets a problem document; the socket keeps working.
    let mut ws = conn.websocket().await.unwrap();
    ws.send_raw(b"not an envelope".to_vec()).await.unwrap();
    let err = ws.recv(Duration::from_secs(5)).await.err().unwrap();
    assert!(err.to_string().contains("didcomm_unpack_failed"), "{err}");
    ws.call(pickup::ping(), "ping_response", Duration::from_secs(5))
        .await
        .unwrap();
    ws.close().await;
    // Nothing stored was lost: both queued messages are still there, for the right recipient.
    let d = conn
        .request(pickup::delivery_request(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        contents(&recipient, &pickup::attachments(&d)),
        vec!["kept", "kept-2"]
    );
    assert!(!s.log().contains("panicked"));
}

/// Older clients: connections 1.0 (the only handshake the invitation offers), single-use invitation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credo_recipient_over_connections_1_0() {
    let s = Server::start().await;
    let inv = invitation(&s, "?handshake=connections&single_use=true").await;
    tokio::task::block_in_place(|| {
        let mut alice = Credo::spawn("alice");
        let started = alice.ok(json!({"cmd": "start", "mediatorInvitationUrl": inv, "pickup": "live", "transport": "ws"}));
        assert!(
            started["connection_protocol"]
                .as_str()
                .unwrap()
                .contains("connections"),
            "{started}"
        );
        alice.ok(json!({"cmd": "pingMediator", "timeoutMs": 10000}));
    });
    let conns: Value = crate::common::client()
        .get(s.url("/api/mediator/connections"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(conns[0]["protocol"], "connections/1.0", "{conns}");
    assert_eq!(conns[0]["mediation"], "granted", "{conns}");
}
