//! Attacks on the server's own outbound requests (issue 18, items 2 and 3), against the real
//! binary. Loopback listeners stand in for internal services: a node configured like production
//! (`http.outbound.allow_private = "none"`, only its own address allow-listed) must not reach
//! them — not directly, not by name, not through a redirect — and says so with `outbound_refused`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::WalletUser;
use crate::common::{expect_problem, Server};
use crate::holder::create_offer;

/// A loopback listener answering every connection with `answer`; counts connections.
struct Listener {
    port: u16,
    hits: Arc<AtomicUsize>,
    /// Requests received (head and body as text), for the listener that records them.
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Clone)]
enum Answer {
    Fixed(String),
    /// 300 MB chunked, no Content-Length.
    Huge,
    /// Nothing, for 30 s.
    Stall,
}

async fn listen(answer: Answer) -> Listener {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (h, s) = (hits.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            h.fetch_add(1, Ordering::SeqCst);
            let (answer, s) = (answer.clone(), s.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                s.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                match answer {
                    Answer::Fixed(a) => {
                        let _ = sock.write_all(a.as_bytes()).await;
                    }
                    Answer::Stall => {
                        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                    }
                    Answer::Huge => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                            .await;
                        let chunk = format!("{:x}\r\n{}\r\n", 1 << 20, " ".repeat(1 << 20));
                        for _ in 0..300 {
                            if sock.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        let _ = sock.write_all(b"0\r\n\r\n").await;
                    }
                }
            });
        }
    });
    Listener { port, hits, seen }
}

