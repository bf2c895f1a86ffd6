//! One cluster node: membership (chitchat), the internal RPC client, and the replication
//! protocol on top of the local [`Replica`]: synchronous replication of writes, compare-and-swap
//! at the key's primary, read fall-back to peers, and anti-entropy.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
use super::replica::{intern, is_insert_only, is_local_keyspace, Replica, LOCAL_KEYSPACE};
use super::ring;
use super::version::Versioned;
use super::wire::*;
use crate::bus::LocalBus;
use crate::store::{Cas, StoreError, StoreResult};

mod call;
mod metrics;
mod replicate;
mod settle;
mod transition;
mod twins;

pub use call::RpcError;
pub use metrics::ClusterMetrics;
use transition::Unmade;

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
    /// `cluster.retired_nodes`: ids not counted among the configured nodes.
    pub retired: BTreeSet<String>,
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
    /// [`settings_fingerprint`] of this node's settings, gossiped as `settings`.
    pub settings_fingerprint: String,
    /// The seeds' gossip addresses, resolved at start (those that resolved).
    pub seed_addrs: Vec<SocketAddr>,
}

/// Where a node keeps the member ids it has seen ([`Node::remember`]), in [`LOCAL_KEYSPACE`].
const SEEN_KEY: &str = "members_seen";

/// How many node ids `store` remembers as members ([`Node::remember`]), less `retired`.
pub async fn remembered_members(
    store: &Arc<dyn crate::store::Store>,
    retired: &[String],
) -> Result<usize, crate::store::StoreError> {
    let seen = remembered(store).await?;
    Ok(seen.iter().filter(|id| !retired.contains(id)).count())
}

/// The node ids `store` remembers as members.
async fn remembered(
    store: &Arc<dyn crate::store::Store>,
) -> Result<BTreeSet<String>, crate::store::StoreError> {
    Ok(store
        .get(LOCAL_KEYSPACE, SEEN_KEY)
        .await?
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .unwrap_or_default())
}

/// A keyed fingerprint of the settings every node must share (the admin tokens, which ids are
/// retired, `single_use` and `updates` as configured, the server mode), gossiped so that a node
/// whose settings differ from a live peer's says so (cluster review: an admin token revoked on
/// two nodes of three stayed good for every request the balancer sent to the third). Keyed by the
/// cluster's RPC key, so the gossip gives nothing away about the tokens. `shared`: the other
/// settings, spelt alike on every node.
pub fn settings_fingerprint<'a>(
    rpc_key: &[u8; 32],
    admin_tokens: impl Iterator<Item = &'a str>,
    retired: &std::collections::BTreeSet<String>,
    shared: &str,
) -> String {
    let mut tokens: Vec<String> = admin_tokens.map(crate::crypto::sha256_hex).collect();
    tokens.sort();
    tokens.dedup();
    let canonical = serde_json::json!({
        "admin_tokens": tokens,
        "retired_nodes": retired,
        "shared": shared,
    });
    let input = format!("idstack cluster settings v1\0{canonical}");
    let mut fp = auth::mac_hex(rpc_key, input.as_bytes());
    fp.truncate(16);
    fp
}

