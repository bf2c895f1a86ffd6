//! Mediator: real credo-ts 0.6.3 agents as recipient and sender, and a raw DIDComm client for the
//! delivery guarantees (redelivery until `messages-received`, nothing lost across a restart) and
//! bad input.

use std::process::Command;
use std::time::Duration;

use idstack::didcomm::client::{self, pickup, AgentKey, MediatorConnection};
use serde_json::{json, Value};

use crate::common::{expect_problem, LineChild, Server};
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
    let r: Value = s
        .admin()
        .get(&format!("/api/mediator/invitation{query}"))
        .await;
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
    s.admin().get("/api/mediator/stats").await
}

/// What a credo round checks on the mediator at each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// All online messages picked up and acknowledged: nothing was handed out twice.
    Online,
    /// The recipient is offline; `n` messages wait.
    Offline(u64),
    /// Everything picked up after reconnecting.
    End,
}

/// Recipient `pickup`/`transport` connected through our mediator, a sender connected to it through
/// the recipient's invitation (so through our routing keys); `online` messages sent online (as
/// fast as the sender can), then 3 offline. Each message is received exactly once by credo.
fn credo_round(
    s_inv: &str,
    (pickup, transport, handshake): (&str, &str, Option<&str>),
    online: usize,
    check: impl Fn(Step),
) {
    let mut alice = Credo::spawn("alice");
    let mut bob = Credo::spawn("bob");
    let started = alice.ok(json!({"cmd": "start", "mediatorInvitationUrl": s_inv, "pickup": pickup, "transport": transport, "handshake": handshake}));
    assert!(
        !started["routing_keys"].as_array().unwrap().is_empty(),
        "{started}"
    );
    bob.ok(json!({"cmd": "start", "mediatorInvitationUrl": null, "pickup": "none", "transport": "http"}));
    let inv = alice.ok(json!({"cmd": "createInvitation"}));
    let conn = bob.ok(json!({"cmd": "receiveInvitation", "invitationUrl": inv["invitation_url"]}));
    let cid = conn["connection_id"].as_str().unwrap().to_string();
    bob.ok(
        json!({"cmd": "sendMessages", "connectionId": cid, "prefix": "online", "count": online}),
    );
    let got = alice.ok(json!({"cmd": "messages", "expect": online, "timeoutMs": 60000}));
    let texts: Vec<&str> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for i in 0..online {
        assert!(texts.contains(&format!("online-{i}").as_str()), "{texts:?}");
    }
    check(Step::Online);
    let info = alice.ok(json!({"cmd": "info"}));
    assert_eq!(
        info["received"], online,
        "credo received a message twice: {info}"
    );
    // Offline: pickup stopped and the socket closed; the messages wait in our queue.
    alice.ok(json!({"cmd": "stopPickup"}));
    for i in 0..3 {
        bob.ok(
            json!({"cmd": "sendMessage", "connectionId": cid, "content": format!("offline-{i}")}),
        );
    }
    check(Step::Offline(3));
    alice.ok(json!({"cmd": "startPickup"}));
    let got = alice.ok(json!({"cmd": "messages", "expect": online + 3, "timeoutMs": 20000}));
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
    check(Step::End);
    let info = alice.ok(json!({"cmd": "info"}));
    assert_eq!(
        info["received"],
        online + 3,
        "credo received a message twice: {info}"
    );
    // Akrida's check: a trust ping to the mediator, answered.
    alice.ok(json!({"cmd": "pingMediator", "timeoutMs": 10000}));
}

/// Once the queue is empty (every message acknowledged) no delivery can follow: the mediator's
/// own counters then tell whether anything went out twice. `at_least` forwards (a credo
/// recipient also gets the sender's DID exchange messages through the mediator).
async fn exactly_once(s: &Server, at_least: u64) -> Value {
    let st = wait_queued(s, 0).await;
    let forwarded = st["forwarded_total"].as_u64().unwrap();
    assert!(forwarded >= at_least, "{st}");
    assert_eq!(
        st["delivered_total"], forwarded,
        "each message delivered once: {st}"
    );
    st
}

async fn wait_queued(s: &Server, want: u64) -> Value {
    wait_stats(s, |q| q == want, &format!("{want}")).await
}

