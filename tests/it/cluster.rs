//! Cluster mode: three real idstack processes behind a real round-robin reverse proxy
//! ([`crate::balancer::Balancer`]), `server.public_url` set to the proxy, so every call of a flow
//! (including the cloud wallet's own calls to the issuer and verifier) may land on any node.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{json, Value};

use crate::api::WalletUser;
use crate::balancer::Balancer;
use crate::common::{client, Server, ADMIN_TOKEN};
use crate::holder::{create_offer, pre_auth_code, token};

const SECRET: &str = "cluster-test-secret-0123456789";
/// OID4VP sessions the Animo wallet completes through the proxy (the walt.id seed scenario).
const ANIMO_SESSIONS: usize = 1_000;

/// A port free for both UDP (gossip) and TCP (internal RPC uses the same number).
pub(crate) fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Spec {
    id: String,
    port: u16,
}

fn node_builder(spec: &Spec, seeds: &str, public_url: &str) -> crate::common::Builder {
    node_builder_at(
        &spec.id,
        &format!("127.0.0.1:{}", spec.port),
        seeds,
        public_url,
    )
}

/// A cluster node `id` gossiping (and serving internal RPC) on `gossip`.
pub(crate) fn node_builder_at(
    id: &str,
    gossip: &str,
    seeds: &str,
    public_url: &str,
) -> crate::common::Builder {
    // Cluster mode and the Redis backend exclude each other: cluster nodes are sled nodes.
    Server::builder()
        .sled()
        .arg("--cluster")
        .env("IDSTACK__CLUSTER__NODE_ID", id)
        .env("IDSTACK__CLUSTER__GOSSIP_ADDR", gossip)
        .env("IDSTACK__CLUSTER__SEEDS", seeds)
        .env("IDSTACK__CLUSTER__SECRET", SECRET)
        .env("IDSTACK__CLUSTER__ID", "it-cluster")
        .env("IDSTACK__CLUSTER__GOSSIP_INTERVAL_MS", "100")
        .env("IDSTACK__CLUSTER__ANTI_ENTROPY_INTERVAL_SECONDS", "2")
        .env("IDSTACK__SERVER__PUBLIC_URL", public_url)
        .env("IDSTACK__SERVER__WORKERS", "2")
}

/// The proxy seen as a server, so the shared flow helpers can be pointed at it.
fn via(b: &Balancer) -> Server {
    Server {
        child: None,
        base: b.url(),
        dir: tempfile::tempdir().unwrap(),
        log: std::path::PathBuf::new(),
    }
}

/// kill -9: no goodbye, no flush. Returns the data dir for a restart.
pub(crate) fn kill9(mut s: Server) -> tempfile::TempDir {
    let mut c = s.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap())
}

pub(crate) async fn admin_get(s: &Server, path: &str) -> (u16, Value) {
    let r = s.admin().get_resp(path).await;
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

/// Polls `/api/cluster` on `s` until `pred` holds (bounded wait; the assertion is on the state).
async fn wait_cluster(s: &Server, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, v) = admin_get(s, "/api/cluster").await;
        if st == 200 && pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last view {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn member<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == id)
        .unwrap_or(&Value::Null)
}

pub(crate) fn identity() -> Value {
    json!({"given_name": "Erika", "family_name": "Mustermann", "birthdate": "1984-01-26", "email": "erika@example.org"})
}

pub(crate) fn query() -> Value {
    json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {}, "claims": [{"path": ["family_name"]}]}]}})
}

