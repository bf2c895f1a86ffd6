//! Fault injection (issue 19): three real nodes behind nginx, clients driving real traffic
//! through the balancer while nemeses run, and a checker of the invariants afterwards.
//!
//! Cluster mode (`cluster.single_use` auto = consistent with three nodes), one set of nodes for
//! every nemesis in turn: simultaneous empty start (seeds only), kill -9 and restart on the same
//! data dir, SIGSTOP/SIGCONT, and — when the test runs as root — a real network partition: each
//! node in a network namespace of its own with a veth to a bridge in the root namespace (where
//! nginx and the clients are), the partition made by blackhole routes between the node
//! namespaces, so the balancer still reaches every node. Not root: the nodes run on loopback and
//! the partition is skipped (printed). The Redis backend: three nodes on one Redis, which is
//! killed (kill -9) and restarted under traffic.
//!
//! The workload: pre-authorized codes, each redeemed by three concurrent holders (retrying on
//! 503 as told by Retry-After); verifier sessions, some presented to twice at once by a cloud
//! wallet; DIDComm forwards to a mediated recipient. The checker: every acknowledged write
//! readable from every node, at most one success per code and per session, no code consumed
//! without a token (a refused holder redeems it later), every 202'd forward delivered, all
//! nodes agree on every key (equal anti-entropy digests). No assertion on durations.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde_json::{json, Value};

use crate::api::WalletUser;
use crate::balancer::Balancer;
use crate::cluster::{identity, node_builder_at, query};
use crate::common::{Server, ADMIN_TOKEN};
use crate::holder::{pre_auth_code, PRE_AUTH};

/// A client whose timeout only guards against a hang (a stopped node holds a request until
/// SIGCONT); no assertion is about speed.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap()
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// ------------------------------------------------------------------ network namespaces

