//! One cluster node: membership (chitchat), the internal RPC client, and the replication
//! protocol on top of the local [`Replica`]: synchronous replication of writes, compare-and-swap
//! at the key's primary, read fall-back to peers, and anti-entropy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use chitchat::Chitchat;
use futures_util::stream::{FuturesUnordered, StreamExt};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth;
use super::replica::{intern, is_insert_only, is_local_keyspace, Replica};
use super::ring;
use super::version::Versioned;
use super::wire::*;
use crate::bus::LocalBus;
use crate::store::{Cas, StoreError, StoreResult};

pub struct NodeSettings {
    pub node_id: String,
    pub cluster_id: String,
    pub gossip_listen: SocketAddr,
    pub gossip_advertise: SocketAddr,
    pub rpc_listen: SocketAddr,
    pub rpc_advertise: String,
    pub seeds: Vec<String>,
    pub replication_factor: usize,
    pub bootstrap_expect: usize,
    pub join_timeout: Duration,
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    pub rpc_timeout: Duration,
    pub anti_entropy_interval: Duration,
    pub roles: Vec<String>,
    /// A gap this long between two heartbeats of this node (a SIGSTOP, a VM stall, a stalled
    /// event loop) makes it give up its standing: it catches up again before acting as a primary.
    pub pause_threshold: Duration,
    /// `cluster.single_use` resolved: single-use transitions need a majority of the configured
    /// nodes ([`SINGLE_USE_KEYSPACES`]).
    pub single_use_consistent: bool,
    /// `cluster.updates` resolved: every other update of an existing record needs a majority too.
    pub updates_consistent: bool,
    /// The data protocol this node speaks ([`super::DATA_PROTOCOL`]; another value only in tests).
    pub protocol: u32,
    /// This incarnation's chitchat generation (new on every start): RPC requests to this node
    /// must be signed for it ([`auth::Target::Incarnation`]).
    pub generation: u64,
}

/// The per-key lock a consistent transition holds at its executor from its majority read to its
/// decision ([`Node::cas_local`]): one mutex per key with transitions in progress (exact, not
/// striped — a key whose transitions wait must not hold up unrelated keys), dropped from the map
/// once nobody holds or waits for it.
type TransitionLocks = Mutex<HashMap<(&'static str, String), Weak<tokio::sync::Mutex<()>>>>;

/// Keyspaces whose records are consumed once: pre-authorized and authorization codes, offers
/// (their redemption: `Offered` → `TokenIssued`), c_nonces, access tokens (credential
/// issuance), verifier sessions (the result) — and the issuer's
/// counters (status-list index blocks), where a lost increment would give two credentials one
/// status index. Their compare-and-swap transitions (an existing record replaced or consumed) are
/// what `cluster.single_use = "consistent"` puts under a majority (with the inserts of
/// [`EXCLUSIVE_INSERT_KEYSPACES`]); inserts of random-id records are not.
pub const SINGLE_USE_KEYSPACES: [&str; 6] = [
    "issuer_codes",
    "issuer_offers",
    "issuer_nonces",
    "issuer_tokens",
    "verifier_sessions",
    "issuer_counters",
];

/// Keyspaces whose records are named, not random, and must be **created once**: an insert there
/// (a compare-and-swap from no value) decides something, so in `consistent` mode it runs the
/// same two rounds as an update, on "no version" ([`Node::cas_consistent`]) — two nodes that
/// both believe they are a key's primary (membership views disagree after a join, a death, a
/// flapping failure detector) cannot both create it. Tenants and their signing keys, the mediator
/// and wallet keys and the mdoc PKI (two creators would leave a tenant record naming one key and
/// the key record holding the other — a tenant that can never sign again); the use of a c_nonce
/// (its marker: a second insert is a second issuance on one nonce); an issuer's status-list
/// counter (a second creation at 0 after blocks were reserved hands indices out twice); a status
/// list's first write (two first writes of one list keep one revocation); an email's account; a
/// recipient key's route (whoever holds it gets the key's messages) and the mediator's default
/// invitation. Inserts elsewhere (random ids) stay one write at the primary. (Data protocol 3:
/// nodes of earlier releases insert with one write, so this holds once every node runs it.)
pub const EXCLUSIVE_INSERT_KEYSPACES: [&str; 13] = [
    "issuer_tenants",
    "issuer_keys",
    "verifier_tenants",
    "verifier_keys",
    "mediator_keys",
    "wallet_keys",
    "mdoc_pki",
    "issuer_nonces",
    "issuer_counters",
    "issuer_status",
    "wallet_emails",
    "mediator_routes",
    "mediator_invitations",
];

/// A forwarded consistent compare-and-swap waits this many RPC timeouts for its primary's
/// answer: the executor reads the key from every live peer not suspect and awaits its decision
/// at each of them (one timeout each at most, for a peer stalled since it last answered); its
/// prepare returns once a majority has it.
const FORWARDED_TRANSITION_TIMEOUTS: u32 = 2;

/// How many times an executor makes a consistent transition again after every peer it was sent
/// to answered and refused it (a competing transition, or a newer version, there: membership
/// views that disagree for a moment make two nodes execute transitions of one key), within one
/// RPC timeout of the first attempt, before it answers 503.
const COMPETING_RETRIES: u32 = 5;

/// A consistent transition that was not made: why, and whether it is **held nowhere** — refused
/// by this node, or by every peer it was sent to (each holding a competing transition), so no
/// node ever prepared it and it can never be committed: it may be made again at once.
struct Unmade {
    error: StoreError,
    held_nowhere: bool,
}

impl From<StoreError> for Unmade {
    fn from(error: StoreError) -> Self {
        Unmade {
            error,
            held_nowhere: false,
        }
    }
}

/// Calls at most in flight in the background (replication past what a write waits for,
/// decisions) to one suspect peer; more are not sent (anti-entropy and the peer's own settling
/// of undecided transitions cover them). A peer whose RPC hangs would otherwise hold one
/// connection per transition and write for an RPC timeout each.
const MAX_BACKGROUND_TO_SUSPECT: usize = 32;

/// Peers as (node id, RPC address).
type Peers = Vec<(String, String)>;

/// A member as this node sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Member {
    pub node_id: String,
    /// `alive` or `dead` (per the failure detector).
    pub state: &'static str,
    pub roles: Vec<String>,
    /// Serving requests (joined, caught up, roles initialised).
    pub ready: bool,
    /// Has pulled what it missed from its peers since it (re)started.
    pub caught_up: bool,
    pub rpc_addr: String,
    pub gossip_addr: String,
    pub generation: u64,
    /// Its data protocol ([`super::DATA_PROTOCOL`]); 0 for a node that gossips none.
    pub protocol: u32,
}

/// The request MACs a call to a peer carries, after the peer's gossiped data protocol.
#[derive(Debug, Clone, Copy)]
enum SignFor {
    /// Protocol 1: the whole request without a target ([`auth::sign_legacy`]).
    Legacy,
    /// Protocol 2: both MACs for the peer's id ([`auth::Target::Node`]).
    Node,
    /// Protocol 3 on: both MACs for the peer's id and this generation of it.
    Incarnation(u64),
}

/// A signed answer to one request.
enum Sent {
    Answer(actix_web::web::Bytes),
    /// The peer's signed refusal: the request named another of its incarnations; this is its
    /// current generation.
    OtherIncarnation(u64),
}

pub struct ClusterMetrics {
    pub replication_seconds: Histogram,
    pub rpc_errors: IntCounterVec,
    pub repairs: IntCounter,
    pub cas_forwarded: IntCounter,
    pub competing_retries: IntCounter,
    pub members_live: IntGauge,
    pub gossip_dropped: IntCounter,
    pub standing_lost: IntCounter,
    pub held_back: IntGauge,
}

impl ClusterMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            replication_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "cluster_replication_seconds",
                    "time to get a write acknowledged by the synchronous replicas",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            rpc_errors: IntCounterVec::new(
                Opts::new(
                    "cluster_rpc_errors_total",
                    "failed internal RPC calls by operation",
                ),
                &["op"],
            )?,
            repairs: IntCounter::new(
                "cluster_anti_entropy_repairs_total",
                "records pulled from peers by anti-entropy",
            )?,
            cas_forwarded: IntCounter::new(
                "cluster_cas_forwarded_total",
                "compare-and-swap calls forwarded to the key's primary",
            )?,
            competing_retries: IntCounter::new(
                "cluster_competing_retries_total",
                "consistent transitions made again after every peer refused them for a competing one",
            )?,
            members_live: IntGauge::new("cluster_members_live", "live cluster members")?,
            held_back: IntGauge::new(
                "cluster_held_back",
                "1 while a live member of an older data protocol holds this node back (a rolling upgrade): it does not serve",
            )?,
            gossip_dropped: IntCounter::new(
                "cluster_gossip_dropped_total",
                "gossip datagrams dropped: not sealed under this cluster's key, stale, or replayed",
            )?,
            standing_lost: IntCounter::new(
                "cluster_standing_lost_total",
                "times this node detected a pause or stall and caught up again before acting as a primary",
            )?,
        })
    }

    pub fn register(&self, r: &prometheus::Registry) -> Result<(), prometheus::Error> {
        r.register(Box::new(self.replication_seconds.clone()))?;
        r.register(Box::new(self.rpc_errors.clone()))?;
        r.register(Box::new(self.repairs.clone()))?;
        r.register(Box::new(self.cas_forwarded.clone()))?;
        r.register(Box::new(self.competing_retries.clone()))?;
        r.register(Box::new(self.members_live.clone()))?;
        r.register(Box::new(self.gossip_dropped.clone()))?;
        r.register(Box::new(self.standing_lost.clone()))?;
        r.register(Box::new(self.held_back.clone()))?;
        Ok(())
    }
}

