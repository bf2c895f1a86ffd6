//! The Redis store backend end to end: outage and recovery, `store migrate` from sled, and three
//! stateless nodes on one Redis behind a per-request round-robin balancer.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::balancer;
use crate::common::{expect_problem, redis_url, run_cli, RedisServer, Server, ADMIN_TOKEN};
use crate::holder::{create_offer, offer_reference, pre_auth_code, token};

fn identity() -> Value {
    json!({"given_name": "Erika", "family_name": "Mustermann", "email": "erika@example.org"})
}

fn offer_body() -> Value {
    json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": identity()})
}

/// A client whose timeout only guards against a hang; no assertion is about speed.
fn guarded_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        idstack::clock::random_id()
    )
}

pub(crate) async fn wait_ready(base: &str, want: u16) {
    let c = guarded_client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = c.get(format!("{base}/health/ready")).send().await {
            if r.status().as_u16() == want {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{base} never answered {want} on /health/ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_outage_answers_503_problems_then_recovers_with_nothing_acknowledged_lost() {
    let mut redis = RedisServer::start(true);
    let s = Server::builder()
        .redis(&redis.url(), &unique("outage"))
        .start()
        .await;
    let c = guarded_client();
    let mut offers = Vec::new();
    for _ in 0..5 {
        offers.push(create_offer(&s, "default", offer_body()).await);
    }
    let ready: Value = c
        .get(s.url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");

    redis.kill();

    // Reads and writes fail with 503 problem+json (and Retry-After), not a hang or a 500.
    let id = offer_reference(&offers[0]);
    let r = c
        .get(s.url(&format!("/issuers/default/offers/{id}")))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("retry-after").is_some());
    expect_problem(r, 503, "service_unavailable").await;
    let r = c
        .post(s.url("/api/issuers/default/offers"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&offer_body())
        .send()
        .await
        .unwrap();
    expect_problem(r, 503, "service_unavailable").await;
    let r = c
        .post(s.url("/issuers/default/token"))
        .form(&[
            ("grant_type", crate::holder::PRE_AUTH),
            ("pre-authorized_code", &pre_auth_code(&offers[1])),
        ])
        .send()
        .await
        .unwrap();
    // OAuth endpoints answer OAuth errors (RFC 6749 JSON), with the same 503 status
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
    // readiness names the store; liveness is unaffected
    let r = c.get(s.url("/health/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["failing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["component"].as_str().unwrap().starts_with("store")),
        "{body}"
    );
    assert_eq!(
        c.get(s.url("/health/live")).send().await.unwrap().status(),
        200
    );
    let metrics = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("idstack_redis_errors_total{kind=\"unavailable\""),
        "{metrics}"
    );
    assert!(metrics.contains("idstack_redis_up 0"), "{metrics}");

    // Redis comes back: the node recovers by itself, and every acknowledged offer is still there.
    redis.restart();
    wait_ready(&s.base, 200).await;
    for o in &offers {
        let id = offer_reference(o);
        let r = c
            .get(s.url(&format!("/issuers/default/offers/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap(), o["credential_offer"]);
    }
    // and still single-use: the code whose redemption failed during the outage works once
    let (st, tok) = token(&s, "default", &pre_auth_code(&offers[1]), None).await;
    assert_eq!(st, 200, "{tok}");
    let (st, _) = token(&s, "default", &pre_auth_code(&offers[1]), None).await;
    assert_eq!(st, 400);
    s.stop();
}

#[tokio::test]
async fn store_migrate_moves_a_sled_node_into_redis() {
    let s = Server::builder().sled().start().await;
    let offer = create_offer(&s, "default", offer_body()).await;
    let dir = s.stop();
    let data = dir.path().join("data");
    let url = redis_url();
    let prefix = unique("migrated");
    let migrate_into = |prefix: &str| {
        run_cli(
            dir.path(),
            &[
                "store",
                "migrate",
                "--from",
                &format!("sled:{}", data.display()),
                "--to",
                &url,
                "--key-prefix",
                prefix,
            ],
            &[],
        )
    };
    let (st, _, err) = migrate_into(&prefix);
    assert!(st.success(), "{err}");
    assert!(err.contains("migrated"), "{err}");
    assert!(
        err.contains("master.key"),
        "the sandbox key is pointed out: {err}"
    );
    // bad specs are refused
    let (st, _, err) = run_cli(
        dir.path(),
        &["store", "migrate", "--from", "nope:/x", "--to", &url],
        &[],
    );
    assert!(!st.success());
    assert!(err.contains("expected sled:"), "{err}");

    // A target whose nodes already started: under the source's key it takes the data (the two
    // canaries differ byte for byte, sealed with their own nonces); under another key, nothing.
    let key_file = data.join("master.key");
    let (same, other) = (unique("same-key"), unique("other-key"));
    Server::builder()
        .redis(&url, &same)
        .env("IDSTACK__STORE__MASTER_KEY", "")
        .env(
            "IDSTACK__STORE__MASTER_KEY_FILE",
            key_file.to_str().unwrap(),
        )
        .start()
        .await
        .stop();
    let (st, _, err) = migrate_into(&same);
    assert!(st.success(), "{err}");
    Server::builder()
        .redis(&url, &other)
        .env(
            "IDSTACK__STORE__MASTER_KEY",
            "0303030303030303030303030303030303030303030303030303030303030303",
        )
        .start()
        .await
        .stop();
    let (st, _, err) = migrate_into(&other);
    assert!(!st.success());
    assert!(err.contains("another key"), "{err}");

    // A node on Redis with the source's master key serves the migrated data.
    let node = Server::builder()
        .redis(&url, &prefix)
        .env("IDSTACK__STORE__MASTER_KEY", "")
        .env(
            "IDSTACK__STORE__MASTER_KEY_FILE",
            key_file.to_str().unwrap(),
        )
        .start()
        .await;
    let id = offer_reference(&offer);
    let r = reqwest::get(node.url(&format!("/issuers/default/offers/{id}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), offer["credential_offer"]);
    let (st, tok) = token(&node, "default", &pre_auth_code(&offer), None).await;
    assert_eq!(st, 200, "{tok}");
    node.stop();

    // Another master key does not open the migrated data: refusal at startup.
    let (mut child, _d, _ready, log) = Server::builder()
        .redis(&url, &prefix)
        .env(
            "IDSTACK__STORE__MASTER_KEY",
            "0202020202020202020202020202020202020202020202020202020202020202",
        )
        .spawn();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("master key does not open"), "{log}");
}

#[tokio::test]
async fn redis_backend_needs_a_configured_master_key_and_a_reachable_redis() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _, err) = run_cli(
        dir.path(),
        &["config", "print"],
        &[("IDSTACK__STORE__BACKEND", "redis")],
    );
    assert!(!st.success());
    assert!(err.contains("master_key"), "{err}");
    // nothing listens on this port: a clear startup error, quickly, not a hang
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut child, _d, _ready, log) = Server::builder()
        .redis(&format!("redis://127.0.0.1:{port}"), "nobody")
        .spawn();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("connecting to Redis"), "{log}");
}

/// Three stateless nodes on one Redis behind a per-request round-robin balancer.
pub(crate) struct Deployment {
    pub(crate) nodes: Vec<Server>,
    pub(crate) lb: balancer::Balancer,
}

async fn deployment(n: usize) -> Deployment {
    deployment_on(n, &redis_url()).await
}

/// `n` nodes on the Redis at `url` (a key prefix of their own) behind the balancer.
pub(crate) async fn deployment_on(n: usize, url: &str) -> Deployment {
    let prefix = unique("lb");
    let ports: Vec<u16> = (0..n)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let lb = balancer::Balancer::start(
        ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
    )
    .await;
    let public = format!("http://{}", lb.addr);
    let mut nodes = Vec::new();
    for p in ports {
        nodes.push(
            Server::builder()
                .redis(url, &prefix)
                .bind(&format!("127.0.0.1:{p}"))
                .arg("--public-url")
                .arg(&public)
                .start()
                .await,
        );
    }
    Deployment { nodes, lb }
}

impl Deployment {
    fn public(&self) -> String {
        format!("http://{}", self.lb.addr)
    }

    /// HTTP requests each node has answered on `route` (from its own /metrics).
    async fn served(&self, route: &str) -> Vec<u64> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let m = reqwest::get(n.url("/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let total: u64 = m
                .lines()
                .filter(|l| {
                    l.starts_with("idstack_http_requests_total{")
                        && l.contains(&format!("route=\"{route}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            out.push(total);
        }
        out
    }
}

/// The node clients block: run them off the runtime that drives the in-test balancer.
async fn node_client(script: &'static str, args: Vec<String>) -> Value {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::interop::node(script, &args)
    })
    .await
    .unwrap()
}

/// The Animo `@openid4vc` clients through the balancer at `public`: OID4VCI pre-authorized
/// issuance (offer, token, nonce and credential requests land on different nodes), then an OID4VP
/// session created on the node at `session_on`, completed by the wallet through the balancer, and
/// its replay rejected (on another node). Returns the session id and the directory holding the
/// issued credential (`cred.json`, the wallet's input).
pub(crate) async fn animo_issue_and_present(
    public: &str,
    session_on: &str,
) -> (String, tempfile::TempDir) {
    let c = guarded_client();
    // OID4VCI through the balancer: the Animo holder's offer, token, nonce and credential
    // requests land on different nodes.
    let offer = c
        .post(format!("{public}/api/issuers/default/offers"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&offer_body())
        .send()
        .await
        .unwrap();
    assert_eq!(offer.status(), 201);
    let offer: Value = offer.json().await.unwrap();
    let issued = node_client(
        "oid4vci-holder.mjs",
        vec![
            "--offer".into(),
            offer["offer_uri"].as_str().unwrap().into(),
        ],
    )
    .await;
    let cred_dir = tempfile::tempdir().unwrap();
    let cred = cred_dir.path().join("cred.json");
    std::fs::write(&cred, issued.to_string()).unwrap();

    // OID4VP: a session created on node 0, completed by the wallet through the balancer.
    let sess: Value = c
        .post(format!("{session_on}/api/verifiers/default/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {}, "claims": [{"path": ["given_name"]}]}]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(sess["request_uri"].as_str().unwrap().starts_with(public));
    let out = node_client(
        "oid4vp-wallet.mjs",
        vec![
            "--request".into(),
            sess["authorization_request"].as_str().unwrap().into(),
            "--credential".into(),
            cred.to_str().unwrap().into(),
            "--replay".into(),
        ],
    )
    .await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(
        out["replay"]["status"], 400,
        "replay rejected on another node: {out}"
    );
    (sess["id"].as_str().unwrap().to_string(), cred_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_stateless_nodes_share_sessions_and_single_use_codes_and_survive_a_kill() {
    let mut d = deployment(3).await;
    let public = d.public();
    let c = guarded_client();

    let (sid, _cred) = animo_issue_and_present(&public, &d.nodes[0].base).await;
    // every node sees the completed session
    for n in &d.nodes {
        let r: Value = c
            .get(n.url(&format!("/api/verifiers/default/sessions/{sid}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["state"], "completed", "{r}");
        assert_eq!(r["credentials"][0]["claims"]["given_name"], "Erika");
    }
    // the protocol requests really were spread over the nodes
    let posts = d.served("/verifiers/{verifier}/responses/{session}").await;
    assert!(posts.iter().filter(|n| **n > 0).count() >= 2, "{posts:?}");

    // Pre-authorized code replay across nodes: the same code at every node at once, one success.
    for _ in 0..3 {
        let offer = create_offer(&d.nodes[1], "default", offer_body()).await;
        let code = pre_auth_code(&offer);
        let attempts = d.nodes.iter().flat_map(|n| {
            let code = code.clone();
            let url = n.url("/issuers/default/token");
            let c = c.clone();
            (0..3).map(move |_| {
                let (code, url, c) = (code.clone(), url.clone(), c.clone());
                tokio::spawn(async move {
                    c.post(url)
                        .form(&[
                            ("grant_type", crate::holder::PRE_AUTH),
                            ("pre-authorized_code", code.as_str()),
                        ])
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
        });
        let mut statuses = Vec::new();
        for a in attempts.collect::<Vec<_>>() {
            statuses.push(a.await.unwrap());
        }
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 400),
            "{statuses:?}"
        );
    }

    // kill -9 one node: the others keep serving every request through the balancer.
    let mut victim = d.nodes.remove(2);
    let mut child = victim.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    for _ in 0..6 {
        let r = c
            .post(format!("{public}/api/issuers/default/offers"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&offer_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let o: Value = r.json().await.unwrap();
        let r = c
            .post(format!("{public}/issuers/default/token"))
            .form(&[
                ("grant_type", crate::holder::PRE_AUTH),
                ("pre-authorized_code", pre_auth_code(&o).as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    drop(victim);
    for n in d.nodes.drain(..) {
        n.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_round_robins_per_request_and_passes_streams() {
    let a = Server::builder().sled().start().await;
    let b = Server::builder().sled().start().await;
    let lb = balancer::Balancer::start(vec![a.base.clone(), b.base.clone()]).await;
    let c = reqwest::Client::new(); // one keep-alive connection, many requests
    for _ in 0..10 {
        let r = c
            .get(format!("http://{}/health/live", lb.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let body = c
        .post(format!("http://{}/api/issuers/default/offers", lb.addr))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"credential_configuration_ids": ["nope"]}))
        .send()
        .await
        .unwrap();
    assert!(body.status().is_client_error());
    for s in [&a, &b] {
        let m = reqwest::get(s.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let live: u64 = m
            .lines()
            .filter(|l| {
                l.starts_with("idstack_http_requests_total{")
                    && l.contains("route=\"/health/live\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(live, 5, "per-request round robin: {m}");
    }
    drop(lb);
    a.stop();
    b.stop();
}

/// credo-ts live delivery across nodes: the recipient's WebSocket is held by one node, the sender's
/// forwards land on the others (round robin), and the Redis bus wakes the socket's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credo_live_delivery_across_three_nodes() {
    let d = deployment(3).await;
    let public = d.public();
    let r: Value = guarded_client()
        .get(format!("{public}/api/mediator/invitation"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let inv = r["invitation_url"].as_str().unwrap().to_string();
    assert!(inv.starts_with(&public), "{inv}");
    tokio::task::spawn_blocking(move || {
        use crate::mediator::Credo;
        let mut alice = Credo::spawn("alice");
        let mut bob = Credo::spawn("bob");
        alice.ok(json!({"cmd": "start", "mediatorInvitationUrl": inv, "pickup": "live", "transport": "ws"}));
        bob.ok(json!({"cmd": "start", "mediatorInvitationUrl": null, "pickup": "none", "transport": "http"}));
        let ainv = alice.ok(json!({"cmd": "createInvitation"}));
        let conn = bob.ok(json!({"cmd": "receiveInvitation", "invitationUrl": ainv["invitation_url"]}));
        let cid = conn["connection_id"].as_str().unwrap().to_string();
        for i in 0..6 {
            bob.ok(json!({"cmd": "sendMessage", "connectionId": cid, "content": format!("cross-{i}")}));
        }
        let got = alice.ok(json!({"cmd": "messages", "expect": 6, "timeoutMs": 20000}));
        let texts: Vec<&str> = got["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        for i in 0..6 {
            assert!(texts.contains(&format!("cross-{i}").as_str()), "{texts:?}");
        }
    })
    .await
    .unwrap();
    // the forwards really were spread: more than one node accepted inbound DIDComm
    let inbound = d.served("/didcomm").await;
    assert!(
        inbound.iter().filter(|n| **n > 0).count() >= 2,
        "{inbound:?}"
    );
    for n in d.nodes {
        n.stop();
    }
}

/// Sends one command to the redis-server on `port` and returns its first reply line.
fn redis_command(port: u16, cmd: &str) -> String {
    use std::io::{BufRead, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "{cmd}\r\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(c).read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

async fn admin_get(url: &str) -> (u16, Value) {
    let r = guarded_client()
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

/// What every node must agree on: the default issuer's DID and key, the default verifier's DID
/// and the mediator's recipient key (from each node's own answer, not through the balancer).
pub(crate) async fn first_start_state(nodes: &[Server]) -> Vec<(Value, Value, Value, Value)> {
    let mut out = Vec::new();
    for n in nodes {
        let (st, issuer) = admin_get(&n.url("/api/issuers/default")).await;
        assert_eq!(st, 200, "{issuer}");
        let (st, verifier) = admin_get(&n.url("/api/verifiers/default")).await;
        assert_eq!(st, 200, "{verifier}");
        #[cfg(feature = "mediator")]
        let mediator = {
            let (st, inv) = admin_get(&n.url("/api/mediator/invitation")).await;
            assert_eq!(st, 200, "{inv}");
            inv["invitation"]["services"][0]["recipientKeys"][0].clone()
        };
        #[cfg(not(feature = "mediator"))]
        let mediator = Value::Null;
        assert!(issuer["did"].is_string(), "{issuer}");
        out.push((
            issuer["did"].clone(),
            issuer["key_fingerprint"].clone(),
            verifier["did"].clone(),
            mediator,
        ));
    }
    assert!(out.iter().all(|s| *s == out[0]), "nodes disagree: {out:#?}");
    out
}

/// The default issuer works end to end across nodes: offer on one node, token on the next,
/// credential on the third, signed under the DID every node names.
async fn issue_across(nodes: &[Server], public: &str, issuer_did: &str) {
    use crate::holder::{credential, nonce, proof};
    let config = "IdentityCredential_jwt_vc_json";
    let offer = create_offer(
        &nodes[0],
        "default",
        json!({"credential_configuration_ids": [config], "claims": identity()}),
    )
    .await;
    let (st, tok) = token(
        &nodes[1 % nodes.len()],
        "default",
        &pre_auth_code(&offer),
        None,
    )
    .await;
    assert_eq!(st, 200, "{tok}");
    let holder = idstack::crypto::SigningKey::generate(idstack::crypto::KeyType::P256);
    let last = &nodes[2 % nodes.len()];
    let n = nonce(last, "default").await;
    let aud = format!("{public}/issuers/default");
    let (st, cred) = credential(
        last,
        "default",
        tok["access_token"].as_str().unwrap(),
        json!({"credential_configuration_id": config, "proofs": {"jwt": [proof(&holder, &aud, &n, false)]}}),
    )
    .await;
    assert_eq!(st, 200, "{cred}");
    let jwt = cred["credentials"][0]["credential"].as_str().unwrap();
    use base64::Engine as _;
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(
        header["kid"].as_str().unwrap().starts_with(issuer_did),
        "signed as {header}, issuer is {issuer_did}"
    );
}

/// Polls every node until `/health/ready` is 200 and the default issuer answers (bounded).
async fn wait_recovered(nodes: &[Server]) {
    for n in nodes {
        wait_ready(&n.base, 200).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (st, _) = admin_get(&n.url("/api/issuers/default")).await;
            if st == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "default issuer never came back on {}",
                n.base
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_ready(&n.base, 200).await;
    }
}

/// Redis loses its data under three running sandbox nodes (restarted without persistence, then
/// FLUSHALL): the nodes recreate the default issuer and verifier once — every node signs with the
/// one key stored first — and put the mediator key they all hold back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_data_loss_recreates_the_defaults_once_in_sandbox_mode() {
    let mut redis = RedisServer::start(false);
    let d = deployment_on(3, &redis.url()).await;
    let public = d.public();
    let before = first_start_state(&d.nodes).await;
    issue_across(&d.nodes, &public, before[0].0.as_str().unwrap()).await;

    // Redis restarted without persistence: not ready while it is down, then ready again with
    // the defaults recreated, not 404s.
    redis.kill();
    for n in &d.nodes {
        wait_ready(&n.base, 503).await;
    }
    redis.restart();
    wait_recovered(&d.nodes).await;
    let after = first_start_state(&d.nodes).await;
    assert_ne!(after[0].1, before[0].1, "a new default issuer key");
    assert_eq!(
        after[0].3, before[0].3,
        "the mediator key the nodes held is put back"
    );
    issue_across(&d.nodes, &public, after[0].0.as_str().unwrap()).await;
    let logs: Vec<String> = d.nodes.iter().map(|n| n.log()).collect();
    assert!(
        logs.iter().any(|l| l.contains("lost its first-start state")
            && l.contains("first-start state recreated")),
        "{logs:?}"
    );
    // the admin token is back for `idstack admin-token` (tests configure one: nothing to put back)

    // FLUSHALL under running nodes: the same.
    assert_eq!(redis_command(redis.port, "FLUSHALL"), "+OK");
    wait_recovered(&d.nodes).await;
    let again = first_start_state(&d.nodes).await;
    assert_ne!(again[0].1, after[0].1);
    assert_eq!(again[0].3, before[0].3);
    issue_across(&d.nodes, &public, again[0].0.as_str().unwrap()).await;
    for n in d.nodes {
        n.stop();
    }
}

/// The same loss in production mode: nothing is recreated, the nodes stay not ready (naming the
/// lost state) and serve nothing stale; restoring the data (`idstack store import` of an export
/// taken before) makes them ready again with the keys they had.
/// The production nodes' metrics token (their `/health/ready` reasons are its holder's).
const PROD_METRICS_TOKEN: &str = "metrics-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_data_loss_in_production_mode_stays_not_ready_until_the_data_is_restored() {
    let redis = RedisServer::start(false);
    let prefix = unique("prod");
    let node = |dir: Option<tempfile::TempDir>| {
        let mut b = Server::builder()
            .redis(&redis.url(), &prefix)
            .env("IDSTACK__SERVER__MODE", "production")
            .env("IDSTACK__METRICS__TOKEN", PROD_METRICS_TOKEN);
        if let Some(d) = dir {
            b = b.dir(d);
        }
        b.start()
    };
    let nodes = vec![node(None).await, node(None).await];
    let before = first_start_state(&nodes).await;

    // an operator's backup
    let backup = tempfile::tempdir().unwrap();
    let file = backup.path().join("backup.jsonl");
    let url = redis.url();
    let env = [
        ("IDSTACK__STORE__BACKEND", "redis"),
        ("IDSTACK__STORE__REDIS__URL", url.as_str()),
        ("IDSTACK__STORE__REDIS__KEY_PREFIX", prefix.as_str()),
        ("IDSTACK__STORE__MASTER_KEY", crate::common::TEST_MASTER_KEY),
        ("IDSTACK__SERVER__MODE", "production"),
    ];
    let (st, _, err) = run_cli(
        backup.path(),
        &["store", "export", "--out", file.to_str().unwrap()],
        &env,
    );
    assert!(st.success(), "{err}");

    assert_eq!(redis_command(redis.port, "FLUSHALL"), "+OK");
    for n in &nodes {
        wait_ready(&n.base, 503).await;
        // the guard has seen it and refuses to recreate anything
        let deadline = Instant::now() + Duration::from_secs(60);
        while !n.log().contains("production mode: the default issuer") {
            assert!(Instant::now() < deadline, "{}", n.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // (the reasons are the metrics token holder's in production)
        let r = guarded_client()
            .get(n.url("/health/ready"))
            .bearer_auth(PROD_METRICS_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["failing"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["component"] == "store_state"
                    && f["reason"].as_str().unwrap().contains("production mode")),
            "{body}"
        );
        let (st, _) = admin_get(&n.url("/api/issuers/default")).await;
        assert_eq!(st, 404, "nothing recreated");
    }

    // restored: ready again, with the keys and DIDs from before
    let (st, _, err) = run_cli(
        backup.path(),
        &["store", "import", "--in", file.to_str().unwrap()],
        &env,
    );
    assert!(st.success(), "{err}");
    for n in &nodes {
        wait_ready(&n.base, 200).await;
    }
    assert_eq!(first_start_state(&nodes).await, before);
    for n in nodes {
        n.stop();
    }
}