async fn new_session(s: &Server) -> Value {
    let r = s
        .admin()
        .post_resp("/api/verifiers/default/sessions", &query())
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// The wallet receives an SD-JWT (offer with tx_code) through the proxy.
pub(crate) async fn receive(lb: &Server, u: &WalletUser) {
    let offer = create_offer(lb, "default", json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": identity(), "tx_code": {"length": 6}})).await;
    let (st, v) = u
        .call(
            lb,
            "/exchange/accept-offer",
            json!({"offer": offer["offer_uri"], "tx_code": offer["tx_code"]}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
}

/// The wallet presents to an existing session through the proxy; the result is read back.
async fn present(lb: &Server, u: &WalletUser, sess: &Value) {
    let req = sess["authorization_request"].as_str().unwrap();
    let (st, v) = u
        .call(lb, "/exchange/present", json!({"request": req}))
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, r) = admin_get(
        lb,
        &format!(
            "/api/verifiers/default/sessions/{}",
            sess["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["credentials"][0]["claims"]["family_name"], "Mustermann");
}

#[tokio::test]
async fn three_nodes_behind_round_robin_act_as_one_and_survive_kill_9() {
    let lb = Balancer::start(Vec::new()).await;
    let (specs, seeds, a, b, c) = start_three(&lb).await;
    let proxy = via(&lb);

    // membership: every node sees three alive, caught-up members
    for s in [&a, &b, &c] {
        let v = wait_cluster(s, "three ready members", |v| {
            v["members"].as_array().is_some_and(|m| {
                m.len() == 3
                    && m.iter()
                        .all(|m| m["state"] == "alive" && m["ready"] == true)
            })
        })
        .await;
        assert_eq!(v["enabled"], true);
        assert_eq!(v["caught_up"], true);
        assert_eq!(
            member(&v, "n1")["roles"].as_array().unwrap().len(),
            4,
            "{v}"
        );
        let r = s.anon().get_resp("/health/ready").await;
        assert_eq!(r.status(), 200);
    }
    // /api/cluster is an admin API
    let r = a.anon().get_resp("/api/cluster").await;
    assert_eq!(r.status(), 401);

    // keys created once cluster-wide: the default issuer has the same DID and key on every node
    let mut dids = Vec::new();
    for s in [&a, &b, &c] {
        let (st, v) = admin_get(s, "/api/issuers/default").await;
        assert_eq!(st, 200, "{v}");
        dids.push((v["did"].clone(), v["key_fingerprint"].clone()));
    }
    assert!(dids.iter().all(|d| *d == dids[0]), "{dids:?}");

    // internal RPC refuses unsigned requests
    let r = client()
        .post(format!(
            "http://127.0.0.1:{}/cluster/v1/digest",
            specs[0].port
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // the walt.id scenario: sessions created on one node, every later call anywhere
    let u = WalletUser::signup(&proxy, "erika@example.org").await;
    receive(&proxy, &u).await;
    for _ in 0..6 {
        let sess = new_session(&proxy).await;
        present(&proxy, &u, &sess).await;
    }
    for s in [&a, &b, &c] {
        assert!(lb.hits(&s.base) > 5, "round robin reached {}", s.base);
    }

    // the third-party Animo @openid4vc holder and wallet through the proxy: issuance, a session
    // created on one node and completed anywhere, its replay rejected on another node
    let (sid, cred) = crate::redis_backend::animo_issue_and_present(&lb.url(), &c.base).await;
    for s in [&a, &b] {
        let (st, v) = admin_get(s, &format!("/api/verifiers/default/sessions/{sid}")).await;
        assert_eq!((st, &v["verified"]), (200, &json!(true)), "{v}");
    }
    // the walt.id seed scenario at volume: sessions created through the proxy (so on every
    // node), each completed by the Animo wallet through the proxy, none "not found"
    let created: Vec<Value> = futures_util::stream::iter(0..ANIMO_SESSIONS)
        .map(|_| new_session(&proxy))
        .buffer_unordered(8)
        .collect()
        .await;
    let list = cred.path().join("requests.txt");
    std::fs::write(
        &list,
        created
            .iter()
            .map(|s| s["authorization_request"].as_str().unwrap())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let cred_file = cred.path().join("cred.json");
    let (list_s, cred_s) = (
        list.to_str().unwrap().to_string(),
        cred_file.to_str().unwrap().to_string(),
    );
    let out = tokio::task::spawn_blocking(move || {
        crate::interop::node(
            "oid4vp-wallet.mjs",
            &[
                "--requests",
                &list_s,
                "--credential",
                &cred_s,
                "--concurrency",
                "8",
            ],
        )
    })
    .await
    .unwrap();
    // Every answer is a success or — on an overloaded machine, where an RPC to a key's primary
    // can time out — a 503 temporarily_unavailable (consistent mode: outcome unknown or no
    // majority reached, retry). The session then stays pending: the wallet's retry completes it.
    let failures = out["failures"].as_array().cloned().unwrap_or_default();
    assert!(
        failures
            .iter()
            .all(|f| f["status"] == 503 && f["body"]["error"] == "temporarily_unavailable"),
        "{out}"
    );
    if !failures.is_empty() {
        let mut pending = Vec::new();
        for s in &created {
            let (_, v) = admin_get(
                &proxy,
                &format!(
                    "/api/verifiers/default/sessions/{}",
                    s["id"].as_str().unwrap()
                ),
            )
            .await;
            if v["verified"] != json!(true) {
                pending.push(s["authorization_request"].as_str().unwrap().to_string());
            }
        }
        assert_eq!(pending.len(), failures.len(), "{out}");
        println!(
            "cluster: {} sessions answered 503 (retry) under load; retried",
            pending.len()
        );
        std::fs::write(&list, pending.join("\n")).unwrap();
        let (list_s, cred_s) = (
            list.to_str().unwrap().to_string(),
            cred_file.to_str().unwrap().to_string(),
        );
        let retry = tokio::task::spawn_blocking(move || {
            crate::interop::node(
                "oid4vp-wallet.mjs",
                &[
                    "--requests",
                    &list_s,
                    "--credential",
                    &cred_s,
                    "--concurrency",
                    "8",
                ],
            )
        })
        .await
        .unwrap();
        assert_eq!(retry["ok"], json!(pending.len()), "{retry}");
    }
    for s in created.iter().step_by(50) {
        let (st, v) = admin_get(
            &proxy,
            &format!(
                "/api/verifiers/default/sessions/{}",
                s["id"].as_str().unwrap()
            ),
        )
        .await;
        assert_eq!((st, &v["verified"]), (200, &json!(true)), "{v}");
    }

    // the load harness's real OID4VP and OID4VCI clients through the proxy: zero errors
    for scenario in ["verify", "issue"] {
        let report = load(&lb.url(), scenario, 4, "3s").await;
        assert_eq!(report["failed"], 0, "{report}");
        assert!(report["flows"].as_u64().unwrap() > 0, "{report}");
    }

    // pre-authorized code replay with the two attempts on different nodes: exactly one wins
    let nodes = [&a, &b, &c];
    for i in 0..9 {
        let offer = create_offer(&proxy, "default", json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": identity()})).await;
        let code = pre_auth_code(&offer);
        let (x, y) = (nodes[i % 3], nodes[(i + 1) % 3]);
        let ((s1, _), (s2, _)) = tokio::join!(
            token(x, "default", &code, None),
            token(y, "default", &code, None)
        );
        let mut got = [s1, s2];
        got.sort();
        assert_eq!(got, [200, 400], "one redemption of {code}");
        // and a later attempt on the third node fails too
        let (s3, e) = token(nodes[(i + 2) % 3], "default", &code, None).await;
        assert_eq!((s3, e["error"].as_str()), (400, Some("invalid_grant")));
    }

    // sessions and offers created before the crash
    let before: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(new_session(&proxy).await);
        }
        v
    };
    let c_dir = kill9(c);
    // everything still served through the proxy, nothing lost
    for sess in &before {
        present(&proxy, &u, sess).await;
    }
    receive(&proxy, &u).await;
    let v = wait_cluster(&a, "n3 marked dead", |v| member(v, "n3")["state"] == "dead").await;
    assert_eq!(member(&v, "n2")["state"], "alive");

    // written while n3 is down: n3 must catch up on these
    let mut during = Vec::new();
    for _ in 0..4 {
        let sess = new_session(&proxy).await;
        present(&proxy, &u, &sess).await;
        during.push(sess);
    }
    let u2 = WalletUser::signup(&proxy, "max@example.org").await;

    // restart n3 on the same data dir: it rejoins and catches up before it reports ready
    let c = node_builder(&specs[2], &seeds, &lb.url())
        .dir(c_dir)
        .start()
        .await;
    lb.set_backends(vec![a.base.clone(), b.base.clone(), c.base.clone()]);
    let v = wait_cluster(&a, "n3 alive again", |v| {
        member(v, "n3")["state"] == "alive" && member(v, "n3")["ready"] == true
    })
    .await;
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v}");
    let (_, view) = admin_get(&c, "/api/cluster").await;
    assert_eq!(view["caught_up"], true, "{view}");
    let metrics = c.anon().text("/metrics").await;
    let repairs: f64 = metrics
        .lines()
        .find(|l| l.starts_with("idstack_cluster_anti_entropy_repairs_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    assert!(
        repairs > 0.0,
        "the restarted node pulled what it missed:\n{metrics}"
    );
    // the new user can work through the proxy, including on n3
    receive(&proxy, &u2).await;

    // prove the copy is local: with both other nodes gone, n3 alone still has every session
    let _ = kill9(a);
    let _ = kill9(b);
    for sess in before.iter().chain(during.iter()) {
        let (st, r) = admin_get(
            &c,
            &format!(
                "/api/verifiers/default/sessions/{}",
                sess["id"].as_str().unwrap()
            ),
        )
        .await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["state"], "completed", "{r}");
    }
    // and the default issuer's key is the one the cluster agreed on
    let (st, v) = admin_get(&c, "/api/issuers/default").await;
    assert_eq!(st, 200);
    assert_eq!((v["did"].clone(), v["key_fingerprint"].clone()), dids[0]);
    let dir = c.stop();

    // offline CLI on a cluster node's data: records come out without their version envelopes
    let data = dir.path().join("data");
    let (st, out, err) = crate::common::run_cli(
        dir.path(),
        &["store", "export", "--data-dir", data.to_str().unwrap()],
        &[
            ("IDSTACK__CLUSTER__ENABLED", "true"),
            ("IDSTACK__CLUSTER__SECRET", SECRET),
            ("IDSTACK__CLUSTER__ID", "it-cluster"),
            ("IDSTACK__CLUSTER__NODE_ID", "n3"),
        ],
    );
    assert!(st.success(), "{err}");
    let id = during[0]["id"].as_str().unwrap();
    let rec: Value = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["keyspace"] == "verifier_sessions" && r["key"].as_str().unwrap().contains(id))
        .unwrap_or_else(|| panic!("session {id} not exported:\n{err}"));
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(rec["value_b64"].as_str().unwrap())
        .unwrap();
    let session: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(session.is_object(), "{session}");
}

/// Runs `idstack load` against `target`; returns its JSON report. (Async: the proxy runs on this
/// test's runtime, so the wait must not block it.)
async fn load(target: &str, scenario: &str, users: u32, duration: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let args: Vec<String> = [
        "load",
        "--target",
        target,
        "--scenario",
        scenario,
        "--users",
        &users.to_string(),
        "--duration",
        duration,
        "--quiet",
        "--json",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::common::bin())
            .args(&args)
            .env("IDSTACK_ADMIN_TOKEN", ADMIN_TOKEN)
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_default())
        .unwrap_or_default();
    assert!(
        status.success(),
        "load {scenario} exited {status}: {report}"
    );
    report
}

fn full_flow(report: &Value) -> (f64, f64, f64, f64) {
    let flows = report["flows"].as_f64().unwrap_or(0.0);
    let secs = report["duration_s"].as_f64().unwrap_or(1.0).max(0.001);
    let op = report["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["operation"] == "full flow")
        .cloned()
        .unwrap_or_default();
    (
        flows / secs,
        op["p50_ms"].as_f64().unwrap_or(0.0),
        op["p90_ms"].as_f64().unwrap_or(0.0),
        op["p99_ms"].as_f64().unwrap_or(0.0),
    )
}

/// Numbers for BENCHMARKS.md (run by hand: `cargo test --release --test it cluster_benchmark --
/// --ignored --nocapture`): one node vs three behind the proxy, kill -9 detection, restart.
#[tokio::test]
#[ignore]
async fn cluster_benchmark() {
    let users = 16;
    let dur = "15s";
    let single = Server::start().await;
    let mut rows = Vec::new();
    for scenario in ["verify", "issue"] {
        let r = load(&single.base, scenario, users, dur).await;
        assert_eq!(r["failed"], 0, "{r}");
        rows.push((format!("1 node, {scenario}"), full_flow(&r)));
    }
    drop(single);
    let lb = Balancer::start(Vec::new()).await;
    let (specs, seeds, a, b, c) = start_three(&lb).await;
    for scenario in ["verify", "issue"] {
        let r = load(&lb.url(), scenario, users, dur).await;
        assert_eq!(r["failed"], 0, "{r}");
        rows.push((
            format!("3 nodes behind round robin, {scenario}"),
            full_flow(&r),
        ));
        let r = load(&a.base, scenario, users, dur).await;
        assert_eq!(r["failed"], 0, "{r}");
        rows.push((
            format!("3 nodes, all load on one node, {scenario}"),
            full_flow(&r),
        ));
    }
    println!("| setup | flows/s | full flow p50 / p90 / p99 ms |");
    for (name, (fps, p50, p90, p99)) in rows {
        println!("| {name} | {fps:.0} | {p50:.1} / {p90:.1} / {p99:.1} |");
    }
    let metrics = a.anon().text("/metrics").await;
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("idstack_cluster_replication_seconds"))
    {
        println!("{l}");
    }
    let t = Instant::now();
    let c_dir = kill9(c);
    wait_cluster(&a, "dead", |v| member(v, "n3")["state"] == "dead").await;
    println!("kill -9 to marked dead: {:?}", t.elapsed());
    let t = Instant::now();
    let c = node_builder(&specs[2], &seeds, &lb.url())
        .dir(c_dir)
        .start()
        .await;
    println!("restart to ready (caught up): {:?}", t.elapsed());
    drop((a, b, c));
}

/// `cluster.rpc_addr` = the HTTP listener: each node's internal RPC runs on its public port (on a
/// server of its own while it bootstraps, then on the public server), and records written on one
/// node are read on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_rpc_can_share_the_http_listener() {
    let lb = Balancer::start(Vec::new()).await;
    let (specs, seeds) = three_specs();
    let http: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let shared = |i: usize| {
        node_builder(&specs[i], &seeds, &lb.url())
            .bind(&http[i])
            .env("IDSTACK__CLUSTER__RPC_ADDR", &http[i])
            .start()
    };
    // started together with only `seeds` (no bootstrap_expect): no split start
    let (a, b, c) = tokio::join!(shared(0), shared(1), shared(2));
    lb.set_backends(vec![a.base.clone(), b.base.clone(), c.base.clone()]);
    // the first answer of each node: one default issuer DID, one verifier DID, one mediator key
    let mut first = Vec::new();
    for s in [&a, &b, &c] {
        let (st, issuer) = admin_get(s, "/api/issuers/default").await;
        assert_eq!(st, 200, "{issuer}");
        let (st, verifier) = admin_get(s, "/api/verifiers/default").await;
        assert_eq!(st, 200, "{verifier}");
        #[cfg(feature = "mediator")]
        let mediator = {
            let (st, inv) = admin_get(s, "/api/mediator/invitation").await;
            assert_eq!(st, 200, "{inv}");
            inv["invitation"]["services"][0]["recipientKeys"][0].clone()
        };
        #[cfg(not(feature = "mediator"))]
        let mediator = Value::Null;
        assert!(issuer["did"].is_string() && verifier["did"].is_string());
        first.push((
            issuer["did"].clone(),
            issuer["key_fingerprint"].clone(),
            verifier["did"].clone(),
            mediator,
        ));
    }
    assert!(first.iter().all(|f| *f == first[0]), "{first:#?}");
    for s in [&a, &b, &c] {
        let v = wait_cluster(s, "three live members", |v| {
            ["n1", "n2", "n3"]
                .iter()
                .all(|id| member(v, id)["state"] == "alive")
        })
        .await;
        assert!(v["members"].as_array().unwrap().len() == 3, "{v}");
    }

    // a process with another cluster secret, seeded with the cluster, does not join: it is never
    // listed, writes through the proxy keep succeeding and every node stays ready
    let rogue_spec = Spec {
        id: "n0-rogue".into(),
        port: free_port(),
    };
    let rogue = node_builder(&rogue_spec, &seeds, &lb.url())
        .env(
            "IDSTACK__CLUSTER__SECRET",
            "not-the-cluster-secret-0123456789",
        )
        .env("IDSTACK__CLUSTER__BOOTSTRAP_EXPECT", "1")
        .start()
        .await;
    let proxy = via(&lb);
    for round in 0..10 {
        for s in [&a, &b, &c] {
            let (st, v) = admin_get(s, "/api/cluster").await;
            assert_eq!(st, 200, "{v}");
            let ids: Vec<&str> = v["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["node_id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, ["n1", "n2", "n3"], "round {round}: {v}");
            let r = s.anon().get_resp("/health/ready").await;
            assert_eq!(
                r.status(),
                200,
                "round {round}: {}",
                r.text().await.unwrap()
            );
        }
        let (_, rv) = admin_get(&rogue, "/api/cluster").await;
        assert_eq!(rv["members"].as_array().unwrap().len(), 1, "{rv}");
        let sess = new_session(&proxy).await;
        assert!(sess["id"].is_string(), "{sess}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = a.anon().text("/metrics").await;
    let dropped: f64 = metrics
        .lines()
        .find(|l| l.starts_with("idstack_cluster_gossip_dropped_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    assert!(
        dropped > 0.0,
        "the rogue's gossip reached n1 and was dropped"
    );
    // an unauthenticated RPC whose chunked body never comes is refused and its connection
    // closed, on a dedicated RPC listener (the rogue's) and on a shared one (b's): actix kept
    // such connections open for ever, draining the unread body with no timer
    let rogue_rpc = format!("127.0.0.1:{}", rogue_spec.port);
    let b_http = b.base.trim_start_matches("http://").to_string();
    for (addr, path, status) in [
        (&rogue_rpc, "/cluster/v1/apply", "401"),
        (&rogue_rpc, "/cluster/v1/no-such-rpc", "404"),
        (&b_http, "/cluster/v1/apply", "401"),
    ] {
        let answer = stalled_chunked_post(addr, path).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{addr}{path}: {answer}"
        );
    }
    drop(rogue);
    // a session written on a, read on b and c (fetched or replicated over the shared port)
    let session = new_session(&a).await;
    let id = session["id"].as_str().unwrap();
    for s in [&b, &c] {
        let (st, v) = admin_get(s, &format!("/api/verifiers/default/sessions/{id}")).await;
        assert_eq!(st, 200, "{v}");
    }
    // the RPC routes answer on the public port, and only to signed requests
    let r = client()
        .post(b.url("/cluster/v1/get"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // a signed batch above the public body limit (1 MiB) reaches the RPC's own limit and is
    // applied: the public body middleware leaves /cluster/v1/* alone (before, it answered an
    // unsigned 413, which the calling peer took for a forged answer)
    let big = format!("{{\"records\":[]{}}}", " ".repeat(2 << 20));
    // b's incarnation, which requests to it are signed for, as gossip (and /api/cluster) show it
    let (_, view) = admin_get(&b, "/api/cluster").await;
    let b_gen = member(&view, "n2")["generation"]
        .as_u64()
        .expect("n2's generation");
    let r = signed_rpc(
        &b.url("/cluster/v1/apply"),
        ("n2", b_gen),
        "/cluster/v1/apply",
        big,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // a request signed for b (n2) is refused by c (n3): the signatures name the target node
    let small = "{\"records\":[]}".to_string();
    let r = signed_rpc(
        &c.url("/cluster/v1/apply"),
        ("n2", b_gen),
        "/cluster/v1/apply",
        small.clone(),
    )
    .await;
    assert_eq!(r.status(), 401, "{}", r.text().await.unwrap());
    // and one signed for another incarnation of b (as if captured before b restarted) is refused
    // by b, which names its current generation in the (signed) refusal
    let r = signed_rpc(
        &b.url("/cluster/v1/apply"),
        ("n2", b_gen - 1),
        "/cluster/v1/apply",
        small,
    )
    .await;
    assert_eq!(r.status(), 401);
    let refusal = r.bytes().await.unwrap();
    assert_eq!(
        idstack::cluster::auth::other_incarnation(&refusal),
        Some(b_gen),
        "{}",
        String::from_utf8_lossy(&refusal)
    );
    drop((a, b, c));
}

/// Sends `POST path` with a chunked body that stops after its first chunk and reads the answer
/// until the server closes the connection (a connection still open after 30 s fails).
async fn stalled_chunked_post(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"rec\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "{addr}{path}: the connection stayed open after the answer: {}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A request signed as a peer would sign it for node `target` in its incarnation `generation`
/// (body and head signature, under the test cluster's RPC key).
async fn signed_rpc(
    url: &str,
    (target, generation): (&str, u64),
    path: &str,
    body: String,
) -> reqwest::Response {
    use idstack::cluster::auth;
    let key = idstack::cluster::derive_rpc_key(SECRET, "it-cluster");
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let nonce = idstack::clock::random_id();
    let target = auth::Target::Incarnation(target, generation);
    client()
        .post(url)
        .header("content-type", "application/json")
        .header(auth::HEADER_TS, ts.to_string())
        .header(auth::HEADER_NONCE, &nonce)
        .header(auth::HEADER_GENERATION, generation.to_string())
        .header(
            auth::HEADER_SIG,
            auth::sign(&key, target, "POST", path, ts, &nonce, body.as_bytes()),
        )
        .header(
            auth::HEADER_HEAD_SIG,
            auth::sign_head(&key, target, "POST", path, ts, &nonce),
        )
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Three node specs (ids n1..n3, free gossip/RPC ports) and their seed list.
fn three_specs() -> (Vec<Spec>, String) {
    let specs: Vec<Spec> = (1..=3)
        .map(|i| Spec {
            id: format!("n{i}"),
            port: free_port(),
        })
        .collect();
    let seeds = specs
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect::<Vec<_>>()
        .join(",");
    (specs, seeds)
}

/// Three sandbox nodes started together with no admin token configured agree on one sandbox
/// admin token: it is made once, under the cluster's init lease, printed by the node that made
/// it, and works on every node (before, each node used a token of its own making when their
/// first starts overlapped, and the one `idstack admin-token` printed worked on one node only).
#[tokio::test]
async fn nodes_starting_together_agree_on_the_sandbox_admin_token() {
    let lb = Balancer::start(Vec::new()).await;
    let (specs, seeds) = three_specs();
    let (a, b, c) = tokio::join!(
        node_builder(&specs[0], &seeds, &lb.url())
            .no_admin_token()
            .start(),
        node_builder(&specs[1], &seeds, &lb.url())
            .no_admin_token()
            .start(),
        node_builder(&specs[2], &seeds, &lb.url())
            .no_admin_token()
            .start(),
    );
    let printed: Vec<String> = [&a, &b, &c]
        .iter()
        .filter_map(|s| {
            s.log()
                .lines()
                .skip_while(|l| !l.contains("sandbox admin token (shown once"))
                .nth(2)
                .map(|t| t.trim().to_string())
        })
        .collect();
    assert_eq!(printed.len(), 1, "tokens printed: {printed:?}");
    for s in [&a, &b, &c] {
        let r = s.bearer(&printed[0]).get_resp("/api/cluster").await;
        assert_eq!(r.status(), 200, "the token on {}", s.base);
    }
}

/// Starts three nodes at once behind `lb` (public URL = the proxy).
async fn start_three(lb: &Balancer) -> (Vec<Spec>, String, Server, Server, Server) {
    let (specs, seeds) = three_specs();
    let (a, b, c) = tokio::join!(
        node_builder(&specs[0], &seeds, &lb.url()).start(),
        node_builder(&specs[1], &seeds, &lb.url()).start(),
        node_builder(&specs[2], &seeds, &lb.url()).start(),
    );
    lb.set_backends(vec![a.base.clone(), b.base.clone(), c.base.clone()]);
    (specs, seeds, a, b, c)
}

#[cfg(feature = "mediator")]
mod mediator {
    use std::collections::BTreeMap;

    use idstack::didcomm::client::{self, pickup, AgentKey, MediatorConnection};

    use super::*;

    async fn forward(base: &str, conn: &MediatorConnection, recipient: &AgentKey, text: &str) {
        let sender = AgentKey::generate();
        let inner = sender
            .pack(&client::basic_message(text), &recipient.verkey_bytes())
            .unwrap();
        let env =
            client::forward_envelope(&inner, &recipient.verkey, &conn.routing_keys[0]).unwrap();
        let r = client()
            .post(format!("{base}/didcomm"))
            .header("content-type", client::CONTENT_TYPE)
            .body(env)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "forward {text} via {base}");
    }

    /// Reads deliveries until `want` distinct messages arrived; returns id -> content.
    async fn collect(
        ws: &mut client::WsConnection,
        recipient: &AgentKey,
        want: usize,
    ) -> BTreeMap<String, String> {
        let mut got = BTreeMap::new();
        while got.len() < want {
            let m = ws.recv(Duration::from_secs(20)).await.unwrap();
            if m["@type"].as_str().unwrap().ends_with("/delivery") {
                for (id, env) in pickup::attachments(&m) {
                    let (msg, _) = recipient.unpack(env.to_string().as_bytes()).unwrap();
                    got.insert(id, msg["content"].as_str().unwrap().to_string());
                }
            }
        }
        got
    }

    /// credo-ts #1625: the recipient's live socket is on one node, forwards arrive on the others;
    /// the socket's node is killed, the recipient reconnects through the proxy and gets everything
    /// it had not acknowledged.
    #[tokio::test]
    async fn forwards_on_any_node_reach_the_live_socket_and_survive_its_node_dying() {
        let lb = Balancer::start(Vec::new()).await;
        let (_specs, _seeds, a, b, c) = start_three(&lb).await;
        let proxy = via(&lb);

        // connection, mediation and keylist through the proxy: each step may hit another node
        let r: Value = proxy.admin().get("/api/mediator/invitation").await;
        let inv = r["invitation_url"].as_str().unwrap().to_string();
        let mut conn = MediatorConnection::connect(reqwest::Client::new(), &inv, "raw")
            .await
            .unwrap();
        assert_eq!(conn.mediate().await.unwrap().len(), 1);
        let recipient = AgentKey::generate();
        assert_eq!(
            conn.keylist_update(&recipient.verkey, "add").await.unwrap(),
            "success"
        );

        // the live socket on node n1 directly
        let via_proxy_ws = conn.invitation.ws_endpoint.clone();
        conn.invitation.ws_endpoint =
            Some(format!("{}/didcomm/ws", a.base.replace("http://", "ws://")));
        let mut sent = Vec::new();
        {
            let mut ws = conn.websocket().await.unwrap();
            ws.live(true).await.unwrap();
            for (i, base) in [&b.base, &c.base, &b.base, &c.base, &proxy.base]
                .iter()
                .enumerate()
            {
                let text = format!("live-{i}");
                forward(base, &conn, &recipient, &text).await;
                sent.push(text);
            }
            let got = collect(&mut ws, &recipient, sent.len()).await;
            let mut contents: Vec<String> = got.into_values().collect();
            contents.sort();
            assert_eq!(contents, sent, "every forward reached the socket on n1");
            // no messages-received: they stay queued
        }

        // the socket's node dies; two more forwards land on the survivors
        let _dir = kill9(a);
        for i in 0..2 {
            let text = format!("after-{i}");
            forward(&proxy.base, &conn, &recipient, &text).await;
            sent.push(text);
        }
        // reconnect through the proxy: everything unacknowledged comes back
        conn.invitation.ws_endpoint = via_proxy_ws;
        let mut ws = conn.websocket().await.unwrap();
        ws.live(true).await.unwrap();
        let got = collect(&mut ws, &recipient, sent.len()).await;
        let mut contents: Vec<String> = got.values().cloned().collect();
        contents.sort();
        let mut want = sent.clone();
        want.sort();
        assert_eq!(contents, want, "nothing lost with the socket's node");
        let ids: Vec<String> = got.keys().cloned().collect();
        let (status, _) = ws
            .call(
                pickup::messages_received(&ids),
                "/status",
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        assert_eq!(status["message_count"], 0, "{status}");
        ws.close().await;
        // acknowledged on whichever node held the socket: the queue is empty cluster-wide
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (st, v) = admin_get(&proxy, "/api/mediator/stats").await;
            if st == 200 && v["queued_messages"] == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "queue not drained: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop((b, c));
    }
}

/// A node paused with SIGSTOP behind the shipped balancer settings (`deploy/balancers/nginx.conf`):
/// it still accepts TCP connections, does not answer its health check, and every request sent
/// through the balancer meanwhile still succeeds (read timeout, then the next node — POSTs
/// included); after SIGCONT the node detects the pause (heartbeat gap), drops its standing,
/// catches up and is ready again. No assertion on durations: the client timeout only guards
/// against a hang (with the test balancer's 300 s read timeout these requests would hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_costs_no_request_behind_the_shipped_balancer_and_catches_up_after_sigcont() {
    let (specs, seeds) = three_specs();
    let http: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let lb = Balancer::start_shipped(http.iter().map(|h| format!("http://{h}")).collect()).await;
    let start = |i: usize| {
        node_builder(&specs[i], &seeds, &lb.url())
            .bind(&http[i])
            .start()
    };
    let (a, b, c) = tokio::join!(start(0), start(1), start(2));
    let guarded = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let offer = |c: reqwest::Client, url: String| async move {
        c.post(format!("{url}/api/issuers/default/offers"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": identity()}))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    assert_eq!(offer(guarded.clone(), lb.url()).await.unwrap(), 201);

    let pid = c.child.as_ref().unwrap().id().to_string();
    let stopped = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    // a stopped process answers no health check (an active check's timeout takes it out)
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .get(c.url("/health/ready"))
        .send()
        .await;
    assert!(probe.is_err(), "a stopped node answered: {probe:?}");
    // through the balancer: every request succeeds, writes and reads, whichever node it is sent to
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(offer(guarded.clone(), lb.url()).await.unwrap());
        let r = guarded
            .get(format!(
                "{}/issuers/default/.well-known/openid-credential-issuer",
                lb.url()
            ))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 200),
        "{statuses:?}"
    );
    // round robin did send requests to the stopped node (answered by the retry on the next one)
    assert!(lb.hits(&format!("http://{}", http[2])) > 0);

    // paused longer than cluster.pause_threshold_ms (2 s) for sure, then SIGCONT
    if let Some(rest) = Duration::from_secs(3).checked_sub(stopped.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    // it saw the pause, dropped its standing, caught up and is ready again
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = c.anon().text("/metrics").await;
        let lost = m
            .lines()
            .find(|l| l.starts_with("idstack_cluster_standing_lost_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if lost >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no pause detected:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.log().contains("paused or stalled"), "{}", c.log());
    let deadline = Instant::now() + Duration::from_secs(60);
    while client()
        .get(c.url("/health/ready"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(offer(guarded.clone(), lb.url()).await.unwrap(), 201);
    drop((a, b, c));
}

pub(crate) fn signal(s: &Server, sig: &str) {
    let pid = s.child.as_ref().unwrap().id().to_string();
    assert!(std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// `cluster.single_use = "consistent"` (the default with three configured nodes): with two of
/// the three nodes stopped (SIGSTOP), the third is a minority. A redemption there is refused with
/// 503 + Retry-After and consumes nothing, while reads and other writes (a new offer) are still
/// served; after SIGCONT the code is redeemed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_single_use_needs_a_majority_and_a_minority_keeps_the_code_usable() {
    let lb = Balancer::start(Vec::new()).await;
    let (_specs, _seeds, a, b, c) = start_three(&lb).await;
    let body = || json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": identity()});
    let (_, view) = admin_get(&c, "/api/cluster").await;
    assert_eq!(
        (
            &view["single_use"],
            &view["configured_nodes"],
            &view["majority"]
        ),
        (&json!("consistent"), &json!(3), &json!(2)),
        "{view}"
    );
    let offer = create_offer(&c, "default", body()).await;
    let code = pre_auth_code(&offer);

    signal(&a, "-STOP");
    signal(&b, "-STOP");
    wait_cluster(&c, "n1 and n2 seen dead", |v| {
        member(v, "n1")["state"] == "dead" && member(v, "n2")["state"] == "dead"
    })
    .await;
    let r = client()
        .post(c.url("/issuers/default/token"))
        .form(&[
            ("grant_type", crate::holder::PRE_AUTH),
            ("pre-authorized_code", code.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let e: Value = r.json().await.unwrap();
    // the client is told the store is unavailable; why (and the cluster's size) is in the log
    assert!(
        e["error_description"]
            .as_str()
            .unwrap()
            .contains("temporarily unavailable"),
        "{e}"
    );
    assert!(c.log().contains("consistent"), "{}", c.log());
    // everything else is still served on the minority side
    let r = c
        .anon()
        .get_resp("/issuers/default/.well-known/openid-credential-issuer")
        .await;
    assert_eq!(r.status(), 200);
    let later = create_offer(&c, "default", body()).await;
    assert!(later["offer_uri"].is_string(), "{later}");

    signal(&a, "-CONT");
    signal(&b, "-CONT");
    wait_cluster(&c, "n1 and n2 alive again", |v| {
        member(v, "n1")["state"] == "alive" && member(v, "n2")["state"] == "alive"
    })
    .await;
    // the code was not consumed: it is redeemed now (503s while the peers catch up are retried)
    let deadline = Instant::now() + Duration::from_secs(60);
    let (st, tok) = loop {
        let (st, tok) = token(&c, "default", &code, None).await;
        if st != 503 || Instant::now() > deadline {
            break (st, tok);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(st, 200, "{tok}");
    for n in [&a, &b, &c] {
        // (a node just resumed may still answer 503 + Retry-After while it catches up: retried)
        let deadline = Instant::now() + Duration::from_secs(60);
        let st = loop {
            let (st, _) = token(n, "default", &code, None).await;
            if st != 503 || Instant::now() > deadline {
                break st;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(st, 400, "redeemed once");
    }
    drop((a, b, c));
}

/// A node stopped (SIGTERM) before it ever served — here waiting for a cluster that never forms
/// — leaves and exits 0, as an orchestrator scaling down or rolling back expects.
#[tokio::test]
async fn a_node_stopped_before_its_cluster_forms_exits_cleanly() {
    let spec = Spec {
        id: "lonely".into(),
        port: free_port(),
    };
    // its one seed never answers: it waits for two members (itself and the seed)
    let seeds = format!("127.0.0.1:{}", free_port());
    let (mut child, _dir, _ready, log) = node_builder(&spec, &seeds, "http://127.0.0.1:9")
        .bind(&format!("127.0.0.1:{}", free_port()))
        .spawn();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !read_log().contains("gossip and RPC up") {
        assert!(std::time::Instant::now() < until, "{}", read_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < until, "no exit\n{}", read_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}\n{}", read_log());
    assert!(
        read_log().contains("stopped before serving"),
        "{}",
        read_log()
    );
}