/// Anti-entropy bookkeeping per peer, for `/api/cluster`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct PeerSync {
    /// Unix ms of the last completed anti-entropy round with this peer.
    pub last_sync_ms: Option<i64>,
    /// Records this node was missing (or had older) at that round, i.e. replication lag in records.
    pub last_repaired: u64,
}

#[derive(Debug)]
pub enum RpcError {
    /// Sent, but no answer came (a timeout, a connection lost mid-way, an answer not signed by
    /// a member): the peer may be down, or may have acted on it.
    Transport(String),
    /// Never reached the peer (no connection could be made): it did not act on it.
    Unsent(String),
    /// The peer answered with an error.
    Remote(String),
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::Transport(e) => write!(f, "transport: {e}"),
            RpcError::Unsent(e) => write!(f, "unreachable: {e}"),
            RpcError::Remote(e) => write!(f, "remote: {e}"),
        }
    }
}

pub struct Node {
    pub settings: NodeSettings,
    pub replica: Arc<Replica>,
    pub chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    pub metrics: ClusterMetrics,
    pub local_bus: Arc<LocalBus>,
    pub verifier: auth::Verifier,
    rpc_key: [u8; 32],
    http: reqwest::Client,
    members: RwLock<Arc<Vec<Member>>>,
    suspects: Mutex<HashSet<String>>,
    /// Per suspect peer, the slots of [`MAX_BACKGROUND_TO_SUSPECT`].
    background: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    caught_up: AtomicBool,
    sync: Mutex<BTreeMap<String, PeerSync>>,
    /// Monotonic origin of `last_beat_ms`.
    started: Instant,
    /// When the heartbeat last ran (ms since `started`, monotonic: counts while the process is stopped).
    last_beat_ms: AtomicU64,
    /// A catch-up after a detected gap is running.
    recovering: AtomicBool,
    /// Fewer than a majority of the configured nodes were live at the last heartbeat.
    cut_off: AtomicBool,
    /// Why writes cannot reach their replicas (`None`: they can).
    write_block: Mutex<Option<String>>,
    /// The node's HTTP server runs ([`Node::set_serving`]); it gossips `ready` while this holds
    /// and no older node holds it back.
    serving: AtomicBool,
    /// The `ready` value last gossiped (held while it is published, so two callers cannot
    /// publish in the wrong order).
    gossiped_ready: tokio::sync::Mutex<Option<bool>>,
    /// This node's own writes refused because older nodes held it back ([`Node::held_back`]).
    pub held_back_refusals: AtomicU64,
    /// Consistent transitions of one key executed here run one after the other: a second one
    /// waits for the first's decision instead of finding its provisional copy and failing.
    transitions: TransitionLocks,
    /// Tests: answer first-round (prepare) requests only after this many ms — accepted, but the
    /// acknowledgement arrives after the executor's RPC timeout.
    #[cfg(test)]
    pub stall_prepares_ms: AtomicU64,
}

impl Node {
    pub fn new(
        settings: NodeSettings,
        replica: Arc<Replica>,
        chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
        rpc_key: [u8; 32],
        local_bus: Arc<LocalBus>,
        metrics: ClusterMetrics,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // straight to the peer: never through an HTTP(S)_PROXY from the environment
            .no_proxy()
            .connect_timeout(settings.rpc_timeout)
            .timeout(settings.rpc_timeout)
            .pool_idle_timeout(Duration::from_secs(20))
            .build()?;
        Ok(Self {
            metrics,
            verifier: auth::Verifier::new(rpc_key, &settings.node_id, settings.generation),
            settings,
            replica,
            chitchat,
            local_bus,
            rpc_key,
            http,
            members: RwLock::default(),
            suspects: Mutex::default(),
            background: Mutex::default(),
            caught_up: AtomicBool::new(false),
            sync: Mutex::default(),
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(1 << 32),
            recovering: AtomicBool::new(false),
            cut_off: AtomicBool::new(false),
            write_block: Mutex::default(),
            serving: AtomicBool::new(false),
            gossiped_ready: tokio::sync::Mutex::default(),
            held_back_refusals: AtomicU64::new(0),
            transitions: Mutex::default(),
            #[cfg(test)]
            stall_prepares_ms: AtomicU64::new(0),
        })
    }

    pub fn id(&self) -> &str {
        &self.settings.node_id
    }

    pub fn now_ms(&self) -> i64 {
        self.replica.clock.now_ms()
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }

    pub async fn set_gossip(&self, key: &str, value: &str) {
        self.chitchat.lock().await.self_node_state().set(key, value);
    }

    /// The HTTP server runs (or no longer does): see [`Node::gossip_ready`].
    pub async fn set_serving(&self, on: bool) {
        self.serving.store(on, Ordering::SeqCst);
        self.gossip_ready().await;
    }

    /// Gossips `ready`: true while the node serves and no older node holds it back (peers and
    /// `/api/cluster` then see it as not serving, as its `/health/ready` says).
    pub async fn gossip_ready(&self) {
        let mut last = self.gossiped_ready.lock().await;
        let ready = self.serving.load(Ordering::SeqCst) && self.held_back().is_none();
        if last.replace(ready) != Some(ready) {
            self.set_gossip("ready", if ready { "true" } else { "false" })
                .await;
        }
    }

    pub async fn set_caught_up(&self) {
        self.last_beat_ms.store(self.mono_ms(), Ordering::SeqCst);
        self.caught_up.store(true, Ordering::SeqCst);
        self.set_gossip("caught_up", "true").await;
    }

    /// Signature of an RPC response (see [`auth::sign_response`]).
    pub fn sign_response(&self, path: &str, nonce: &str, status: u16, body: &[u8]) -> String {
        auth::sign_response(&self.rpc_key, path, nonce, status, body)
    }

    // ---------------------------------------------------------------- standing