async fn wait_stats(s: &Server, queued: impl Fn(u64) -> bool, what: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = stats(s).await;
        if st["queued_messages"].as_u64().is_some_and(&queued) {
            return st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue never reached {what}: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A credo recipient in `pickup`/`transport` mode: 30 messages online, 3 offline, each delivered
/// once by the mediator's counters and received once by credo.
async fn credo_exactly_once(pickup: &str, transport: &str, handshake: Option<&str>) {
    const ONLINE: u64 = 30;
    let s = Server::start().await;
    let inv = invitation(&s, "").await;
    let rt = tokio::runtime::Handle::current();
    let s_ref = &s;
    tokio::task::block_in_place(|| {
        credo_round(
            &inv,
            (pickup, transport, handshake),
            ONLINE as usize,
            |step| match step {
                Step::Online => {
                    rt.block_on(exactly_once(s_ref, ONLINE));
                }
                Step::Offline(n) => {
                    let st = rt.block_on(wait_queued(s_ref, n));
                    assert_eq!(st["live_sockets"], 0, "{st}");
                }
                Step::End => {
                    rt.block_on(exactly_once(s_ref, ONLINE + 3));
                }
            },
        )
    });
    let st = stats(&s).await;
    assert_eq!(st["acknowledged_total"], st["forwarded_total"], "{st}");
    assert!(st["mediations_granted"].as_u64().unwrap() >= 1, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credo_recipient_live_mode_over_websocket_and_offline_queue() {
    credo_exactly_once("live", "ws", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credo_recipient_polling_over_http_and_offline_queue() {
    credo_exactly_once("polling", "http", None).await;
}

/// credo 0.6.3's implicit mode opens its socket only when the mediator's DID document has a
/// WebSocket service it can read a scheme from; it parses did:peer:2 services as generic services
/// without one ("Cannot open websocket to connection without websocket service endpoint"), so it
/// connects over connections 1.0 (a DIDDoc with IndyAgent services), as ACA-Py-era wallets do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credo_recipient_implicit_pickup_over_websocket() {
    credo_exactly_once("implicit", "ws", Some("connections")).await;
}

/// 1,000 messages queued while the credo recipient is offline all arrive, once each, after it
/// reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credo_backlog_of_1000_drains_after_reconnect() {
    const N: u64 = 1000;
    let s = Server::start().await;
    let inv = invitation(&s, "").await;
    let rt = tokio::runtime::Handle::current();
    let s_ref = &s;
    tokio::task::block_in_place(|| {
        let mut alice = Credo::spawn("alice");
        let mut bob = Credo::spawn("bob");
        alice.ok(json!({"cmd": "start", "mediatorInvitationUrl": inv, "pickup": "live", "transport": "ws"}));
        bob.ok(json!({"cmd": "start", "mediatorInvitationUrl": null, "pickup": "none", "transport": "http"}));
        let i = alice.ok(json!({"cmd": "createInvitation"}));
        let conn =
            bob.ok(json!({"cmd": "receiveInvitation", "invitationUrl": i["invitation_url"]}));
        alice.ok(json!({"cmd": "stopPickup"}));
        bob.ok(json!({"cmd": "sendMessages", "connectionId": conn["connection_id"], "prefix": "backlog", "count": N}));
        // (the sender's DID exchange `complete` may be queued as well)
        rt.block_on(wait_stats(s_ref, |q| q >= N, &format!("{N}")));
        // credo's live mode first drains the queue over pickup 2.0 and gives up waiting for that
        // after its own 10 s (`awaitCompletionTimeoutMs`), before it turns live mode on; the
        // pickup it started goes on (each `messages-received` answer says what is left).
        let r = alice.ask(json!({"cmd": "startPickup"}));
        assert!(
            r["ok"] == true || r["error"] == "Timeout has occurred",
            "{r}"
        );
        let got = alice.ok(json!({"cmd": "messages", "expect": N, "timeoutMs": 300000}));
        assert_eq!(got["duplicates"], json!([]));
        rt.block_on(exactly_once(s_ref, N));
        assert_eq!(alice.ok(json!({"cmd": "info"}))["received"], N);
    });
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

    // Restart between forward and pickup: nothing is lost. A socket open when the node stops is
    // closed with 1001 (going away) at once, not left to the drain timeout, and its unacknowledged
    // deliveries stay queued.
    let mut ws = conn.websocket().await.unwrap();
    ws.live(true).await.unwrap();
    while !ws.recv(t).await.unwrap()["@type"]
        .as_str()
        .unwrap()
        .ends_with("/delivery")
    {}
    let stopping = tokio::task::spawn_blocking(move || s.stop());
    assert_eq!(ws.close_code(t).await.unwrap(), 1001);
    let dir = stopping.await.unwrap();
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
        s.admin()
            .get_resp("/api/mediator/invitation?handshake=carrier-pigeon")
            .await,
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
    // Every refusal above was counted once, by its code, whichever layer refused it (the HTTP
    // route, the WebSocket, the engine); the admin API's bad query is not a DIDComm message.
    let metrics = s.anon().get_resp("/metrics").await.text().await.unwrap();
    let rejected: std::collections::BTreeMap<String, u64> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("idstack_mediator_rejected_total{code=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(code, n)| (code.to_string(), n.trim().parse().unwrap()))
        .collect();
    let want: std::collections::BTreeMap<String, u64> = [
        ("didcomm_unpack_failed", 3), // garbage, tampered ciphertext, the WebSocket frame
        ("unsupported_media_type", 1),
        ("payload_too_large", 1),
        ("didcomm_unknown_recipient", 2), // the stranger's envelope, the forward to nobody
        ("didcomm_no_connection", 1),
        ("didcomm_bad_message", 1),
        ("mediator_queue_full", 1),
        ("gone", 1), // the single-use invitation's second request
    ]
    .into_iter()
    .map(|(c, n)| (c.to_string(), n))
    .collect();
    assert_eq!(rejected, want, "{metrics}");
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
    let conns: Value = s.admin().get("/api/mediator/connections").await;
    assert_eq!(conns[0]["protocol"], "connections/1.0", "{conns}");
    assert_eq!(conns[0]["mediation"], "granted", "{conns}");
}

async fn wait_sockets_closed(s: &Server) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stats(s).await["open_sockets"] != 0 {
        assert!(std::time::Instant::now() < deadline, "socket never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// credo's live mode asks for status and deliveries over HTTP while its socket is live: nothing
/// pushed on the socket may be handed out again over HTTP, and HTTP polls do not repeat either.
#[tokio::test]
async fn each_message_goes_out_once_whichever_transport_asks() {
    let s = Server::start().await;
    let (conn, recipient) = mediated(&s).await;
    for t in ["a", "b", "c"] {
        assert_eq!(send_forward(&s, &conn, &recipient, t).await.status(), 202);
    }
    let t = Duration::from_secs(10);
    let mut ws = conn.websocket().await.unwrap();
    ws.live(true).await.unwrap();
    let mut pushed = Vec::new();
    while pushed.len() < 3 {
        let m = ws.recv(t).await.unwrap();
        if m["@type"].as_str().unwrap().ends_with("/delivery") {
            pushed.extend(pickup::attachments(&m));
        }
    }
    assert_eq!(contents(&recipient, &pushed), vec!["a", "b", "c"]);
    // The same recipient polls over HTTP while its socket holds them unacknowledged.
    let st = conn
        .request(pickup::status_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st["message_count"], 0, "in flight on the socket: {st}");
    let d = conn
        .request(pickup::delivery_request(10))
        .await
        .unwrap()
        .unwrap();
    assert!(pickup::attachments(&d).is_empty(), "handed out twice: {d}");
    // Acknowledged over HTTP (as credo does): deleted, and the socket's window is freed.
    let ids: Vec<String> = pushed.iter().map(|(id, _)| id.clone()).collect();
    let st = conn
        .request(pickup::messages_received(&ids))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st["message_count"], 0, "{st}");
    // A new message goes out once, on the socket; polling does not get it as well.
    assert_eq!(send_forward(&s, &conn, &recipient, "d").await.status(), 202);
    let live = loop {
        let m = ws.recv(t).await.unwrap();
        if m["@type"].as_str().unwrap().ends_with("/delivery") {
            break pickup::attachments(&m);
        }
    };
    assert_eq!(contents(&recipient, &live), vec!["d"]);
    let d = conn
        .request(pickup::delivery_request(10))
        .await
        .unwrap()
        .unwrap();
    assert!(pickup::attachments(&d).is_empty(), "handed out twice: {d}");
    let st = stats(&s).await;
    assert_eq!(st["delivered_total"], 4, "{st}");
    // The socket goes away unacknowledged: its message is offered again, once per HTTP lease.
    ws.close().await;
    wait_sockets_closed(&s).await;
    let d = conn
        .request(pickup::delivery_request(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&recipient, &pickup::attachments(&d)), vec!["d"]);
    let again = conn
        .request(pickup::delivery_request(10))
        .await
        .unwrap()
        .unwrap();
    assert!(
        pickup::attachments(&again).is_empty(),
        "polled twice: {again}"
    );
    let st = conn
        .request(pickup::status_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st["message_count"], 0, "leased to the first poll: {st}");
    let st = stats(&s).await;
    assert_eq!(st["delivered_total"], 5, "{st}");
    assert_eq!(
        st["queued_messages"], 1,
        "never deleted before messages-received: {st}"
    );
}

/// A poll that never acknowledges leases its messages until the lease runs out; a live socket
/// opened meanwhile gets them then, without another forward arriving to wake it.
#[tokio::test]
async fn a_lapsed_http_lease_reaches_the_live_socket() {
    let s = Server::builder()
        .env("IDSTACK__MEDIATOR__PICKUP_LEASE_SECONDS", "2")
        .start()
        .await;
    let (conn, recipient) = mediated(&s).await;
    assert_eq!(send_forward(&s, &conn, &recipient, "a").await.status(), 202);
    let d = conn
        .request(pickup::delivery_request(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(contents(&recipient, &pickup::attachments(&d)), vec!["a"]);
    let mut ws = conn.websocket().await.unwrap();
    ws.live(true).await.unwrap();
    let pushed = loop {
        let m = ws.recv(Duration::from_secs(20)).await.unwrap();
        if m["@type"].as_str().unwrap().ends_with("/delivery") {
            break pickup::attachments(&m);
        }
    };
    assert_eq!(contents(&recipient, &pushed), vec!["a"]);
    let st = stats(&s).await;
    assert_eq!(
        st["delivered_total"], 2,
        "the poll's and the socket's: {st}"
    );
    assert_eq!(st["forwarded_total"], 1, "{st}");
}

/// Implicit pickup (ACA-Py's way, credo's `Implicit`): return-route `all` on the recipient's own
/// connection gets the queued envelopes themselves, on a WebSocket and in an HTTP response.
#[tokio::test]
async fn implicit_pickup_over_websocket_and_http() {
    let s = Server::start().await;
    let (conn, recipient) = mediated(&s).await;
    for t in ["a", "b"] {
        assert_eq!(send_forward(&s, &conn, &recipient, t).await.status(), 202);
    }
    let t = Duration::from_secs(10);
    let open = |raw: Vec<u8>| -> String {
        let (m, _) = recipient.unpack(&raw).unwrap();
        m["content"].as_str().unwrap().to_string()
    };
    let mut ws = conn.websocket().await.unwrap();
    ws.send(pickup::ping_no_response()).await.unwrap();
    let got = vec![
        open(ws.recv_raw(t).await.unwrap()),
        open(ws.recv_raw(t).await.unwrap()),
    ];
    assert_eq!(got, vec!["a", "b"]);
    wait_queued(&s, 0).await;
    // Forwarded while the socket is open: pushed at once.
    assert_eq!(send_forward(&s, &conn, &recipient, "c").await.status(), 202);
    assert_eq!(open(ws.recv_raw(t).await.unwrap()), "c");
    ws.close().await;
    wait_sockets_closed(&s).await;
    // HTTP: a message with return-route `all` and no reply of its own carries one queued message.
    assert_eq!(send_forward(&s, &conn, &recipient, "d").await.status(), 202);
    let raw = conn
        .request_raw(pickup::ping_no_response())
        .await
        .unwrap()
        .expect("the queued message in the response");
    assert_eq!(open(raw), "d");
    assert!(conn
        .request_raw(pickup::ping_no_response())
        .await
        .unwrap()
        .is_none());
    // Pickup 1.0 batches name each message with `id` (credo) and `@id` (RFC 0212).
    assert_eq!(send_forward(&s, &conn, &recipient, "e").await.status(), 202);
    let mut batch =
        client::new_message("messagepickup/1.0/batch-pickup", json!({"batch_size": 10}));
    batch["~transport"] = json!({"return_route": "all"});
    let b = conn.request(batch).await.unwrap().unwrap();
    let att = &b["messages~attach"][0];
    assert!(att["id"].is_string() && att["id"] == att["@id"], "{b}");
    let st = exactly_once(&s, 5).await;
    assert_eq!(st["acknowledged_total"], 5, "{st}");
}

/// Abuse limits: keys per connection, queue bytes per connection, connections per invitation,
/// and mediation only through an admin's single-use invitation when so configured.
#[tokio::test]
async fn mediator_limits_hold() {
    let s = Server::builder()
        .env("IDSTACK__MEDIATOR__MAX_KEYS_PER_CONNECTION", "2")
        .env("IDSTACK__MEDIATOR__MAX_QUEUE_BYTES_PER_CONNECTION", "20000")
        .env("IDSTACK__MEDIATOR__MAX_CONNECTIONS_PER_INVITATION", "2")
        .start()
        .await;
    let (conn, recipient) = mediated(&s).await;
    let k2 = AgentKey::generate();
    let k3 = AgentKey::generate();
    assert_eq!(
        conn.keylist_update(&k2.verkey, "add").await.unwrap(),
        "success"
    );
    assert_eq!(
        conn.keylist_update(&k3.verkey, "add").await.unwrap(),
        "client_error"
    );
    assert_eq!(
        conn.keylist_update(&k2.verkey, "remove").await.unwrap(),
        "success"
    );
    assert_eq!(
        conn.keylist_update(&k3.verkey, "add").await.unwrap(),
        "success"
    );
    // Queue bytes: ~3 KB messages until the 20,000-byte cap refuses one with 507.
    let big = "x".repeat(3000);
    let mut accepted = 0;
    let refused = loop {
        let r = send_forward(&s, &conn, &recipient, &big).await;
        if r.status() != 202 {
            break r;
        }
        accepted += 1;
        assert!(accepted < 20, "the byte cap never applied");
    };
    assert!(accepted >= 3, "{accepted}");
    expect_problem(refused, 507, "mediator_queue_full").await;
    let st = wait_queued(&s, accepted).await;
    assert_eq!(st["forwarded_total"], accepted, "{st}");
    // Picked up and acknowledged: room again.
    let d = conn
        .request(pickup::delivery_request(100))
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<String> = pickup::attachments(&d)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    conn.request(pickup::messages_received(&ids)).await.unwrap();
    assert_eq!(
        send_forward(&s, &conn, &recipient, "ok").await.status(),
        202
    );
    // Connections per invitation: `mediated` used one of the public invitation's two.
    let inv = invitation(&s, "").await;
    MediatorConnection::connect(reqwest::Client::new(), &inv, "second")
        .await
        .unwrap();
    let third = MediatorConnection::connect(reqwest::Client::new(), &inv, "third").await;
    let err = format!(
        "{:#}",
        third.err().expect("a third connection must be refused")
    );
    assert!(err.contains("410") || err.contains("limit"), "{err}");
    s.stop();

    // Mediation only through a single-use invitation.
    let s = Server::builder()
        .env(
            "IDSTACK__MEDIATOR__GRANT_REQUIRES_SINGLE_USE_INVITATION",
            "true",
        )
        .start()
        .await;
    let inv = invitation(&s, "").await;
    let mut public = MediatorConnection::connect(reqwest::Client::new(), &inv, "public")
        .await
        .unwrap();
    let err = format!(
        "{:#}",
        public
            .mediate()
            .await
            .expect_err("mediation must be denied")
    );
    assert!(err.contains("mediate-deny"), "{err}");
    let inv = invitation(&s, "?single_use=true").await;
    let mut own = MediatorConnection::connect(reqwest::Client::new(), &inv, "own")
        .await
        .unwrap();
    assert_eq!(own.mediate().await.unwrap().len(), 1);
    assert_eq!(stats(&s).await["mediations_granted"], 1);
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A raw WebSocket upgrade of `/didcomm/ws` at `addr` (no client library in the way of the
/// frames a test writes).
async fn raw_websocket(addr: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /didcomm/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// A client declaring a 200 MB WebSocket frame gets the socket closed at the frame header; the
/// server does not buffer what follows (3 connections sending 40 MB each). A message sent as
/// fragments each under `max_message_bytes` but together over it is refused as too large too.
#[tokio::test]
async fn a_huge_websocket_frame_is_refused_before_it_is_buffered() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = Server::start().await;
    let pid = s.child.as_ref().unwrap().id();
    let addr = s.base.trim_start_matches("http://").to_string();
    let before = vm_rss_kib(pid);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut tcp = raw_websocket(&addr).await;
            // Binary frame, masked, 64-bit length 200 MB.
            let mut frame = vec![0x82, 0x80 | 127];
            frame.extend_from_slice(&(200u64 * 1024 * 1024).to_be_bytes());
            frame.extend_from_slice(&[1, 2, 3, 4]);
            tcp.write_all(&frame).await.unwrap();
            let chunk = vec![0u8; 1024 * 1024];
            let mut written = 0usize;
            for _ in 0..40 {
                match tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&chunk)).await {
                    Ok(Ok(())) => written += chunk.len(),
                    // reset, or the server stopped reading: either way it did not take it all
                    _ => break,
                }
            }
            // What the server says, if anything, is a close frame; or it has hung up.
            let mut first = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut first)).await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                Ok(Ok(_)) => assert_eq!(first[0], 0x88, "expected a close frame"),
                Err(_) => {
                    panic!("the socket was neither closed nor answered ({written} bytes written)")
                }
            }
        }));
    }
    // Fragments: a binary frame without FIN and continuations of 200 KiB each (the default cap
    // is 256 KiB a message): closed with 1009 (message too big) once they add up to more.
    tasks.push(tokio::spawn(async move {
        let mut tcp = raw_websocket(&addr).await;
        let part = vec![b'x'; 200 * 1024];
        for opcode in [0x02u8, 0x00, 0x00] {
            let mut frame = vec![opcode, 0x80 | 127];
            frame.extend_from_slice(&(part.len() as u64).to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0, 0]);
            frame.extend_from_slice(&part);
            if tcp.write_all(&frame).await.is_err() {
                break;
            }
        }
        let mut close = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut close))
            .await
            .expect("no close frame")
            .unwrap();
        assert_eq!(close[0], 0x88, "expected a close frame: {close:?}");
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1009, "{close:?}");
    }));
    for t in tasks {
        t.await.unwrap();
    }
    let after = vm_rss_kib(pid);
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "RSS grew by {grown_mib} MiB ({before} → {after} KiB)"
    );
    // The server still serves, and counted each refused message once.
    let r = s.anon().get_resp("/health/live").await;
    assert_eq!(r.status(), 200);
    let metrics = s.anon().get_resp("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "idstack_mediator_rejected_total{code=\"payload_too_large\"} 4"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("rejected"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// One client address holds at most `didcomm_sockets_per_address` mediator WebSockets (the next
/// upgrade is 429 while they are open, and there is room again once one closes), and frames past
/// the address's frame budget are neither refused nor dropped: the server reads them later, as
/// the budget refills. Before, frames were not limited at all: one socket could make the mediator
/// unpack envelopes as fast as it could send them, past the per-address DIDComm limit on HTTP.
#[tokio::test]
async fn websocket_frames_and_sockets_per_address_are_bounded() {
    let s = Server::builder()
        .env("IDSTACK__SERVER__RATE_LIMIT__ENABLED", "true")
        .env(
            "IDSTACK__SERVER__RATE_LIMIT__DIDCOMM_SOCKETS_PER_ADDRESS",
            "2",
        )
        .env(
            "IDSTACK__SERVER__RATE_LIMIT__DIDCOMM_FRAME_PER_MINUTE",
            "60",
        )
        .env("IDSTACK__SERVER__RATE_LIMIT__DIDCOMM_FRAME_BURST", "3")
        .start()
        .await;
    let (conn, _) = mediated(&s).await;
    let mut a = conn.websocket().await.unwrap();
    let b = conn.websocket().await.unwrap();
    let err = format!(
        "{:#}",
        conn.websocket()
            .await
            .err()
            .expect("a third socket from one address must be refused")
    );
    assert!(err.contains("429"), "{err}");
    b.close().await;
    // the place comes back once the server has seen the socket close
    let mut c = None;
    for _ in 0..100 {
        if let Ok(ws) = conn.websocket().await {
            c = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = c.expect("a closed socket's place was not given back");
    // Five pings at once on a budget of 3 and then one frame per second: all five answered,
    // the last two only once the budget has refilled for them (about 2 s after the first).
    let start = std::time::Instant::now();
    for _ in 0..5 {
        a.send(pickup::ping()).await.unwrap();
    }
    for i in 0..5 {
        let r = a.recv(Duration::from_secs(60)).await.unwrap();
        assert!(
            r["@type"].as_str().unwrap_or("").ends_with("ping_response"),
            "answer {i}: {r}"
        );
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "five frames on a budget of three answered in {took:?}: the budget did not hold them"
    );
    c.close().await;
    a.close().await;
}