/// [`Node::configured_nodes`] of what it reads: the listed members, the remembered ids and this
/// node, less the retired ids, at least `bootstrap_expect` and 1.
fn configured_count<'a>(
    members: impl Iterator<Item = &'a str>,
    seen: &'a BTreeSet<String>,
    me: &'a str,
    retired: &BTreeSet<String>,
    bootstrap_expect: usize,
) -> usize {
    let ids: BTreeSet<&str> = members
        .chain(seen.iter().map(String::as_str))
        .filter(|id| !retired.contains(*id))
        .chain([me])
        .collect();
    ids.len().max(bootstrap_expect).max(1)
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
/// recipient key's route (whoever holds it gets the key's messages), a peer key's connection (the
/// one its messages act on) and the mediator's default
/// invitation; the sandbox admin token. Inserts elsewhere (random ids) stay one write at the primary. (Data protocol 3:
/// nodes of earlier releases insert with one write, so this holds once every node runs it.)
pub const EXCLUSIVE_INSERT_KEYSPACES: [&str; 15] = [
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
    "mediator_conn_by_key",
    "mediator_invitations",
    crate::store::keyspaces::ADMIN,
];

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

/// Anti-entropy bookkeeping per peer, for `/api/cluster`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct PeerSync {
    /// Unix ms of the last completed anti-entropy round with this peer.
    pub last_sync_ms: Option<i64>,
    /// Records this node was missing (or had older) at that round, i.e. replication lag in records.
    pub last_repaired: u64,
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
    /// Every node id this node has listed as a member, kept in [`LOCAL_KEYSPACE`] across
    /// restarts (not retired ones): what a majority is counted against
    /// ([`Node::configured_nodes`]).
    seen: Mutex<BTreeSet<String>>,
    /// Held while the set is stored: each write stores the set as it is then, so a smaller,
    /// older copy is never written after a larger one (review).
    seen_write: tokio::sync::Mutex<()>,
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
    /// Live peers whose gossiped settings fingerprint differs from this node's
    /// ([`settings_fingerprint`]).
    settings_differ: Mutex<Vec<String>>,
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
    /// Other incarnations gossiping under this node's id ([`twins`]).
    twins: Mutex<twins::Twins>,
    /// Whether a twin was running at the last membership refresh (it is logged when this changes).
    twin_running: AtomicBool,
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
            // a peer answers itself; a redirect would re-send the signed call elsewhere
            .redirect(reqwest::redirect::Policy::none())
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
            seen: Mutex::default(),
            seen_write: tokio::sync::Mutex::default(),
            suspects: Mutex::default(),
            background: Mutex::default(),
            caught_up: AtomicBool::new(false),
            sync: Mutex::default(),
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(1 << 32),
            recovering: AtomicBool::new(false),
            settings_differ: Mutex::default(),
            cut_off: AtomicBool::new(false),
            write_block: Mutex::default(),
            serving: AtomicBool::new(false),
            gossiped_ready: tokio::sync::Mutex::default(),
            held_back_refusals: AtomicU64::new(0),
            transitions: Mutex::default(),
            twins: Mutex::default(),
            twin_running: AtomicBool::new(false),
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

    /// [`auth::HEADER_RESP_LEN`] of an answer of `len` bytes.
    pub fn sign_response_len(&self, path: &str, nonce: &str, status: u16, len: u64) -> String {
        auth::sign_response_len(&self.rpc_key, path, nonce, status, len)
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
        self.catch_up_in_background("after the pause");
    }

    /// Runs anti-entropy rounds until one succeeds with every live peer, then reports this node
    /// caught up; until then it is not (readiness 503, no primary of its own copy). Once started,
    /// not started again while it runs. Rounds are 200 ms apart for a minute, 2 s after: a round
    /// that keeps failing is no reason to report caught up (cluster review: after 60 s a node
    /// that had not caught up said it had, and served a stale status list as current).
    pub fn catch_up_in_background(self: &Arc<Self>, what: &'static str) {
        if self.recovering.swap(true, Ordering::SeqCst) {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            node.set_gossip("caught_up", "false").await;
            let started = Instant::now();
            let mut said = false;
            loop {
                node.refresh_members().await;
                if node.anti_entropy_round().await {
                    break;
                }
                let slow = started.elapsed() > Duration::from_secs(60);
                if slow && !said {
                    said = true;
                    tracing::warn!("cluster: still not synced with every live peer after 60 s; not ready until a round with each of them succeeds");
                }
                let pause = if slow { 2_000 } else { 200 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            node.recovering.store(false, Ordering::SeqCst);
            node.set_caught_up().await;
            tracing::info!("cluster: caught up {what}");
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

    /// Live peers whose settings that must be shared differ from this node's
    /// ([`settings_fingerprint`]).
    pub fn settings_differ(&self) -> Vec<String> {
        self.settings_differ
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
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
        let known: std::collections::HashSet<SocketAddr> = self
            .members()
            .iter()
            .filter_map(|m| m.gossip_addr.parse().ok())
            .chain(self.settings.seed_addrs.iter().copied())
            .map(super::gossip::canonical)
            .collect();
        let skewed = self.metrics.skewed.recent(self.now_ms(), &known);
        if let Some(why) = super::gossip::skew_verdict(skewed, self.live_peers().len()) {
            out.push(why);
        }
        if let Some(w) = self.write_block.lock().ok().and_then(|w| w.clone()) {
            out.push(w);
        }
        for (addr, generation) in self.twins() {
            out.push(format!(
                "another process runs with this node's id (gossip address {addr}, generation {generation}): a copied data dir or a cloned machine; give each node its own"
            ));
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
            let me = cc.self_chitchat_id();
            let others_as_me = cc
                .node_states()
                .iter()
                .filter(|(id, _)| *id.node_id == *self.settings.node_id && *id != me)
                .map(|(id, st)| {
                    let who = (id.gossip_advertise_addr.to_string(), id.generation_id);
                    (who, u64::from(st.heartbeat()))
                });
            self.observe_twins(others_as_me);
            let live: std::collections::HashSet<_> = cc.live_nodes().cloned().collect();
            let mut by_id: BTreeMap<String, Member> = BTreeMap::new();
            let mut retired_alive = 0usize;
            let mut differ = Vec::new();
            for (id, st) in cc.node_states() {
                let Some(rpc) = st.get("rpc") else { continue };
                // (a node of an earlier release gossips no fingerprint)
                if live.contains(id)
                    && *id.node_id != *self.settings.node_id
                    && st
                        .get("settings")
                        .is_some_and(|fp| fp != self.settings.settings_fingerprint)
                {
                    differ.push(id.node_id.to_string());
                }
                // a retired node still gossiping is no member: never live, never a primary, never
                // a voter (cluster review: it no longer counted toward the majority but its
                // acknowledgements still made one)
                if *id.node_id != *self.settings.node_id
                    && self.settings.retired.contains(&*id.node_id)
                {
                    retired_alive += usize::from(live.contains(id));
                    continue;
                }
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
            self.metrics.retired_alive.set(retired_alive as i64);
            differ.sort();
            differ.dedup();
            self.metrics.settings_differ.set(differ.len() as i64);
            if let Ok(mut d) = self.settings_differ.lock() {
                if *d != differ && !differ.is_empty() {
                    tracing::warn!(peers = ?differ, "cluster: these live peers run with other admin tokens, retired_nodes, single_use or updates than this node: set them the same on every node (a token revoked here still works there)");
                }
                *d = differ;
            }
            by_id.into_values().collect::<Vec<_>>()
        };
        self.remember(snapshot.iter().map(|m| m.node_id.clone()))
            .await;
        let live = snapshot.iter().filter(|m| m.state == "alive").count();
        self.metrics.members_live.set(live as i64);
        if let Ok(mut w) = self.members.write() {
            *w = Arc::new(snapshot);
        }
        self.metrics
            .held_back
            .set(i64::from(self.held_back().is_some()));
    }

    /// Notes what gossip shows of other incarnations under this node's id and logs a twin that
    /// starts or stops running ([`twins`]).
    fn observe_twins(&self, round: impl Iterator<Item = (twins::Incarnation, u64)>) {
        let now = self.mono_ms();
        let interval = u64::try_from(self.settings.gossip_interval.as_millis()).unwrap_or(1000);
        let running = match self.twins.lock() {
            Ok(mut t) => {
                t.observe(round, now);
                t.running(now, interval)
            }
            Err(_) => return,
        };
        let was = self
            .twin_running
            .swap(!running.is_empty(), Ordering::SeqCst);
        if !running.is_empty() && !was {
            tracing::error!(
                node = %self.settings.node_id,
                others = ?running,
                "cluster: another process is running with this node's id (a copied data dir or a cloned machine?); this node reports not ready until it stops. Give each node its own data dir, or its own cluster.node_id"
            );
        } else if running.is_empty() && was {
            tracing::info!("cluster: no other process runs with this node's id any more");
        }
    }

    /// The other processes running with this node's id (gossip address, generation).
    pub fn twins(&self) -> Vec<(String, u64)> {
        let interval = u64::try_from(self.settings.gossip_interval.as_millis()).unwrap_or(1000);
        self.twins
            .lock()
            .map(|t| t.running(self.mono_ms(), interval))
            .unwrap_or_default()
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

    /// Sends `req` to `path` at every live peer: awaited at those not suspect (a stalled one
    /// costs one RPC timeout, then it is suspect); a suspect gets it in the background, within
    /// its [`MAX_BACKGROUND_TO_SUSPECT`] slots.
    pub(in crate::cluster) async fn tell_live_peers<Req>(
        self: &Arc<Self>,
        path: &'static str,
        req: Arc<Req>,
    ) where
        Req: Serialize + Send + Sync + 'static,
    {
        let (trusted, suspects) = self.split_by_trust(self.live_peers());
        for (id, addr) in suspects {
            let Some(slot) = self.suspect_slot(&id) else {
                continue;
            };
            let (node, req) = (self.clone(), req.clone());
            tokio::spawn(async move {
                let _slot = slot;
                node.call::<_, Empty>(&id, &addr, path, &*req).await
            });
        }
        let calls = trusted
            .iter()
            .map(|(id, addr)| self.call::<_, Empty>(id, addr, path, &*req));
        futures_util::future::join_all(calls).await;
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

    // ---------------------------------------------------------------- replication

    /// Nodes a majority is counted against: `bootstrap_expect`, or every node this node has
    /// ever listed as a member (kept across restarts, [`Node::remember`]) but those
    /// `cluster.retired_nodes` names, when that is more. Gossip's own list forgets a dead node
    /// after an hour and starts empty on a restart: counted on it, the two sides of a partition
    /// of a grown cluster could each count a majority once a side restarted (cluster review).
    pub fn configured_nodes(&self) -> usize {
        let members = self.members();
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        configured_count(
            members.iter().map(|m| m.node_id.as_str()),
            &seen,
            self.id(),
            &self.settings.retired,
            self.settings.bootstrap_expect,
        )
    }

    /// The node ids this node remembers as members ([`Node::remember`]).
    pub fn remembered_ids(&self) -> Vec<String> {
        self.seen
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Loads the node ids remembered before this start (retired ones dropped).
    pub async fn load_seen(&self) -> Result<(), crate::store::StoreError> {
        let remembered = remembered(&self.replica.inner).await?;
        let kept: BTreeSet<String> = remembered
            .iter()
            .filter(|id| !self.settings.retired.contains(*id))
            .cloned()
            .collect();
        if let Ok(mut s) = self.seen.lock() {
            *s = kept.clone();
        }
        if kept.len() != remembered.len() {
            self.store_seen().await;
        }
        Ok(())
    }

    /// Adds `ids` to the node ids this node remembers (not retired ones), and stores the set
    /// when it grew.
    pub(in crate::cluster) async fn remember(&self, ids: impl Iterator<Item = String>) {
        let grew = {
            let Ok(mut seen) = self.seen.lock() else {
                return;
            };
            let mut grew = false;
            for id in ids.chain([self.id().to_string()]) {
                if !self.settings.retired.contains(&id) {
                    grew |= seen.insert(id);
                }
            }
            grew
        };
        if grew {
            self.store_seen().await;
        }
    }

    /// Stores the remembered set as it is once this writer's turn comes.
    async fn store_seen(&self) {
        let _turn = self.seen_write.lock().await;
        let Some(ids) = self.seen.lock().ok().map(|s| s.clone()) else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(&ids) else {
            return;
        };
        let stored = self
            .replica
            .inner
            .put(LOCAL_KEYSPACE, SEEN_KEY, bytes, None)
            .await;
        if let Err(e) = stored.and(self.replica.inner.flush().await) {
            tracing::warn!(error = %e, "cluster: the member ids seen could not be stored");
        }
    }

    /// Nodes (this one included) that must hold a single-use transition in consistent mode.
    pub fn majority(&self) -> usize {
        self.configured_nodes() / 2 + 1
    }

    /// Whether this node may serve reads that must not miss a write made elsewhere (a
    /// revocation) as current: in consistent mode, only while it reaches a majority of the nodes
    /// and has caught up (cluster review: a node cut off by a partition signed status lists
    /// that still showed revoked credentials valid, with a fresh `iat`).
    pub fn current(&self) -> Result<(), String> {
        if !self.settings.updates_consistent {
            return Ok(());
        }
        if !self.is_caught_up() {
            return Err("this node is catching up with the cluster; retry".into());
        }
        if self.live_count() < self.majority() {
            return Err(
                "this node is cut off from most of the cluster: what was changed elsewhere may not be here; retry"
                    .into(),
            );
        }
        Ok(())
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

    // ---------------------------------------------------------------- anti-entropy

    // ---------------------------------------------------------------- bus
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
    use super::settle::{peer_verdict, Held::*};
    use super::{older_members, Member};

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
        use super::settle::Held;
        use super::GetResp;
        use crate::cluster::version::{Version, Versioned};
        let v = |hlc: u64, value: Option<&[u8]>| Versioned {
            version: Version {
                hlc,
                node: "e".into(),
            },
            value: value.map(<[u8]>::to_vec),
            deadline_ms: None,
            keep_until_ms: None,
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

#[cfg(test)]
mod seen_tests {
    use super::*;

    #[test]
    fn the_configured_count_holds_every_node_seen_but_retired_ones() {
        let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let none = BTreeSet::new();
        // gossip lists two of five after a restart on a minority side: five are counted
        let seen = set(&["a", "b", "c", "d", "e"]);
        assert_eq!(
            configured_count(["a", "b"].into_iter(), &seen, "a", &none, 3),
            5
        );
        // a retired node is not
        assert_eq!(
            configured_count(["a", "b"].into_iter(), &seen, "a", &set(&["e"]), 3),
            4
        );
        // nothing seen yet: bootstrap_expect, and never less than this node
        assert_eq!(configured_count([].into_iter(), &none, "a", &none, 3), 3);
        assert_eq!(configured_count([].into_iter(), &none, "a", &none, 0), 1);
        // this node counts even if listed as retired by mistake
        assert_eq!(
            configured_count([].into_iter(), &none, "a", &set(&["a"]), 0),
            1
        );
    }
}