/// Three network namespaces, each with a veth to a bridge in the root namespace; names unique
/// per run. Dropped (even when the test panics): namespaces, veths and bridge are deleted.
struct Netns {
    bridge: String,
    ns: Vec<String>,
    /// `10.a.b`: the bridge is `.1`, node i is `.(11 + i)`.
    subnet: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let r = idstack::clock::random_id();
        let tag: String = r
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(5)
            .collect::<String>()
            .to_lowercase();
        let used = std::process::Command::new("ip")
            .args(["-4", "route"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let seed =
            std::process::id() as usize + r.len() * 7 + tag.bytes().map(usize::from).sum::<usize>();
        let subnet = (0..200)
            .map(|i| {
                format!(
                    "10.{}.{}",
                    200 + (seed + i) % 50,
                    (seed / 50 + i * 13) % 250
                )
            })
            .find(|s| !used.contains(&format!("{s}.")))
            .ok_or("no free 10.x.y.0/24")?;
        let mut n = Netns {
            bridge: format!("isb{tag}"),
            ns: Vec::new(),
            subnet,
        };
        let br = n.bridge.clone();
        sh(&["ip", "link", "add", &br, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}.1/24", n.subnet),
            "dev",
            &br,
        ])?;
        sh(&["ip", "link", "set", &br, "up"])?;
        for i in 0..3 {
            let ns = format!("idstack-faults-{tag}-{i}");
            sh(&["ip", "netns", "add", &ns])?;
            n.ns.push(ns.clone());
            let (host, peer) = (format!("ish{tag}{i}"), format!("isn{tag}{i}"));
            sh(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
            ])?;
            sh(&["ip", "link", "set", &peer, "netns", &ns])?;
            sh(&["ip", "link", "set", &host, "master", &br, "up"])?;
            let exec = |a: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", &ns];
                v.extend_from_slice(a);
                sh(&v)
            };
            exec(&["ip", "link", "set", "lo", "up"])?;
            exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", n.ip(i)),
                "dev",
                &peer,
            ])?;
            exec(&["ip", "link", "set", &peer, "up"])?;
        }
        Ok(n)
    }

    fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 11 + i)
    }

    /// Blackhole routes between node `i` and every node in `others` (both directions).
    fn cut(&self, i: usize, others: &[usize], add: bool) {
        let op = if add { "add" } else { "del" };
        for &j in others {
            for (from, to) in [(i, j), (j, i)] {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &self.ns[from],
                    "ip",
                    "route",
                    op,
                    "blackhole",
                    &format!("{}/32", self.ip(to)),
                ])
                .unwrap();
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.ns {
            // deleting a namespace deletes its veth end, and with it the pair
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}

/// Where the three nodes run: their own namespaces (root) or loopback.
struct Placement {
    netns: Option<Netns>,
    http: Vec<String>,
    gossip: Vec<String>,
}

impl Placement {
    fn new() -> Placement {
        let netns = if crate::balancer::is_root() {
            match Netns::create() {
                Ok(n) => Some(n),
                Err(e) => {
                    println!("faults: network namespaces unavailable ({e}): the partition nemesis is SKIPPED");
                    None
                }
            }
        } else {
            println!("faults: not running as root: no network namespaces, the partition nemesis is SKIPPED (run as root to include it)");
            None
        };
        let (http, gossip) = match &netns {
            Some(n) => (
                (0..3).map(|i| format!("{}:8080", n.ip(i))).collect(),
                (0..3).map(|i| format!("{}:7946", n.ip(i))).collect(),
            ),
            None => (
                (0..3)
                    .map(|_| format!("127.0.0.1:{}", crate::cluster::free_port()))
                    .collect(),
                (0..3)
                    .map(|_| format!("127.0.0.1:{}", crate::cluster::free_port()))
                    .collect(),
            ),
        };
        Placement {
            netns,
            http,
            gossip,
        }
    }

    fn builder(&self, i: usize, public: &str) -> crate::common::Builder {
        let b = node_builder_at(
            &format!("n{}", i + 1),
            &self.gossip[i],
            &self.gossip.join(","),
            public,
        )
        .bind(&self.http[i]);
        match &self.netns {
            // the wallet reaches the issuer and verifier through the balancer on the bridge
            Some(n) => b.wrapped(&["ip", "netns", "exec", &n.ns[i]]).env(
                "IDSTACK__HTTP__OUTBOUND__ALLOW",
                &format!("{}.0/24", n.subnet),
            ),
            None => b,
        }
    }
}

// ------------------------------------------------------------------ workload and history

#[derive(Debug, Clone)]
#[allow(dead_code)] // the reasons are read in failure messages (Debug)
enum Outcome {
    /// 2xx.
    Ok,
    /// A definite refusal (status, OAuth error or problem code).
    Refused(u16, String),
    /// No answer, or the balancer's 502/504: may or may not have been executed.
    Unknown(String),
}

/// One request: its `x-fault-id` (to find it in the balancer's log) and outcome.
#[derive(Debug, Clone)]
struct Attempt {
    id: String,
    outcome: Outcome,
}

#[derive(Default)]
struct History {
    /// offer id -> (code, every redemption attempt)
    codes: BTreeMap<String, (String, Vec<Attempt>)>,
    /// acknowledged sessions -> outcomes of the presentations made to them
    sessions: BTreeMap<String, Vec<Outcome>>,
    /// forwards answered 202
    forwards: Vec<String>,
    /// requests the nemeses made fail (per kind), for the report
    unavailable: BTreeMap<&'static str, usize>,
}

struct Workload {
    lb: String,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn outcome(r: Result<reqwest::Response, reqwest::Error>) -> (Outcome, Value) {
    match r {
        Err(e) => (Outcome::Unknown(e.to_string()), Value::Null),
        Ok(r) => {
            let st = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            let o = match st {
                200..=299 => Outcome::Ok,
                502 | 504 => Outcome::Unknown(format!("{st} from the balancer")),
                _ => Outcome::Refused(
                    st,
                    format!(
                        "{}: {}",
                        v["error"]
                            .as_str()
                            .or(v["code"].as_str())
                            .unwrap_or_default(),
                        v["error_description"]
                            .as_str()
                            .or(v["detail"].as_str())
                            .unwrap_or_default()
                    ),
                ),
            };
            (o, v)
        }
    }
}

/// A holder redeeming a code: retries while refused with 503 (Retry-After) or with no answer;
/// stops at a success or a definite refusal. Every attempt is recorded.
async fn redeem(lb: &str, code: &str, until: Instant) -> Vec<Attempt> {
    let c = http();
    let mut out = Vec::new();
    loop {
        let id = idstack::clock::random_id();
        let r = c
            .post(format!("{lb}/issuers/default/token"))
            .header("x-fault-id", &id)
            .form(&[("grant_type", PRE_AUTH), ("pre-authorized_code", code)])
            .send()
            .await;
        let (o, _) = outcome(r).await;
        let retry = matches!(o, Outcome::Unknown(_) | Outcome::Refused(503, _));
        out.push(Attempt { id, outcome: o });
        if !retry || Instant::now() > until {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn bump(h: &Mutex<History>, kind: &'static str) {
    *h.lock().unwrap().unavailable.entry(kind).or_default() += 1;
}

impl Workload {
    fn start(
        lb: String,
        wallet: Option<Arc<WalletUser>>,
        mediated: Option<Arc<Mediated>>,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let mut tasks = Vec::new();
        // codes: offers created through the balancer, each redeemed by three holders at once
        for _ in 0..4 {
            let (lb, stop, h) = (lb.clone(), stop.clone(), history.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let r = http()
                        .post(format!("{lb}/api/issuers/default/offers"))
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&json!({"credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"], "claims": identity()}))
                        .send()
                        .await;
                    let (o, offer) = outcome(r).await;
                    if !matches!(o, Outcome::Ok) {
                        bump(&h, "offer create");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    let code = pre_auth_code(&offer);
                    let id = offer["id"].as_str().unwrap().to_string();
                    let until = Instant::now() + Duration::from_secs(20);
                    let attempts: Vec<Attempt> = futures_util::future::join_all(
                        (0..3).map(|_| redeem(&lb, &code, until)),
                    )
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                    h.lock().unwrap().codes.insert(id, (code, attempts));
                }
            }));
        }
        // sessions: created through the balancer; with a wallet, presented to twice at once
        for _ in 0..2 {
            let (lb, stop, h, wallet) = (lb.clone(), stop.clone(), history.clone(), wallet.clone());
            tasks.push(tokio::spawn(async move {
                let proxy = proxy_server(&lb);
                while !stop.load(Ordering::SeqCst) {
                    let r = http()
                        .post(format!("{lb}/api/verifiers/default/sessions"))
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&query())
                        .send()
                        .await;
                    let (o, sess) = outcome(r).await;
                    if !matches!(o, Outcome::Ok) {
                        bump(&h, "session create");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    let id = sess["id"].as_str().unwrap().to_string();
                    let mut presented = Vec::new();
                    if let Some(u) = &wallet {
                        let req = sess["authorization_request"].as_str().unwrap();
                        let body = json!({"request": req});
                        let (x, y) = tokio::join!(
                            u.call(&proxy, "/exchange/present", body.clone()),
                            u.call(&proxy, "/exchange/present", body)
                        );
                        for (st, v) in [x, y] {
                            presented.push(match st {
                                200 => Outcome::Ok,
                                502 | 504 => Outcome::Unknown(st.to_string()),
                                _ => Outcome::Refused(
                                    st,
                                    v["code"].as_str().unwrap_or_default().to_string(),
                                ),
                            });
                        }
                    }
                    h.lock().unwrap().sessions.insert(id, presented);
                }
            }));
        }
        // forwards to a mediated recipient
        if let Some(m) = mediated {
            let (lb, stop, h) = (lb.clone(), stop.clone(), history.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let text = format!("fwd-{i}");
                    if m.forward(&lb, &text).await {
                        h.lock().unwrap().forwards.push(text);
                    } else {
                        bump(&h, "forward");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }));
        }
        Workload {
            lb,
            stop,
            history,
            tasks,
        }
    }

    async fn finish(self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let _ = &self.lb;
        Arc::try_unwrap(self.history)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// The balancer as a [`Server`] for the shared flow helpers.
fn proxy_server(lb: &str) -> Server {
    Server {
        child: None,
        base: lb.to_string(),
        dir: tempfile::tempdir().unwrap(),
        log: std::path::PathBuf::new(),
    }
}

// ------------------------------------------------------------------ mediator

#[cfg(feature = "mediator")]
struct Mediated {
    conn: idstack::didcomm::client::MediatorConnection,
    recipient: idstack::didcomm::client::AgentKey,
}
#[cfg(not(feature = "mediator"))]
struct Mediated;

#[cfg(feature = "mediator")]
impl Mediated {
    async fn setup(lb: &str) -> Option<Arc<Mediated>> {
        use idstack::didcomm::client::{AgentKey, MediatorConnection};
        let r: Value = http()
            .get(format!("{lb}/api/mediator/invitation"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let inv = r["invitation_url"].as_str().unwrap().to_string();
        let mut conn = MediatorConnection::connect(reqwest::Client::new(), &inv, "faults")
            .await
            .unwrap();
        assert_eq!(conn.mediate().await.unwrap().len(), 1);
        let recipient = AgentKey::generate();
        assert_eq!(
            conn.keylist_update(&recipient.verkey, "add").await.unwrap(),
            "success"
        );
        Some(Arc::new(Mediated { conn, recipient }))
    }

    async fn forward(&self, lb: &str, text: &str) -> bool {
        use idstack::didcomm::client;
        let sender = client::AgentKey::generate();
        let inner = sender
            .pack(&client::basic_message(text), &self.recipient.verkey_bytes())
            .unwrap();
        let env =
            client::forward_envelope(&inner, &self.recipient.verkey, &self.conn.routing_keys[0])
                .unwrap();
        http()
            .post(format!("{lb}/didcomm"))
            .header("content-type", client::CONTENT_TYPE)
            .body(env)
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 202)
    }

    /// Every message queued for the recipient, picked up through the balancer (pickup 2.0
    /// delivery requests over a WebSocket, each batch acknowledged) until none is left.
    async fn delivered(&self, want: &[String]) -> std::collections::BTreeSet<String> {
        use idstack::didcomm::client::pickup;
        let _ = want;
        let mut got = std::collections::BTreeSet::new();
        let mut ws = self.conn.websocket().await.unwrap();
        loop {
            let (r, others) = ws
                .call(pickup::delivery_request(100), "", Duration::from_secs(20))
                .await
                .unwrap();
            let mut ids = Vec::new();
            for m in std::iter::once(r).chain(others) {
                if m["@type"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("/delivery")
                {
                    for (id, env) in pickup::attachments(&m) {
                        let (msg, _) = self.recipient.unpack(env.to_string().as_bytes()).unwrap();
                        got.insert(msg["content"].as_str().unwrap().to_string());
                        ids.push(id);
                    }
                }
            }
            if ids.is_empty() {
                break;
            }
            ws.call(
                pickup::messages_received(&ids),
                "/status",
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        }
        ws.close().await;
        got
    }
}

#[cfg(not(feature = "mediator"))]
impl Mediated {
    async fn setup(_lb: &str) -> Option<Arc<Mediated>> {
        None
    }
    async fn forward(&self, _lb: &str, _text: &str) -> bool {
        false
    }
    async fn delivered(&self, _want: &[String]) -> std::collections::BTreeSet<String> {
        Default::default()
    }
}

// ------------------------------------------------------------------ checker

async fn admin_get(url: &str) -> (u16, Value) {
    match http().get(url).bearer_auth(ADMIN_TOKEN).send().await {
        Ok(r) => {
            let st = r.status().as_u16();
            (st, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// The cluster has settled: every node ready, three live caught-up members, nothing left
/// provisional, and equal digests (anti-entropy finished). Bounded wait.
async fn settled(nodes: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut views = Vec::new();
        for n in nodes {
            let ready = http()
                .get(format!("{n}/health/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            let (_, v) = admin_get(&format!("{n}/api/cluster")).await;
            views.push((ready, v));
        }
        let ok = views.iter().all(|(ready, v)| {
            *ready
                && v["caught_up"] == true
                && v["live"] == 3
                && v["provisional"] == 0
                && v["digest"] == views[0].1["digest"]
        });
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never agreed on every key: {}",
            Value::from(
                views
                    .iter()
                    .map(|(r, v)| json!({"ready": r, "node": v["node_id"], "digest": v["digest"], "records": v["records"], "provisional": v["provisional"], "live": v["live"], "caught_up": v["caught_up"]}))
                    .collect::<Vec<_>>()
            )
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Asserts the invariants on `h` against the nodes (`nodes`: their base URLs) and the balancer.
/// `balancer`: the nginx in front (its log tells which requests it sent to a second node after
/// the first failed — executed on the first maybe, so their answer says nothing definite).
async fn check(
    label: &str,
    h: &History,
    balancer: &Balancer,
    nodes: &[String],
    mediated: Option<&Mediated>,
) {
    let lb = &balancer.url();
    let retried = balancer.retried_ids();
    let mut report = BTreeMap::<&str, usize>::new();
    // every acknowledged write readable from every node, the same there
    for (id, _) in h.codes.iter() {
        let mut states = Vec::new();
        for n in nodes {
            let (st, v) = admin_get(&format!("{n}/api/issuers/default/offers/{id}")).await;
            assert_eq!(
                st, 200,
                "{label}: acknowledged offer {id} not readable on {n}: {v}"
            );
            states.push(v["state"].clone());
        }
        assert!(
            states.iter().all(|s| *s == states[0]),
            "{label}: offer {id}: {states:?}"
        );
    }
    for (id, presented) in h.sessions.iter() {
        let mut states = Vec::new();
        for n in nodes {
            let (st, v) = admin_get(&format!("{n}/api/verifiers/default/sessions/{id}")).await;
            assert_eq!(
                st, 200,
                "{label}: acknowledged session {id} not readable on {n}: {v}"
            );
            states.push(v["state"].clone());
        }
        assert!(
            states.iter().all(|s| *s == states[0]),
            "{label}: session {id}: {states:?}"
        );
        // at most one success per session, and a success is what every node holds
        let wins = presented
            .iter()
            .filter(|o| matches!(o, Outcome::Ok))
            .count();
        assert!(
            wins <= 1,
            "{label}: session {id} completed {wins} times: {presented:?}"
        );
        if wins == 1 {
            assert_eq!(states[0], "completed", "{label}: session {id}");
            *report
                .entry("sessions presented (one success)")
                .or_default() += 1;
        }
    }
    report.insert("sessions acknowledged", h.sessions.len());
    // codes: at most one success; none burnt
    for (id, (code, attempts)) in h.codes.iter() {
        let attempts: Vec<Outcome> = attempts
            .iter()
            .map(|a| match &a.outcome {
                Outcome::Refused(..) if retried.contains(&a.id) => {
                    Outcome::Unknown(format!("{:?} after a balancer retry", a.outcome))
                }
                // the node itself says so: a forwarded compare-and-swap whose primary did not
                // answer (its rollback may not complete while that primary stays unreachable)
                Outcome::Refused(503, e) if e.contains("outcome is unknown") => {
                    Outcome::Unknown(format!("{:?}", a.outcome))
                }
                o => o.clone(),
            })
            .collect();
        let wins = attempts.iter().filter(|o| matches!(o, Outcome::Ok)).count();
        assert!(
            wins <= 1,
            "{label}: code of offer {id} redeemed {wins} times: {attempts:?}"
        );
        let (_, offer) = admin_get(&format!("{}/api/issuers/default/offers/{id}", nodes[0])).await;
        let later: Vec<Outcome> = redeem(lb, code, Instant::now() + Duration::from_secs(30))
            .await
            .into_iter()
            .map(|a| a.outcome)
            .collect();
        let last = later.last().cloned().unwrap();
        match (&last, wins) {
            (Outcome::Ok, 0) => *report.entry("codes refused, then redeemed later").or_default() += 1,
            (Outcome::Ok, _) => panic!("{label}: code of offer {id} redeemed again after a success: {attempts:?} then {later:?}"),
            (Outcome::Refused(400, e), _) if e.starts_with("invalid_grant:") => {
                let routes: Vec<String> = h.codes[id]
                    .1
                    .iter()
                    .map(|a| balancer.upstreams_of(&a.id))
                    .collect();
                // refused for good: only ever because the offer was redeemed (it names a token).
                // Redemption is one store operation (the offer's transition naming a token stored
                // before it), so no failure or dead node leaves an `Offered` offer whose code is
                // refused: that would be a burnt code.
                assert!(
                    offer["state"] != "offered",
                    "{label}: code of offer {id} BURNT (refused, offer still redeemable): {attempts:?} (sent to {routes:?}) then {later:?}; offer {offer}"
                );
                if wins == 0 {
                    assert!(
                        attempts.iter().any(|o| matches!(o, Outcome::Unknown(_))),
                        "{label}: code of offer {id} consumed with a token no holder was answered with: {attempts:?}"
                    );
                    *report.entry("codes redeemed, answer lost (no reply)").or_default() += 1;
                } else {
                    *report.entry("codes redeemed once").or_default() += 1;
                }
            }
            _ => panic!("{label}: code of offer {id}: final redemption {later:?} after {attempts:?}"),
        }
        let refused_503 = attempts
            .iter()
            .filter(|o| matches!(o, Outcome::Refused(503, _)))
            .count();
        *report
            .entry("redemptions answered 503 (then retried)")
            .or_default() += refused_503;
    }
    report.insert("codes", h.codes.len());
    // every 202'd forward delivered
    if let Some(m) = mediated {
        let got = m.delivered(&h.forwards).await;
        let missing: Vec<&String> = h.forwards.iter().filter(|f| !got.contains(*f)).collect();
        assert!(
            missing.is_empty(),
            "{label}: forwards answered 202 never delivered: {missing:?}"
        );
        report.insert("forwards delivered", h.forwards.len());
    }
    println!(
        "faults [{label}]: {report:?}; failed during nemeses: {:?}",
        h.unavailable
    );
}

fn signal(pid: u32, sig: &str) {
    sh(&["kill", sig, &pid.to_string()]).unwrap();
}

// ------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_under_kill_9_pause_and_partition_keeps_every_invariant() {
    let place = Placement::new();
    // the nodes reach the balancer (their public URL) on the bridge, or on loopback
    let host = place
        .netns
        .as_ref()
        .map_or("127.0.0.1".to_string(), |n| format!("{}.1", n.subnet));
    let lb = Balancer::start_on(
        &host,
        place.http.iter().map(|h| format!("http://{h}")).collect(),
    )
    .await;
    let public = lb.url();
    // simultaneous empty start, seeds only: one first-start state
    let (a, b, c) = tokio::join!(
        place.builder(0, &public).start(),
        place.builder(1, &public).start(),
        place.builder(2, &public).start()
    );
    let mut nodes = vec![a, b, c];
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    crate::redis_backend::first_start_state(&nodes).await;
    // formed before the workload: three live caught-up members everywhere (a loaded machine can
    // still be gossiping the last join when the nodes are ready)
    settled(&bases).await;

    let proxy = proxy_server(&public);
    let user = WalletUser::signup(&proxy, "faults@example.org").await;
    crate::cluster::receive(&proxy, &user).await;
    let mediated = Mediated::setup(&public).await;
    let work = Workload::start(public.clone(), Some(Arc::new(user)), mediated.clone());
    let step = |what: &str| println!("faults: {what}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    step("kill -9 n3");
    let dir = crate::cluster::kill9(nodes.pop().unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    step("restart n3 on its data dir");
    nodes.push(place.builder(2, &public).dir(dir).start().await);
    tokio::time::sleep(Duration::from_secs(2)).await;

    step("SIGSTOP n2");
    let pid = nodes[1].child.as_ref().unwrap().id();
    signal(pid, "-STOP");
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal(pid, "-CONT");
    step("SIGCONT n2");
    crate::redis_backend::wait_ready(&bases[1], 200).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    if let Some(ns) = &place.netns {
        step("partition {n1} | {n2, n3}");
        ns.cut(0, &[1, 2], true);
        tokio::time::sleep(Duration::from_secs(6)).await;
        ns.cut(0, &[1, 2], false);
        step("partition healed");
        tokio::time::sleep(Duration::from_secs(3)).await;
    } else {
        println!("faults: partition nemesis SKIPPED (needs root for network namespaces)");
    }
    let history = work.finish().await;
    let verdict = std::panic::AssertUnwindSafe(async {
        settled(&bases).await;
        check("cluster", &history, &lb, &bases, mediated.as_deref()).await;
        settled(&bases).await;
    })
    .catch_unwind()
    .await;
    // the nodes' logs, passed or failed (IDSTACK_FAULTS_LOGS: a directory)
    if let Ok(d) = std::env::var("IDSTACK_FAULTS_LOGS") {
        for (i, n) in nodes.iter().enumerate() {
            let _ = std::fs::write(format!("{d}/n{}.log", i + 1), n.log());
        }
    }
    if let Err(p) = verdict {
        std::panic::resume_unwind(p);
    }
    drop(nodes);
    drop(lb);
    drop(place);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_backend_under_a_redis_restart_keeps_every_invariant() {
    let mut redis = crate::common::RedisServer::start(true);
    let d = crate::redis_backend::deployment_on(3, &redis.url()).await;
    let public = format!("http://{}", d.lb.addr);
    let bases: Vec<String> = d.nodes.iter().map(|n| n.base.clone()).collect();
    crate::redis_backend::first_start_state(&d.nodes).await;
    let mediated = Mediated::setup(&public).await;
    let work = Workload::start(public.clone(), None, mediated.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("faults: kill -9 redis-server");
    redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    println!("faults: redis-server restarted (append-only file)");
    for b in &bases {
        crate::redis_backend::wait_ready(b, 200).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let history = work.finish().await;
    check("redis", &history, &d.lb, &bases, mediated.as_deref()).await;
    drop(d);
}