    /// Monotonic ms, counted from an origin well before this node started (so a stamp moved back
    /// by a pause threshold never underflows).
    fn mono_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX / 2)
            .saturating_add(1 << 32)
    }

    /// Milliseconds since the heartbeat last ran.
    fn since_beat_ms(&self) -> u64 {
        self.mono_ms()
            .saturating_sub(self.last_beat_ms.load(Ordering::SeqCst))
    }

    fn gap_exceeded(&self, since_ms: u64) -> bool {
        u128::from(since_ms) > self.settings.pause_threshold.as_millis()
    }

    /// The heartbeat (every gossip interval): a gap longer than `pause_threshold` since the last
    /// one means this process was paused or stalled — peers may have given up on it, stood in as
    /// primary for its keys and written what it has not seen — so it drops its standing first.
    pub fn beat(self: &Arc<Self>) {
        let since = self.since_beat_ms();
        if self.gap_exceeded(since) {
            self.lose_standing(since);
        }
        // Cut off from a majority (a partition, or most peers down) and back: the other side
        // may have written what this node has not seen, and this node may be the first choice
        // for those keys again. It catches up before acting as a primary, as after a pause.
        let members = self.members();
        if members.len() >= 2 {
            if self.live_count() < self.majority() {
                if self.is_caught_up() {
                    self.cut_off.store(true, Ordering::SeqCst);
                }
            } else if self.cut_off.swap(false, Ordering::SeqCst) {
                tracing::warn!("cluster: reached a majority again after being cut off");
                self.lose_standing(0);
            }
        }
        self.last_beat_ms.store(self.mono_ms(), Ordering::SeqCst);
    }

    /// Tests: as if the process had been stopped for longer than the pause threshold just now.
    #[cfg(test)]
    pub fn pretend_paused(&self) {
        let back = u64::try_from(self.settings.pause_threshold.as_millis()).unwrap_or(0) + 1;
        // the heartbeat stamp as it was before the pause
        self.last_beat_ms
            .store(self.mono_ms().saturating_sub(back), Ordering::SeqCst);
    }

    /// The same check where it matters without waiting for the heartbeat to run: before this node
    /// executes a compare-and-swap (the heartbeat task may not have been scheduled yet after a
    /// SIGCONT).
    pub fn check_standing(self: &Arc<Self>) {
        let since = self.since_beat_ms();
        if self.gap_exceeded(since) {
            self.lose_standing(since);
        }
    }

    /// Not caught up any more (in memory at once, in gossip soon): primaries are chosen among
    /// caught-up members, a compare-and-swap here first pulls the key's newest version from the
    /// peers, readiness is 503; a full anti-entropy round with every live peer restores it.
    fn lose_standing(self: &Arc<Self>, gap_ms: u64) {
        if !self.caught_up.swap(false, Ordering::SeqCst) {
            return;
        }
        self.metrics.standing_lost.inc();
        tracing::warn!(
            gap_ms,
            "cluster: this node was paused or stalled (or cut off); catching up before acting as a primary again"
        );
        if self.recovering.swap(true, Ordering::SeqCst) {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            node.set_gossip("caught_up", "false").await;
            let until = Instant::now() + Duration::from_secs(60);
            loop {
                node.refresh_members().await;
                if node.anti_entropy_round().await || Instant::now() > until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            node.recovering.store(false, Ordering::SeqCst);
            node.set_caught_up().await;
            tracing::info!("cluster: caught up again after the pause");
        });
    }

    /// Sends an empty batch to every live peer: writes can reach their replicas when at least one
    /// acknowledges (the same rule [`Node::replicate`] fails by).
    pub async fn probe_writes(self: &Arc<Self>) {
        let peers = self.live_peers();
        let need = self.replication_factor(peers.len() + 1).saturating_sub(1);
        if peers.is_empty() || need == 0 {
            self.set_write_block(None);
            return;
        }
        let req = ApplyReq {
            records: Vec::new(),
        };
        let calls = peers
            .iter()
            .map(|(id, addr)| self.call::<_, ApplyResp>(id, addr, PATH_APPLY, &req));
        let acks = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count();
        self.set_write_block((acks == 0).then(|| {
            format!(
                "writes cannot reach their replicas: none of the {} live peers answers internal RPC",
                peers.len()
            )
        }));
    }

    fn set_write_block(&self, reason: Option<String>) {
        if let Ok(mut w) = self.write_block.lock() {
            *w = reason;
        }
    }

    /// Why this node must not be sent traffic now (empty: it may): paused or stalled, catching
    /// up, writes that cannot reach a replica, or a key record replaced under what it holds in memory.
    pub fn health(&self) -> Vec<String> {
        let mut out = Vec::new();
        let since = self.since_beat_ms();
        if self.gap_exceeded(since) {
            out.push(format!("heartbeat late by {since} ms (paused or stalled)"));
        }
        if !self.is_caught_up() {
            out.push("catching up".to_string());
        }
        if let Some(w) = self.write_block.lock().ok().and_then(|w| w.clone()) {
            out.push(w);
        }
        if let Some(why) = self.held_back() {
            out.push(why);
        }
        for k in self.replica.replaced_keys() {
            out.push(format!(
                "key record {k} was replaced by the one created first in the cluster; restart this node to use it"
            ));
        }
        out
    }

    // ---------------------------------------------------------------- membership

    /// Rebuilds the member snapshot from chitchat's state.
    pub async fn refresh_members(&self) {
        let snapshot = {
            let cc = self.chitchat.lock().await;
            let live: std::collections::HashSet<_> = cc.live_nodes().cloned().collect();
            let mut by_id: BTreeMap<String, Member> = BTreeMap::new();
            for (id, st) in cc.node_states() {
                let Some(rpc) = st.get("rpc") else { continue };
                let m = Member {
                    node_id: id.node_id.to_string(),
                    state: if live.contains(id) { "alive" } else { "dead" },
                    roles: st
                        .get("roles")
                        .unwrap_or_default()
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                    ready: st.get("ready") == Some("true"),
                    caught_up: st.get("caught_up") == Some("true"),
                    rpc_addr: rpc.to_string(),
                    gossip_addr: id.gossip_advertise_addr.to_string(),
                    generation: id.generation_id,
                    protocol: st.get("protocol").and_then(|p| p.parse().ok()).unwrap_or(0),
                };
                // one entry per node id: a live incarnation beats a dead one, then the newest
                let replace = match by_id.get(&m.node_id) {
                    None => true,
                    Some(old) => {
                        (m.state == "alive", m.generation) > (old.state == "alive", old.generation)
                    }
                };
                if replace {
                    by_id.insert(m.node_id.clone(), m);
                }
            }
            by_id.into_values().collect::<Vec<_>>()
        };
        let live = snapshot.iter().filter(|m| m.state == "alive").count();
        self.metrics.members_live.set(live as i64);
        if let Ok(mut w) = self.members.write() {
            *w = Arc::new(snapshot);
        }
        self.metrics
            .held_back
            .set(i64::from(self.held_back().is_some()));
    }

    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Whether a call to peer `id` failed (no answer, or no connection) and none has been
    /// answered since: a suspect is skipped as a primary and not waited for by a read, a
    /// replication or a decision that has enough answers without it. It stays suspect until a
    /// call to it is answered (a signed refusal included) — the write probe every second
    /// ([`Node::probe_writes`]) and what is still sent to it in the background test it — not
    /// for a fixed time: a peer whose RPC hangs while its gossip goes on (a grey failure) would
    /// otherwise cost every transition of its keys one forward timeout each time the suspicion
    /// lapsed.
    pub(in crate::cluster) fn is_suspect(&self, id: &str) -> bool {
        self.suspects.lock().is_ok_and(|m| m.contains(id))
    }

    pub(in crate::cluster) fn suspect(&self, id: &str) {
        if let Ok(mut m) = self.suspects.lock() {
            if m.insert(id.to_string()) {
                tracing::warn!(peer = id, "cluster: peer suspected (a call to it failed)");
            }
        }
    }

    /// `peers` split into those not suspect and the suspects (one look at the suspect set).
    fn split_by_trust(&self, peers: Peers) -> (Peers, Peers) {
        match self.suspects.lock() {
            Ok(suspects) => peers
                .into_iter()
                .partition(|(id, _)| !suspects.contains(id)),
            Err(_) => (peers, Vec::new()),
        }
    }

    /// A slot for a background call to the suspect `peer`, while fewer than
    /// [`MAX_BACKGROUND_TO_SUSPECT`] are in flight to it; `None` (do not send) when that many are.
    fn suspect_slot(&self, peer: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slots = self.background.lock().ok().map(|mut m| {
            m.entry(peer.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_BACKGROUND_TO_SUSPECT)))
                .clone()
        })?;
        slots.try_acquire_owned().ok()
    }

    fn trust(&self, id: &str) {
        if let Ok(mut m) = self.suspects.lock() {
            if m.remove(id) {
                tracing::info!(peer = id, "cluster: peer answers again");
            }
        }
    }

    /// Live members other than this node: (node id, rpc address).
    pub fn live_peers(&self) -> Vec<(String, String)> {
        self.members()
            .iter()
            .filter(|m| m.state == "alive" && m.node_id != self.id())
            .map(|m| (m.node_id.clone(), m.rpc_addr.clone()))
            .collect()
    }

    pub fn live_count(&self) -> usize {
        1 + self.live_peers().len()
    }

    /// Why this node must not serve now because live members speak an older data protocol
    /// ([`super::DATA_PROTOCOL`]): a rolling upgrade is under way and the older nodes serve until
    /// the last of them leaves. `None`: no live member is older.
    pub fn held_back(&self) -> Option<String> {
        older_members(&self.members(), self.id(), self.settings.protocol)
    }

    /// The singleton-job leader: the live, caught-up member with the lowest id (never a node
    /// that holds back for older ones).
    pub fn is_leader(&self) -> bool {
        if self.held_back().is_some() {
            return false;
        }
        let members = self.members();
        let lowest = members
            .iter()
            .filter(|m| m.state == "alive" && (m.caught_up || m.node_id == self.id()))
            .map(|m| m.node_id.as_str())
            .chain(std::iter::once(self.id()))
            .min();
        lowest == Some(self.id())
    }

    pub fn peer_sync(&self) -> BTreeMap<String, PeerSync> {
        self.sync.lock().map(|m| m.clone()).unwrap_or_default()
    }

    // ---------------------------------------------------------------- RPC client

    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &str,
        addr: &str,
        path: &'static str,
        req: &Req,
    ) -> Result<Resp, RpcError> {
        self.call_within(peer, addr, path, req, self.settings.rpc_timeout)
            .await
    }

    /// [`Node::call`] with its own timeout (`cluster.rpc_timeout_ms` for every call but a
    /// forwarded consistent compare-and-swap, whose executor runs rounds of its own).
    async fn call_within<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &str,
        addr: &str,
        path: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let res = self.call_inner(peer, addr, path, req, timeout).await;
        // a signed answer, even a refusal, is from a peer that answers
        if matches!(res, Ok(_) | Err(RpcError::Remote(_))) {
            self.trust(peer);
        }
        if let Err(e) = &res {
            let op = path.rsplit('/').next().unwrap_or(path);
            self.metrics.rpc_errors.with_label_values(&[op]).inc();
            if matches!(e, RpcError::Transport(_) | RpcError::Unsent(_)) {
                self.suspect(peer);
            }
            tracing::debug!(peer, op, error = %e, "cluster rpc failed");
        }
        res
    }

    /// One signed call to node `peer` at `addr`: both signatures name `peer` and the incarnation
    /// of it gossip told this node of, so only that node, and only until it restarts, accepts the
    /// request (a copy sent elsewhere or replayed after a restart is refused). When `peer`
    /// answers, in a response signed for this request, that it is another incarnation (it
    /// restarted and gossip has not told this node yet), the call is sent once more, as a new
    /// request signed for the generation that answer names.
    async fn call_inner<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &str,
        addr: &str,
        path: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let body = serde_json::to_vec(req).map_err(|e| RpcError::Remote(e.to_string()))?;
        // Nodes of data protocols 1 and 2 (rolling upgrade) know only their own forms; every
        // other peer, and one not (yet) listed, gets and needs the incarnation-bound one.
        let form = match self.members().iter().find(|m| m.node_id == peer) {
            Some(m) if m.protocol < auth::HEAD_SIG_SINCE_PROTOCOL => SignFor::Legacy,
            Some(m) if m.protocol < auth::GENERATION_SINCE_PROTOCOL => SignFor::Node,
            Some(m) => SignFor::Incarnation(m.generation),
            None => SignFor::Incarnation(0),
        };
        let bytes = match self
            .send_signed(peer, addr, path, &body, form, timeout)
            .await?
        {
            Sent::Answer(bytes) => bytes,
            Sent::OtherIncarnation(current) => {
                tracing::debug!(
                    peer,
                    current,
                    "cluster rpc: peer restarted; signing for its new generation"
                );
                match self
                    .send_signed(
                        peer,
                        addr,
                        path,
                        &body,
                        SignFor::Incarnation(current),
                        timeout,
                    )
                    .await?
                {
                    Sent::Answer(bytes) => bytes,
                    // once only: two restarts during one call, or a peer that answers oddly
                    Sent::OtherIncarnation(again) => {
                        return Err(RpcError::Remote(format!(
                            "{peer} refused its generation {current} too (now {again})"
                        )))
                    }
                }
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| RpcError::Remote(format!("decode: {e}")))
    }

    /// Sends one request (new timestamp and nonce) signed in `form`, and checks the answer's
    /// signature: an answer not signed for this request is no answer.
    async fn send_signed(
        &self,
        peer: &str,
        addr: &str,
        path: &'static str,
        body: &[u8],
        form: SignFor,
        timeout: Duration,
    ) -> Result<Sent, RpcError> {
        let ts = self.now_ms();
        let nonce = crate::clock::random_token(12);
        let target = match form {
            SignFor::Incarnation(generation) => auth::Target::Incarnation(peer, generation),
            SignFor::Node | SignFor::Legacy => auth::Target::Node(peer),
        };
        let sig = match form {
            SignFor::Legacy => auth::sign_legacy(&self.rpc_key, "POST", path, ts, &nonce, body),
            _ => auth::sign(&self.rpc_key, target, "POST", path, ts, &nonce, body),
        };
        // checked by the server before it reads the body (see `auth::HEADER_HEAD_SIG`; a
        // protocol-1 peer ignores it)
        let head_sig = auth::sign_head(&self.rpc_key, target, "POST", path, ts, &nonce);
        let mut request = self
            .http
            .post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .header(auth::HEADER_TS, ts.to_string())
            .header(auth::HEADER_NONCE, &nonce)
            .header(auth::HEADER_SIG, sig)
            .header(auth::HEADER_HEAD_SIG, head_sig)
            .header(auth::HEADER_NODE, self.id());
        if let SignFor::Incarnation(generation) = form {
            request = request.header(auth::HEADER_GENERATION, generation.to_string());
        }
        let resp = request
            .timeout(timeout)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RpcError::Unsent(e.to_string())
                } else {
                    RpcError::Transport(e.to_string())
                }
            })?;
        let status = resp.status();
        let resp_sig = resp
            .headers()
            .get(auth::HEADER_RESP_SIG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| RpcError::Transport(e.to_string()))?;
        // An answer not signed for this request is not from a member: treated like no answer
        // (the address does not reach the peer), so nothing it says is believed.
        if !auth::verify_response(
            &self.rpc_key,
            path,
            &nonce,
            status.as_u16(),
            &bytes,
            resp_sig.as_deref(),
        ) {
            return Err(RpcError::Transport(format!(
                "{status} answer not signed with the cluster key"
            )));
        }
        // (also for a request signed for the node only: this node's view listed `peer` at an
        // older protocol, and the incarnation answering is current)
        if status == reqwest::StatusCode::UNAUTHORIZED
            && matches!(form, SignFor::Incarnation(_) | SignFor::Node)
        {
            if let Some(current) = auth::other_incarnation(&bytes) {
                return Ok(Sent::OtherIncarnation(current));
            }
        }
        if !status.is_success() {
            return Err(RpcError::Remote(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            )));
        }
        Ok(Sent::Answer(bytes))
    }

    // ---------------------------------------------------------------- replication

    fn replication_factor(&self, live: usize) -> usize {
        match self.settings.replication_factor {
            0 => live.min(3),
            n => n.min(live),
        }
    }

    /// Nodes a majority is counted against: `bootstrap_expect`, or every node gossip has ever
    /// listed (dead ones included) when that is more, so a grown cluster's two sides can never
    /// both count a majority.
    pub fn configured_nodes(&self) -> usize {
        let members = self.members();
        let mut ids: Vec<&str> = members.iter().map(|m| m.node_id.as_str()).collect();
        ids.push(self.id());
        ids.sort_unstable();
        ids.dedup();
        ids.len().max(self.settings.bootstrap_expect).max(1)
    }

    /// Nodes (this one included) that must hold a single-use transition in consistent mode.
    pub fn majority(&self) -> usize {
        self.configured_nodes() / 2 + 1
    }

    /// Whether this compare-and-swap updates (replaces or deletes) an existing replicated record
    /// under a majority: a single-use transition with `cluster.single_use = "consistent"`, any
    /// other update with `cluster.updates = "consistent"`, and so does an insert (`expected` =
    /// absent) in [`EXCLUSIVE_INSERT_KEYSPACES`]; never the `system` keyspace's leases and
    /// markers: a lone restarted node must still start (and release its init lease).
    fn needs_majority(&self, ks: &str, expected: &Option<Vec<u8>>) -> bool {
        (expected.is_some() || EXCLUSIVE_INSERT_KEYSPACES.contains(&ks))
            && !is_local_keyspace(ks)
            // leases (init, jobs) and markers: taken with an insert and released or renewed with
            // an update, which a node restarted alone must still be able to do
            && ks != crate::store::keyspaces::SYSTEM
            && if SINGLE_USE_KEYSPACES.contains(&ks) {
                self.settings.single_use_consistent
            } else {
                self.settings.updates_consistent
            }
    }

    /// Whether updates of the keyspace's existing records (a delete among them) need a majority.
    pub fn fences_updates(&self, ks: &str) -> bool {
        self.needs_majority(ks, &Some(Vec::new()))
    }

    fn no_majority(&self, reached: usize) -> StoreError {
        StoreError::Unavailable(format!(
            "update refused: cluster.single_use / cluster.updates = \"consistent\" needs {} of {} configured nodes, this node reaches {reached}; retry",
            self.majority(),
            self.configured_nodes()
        ))
    }

    /// The executor-side lock of one key's consistent transitions.
    async fn transition_lock(
        &self,
        ks: &'static str,
        key: &str,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .transitions
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let k = (ks, key.to_string());
            match locks.get(&k).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    if locks.len() >= 1024 && locks.len() >= locks.capacity() {
                        // the map is full: sweep out keys nobody holds or waits for any more
                        // before it grows; if most are still in use, grow it anyway, so the
                        // next sweep comes only after as many new keys again (amortized O(1)
                        // per key, not a scan per new key while many are held)
                        locks.retain(|_, l| l.strong_count() > 0);
                        if locks.len() > locks.capacity() / 2 {
                            let held = locks.len();
                            locks.reserve(held);
                        }
                    }
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(k, Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }

    /// The key's newest version from a majority of the configured nodes (this one included),
    /// merged locally: every transition a majority acknowledged is seen. Fails (nothing
    /// written) when fewer than a majority answer.
    async fn quorum_read(&self, ks: &'static str, key: &str) -> StoreResult<()> {
        let need = self.majority().saturating_sub(1);
        let peers: Vec<_> = self.live_peers();
        if peers.len() < need {
            return Err(self.no_majority(1 + peers.len()));
        }
        let req = KeyReq {
            ks: ks.to_string(),
            key: key.to_string(),
        };
        // every live peer that answers in time, not the first majority: a transition whose
        // decision reached only its executor (the peers' decide calls lost, a prepared copy
        // forgotten by a restart) is seen as long as that executor answers (attacker review).
        // A suspect peer is waited for only while the others are not a majority: one whose
        // RPC hangs (gossip still calling it alive) would cost every transition a timeout.
        let (trusted, suspects) = self.split_by_trust(peers);
        let mut trusted_left = trusted.len();
        let flagged = trusted.iter().map(|p| (p, false));
        let mut calls: FuturesUnordered<_> = flagged
            .chain(suspects.iter().map(|p| (p, true)))
            .map(|((id, addr), suspect)| {
                let req = &req;
                async move {
                    (
                        suspect,
                        self.call::<_, GetResp>(id, addr, PATH_GET, req).await,
                    )
                }
            })
            .collect();
        let mut newest: Option<Versioned> = None;
        let mut answered = 0usize;
        // A peer holding a transition undecided: its executor (perhaps a suspect, whose decision
        // to that peer is still on its way) may have committed it and answered its client —
        // then every peer is waited for, as before suspects were skipped (attacker review).
        let mut undecided = false;
        while let Some((suspect, r)) = calls.next().await {
            if !suspect {
                trusted_left -= 1;
            }
            if let Ok(r) = r {
                answered += 1;
                undecided |= r.provisional.is_some();
                if let Some(rec) = r.record {
                    if newest.as_ref().is_none_or(|n| rec.version > n.version) {
                        newest = Some(rec);
                    }
                }
            }
            if trusted_left == 0 && answered >= need && !undecided {
                break;
            }
        }
        if answered < need {
            return Err(self.no_majority(1 + answered));
        }
        if let Some(rec) = &newest {
            self.replica.merge(ks, key, rec).await?;
        }
        Ok(())
    }

    /// Sends records to every live peer; returns once `replication_factor - 1` of them
    /// acknowledged, or fewer when some are suspect: every peer not suspect, at least one (the
    /// others finish in the background, a suspect's within [`MAX_BACKGROUND_TO_SUSPECT`]). Fails
    /// when peers exist but none acknowledged: the write is then only on this node.
    pub async fn replicate(self: &Arc<Self>, records: Vec<Record>) -> StoreResult<()> {
        self.replicate_acked(records, 0).await.map_err(|u| u.error)
    }

    /// [`Node::replicate`], failing unless at least `min_acks` peers acknowledged; with
    /// `min_acks` > 0 (a prepare) it returns as soon as that many did, not `replication_factor - 1`.
    async fn replicate_acked(
        self: &Arc<Self>,
        records: Vec<Record>,
        min_acks: usize,
    ) -> Result<(), Unmade> {
        let records: Vec<Record> = records
            .into_iter()
            .filter(|r| !is_local_keyspace(&r.ks))
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        let peers = self.live_peers();
        if peers.len() < min_acks {
            return Err(self.no_majority(1 + peers.len()).into());
        }
        if peers.is_empty() {
            return Ok(());
        }
        // a plain write waits for its replicas; a prepare for a majority (the others get it,
        // or the decision, in the background: a stalled peer does not hold the transition up)
        // (a plain write does not wait for suspect peers beyond one acknowledgement: they get it
        // in the background like any replica past the factor)
        let live = peers.len();
        let (trusted, suspects) = self.split_by_trust(peers);
        let need = if min_acks > 0 {
            min_acks
        } else {
            self.replication_factor(live + 1)
                .saturating_sub(1)
                .min(trusted.len().max(1))
        };
        // a suspect's call is capped only when the others can give what this waits for
        let capped = trusted.len() >= need;
        let started = Instant::now();
        let req = Arc::new(ApplyReq { records });
        let suspects = suspects.into_iter().filter_map(|p| match capped {
            true => self.suspect_slot(&p.0).map(|slot| (p, Some(slot))),
            false => Some((p, None)),
        });
        let mut pending: FuturesUnordered<_> = trusted
            .into_iter()
            .map(|p| (p, None))
            .chain(suspects)
            .map(|((id, addr), slot)| {
                let req = req.clone();
                let node = self.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    // Some(true): acknowledged; Some(false): answered but refused a conditional
                    // record (a competing transition); None: no answer
                    node.call::<_, ApplyResp>(&id, &addr, PATH_APPLY, &*req)
                        .await
                        .ok()
                        .map(|r| r.rejected == 0)
                })
            })
            .collect();
        let mut acks = 0usize;
        let mut answered = 0usize;
        let mut refused = 0usize;
        while acks < need {
            match pending.next().await {
                Some(Ok(Some(true))) => acks += 1,
                Some(Ok(Some(false))) => refused += 1,
                Some(_) => answered += 1,
                None => break,
            }
        }
        // the rest keep running detached (a dropped JoinHandle does not cancel its task)
        drop(pending);
        self.metrics
            .replication_seconds
            .observe(started.elapsed().as_secs_f64());
        if refused > 0 && acks < min_acks {
            return Err(Unmade {
                error: StoreError::Unavailable(format!(
                    "single-use transition refused by {refused} node(s) holding a competing one; retry"
                )),
                // every call answered, none with an acknowledgement (the loop runs them all out
                // unless enough acknowledged)
                held_nowhere: acks == 0 && answered == 0,
            });
        }
        if need > 0 && acks == 0 {
            self.set_write_block(Some(format!(
                "writes cannot reach their replicas: a write was acknowledged by none of the live peers ({answered} failed)"
            )));
            return Err(StoreError::Unavailable(format!(
                "write not acknowledged by any other live node ({answered} failed); retry"
            ))
            .into());
        }
        self.set_write_block(None);
        if acks < min_acks {
            return Err(self.no_majority(1 + acks).into());
        }
        Ok(())
    }

    /// Newest version of a key among the live peers (merged locally), for reads this node misses.
    pub async fn fetch_from_peers(
        &self,
        ks: &'static str,
        key: &str,
    ) -> StoreResult<Option<Versioned>> {
        // the peers that answer; every live one when all are suspect (suspicion lasts until a
        // call succeeds: this one may be it)
        let (mut peers, suspects) = self.split_by_trust(self.live_peers());
        if peers.is_empty() {
            peers = suspects;
        }
        if peers.is_empty() {
            return Ok(None);
        }
        let req = KeyReq {
            ks: ks.to_string(),
            key: key.to_string(),
        };
        let calls = peers
            .iter()
            .map(|(id, addr)| self.call::<_, GetResp>(id, addr, PATH_GET, &req));
        let mut newest: Option<Versioned> = None;
        for r in futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
        {
            if let Some(rec) = r.record {
                if newest.as_ref().is_none_or(|n| rec.version > n.version) {
                    newest = Some(rec);
                }
            }
        }
        if let Some(rec) = &newest {
            self.replica.merge(ks, key, rec).await?;
        }
        Ok(newest)
    }

    // ---------------------------------------------------------------- compare-and-swap

    /// Candidates to execute a CAS on the key, best first: live, caught-up members in rendezvous
    /// order, then (last resort) live members that are catching up — a node back from a pause is
    /// not a primary until it has caught up.
    pub(crate) fn primary_order(&self, ks: &str, key: &str) -> Vec<(String, String)> {
        let members = self.members();
        let me_caught_up = self.is_caught_up();
        let mut live: Vec<(&str, &str, bool)> = members
            .iter()
            .filter(|m| m.state == "alive" && m.node_id != self.id())
            .map(|m| (m.node_id.as_str(), m.rpc_addr.as_str(), m.caught_up))
            .collect();
        live.push((self.id(), "", me_caught_up));
        let order = ring::rank(live.iter().map(|(id, _, _)| *id), ks, key);
        let ranked = order.into_iter().filter_map(|id| {
            live.iter()
                .find(|(i, _, _)| *i == id)
                .map(|(i, a, c)| (i.to_string(), a.to_string(), *c))
        });
        let (current, behind): (Vec<_>, Vec<_>) = ranked.partition(|(_, _, c)| *c);
        current
            .into_iter()
            .chain(behind)
            .map(|(i, a, _)| (i, a))
            .collect()
    }

    /// Whether this node is not the key's first choice among every member it knows (dead ones
    /// included): it is then standing in for a dead or suspect primary, or it has not caught up,
    /// and must first pull the key's newest version from the live peers.
    fn standing_in(&self, ks: &str, key: &str) -> bool {
        if !self.is_caught_up() {
            return true;
        }
        let members = self.members();
        let ids = members
            .iter()
            .map(|m| m.node_id.as_str())
            .chain(std::iter::once(self.id()));
        ring::rank(ids, ks, key).first().copied() != Some(self.id())
    }

    /// Sends the executor's decision on a prepared transition to every live peer (the ones that
    /// prepared it among them), waiting for the answers of those not suspect (bounded by the RPC
    /// timeout); a suspect gets it in the background. A peer the decision does not reach asks
    /// this node later ([`Node::resolve_provisionals`]); until then a majority read that meets
    /// its undecided copy waits for every peer, this one included ([`Node::quorum_read`]).
    async fn decide(self: &Arc<Self>, ks: &'static str, key: &str, rec: &Versioned, commit: bool) {
        let req = DecideReq {
            ks: ks.to_string(),
            key: key.to_string(),
            rec: rec.clone(),
            commit,
        };
        // awaited at every live peer not suspect (a stalled one costs one RPC timeout, then it
        // is suspect); a suspect gets it in the background
        let (trusted, suspects) = self.split_by_trust(self.live_peers());
        for (id, addr) in suspects {
            let Some(slot) = self.suspect_slot(&id) else {
                continue;
            };
            let (node, req) = (self.clone(), req.clone());
            tokio::spawn(async move {
                let _slot = slot;
                node.call::<_, Empty>(&id, &addr, PATH_DECIDE, &req).await
            });
        }
        let calls = trusted
            .iter()
            .map(|(id, addr)| self.call::<_, Empty>(id, addr, PATH_DECIDE, &req));
        futures_util::future::join_all(calls).await;
    }

    /// Provisional transitions held here longer than `older_than` whose decision did not arrive
    /// (lost, or the executor died) are settled ([`Node::settle_provisional`]); returns how many.
    pub async fn resolve_provisionals(self: &Arc<Self>, older_than: Duration) -> usize {
        let mut resolved = 0;
        for (ks, key, rec, base) in self.replica.stale_provisionals(older_than) {
            if self.settle_provisional(ks, &key, &rec, &base).await {
                resolved += 1;
            }
        }
        resolved
    }

    /// Settles one provisional transition held here (made on version `base`). The executor is
    /// asked first: still provisional there — pending, kept; otherwise its record decides (its
    /// version is the transition's: committed, written here; anything else: aborted, dropped,
    /// and the executor's record merged). An executor that cannot be asked (dead, gone from
    /// the membership, cut off from this node) no longer holds the key hostage: the other
    /// peers settle it among themselves ([`peer_verdict`]) — committed when a peer holds it
    /// committed or when enough nodes prepared it that the executor may have committed it;
    /// aborted when another version replaced `base` or when too few nodes can hold it for it
    /// ever to have been prepared by a majority; else kept until one of those is known. A
    /// provisional copy is dropped at the record's deadline at the latest. Returns whether it
    /// was settled.
    pub async fn settle_provisional(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
        rec: &Versioned,
        base: &crate::cluster::version::Version,
    ) -> bool {
        let executor = rec.version.node.clone();
        if executor == self.id() {
            // this node's own transitions are decided by the task executing them
            return false;
        }
        let req = KeyReq {
            ks: ks.to_string(),
            key: key.to_string(),
        };
        let members = self.members();
        let at_executor = match members
            .iter()
            .find(|m| m.node_id == executor && m.state == "alive")
        {
            Some(m) => self
                .call::<_, GetResp>(&executor, &m.rpc_addr, PATH_GET, &req)
                .await
                .ok(),
            None => None,
        };
        let commit = match at_executor {
            Some(resp) if resp.provisional.as_ref() == Some(&rec.version) => return false,
            Some(resp) => match resp.record {
                Some(r) if r.version == rec.version => true,
                Some(r) => {
                    self.replica.abort(ks, key, &rec.version).await;
                    if let Err(e) = self.replica.merge(ks, key, &r).await {
                        tracing::warn!(keyspace = ks, error = %e, "could not merge an aborted transition's record");
                    }
                    return true;
                }
                None => false,
            },
            None => {
                // the executor cannot say: what the other peers hold decides
                let peers: Vec<_> = self
                    .live_peers()
                    .into_iter()
                    .filter(|(id, _)| *id != executor)
                    .collect();
                let calls = peers
                    .iter()
                    .map(|(id, addr)| self.call::<_, GetResp>(id, addr, PATH_GET, &req));
                let resps: Vec<GetResp> = futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                let answers: Vec<Held> = resps.iter().map(|r| Held::of(r, rec, base)).collect();
                let executor_counted = members.iter().any(|m| m.node_id == executor);
                let nodes = self.configured_nodes() + usize::from(!executor_counted);
                let verdict = peer_verdict(&answers, nodes, self.majority());
                if verdict == Some(false) {
                    // what replaced `base` (or its newest copy) comes with the abort
                    for r in resps.iter().filter_map(|r| r.record.as_ref()) {
                        if r.version != rec.version {
                            let _ = self.replica.merge(ks, key, r).await;
                        }
                    }
                }
                match verdict {
                    Some(commit) => {
                        tracing::warn!(
                            keyspace = ks,
                            executor = %executor,
                            commit,
                            "a transition whose executor cannot be reached was settled by its peers"
                        );
                        commit
                    }
                    None => return false,
                }
            }
        };
        let outcome = if commit {
            let committed = self.replica.commit(ks, key, rec).await;
            if committed.is_ok() {
                // told to the peers at once, not left to anti-entropy: one that did not prepare
                // it would otherwise miss it, and a later transition of the key made with it
                // (its majority read not reaching this node) could win over it
                let (node, key, rec) = (self.clone(), key.to_string(), rec.clone());
                tokio::spawn(async move { node.decide(ks, &key, &rec, true).await });
            }
            committed
        } else {
            self.replica.abort(ks, key, &rec.version).await;
            Ok(())
        };
        match outcome {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(keyspace = ks, error = %e, "could not resolve a provisional transition");
                false
            }
        }
    }

    /// Compare-and-swap executed at the key's current primary (forwarded if that is another node).
    pub async fn cas(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> StoreResult<Cas> {
        let order = self.primary_order(ks, key);
        // a consistent transition's executor may take its own RPC rounds (majority read, a
        // wait for another transition of the key, prepare, decide) before it answers: a
        // forwarder that gave up after one RPC timeout would suspect a live primary and report
        // the outcome unknown for a transition that is still being made
        let consistent = self.needs_majority(ks, &expected);
        let timeout = if consistent {
            self.settings.rpc_timeout * FORWARDED_TRANSITION_TIMEOUTS
        } else {
            self.settings.rpc_timeout
        };
        let mut last_err = None;
        for (id, addr) in order {
            if id == self.id() {
                break;
            }
            if self.is_suspect(&id) {
                continue;
            }
            self.metrics.cas_forwarded.inc();
            let req = CasReq {
                ks: ks.to_string(),
                key: key.to_string(),
                expected: expected.clone(),
                new: new.as_ref().map(|(v, _)| v.clone()),
                ttl_ms: new
                    .as_ref()
                    .and_then(|(_, t)| t.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))),
            };
            match self
                .call_within::<_, CasResp>(&id, &addr, PATH_CAS, &req, timeout)
                .await
            {
                Ok(resp) => {
                    if let Some(cur) = &resp.current {
                        self.replica.merge(ks, key, cur).await?;
                    }
                    if !resp.swapped && last_err.is_some() {
                        // an earlier candidate may have executed this very call and not answered
                        // in time: the conflict may be our own transition. Unknown outcome: 503.
                        return Err(StoreError::Unavailable(format!(
                            "compare-and-swap: the primary did not answer ({}) and the next one reports a conflict; the outcome is unknown, retry",
                            last_err.unwrap_or_default()
                        )));
                    }
                    return Ok(if resp.swapped {
                        Cas::Swapped
                    } else {
                        Cas::Conflict(resp.current.and_then(|c| c.value))
                    });
                }
                Err(RpcError::Unsent(e)) => {
                    // the primary never got it: the next in line decides, and its answer holds
                    tracing::warn!(primary = %id, error = %e, "primary unreachable; next replica takes over");
                }
                Err(RpcError::Transport(e)) if consistent => {
                    // the primary got it and may still be deciding it: a transition of our own
                    // here would compete with it (and outlast the balancer's read timeout)
                    return Err(StoreError::Unavailable(format!(
                        "compare-and-swap: the primary {id} did not answer ({e}); the outcome is unknown, retry"
                    )));
                }
                Err(RpcError::Transport(e)) => {
                    tracing::warn!(primary = %id, error = %e, "primary did not answer; next replica takes over");
                    last_err = Some(e);
                }
                Err(RpcError::Remote(e)) => {
                    return Err(StoreError::Unavailable(match last_err {
                        // the earlier candidate may have executed it: whatever this one says
                        Some(lost) => format!(
                            "compare-and-swap: the primary did not answer ({lost}) and the next one failed ({e}); the outcome is unknown, retry"
                        ),
                        None => format!("compare-and-swap at primary {id}: {e}"),
                    }));
                }
            }
        }
        // this node is next in line (or every node ranked above it was suspect)
        let got = self.cas_local(ks, key, expected, new).await.map(|(c, _)| c);
        match (got, last_err) {
            (Ok(Cas::Conflict(_)), Some(e)) => Err(StoreError::Unavailable(format!(
                "compare-and-swap: the primary did not answer ({e}) and this node reports a conflict; the outcome is unknown, retry"
            ))),
            // (not consistent: that returned at the lost forward) e.g. a write no replica
            // acknowledged here, after the primary may have made it
            (Err(StoreError::Unavailable(why)), Some(e)) => Err(StoreError::Unavailable(format!(
                "compare-and-swap: the primary did not answer ({e}) and this node could not decide ({why}); the outcome is unknown, retry"
            ))),
            (got, _) => got,
        }
    }

    /// The key's record as its primary holds it once transitions in flight on it are decided
    /// ([`crate::store::Store::get_settled`]): read at the first candidate of
    /// [`Node::primary_order`] that answers (suspect ones skipped, the next in line when one
    /// cannot be reached, this node when it is next in line), which settles the key first as a
    /// compare-and-swap there would ([`Node::read_settled_local`]). The record is merged here.
    /// `None`: no record at all there (a tombstone comes back as one).
    pub async fn get_settled(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
    ) -> StoreResult<Option<Versioned>> {
        for (id, addr) in self.primary_order(ks, key) {
            if id == self.id() {
                break;
            }
            if self.is_suspect(&id) {
                continue;
            }
            let req = KeyReq {
                ks: ks.to_string(),
                key: key.to_string(),
            };
            match self
                .call::<_, GetResp>(&id, &addr, PATH_GET_SETTLED, &req)
                .await
            {
                Ok(resp) => {
                    if let Some(rec) = &resp.record {
                        self.replica.merge(ks, key, rec).await?;
                    }
                    return Ok(resp.record);
                }
                // a read has no outcome to lose: the next in line answers
                Err(RpcError::Transport(e) | RpcError::Unsent(e)) => {
                    tracing::warn!(primary = %id, error = %e, "primary unreachable; next replica answers the read");
                }
                Err(RpcError::Remote(e)) => {
                    return Err(StoreError::Unavailable(format!(
                        "read at primary {id}: {e}"
                    )))
                }
            }
        }
        // this node is next in line (or every node ranked above it was suspect)
        self.read_settled_local(ks, key).await
    }

    /// [`Node::get_settled`] executed here, as the key's primary: the key is brought to where a
    /// compare-and-swap executed here would compare — with `cluster.single_use` / `updates`
    /// consistent for the keyspace, this node's own transitions of the key decided (their
    /// per-key lock), the newest version a majority holds read, and a transition another
    /// executor prepared here waited for or settled; otherwise, a node standing in for the
    /// primary or not caught up pulls the key from the peers first, as does one that holds no
    /// record of it at all — then its record is returned. A transition still undecided after
    /// the wait, or no majority: 503 (its outcome is not known).
    pub async fn read_settled_local(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
    ) -> StoreResult<Option<Versioned>> {
        self.check_standing();
        if self.fences_updates(ks) {
            if self.live_count() < self.majority() {
                return Err(self.no_majority(self.live_count()));
            }
            let _serial = self.transition_lock(ks, key).await;
            self.quorum_read(ks, key).await?;
            if !self.await_provisional(ks, key).await {
                return Err(StoreError::Unavailable(
                    "read refused: a transition of this key is still being decided; retry".into(),
                ));
            }
            return self.replica.read(ks, key).await;
        }
        let pulled = self.standing_in(ks, key);
        if pulled {
            self.fetch_from_peers(ks, key).await?;
        }
        match self.replica.read(ks, key).await? {
            Some(rec) => Ok(Some(rec)),
            // written while this node was cut off, not pulled yet: the peers' copy
            None if !pulled => self.fetch_from_peers(ks, key).await,
            None => Ok(None),
        }
    }

    /// Executes a CAS here, replicates it, and returns the outcome and the record now held.
    pub async fn cas_local(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> StoreResult<(Cas, Option<Versioned>)> {
        self.check_standing();
        if self.needs_majority(ks, &expected) {
            // consistent: refused (nothing written) unless a majority answers, and compared
            // against the newest version a majority holds; transitions of one key executed here
            // queue up behind each other's decision
            if self.live_count() < self.majority() {
                return Err(self.no_majority(self.live_count()));
            }
            // made again only within one RPC timeout of the first attempt: with the attempts'
            // own rounds that stays inside the forwarder's wait and the balancer's read timeout
            let (started, mut retries) = (Instant::now(), 0);
            loop {
                let serial = self.transition_lock(ks, key).await;
                self.quorum_read(ks, key).await?;
                match self
                    .cas_consistent(ks, key, expected.clone(), new.clone(), serial)
                    .await
                {
                    // a competing transition (another executor) holds the key: decided within a
                    // round trip or two; then this one is compared again, on what it left
                    Err(u)
                        if u.held_nowhere
                            && retries < COMPETING_RETRIES
                            && started.elapsed() < self.settings.rpc_timeout =>
                    {
                        retries += 1;
                        self.metrics.competing_retries.inc();
                        let jitter = 10 + rand::random::<u64>() % 40;
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                    }
                    other => return other.map_err(|u| u.error),
                }
            }
        }
        if self.standing_in(ks, key) {
            self.fetch_from_peers(ks, key).await?;
        }
        if expected.is_some() && self.replica.read(ks, key).await?.is_none() {
            // an update of a record this primary does not hold at all (written while it was
            // cut off, not pulled yet): the peers' copy, not a conflict
            self.fetch_from_peers(ks, key).await?;
        }
        let rec = {
            let _g = self.replica.lock([(ks, key)]).await;
            let cur = self.replica.read(ks, key).await?;
            let cur_value = cur.as_ref().and_then(|c| c.value.clone());
            if cur_value != expected {
                return Ok((Cas::Conflict(cur_value), cur));
            }
            let rec = self.new_record(new);
            self.replica.write_locked(ks, key, &rec).await?;
            rec
        };
        self.replicate(vec![Record {
            ks: ks.to_string(),
            key: key.to_string(),
            rec: rec.clone(),
            if_version: None,
        }])
        .await?;
        Ok((Cas::Swapped, Some(rec)))
    }

    fn new_record(&self, new: Option<(Vec<u8>, Option<Duration>)>) -> Versioned {
        match new {
            Some((v, ttl)) => Versioned {
                version: self.replica.new_version(),
                value: Some(v),
                deadline_ms: self.replica.deadline(ttl),
            },
            None => self.replica.tombstone(),
        }
    }

    /// Waits (briefly) for a transition of this key still being decided here — by another
    /// executor that prepared it here; this node's own are waited for by taking
    /// [`Node::transition_lock`] first — to be decided: it usually commits within milliseconds;
    /// one held past the RPC timeout is settled ([`Node::settle_provisional`]: its decision was
    /// lost, or its executor died). Returns whether none is left (false: still undecided after
    /// twice the RPC timeout).
    async fn await_provisional(self: &Arc<Self>, ks: &'static str, key: &str) -> bool {
        let wait_until = Instant::now() + self.settings.rpc_timeout * 2;
        let mut settled = false;
        while let Some((rec, base, since)) = self.replica.provisional_entry(ks, key) {
            if Instant::now() >= wait_until {
                return false;
            }
            if !settled && since.elapsed() >= self.settings.rpc_timeout {
                settled = true;
                if self.settle_provisional(ks, key, &rec, &base).await {
                    continue;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// A consistent single-use transition, in two rounds (after the majority read): compared
    /// here and **prepared** — held as provisional, not written — here and on the peers
    /// ([`Replica::prepare`]); once a majority (this node included) prepared it, committed here
    /// and on the peers; otherwise aborted everywhere and answered 503. So a transition that
    /// fails leaves nothing behind on the peers that accepted it (no code burnt without a token,
    /// no refused session result winning later), and of two competing transitions made on one
    /// version at most one is prepared by a majority. The rounds run in a task of their own, so
    /// a caller that goes away (a client disconnect) cannot leave a transition undecided.
    async fn cas_consistent(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
        serial: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<(Cas, Option<Versioned>), Unmade> {
        // false: another executor's transition of the key is still undecided here after the
        // wait (its executor cannot be asked): making this one again would only wait again
        let none_left = self.await_provisional(ks, key).await;
        let rec = {
            let _g = self.replica.lock([(ks, key)]).await;
            let cur = self.replica.read(ks, key).await?;
            let cur_value = cur.as_ref().and_then(|c| c.value.clone());
            if cur_value != expected {
                return Ok((Cas::Conflict(cur_value), cur));
            }
            // An insert where a majority holds nothing: made on "no version", the least of all,
            // so a peer holding any record of the key (or another provisional insert) refuses it.
            let base = cur.map(|c| c.version).unwrap_or_default();
            let rec = self.new_record(new);
            if !self.replica.prepare_locked(ks, key, &rec, &base).await? {
                return Err(Unmade {
                    error: StoreError::Unavailable(
                        "transition refused: another transition of this key is being decided; retry"
                            .into(),
                    ),
                    held_nowhere: none_left,
                });
            }
            (rec, base)
        };
        let node = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            // held until the decision, also when the client has gone
            let _serial = serial;
            let (rec, base) = rec;
            let prepared = node
                .replicate_acked(
                    vec![Record {
                        ks: ks.to_string(),
                        key: key.clone(),
                        rec: rec.clone(),
                        if_version: Some(base),
                    }],
                    node.majority().saturating_sub(1),
                )
                .await;
            match prepared {
                Ok(()) => {
                    // the decision point: written here first (a peer that asks this node finds
                    // it), then on the peers
                    if let Err(e) = node.replica.commit(ks, &key, &rec).await {
                        node.replica.abort(ks, &key, &rec.version).await;
                        node.decide(ks, &key, &rec, false).await;
                        return Err(e.into());
                    }
                    node.decide(ks, &key, &rec, true).await;
                    Ok((Cas::Swapped, Some(rec)))
                }
                Err(u) => {
                    node.replica.abort(ks, &key, &rec.version).await;
                    node.decide(ks, &key, &rec, false).await;
                    tracing::warn!(
                        keyspace = ks,
                        error = %u.error,
                        held_nowhere = u.held_nowhere,
                        "single-use transition not prepared by a majority: aborted"
                    );
                    Err(u)
                }
            }
        })
        .await
        .map_err(|e| StoreError::Backend(format!("single-use transition task: {e}")))?
    }

    // ---------------------------------------------------------------- anti-entropy

    /// Pulls from one peer what this node misses or holds older; returns records repaired.
    pub async fn sync_with(&self, id: &str, addr: &str) -> Result<u64, RpcError> {
        let theirs: DigestResp = self.call(id, addr, PATH_DIGEST, &Empty {}).await?;
        let mine = self.replica.digest();
        let mut repaired = 0u64;
        for (ks, d) in theirs.keyspaces {
            if mine.get(&ks) == Some(&d) || is_local_keyspace(&ks) {
                continue;
            }
            let Ok(ks_static) = intern(&ks) else { continue };
            let v: VersionsResp = self
                .call(id, addr, PATH_VERSIONS, &VersionsReq { ks: ks.clone() })
                .await?;
            let want: Vec<String> = v
                .entries
                .into_iter()
                .filter(|(k, ver)| {
                    // key records: any other version, so the first-created one reaches the
                    // node that holds a later one (see `replica::replaces`)
                    self.replica
                        .version_of(&ks, k)
                        .is_none_or(|mine| *ver > mine || (is_insert_only(&ks) && *ver != mine))
                })
                .map(|(k, _)| k)
                .collect();
            for chunk in want.chunks(256) {
                let f: FetchResp = self
                    .call(
                        id,
                        addr,
                        PATH_FETCH,
                        &FetchReq {
                            ks: ks.clone(),
                            keys: chunk.to_vec(),
                        },
                    )
                    .await?;
                for r in f.records {
                    if r.ks != ks {
                        continue;
                    }
                    if self
                        .replica
                        .merge(ks_static, &r.key, &r.rec)
                        .await
                        .map_err(|e| RpcError::Remote(e.to_string()))?
                    {
                        repaired += 1;
                    }
                }
            }
        }
        self.metrics.repairs.inc_by(repaired);
        let now = self.now_ms();
        if let Ok(mut m) = self.sync.lock() {
            m.insert(
                id.to_string(),
                PeerSync {
                    last_sync_ms: Some(now),
                    last_repaired: repaired,
                },
            );
        }
        if repaired > 0 {
            tracing::info!(peer = id, repaired, "anti-entropy repaired records");
        }
        Ok(repaired)
    }

    /// One anti-entropy round with every live peer; true when every peer answered.
    pub async fn anti_entropy_round(&self) -> bool {
        let mut all_ok = true;
        for (id, addr) in self.live_peers() {
            if let Err(e) = self.sync_with(&id, &addr).await {
                tracing::debug!(peer = %id, error = %e, "anti-entropy round failed");
                all_ok = false;
            }
        }
        all_ok
    }

    // ---------------------------------------------------------------- bus

    pub async fn broadcast(&self, topic: &str, payload: &str) {
        let req = PublishReq {
            topic: topic.to_string(),
            payload: payload.to_string(),
        };
        let peers = self.live_peers();
        let calls = peers
            .iter()
            .map(|(id, addr)| self.call::<_, Empty>(id, addr, PATH_PUBLISH, &req));
        futures_util::future::join_all(calls).await;
    }
}

/// What a peer holds of a provisional transition whose executor cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Its record is the transition's: the executor committed it.
    Committed,
    /// A version newer than the transition's base, not the transition's: it can no longer apply.
    Replaced,
    /// The transition, prepared and undecided.
    Prepared,
    /// Another transition of the key, prepared and undecided: the executor may have aborted
    /// this one (its abort lost) and run that one since, perhaps answered "done".
    Competing,
    /// Neither: this peer did not prepare it (and now refuses to: it answered without it).
    Without,
}

impl Held {
    fn of(resp: &GetResp, rec: &Versioned, base: &crate::cluster::version::Version) -> Self {
        // An insert is made on "no version" (its executor's majority read found nothing): a
        // tombstone older than it is a delete from before it — one the executor's read missed,
        // which it would have made the insert on anyway — not a competing transition.
        let before_insert = |r: &Versioned| {
            *base == crate::cluster::version::Version::default()
                && r.value.is_none()
                && r.version < rec.version
        };
        match &resp.record {
            Some(r) if r.version == rec.version => return Held::Committed,
            Some(r) if r.version > *base && !before_insert(r) => return Held::Replaced,
            _ => {}
        }
        match &resp.provisional {
            Some(v) if *v == rec.version => Held::Prepared,
            Some(_) => Held::Competing,
            None => Held::Without,
        }
    }
}

/// The peers' verdict on a provisional transition held by this node whose executor cannot be
/// asked (`answers`: the other peers that answered; `nodes`: the nodes a majority is counted
/// against, the executor included). `Some(true)`: commit — a peer holds it committed, or the
/// executor, this node and the peers that prepared it make a majority (the executor may have
/// committed and answered its client: the transition must stand) **and** no competing
/// transition can have been committed: none of the peers holds one, and the executor with the
/// peers not heard from is short of a majority. (An executor can abort a transition — its abort
/// lost on the way here — and then run another on the same base with other peers: committing
/// this one then would undo an answered one.) `Some(false)`: abort — another version replaced
/// its base, or so many nodes answered without it that it cannot have been prepared by a
/// majority (the executor aborted, or will: it answered nobody "done"). `None`: not known yet
/// (too few answers, or a competing transition to be decided first), kept.
pub(crate) fn peer_verdict(answers: &[Held], nodes: usize, majority: usize) -> Option<bool> {
    if answers.contains(&Held::Committed) {
        return Some(true);
    }
    if answers.contains(&Held::Replaced) {
        return Some(false);
    }
    let count = |h: Held| answers.iter().filter(|a| **a == h).count();
    let unheard = nodes.saturating_sub(2 + answers.len());
    // the executor prepares its own transition first; this node holds it
    if 2 + count(Held::Prepared) >= majority {
        let competing_possible = count(Held::Competing) > 0 || 1 + unheard >= majority;
        return if competing_possible { None } else { Some(true) };
    }
    if nodes.saturating_sub(count(Held::Without)) < majority {
        return Some(false);
    }
    None
}

/// [`Node::held_back`] over a member list: the live members other than `me` whose data protocol
/// is below `mine`, as the reason this node must not serve (`None` when there are none). Dead
/// members do not count: a node stopped for its upgrade releases the newer ones as soon as the
/// failure detector marks it dead.
fn older_members(members: &[Member], me: &str, mine: u32) -> Option<String> {
    let older: Vec<String> = members
        .iter()
        .filter(|m| m.state == "alive" && m.node_id != me && m.protocol < mine)
        .map(|m| format!("{} (protocol {})", m.node_id, m.protocol))
        .collect();
    (!older.is_empty()).then(|| {
        format!(
            "holding back during a rolling upgrade: live node(s) {} speak an older data protocol than this node's {mine}; this node serves once they have left",
            older.join(", ")
        )
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::{older_members, peer_verdict, Held::*, Member};

    /// A ready member of the membership view, for the rules that read it.
    pub(in crate::cluster) fn member(id: &str, state: &'static str, protocol: u32) -> Member {
        Member {
            node_id: id.into(),
            state,
            roles: Vec::new(),
            ready: true,
            caught_up: true,
            rpc_addr: String::new(),
            gossip_addr: String::new(),
            generation: 1,
            protocol,
        }
    }

    #[test]
    fn a_newer_node_holds_back_while_a_live_older_one_serves() {
        let members = [
            member("a", "alive", 2),
            member("b", "alive", 1),
            member("c", "dead", 0),
        ];
        // b is older and alive: a (protocol 2) waits; c, older but dead, does not count
        let why = older_members(&members, "a", 2).unwrap();
        assert!(
            why.contains("b (protocol 1)") && !why.contains("c ("),
            "{why}"
        );
        // b itself is not held back by the newer a; nor is a once b is dead or upgraded
        assert_eq!(older_members(&members, "b", 1), None);
        let members = [member("a", "alive", 2), member("b", "dead", 1)];
        assert_eq!(older_members(&members, "a", 2), None);
        let members = [member("a", "alive", 2), member("b", "alive", 2)];
        assert_eq!(older_members(&members, "a", 2), None);
        // a node that gossips no protocol (a release before it existed) counts as 0
        let members = [member("a", "alive", 1), member("old", "alive", 0)];
        assert!(older_members(&members, "a", 1).is_some());
    }

    #[test]
    fn peers_settle_a_transition_whose_executor_is_gone() {
        // three nodes: the executor and this node already make a majority — it may have been
        // committed and answered, so it stands
        assert_eq!(peer_verdict(&[Without], 3, 2), Some(true));
        // ... unless the executor could have aborted it and committed another transition since:
        // with the third node unheard, or holding another transition of the key (attacker review)
        assert_eq!(peer_verdict(&[], 3, 2), None);
        assert_eq!(peer_verdict(&[Competing], 3, 2), None);
        assert_eq!(peer_verdict(&[Prepared, Competing, Without], 5, 3), None);
        assert_eq!(peer_verdict(&[Prepared, Without], 5, 3), Some(true));
        assert_eq!(
            peer_verdict(&[Prepared], 5, 3),
            None,
            "executor + two unheard: a majority"
        );
        // five nodes (majority 3)
        assert_eq!(
            peer_verdict(&[Without, Without, Without], 5, 3),
            Some(false)
        );
        assert_eq!(
            peer_verdict(&[Without, Without], 5, 3),
            None,
            "one peer unheard of could have prepared it"
        );
        assert_eq!(peer_verdict(&[Without], 5, 3), None);
        // a peer told of the decision, or a newer version, decides
        assert_eq!(
            peer_verdict(&[Without, Committed, Without], 5, 3),
            Some(true)
        );
        assert_eq!(peer_verdict(&[Prepared, Replaced], 5, 3), Some(false));
    }

    /// What a peer's copy says of a prepared transition whose executor is gone. For an insert
    /// (made on "no version") an older tombstone is a delete from before it, not a competing
    /// transition (attacker review: a missed older tombstone aborted a committed, answered
    /// insert, and a second one was created); a live value or a newer tombstone replaces it.
    #[test]
    fn what_a_peer_holds_of_a_prepared_transition() {
        use super::{GetResp, Held};
        use crate::cluster::version::{Version, Versioned};
        let v = |hlc: u64, value: Option<&[u8]>| Versioned {
            version: Version {
                hlc,
                node: "e".into(),
            },
            value: value.map(<[u8]>::to_vec),
            deadline_ms: None,
        };
        let rec = v(10, Some(b"new"));
        let held = |record: Option<Versioned>, base: &Version| {
            Held::of(
                &GetResp {
                    record,
                    provisional: None,
                },
                &rec,
                base,
            )
        };
        let insert = Version::default();
        assert_eq!(held(Some(v(5, None)), &insert), Without);
        assert_eq!(held(Some(v(5, Some(b"other"))), &insert), Replaced);
        assert_eq!(held(Some(v(12, None)), &insert), Replaced);
        assert_eq!(held(Some(v(10, Some(b"new"))), &insert), Committed);
        // an update on version 3: any newer version, a tombstone too, replaces it
        let update = v(3, Some(b"x")).version;
        assert_eq!(held(Some(v(5, None)), &update), Replaced);
        assert_eq!(held(Some(v(3, Some(b"x"))), &update), Without);
    }
}