fn ok_json(body: &str) -> Answer {
    Answer::Fixed(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node that may reach only public addresses, itself, and `extra` allow-list entries.
async fn guarded_node(extra: &[String]) -> Server {
    let port = free_port();
    let mut allow = vec![format!("127.0.0.1:{port}")];
    allow.extend(extra.iter().cloned());
    Server::builder()
        .bind(&format!("127.0.0.1:{port}"))
        .env("IDSTACK__HTTP__OUTBOUND__ALLOW_PRIVATE", "none")
        .env("IDSTACK__HTTP__OUTBOUND__ALLOW", &allow.join(","))
        .start()
        .await
}

async fn exchange(s: &Server, u: &WalletUser, what: &str, body: Value) -> reqwest::Response {
    s.bearer(&u.token)
        .post_resp(
            &format!("/wallet/wallets/{}/exchange/{what}", u.wallet),
            &body,
        )
        .await
}

fn enc(v: &str) -> String {
    serde_urlencoded::to_string([("x", v)]).unwrap()[2..].to_string()
}

fn offer_at(url: &str) -> Value {
    json!({ "offer": format!("openid-credential-offer://?credential_offer_uri={}", enc(url)) })
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn new_session(s: &Server, verifier: &str, extra: Value) -> Value {
    let mut body = json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {}, "claims": [{"path": ["given_name"]}]}]}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = s
        .admin()
        .post_resp(&format!("/api/verifiers/{verifier}/sessions"), &body)
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

async fn session_result(s: &Server, verifier: &str, id: &str) -> Value {
    s.admin()
        .get(&format!("/api/verifiers/{verifier}/sessions/{id}"))
        .await
}

/// Gives `u` an SD-JWT identity credential from the node's own issuer.
async fn receive_identity(s: &Server, u: &WalletUser) {
    let body = json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": {"given_name": "Alice", "family_name": "A"}});
    let offer = create_offer(s, "default", body).await;
    let r = exchange(s, u, "accept-offer", json!({"offer": offer["offer_uri"]})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn internal_targets_are_refused_directly_by_name_and_by_did_web() {
    let internal = listen(ok_json(r#"{"credential_issuer":"http://127.0.0.1/"}"#)).await;
    let s = guarded_node(&[]).await;
    let u = WalletUser::signup(&s, "alice@example.org").await;
    let p = internal.port;
    for url in [
        format!("http://127.0.0.1:{p}/offer"),
        format!("http://localhost:{p}/offer"),
        format!("http://[::ffff:127.0.0.1]:{p}/offer"),
        format!("http://2130706433:{p}/offer"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[::1]:9/offer".to_string(),
        "http://10.255.255.1:9/offer".to_string(),
    ] {
        let r = exchange(&s, &u, "resolve-offer", offer_at(&url)).await;
        let body = expect_problem(r, 422, "outbound_refused").await;
        assert!(!body.to_string().contains("credential_issuer"), "{body}");
    }
    // A request object signed by a did:web on an internal address: the DID document is not fetched.
    let header = json!({"alg": "ES256", "typ": "oauth-authz-req+jwt", "kid": format!("did:web:127.0.0.1%3A{p}#k")});
    let client_id = format!("decentralized_identifier:did:web:127.0.0.1%3A{p}");
    let jwt = format!(
        "{}.{}.AAAA",
        b64(&header),
        b64(&json!({"client_id": client_id}))
    );
    let req = format!("openid4vp://?client_id={}&request={jwt}", enc(&client_id));
    let r = exchange(&s, &u, "resolve-request", json!({"request": req})).await;
    expect_problem(r, 422, "outbound_refused").await;
    // ... and a request_uri there is not fetched either.
    let req = format!(
        "openid4vp://?client_id={}&request_uri={}",
        enc(&client_id),
        enc(&format!("http://127.0.0.1:{p}/request"))
    );
    let r = exchange(&s, &u, "resolve-request", json!({"request": req})).await;
    expect_problem(r, 422, "outbound_refused").await;
    assert_eq!(
        internal.hits.load(Ordering::SeqCst),
        0,
        "an internal service was reached"
    );

    // The node still reaches what it is allowed to: itself.
    receive_identity(&s, &u).await;
}

#[tokio::test]
async fn an_allowed_server_cannot_redirect_to_an_internal_one() {
    let internal = listen(ok_json("{}")).await;
    let redirector = listen(Answer::Fixed(format!(
        "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{}/offer\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        internal.port
    )))
    .await;
    let s = guarded_node(&[format!("127.0.0.1:{}", redirector.port)]).await;
    let u = WalletUser::signup(&s, "bob@example.org").await;
    let r = exchange(
        &s,
        &u,
        "resolve-offer",
        offer_at(&format!("http://127.0.0.1:{}/offer", redirector.port)),
    )
    .await;
    expect_problem(r, 422, "outbound_refused").await;
    assert_eq!(redirector.hits.load(Ordering::SeqCst), 1);
    assert_eq!(internal.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn webhooks_to_internal_addresses_are_not_sent() {
    let internal = listen(ok_json("{}")).await;
    let allowed = listen(ok_json("{}")).await;
    let s = guarded_node(&[format!("127.0.0.1:{}", allowed.port)]).await;
    let u = WalletUser::signup(&s, "carol@example.org").await;
    receive_identity(&s, &u).await;
    // Session webhooks: first to the internal target, then to the allowed one as the control.
    for target in [&internal, &allowed] {
        let hook = format!("http://127.0.0.1:{}/hook", target.port);
        let sess = new_session(&s, "default", json!({"webhook_url": hook})).await;
        let req = sess["authorization_request"].as_str().unwrap();
        let r = exchange(&s, &u, "present", json!({"request": req})).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while allowed.seen.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the allowed webhook never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let first = allowed.seen.lock().unwrap()[0].to_ascii_lowercase();
    assert!(first.contains("x-idstack-signature"), "{first}");
    assert_eq!(internal.hits.load(Ordering::SeqCst), 0);
    assert!(
        s.log().contains("outbound request refused"),
        "the refusal is logged"
    );
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// One account runs at most four exchanges with other parties at once on a node (each holds
/// outbound places the verifier and webhooks share, and what the other party sent), and JSON is
/// bounded by what it costs parsed, fetched or received (attacker review: a 4 MiB document of
/// `{"":0}` was about 420 MB parsed, held across slow fetches; 256 stalled exchanges of one
/// account took every outbound place of the node).
#[tokio::test]
async fn an_account_runs_few_exchanges_and_json_is_bounded_by_its_cost() {
    let stall = listen(Answer::Stall).await;
    let heavy = format!(
        r#"{{"credential_issuer":"x","p":[{}]}}"#,
        vec![r#"{"":0}"#; 40_000].join(",")
    );
    let metadata = listen(ok_json(&heavy)).await;
    let s = Server::start().await; // sandbox: loopback allowed
    let u = WalletUser::signup(&s, "erin@example.org").await;
    // fetched: the issuer's metadata, 280 KB of text, ~27 MB parsed
    let offer = json!({"offer": json!({
        "credential_issuer": format!("http://127.0.0.1:{}", metadata.port),
        "credential_configuration_ids": ["x"],
    }).to_string()});
    let body = expect_problem(
        exchange(&s, &u, "resolve-offer", offer).await,
        424,
        "remote_party_failed",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("too many objects"),
        "{body}"
    );
    // received: a login with 15,000 objects in it (105 KB, ~10 MB parsed)
    let r = s
        .anon()
        .post_resp(
            "/wallet/auth/login",
            &json!({"email": "erin@example.org", "password": "x", "p": vec![json!({"": 0}); 15_000]}),
        )
        .await;
    expect_problem(r, 413, "payload_too_large").await;
    // four exchanges of one account stall on a slow issuer: a fifth is refused at once, another
    // account's is not
    let url = format!("http://127.0.0.1:{}/offer", stall.port);
    let stalled: Vec<_> = (0..4)
        .map(|_| {
            let (base, token, wallet, body) = (
                s.base.clone(),
                u.token.clone(),
                u.wallet.clone(),
                offer_at(&url),
            );
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(format!(
                        "{base}/wallet/wallets/{wallet}/exchange/resolve-offer"
                    ))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
            })
        })
        .collect();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stall.hits.load(Ordering::SeqCst) < 4 {
        assert!(
            std::time::Instant::now() < until,
            "the four never reached the issuer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = exchange(&s, &u, "resolve-offer", offer_at(&url)).await;
    expect_problem(r, 503, "service_unavailable").await;
    assert_eq!(stall.hits.load(Ordering::SeqCst), 4);
    let other = WalletUser::signup(&s, "frank@example.org").await;
    let r = exchange(&s, &other, "resolve-offer", json!({"offer": "{}"})).await;
    assert_ne!(r.status(), 503);
    for t in stalled {
        t.abort();
    }
}

#[tokio::test]
async fn a_huge_streamed_body_is_cut_at_the_cap() {
    let huge = listen(Answer::Huge).await;
    let s = Server::start().await; // sandbox: loopback allowed
    let pid = s.child.as_ref().unwrap().id();
    let u = WalletUser::signup(&s, "dave@example.org").await;
    let before = rss_kb(pid, "VmRSS:");
    let url = format!("http://127.0.0.1:{}/offer", huge.port);
    let calls = (0..4).map(|_| exchange(&s, &u, "resolve-offer", offer_at(&url)));
    for r in futures_util::future::join_all(calls).await {
        let body = expect_problem(r, 424, "remote_party_failed").await;
        assert!(
            body["detail"].as_str().unwrap().contains("larger than"),
            "{body}"
        );
    }
    let peak = rss_kb(pid, "VmHWM:");
    // Today's code grew by 1.26 GB for these four requests; the cap is 4 MiB each.
    assert!(
        peak < before + 200 * 1024,
        "RSS peak {peak} kB, before {before} kB"
    );
}

#[tokio::test]
async fn a_swapped_response_uri_is_refused_by_the_wallet() {
    let s = Server::start().await;
    let r = s
        .admin()
        .post_resp("/api/verifiers", &json!({"id": "bank"}))
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let alice = WalletUser::signup(&s, "alice@bank.example").await;
    receive_identity(&s, &alice).await;

    // The attacker opens a session at the bank and hands Alice a request under its own client
    // identifier whose response_uri is the bank's.
    let bank = new_session(&s, "bank", json!({})).await;
    let bank_req = bank["authorization_request"].as_str().unwrap();
    assert!(bank_req.contains("client_id=redirect_uri%3A"), "{bank_req}");
    let parsed = reqwest::Url::parse(bank_req).unwrap();
    let swapped: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "client_id" {
                "redirect_uri:https://attacker.example/cb".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    let forged = format!(
        "openid4vp://?{}",
        serde_urlencoded::to_string(&swapped).unwrap()
    );
    let r = exchange(&s, &alice, "resolve-request", json!({"request": forged})).await;
    let body = expect_problem(r, 424, "remote_party_failed").await;
    assert!(
        body["detail"].as_str().unwrap().contains("response_uri"),
        "{body}"
    );
    let r = exchange(&s, &alice, "present", json!({"request": forged})).await;
    assert!(r.status().is_client_error(), "{}", r.status());
    let result = session_result(&s, "bank", bank["id"].as_str().unwrap()).await;
    assert_ne!(result["verified"], true, "{result}");

    // The genuine request still works, and the answer is a summary, not the verifier's body.
    let r = exchange(&s, &alice, "present", json!({"request": bank_req})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let answer: Value = r.json().await.unwrap();
    let keys: Vec<&String> = answer["verifier_response"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert!(
        keys.iter().all(|k| *k == "status" || *k == "redirect_uri"),
        "{answer}"
    );
    let result = session_result(&s, "bank", bank["id"].as_str().unwrap()).await;
    assert_eq!(result["verified"], true, "{result}");
}

/// A slow issuer, verifier or status list holds no tenant session slot while the wallet waits for
/// it: otherwise a member's slow fetches could use up a wallet's sessions, or an account with many
/// wallets the node's. Accepting and presenting need the keys, but hold a session only while they
/// read them and sign, never during the call out.
#[tokio::test]
async fn a_slow_remote_party_holds_no_tenant_session() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (got, mut connected) = tokio::sync::mpsc::channel::<()>(4);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = l.accept().await {
            held.push(sock); // accepted, never answered
            let _ = got.send(()).await;
        }
    });
    let s = guarded_node(&[format!("127.0.0.1:{port}")]).await;
    let u = WalletUser::signup(&s, "slow@example.org").await;
    let offer = offer_at(&format!("http://127.0.0.1:{port}/offer"));
    let request = json!({"request": format!(
        "openid4vp://?client_id=redirect_uri%3Ahttp%3A%2F%2F127.0.0.1%3A{port}%2Fcb&request_uri={}",
        enc(&format!("http://127.0.0.1:{port}/request"))
    )});
    for (step, body) in [
        ("resolve-offer", &offer),
        ("accept-offer", &offer),
        ("resolve-request", &request),
        ("present", &request),
    ] {
        let pending = {
            let (s_url, token, wallet) = (s.url(""), u.token.clone(), u.wallet.clone());
            let body = body.clone();
            tokio::spawn(async move {
                crate::common::client()
                    .post(format!("{s_url}/wallet/wallets/{wallet}/exchange/{step}"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
            })
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), connected.recv())
            .await
            .unwrap_or_else(|_| panic!("{step}: the wallet never called the slow party"));
        let metrics = s.anon().text("/metrics").await;
        assert!(
            metrics
                .lines()
                .any(|l| l == "idstack_wallet_open_sessions 0"),
            "{step}: {}",
            metrics
                .lines()
                .filter(|l| l.contains("wallet_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        pending.abort();
    }
}
