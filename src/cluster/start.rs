//! Joining: binds the RPC listener, starts gossip, waits for the bootstrap quorum, catches up, and
//! hands back the cluster store and bus; owns the background loops and leaving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use tokio_util::sync::CancellationToken;

use super::node::{remembered_members, Node, NodeSettings};
use super::replica::{Replica, LOCAL_KEYSPACE};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::readiness::Readiness;
use crate::store::open::Opened;
use crate::store::{keyspaces, Cas, Store};
use crate::tasks::Tasks;

const JOINED_KEY: &str = "joined";
/// The last generation this data dir started with ([`next_generation`]).
const GENERATION_KEY: &str = "generation";

/// This start's generation: its start time (Unix ms), and past every earlier one this data dir
/// started with — a clock stepped back must not give this incarnation an earlier one's generation
/// (RPC requests signed for that one, whose replay cache is gone, would be taken; the older forms'
/// "signed since this incarnation started" check reads it as the start time).
async fn next_generation(store: &Arc<dyn Store>, now_ms: i64) -> anyhow::Result<u64> {
    let last = store
        .get(LOCAL_KEYSPACE, GENERATION_KEY)
        .await?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes);
    let generation = u64::try_from(now_ms)
        .unwrap_or(0)
        .max(last.saturating_add(1));
    store
        .put(
            LOCAL_KEYSPACE,
            GENERATION_KEY,
            generation.to_be_bytes().to_vec(),
            None,
        )
        .await?;
    Ok(generation)
}
/// The node id this data dir took from its gossip address ([`derived_node_id`]).
const NODE_ID_KEY: &str = "node_id";

/// Without `cluster.node_id`: the id this data dir took at its first start (its gossip address
/// then, and a random part). Derived again on every start, a node whose address changed (a container given a new IP)
/// came back as another node, and the one it had been stayed counted among the configured nodes
/// a majority is counted against (review).
async fn derived_node_id(store: &Arc<dyn Store>, gossip: SocketAddr) -> anyhow::Result<String> {
    if let Some(id) = store.get(LOCAL_KEYSPACE, NODE_ID_KEY).await? {
        if let Ok(id) = String::from_utf8(id) {
            if !id.is_empty() {
                return Ok(id);
            }
        }
    }
    // A data dir that started in cluster mode before kept its address as its id: it keeps it. A
    // new one adds a random part, so a node given an address another node had (IPs are reused)
    // does not take that node's id.
    let started_before = store.get(LOCAL_KEYSPACE, GENERATION_KEY).await?.is_some();
    let id = if started_before {
        gossip.to_string()
    } else {
        format!("{gossip}-{}", &crate::clock::random_id()[..8])
    };
    store
        .put(LOCAL_KEYSPACE, NODE_ID_KEY, id.clone().into_bytes(), None)
        .await?;
    Ok(id)
}

const INIT_LOCK_KEY: &str = "cluster_init_lock";

pub struct Cluster {
    pub node: Arc<Node>,
    chitchat: tokio::sync::Mutex<Option<ChitchatHandle>>,
    /// The RPC server of its own (until [`Cluster::hand_rpc_to_http`] when it shares the HTTP
    /// listener).
    rpc: std::sync::Mutex<Option<actix_web::dev::ServerHandle>>,
    /// `cluster.rpc_addr` is the HTTP listener: RPC runs on a server of its own while the node
    /// bootstraps, then on the public server (which mounts the RPC routes).
    pub rpc_on_http: bool,
}

async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))
}

fn port_of(addr: &str) -> anyhow::Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("`{addr}` needs a port"))
}

/// Joins the cluster (or forms it) and returns the replicated store and bus in place of `opened`'s.
// Over 80 lines: the cluster start sequence (bind, gossip, wait for the seeds, catch up, swap in the
// replicated store and bus) is one ordered procedure of calls; its order is what matters.
pub async fn start(
    settings: &Settings,
    opened: Opened,
    clock: SharedClock,
    readiness: &Arc<Readiness>,
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Opened, Arc<Cluster>)> {
    start_speaking(
        super::DATA_PROTOCOL,
        settings,
        opened,
        clock,
        readiness,
        tasks,
        shutdown,
    )
    .await
}

/// [`start`] as a node of data protocol `protocol` (tests start older and newer nodes).
async fn start_speaking(
    protocol: u32,
    settings: &Settings,
    opened: Opened,
    clock: SharedClock,
    readiness: &Arc<Readiness>,
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Opened, Arc<Cluster>)> {
    let c = &settings.raw.cluster;
    readiness.set_not_ready("cluster", "joining");
    let secret = settings
        .cluster_secret
        .as_ref()
        .context("cluster mode needs cluster.secret")?;

    let gossip_listen = resolve(&c.gossip_addr)
        .await
        .context("cluster.gossip_addr")?;
    let rpc_bind = if c.rpc_addr.is_empty() {
        c.gossip_addr.clone()
    } else {
        c.rpc_addr.clone()
    };
    let rpc_listen = resolve(&rpc_bind).await.context("cluster.rpc_addr")?;
    // Peers need this node's RPC while it bootstraps, before its roles (and so its HTTP app)
    // exist: on a shared address an RPC-only server holds it until the public server takes over.
    let rpc_on_http = rpc_listen == settings.bind;
    let rpc_listener = std::net::TcpListener::bind(rpc_listen)
        .with_context(|| format!("cluster RPC cannot listen on {rpc_listen}"))?;
    let rpc_bound = rpc_listener.local_addr()?;
    let advertise_host = if !c.advertise_host.is_empty() {
        c.advertise_host.clone()
    } else if gossip_listen.ip().is_unspecified() {
        anyhow::bail!("cluster.gossip_addr binds {gossip_listen}: set cluster.advertise_host to the address peers reach this node at");
    } else {
        gossip_listen.ip().to_string()
    };
    let gossip_advertise = if c.advertise_host.is_empty() {
        gossip_listen
    } else {
        resolve(&format!("{advertise_host}:{}", port_of(&c.gossip_addr)?))
            .await
            .context("cluster.advertise_host")?
    };
    let rpc_advertise = if c.advertise_host.is_empty() && !rpc_bound.ip().is_unspecified() {
        rpc_bound.to_string()
    } else {
        format!("{advertise_host}:{}", rpc_bound.port())
    };
    let node_id = if c.node_id.is_empty() {
        derived_node_id(&opened.store, gossip_advertise).await?
    } else {
        c.node_id.clone()
    };
    let bootstrap_expect = match c.bootstrap_expect {
        0 => auto_bootstrap_expect(&c.seeds, gossip_advertise).await,
        n => n,
    };
    // `auto` consistency is decided by the nodes this node has counted before (a grown cluster
    // whose seed list names fewer), not by the seeds alone (cluster review)
    let seen_before = remembered_members(&opened.store, &c.retired_nodes)
        .await
        .context("reading the member ids seen before")?;
    let configured_at_start = bootstrap_expect.max(seen_before);
    let roles: Vec<String> = settings
        .roles
        .iter()
        .map(|r| r.as_str().to_string())
        .collect();

    // A new generation on every start, so peers tell this incarnation from the one that died, and
    // RPC requests signed for an earlier one (captured before a restart) are refused.
    let generation = next_generation(&opened.store, clock.now_ms()).await?;
    let ns = NodeSettings {
        node_id: node_id.clone(),
        cluster_id: c.id.clone(),
        gossip_listen,
        gossip_advertise,
        rpc_listen: rpc_bound,
        rpc_advertise: rpc_advertise.clone(),
        seeds: c.seeds.clone(),
        seed_addrs: resolved_seeds(&c.seeds).await,
        replication_factor: c.replication_factor,
        bootstrap_expect,
        retired: c.retired_nodes.iter().cloned().collect(),
        join_timeout: Duration::from_secs(c.join_timeout_seconds),
        gossip_interval: Duration::from_millis(c.gossip_interval_ms),
        phi_threshold: c.phi_threshold,
        rpc_timeout: Duration::from_millis(c.rpc_timeout_ms),
        anti_entropy_interval: Duration::from_secs(c.anti_entropy_interval_seconds.max(1)),
        roles: roles.clone(),
        pause_threshold: Duration::from_millis(c.pause_threshold_ms.max(1)),
        single_use_consistent: c.single_use.is_consistent(configured_at_start),
        updates_consistent: c.updates.is_consistent(configured_at_start),
        protocol,
        generation,
        settings_fingerprint: String::new(),
    };

    let inner = opened.store.clone();
    let replica = Arc::new(Replica::new(
        inner.clone(),
        node_id.clone(),
        clock.clone(),
        Duration::from_secs(c.tombstone_ttl_seconds.max(60)),
    ));
    let n = replica
        .load_index()
        .await
        .context("indexing the local store")?;
    tracing::info!(records = n, "cluster: local replica indexed");
    let held = replica
        .load_provisionals()
        .await
        .context("reloading prepared transitions")?;
    if held > 0 {
        tracing::info!(
            held,
            "cluster: prepared transitions reloaded, to be settled with their executors"
        );
    }

    let gi = ns.gossip_interval;
    let cc_config = ChitchatConfig {
        chitchat_id: ChitchatId::new(node_id.clone(), generation, gossip_advertise),
        cluster_id: c.id.clone(),
        gossip_interval: gi,
        listen_addr: gossip_listen,
        seed_nodes: c.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: c.phi_threshold,
            sampling_window_size: 1000,
            max_interval: gi * 40,
            initial_interval: gi * 2,
            dead_node_grace_period: Duration::from_secs(3600),
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    // `protocol` first: chitchat sends a node's keys in the order they were set, so a peer that
    // holds its `rpc` (and so lists it) holds its protocol too, and never takes it for 0.
    let rpc_key = super::derive_rpc_key(secret.expose(), &c.id);
    // as configured (`auto` resolves per node, by what it has seen), and the mode: a sandbox
    // node accepts a token a production node does not
    let settings_fp = super::node::settings_fingerprint(
        &rpc_key,
        settings.admin_tokens.iter().map(|t| t.expose()),
        &ns.retired,
        &format!(
            "single_use={:?};updates={:?};mode={:?}",
            c.single_use, c.updates, settings.raw.server.mode
        ),
    );
    let initial = vec![
        ("protocol".to_string(), protocol.to_string()),
        ("settings".to_string(), settings_fp.clone()),
        ("rpc".to_string(), rpc_advertise.clone()),
        ("roles".to_string(), roles.join(",")),
        ("ready".to_string(), "false".to_string()),
        ("caught_up".to_string(), "false".to_string()),
    ];
    // Gossip sealed under the cluster key: a process without the secret is never a member.
    let metrics = super::node::ClusterMetrics::new()?;
    let transport = super::gossip::AuthUdpTransport {
        sealer: Arc::new(super::gossip::Sealer::new(super::derive_gossip_key(
            secret.expose(),
            &c.id,
        ))?),
        clock: clock.clone(),
        dropped: metrics.gossip_dropped.clone(),
        skewed: metrics.skewed.clone(),
    };
    let handle = spawn_chitchat(cc_config, initial, &transport)
        .await
        .with_context(|| format!("starting gossip on {gossip_listen} (udp)"))?;
    let chitchat = handle.chitchat();

    let local_bus = Arc::new(crate::bus::LocalBus::new());
    let ns = NodeSettings {
        settings_fingerprint: settings_fp,
        ..ns
    };
    let node = Arc::new(Node::new(
        ns, replica, chitchat, rpc_key, local_bus, metrics,
    )?);
    node.load_seen()
        .await
        .context("reading the member ids seen before")?;

    let rpc_server = super::rpc::server(node.clone(), rpc_listener)?;
    let rpc_handle = rpc_server.handle();
    tokio::spawn(rpc_server);
    tracing::info!(node = %node_id, gossip = %gossip_advertise, rpc = %rpc_advertise, seeds = ?c.seeds, "cluster: gossip and RPC up");

    spawn_membership(tasks, shutdown, node.clone(), readiness.clone());
    node.refresh_members().await;

    // Bootstrap: a node that never joined waits for the initial quorum before it creates anything
    // (so first-start defaults are created once, by one primary); one that did waits (bounded)
    // for a peer, so it catches up before serving.
    let joined_before = inner.get(LOCAL_KEYSPACE, JOINED_KEY).await?.is_some();
    let mut last_log = tokio::time::Instant::now();
    if !joined_before {
        while node.live_count() < node.settings.bootstrap_expect {
            if shutdown.is_cancelled() {
                return Err(stop_before_serving(handle, rpc_handle, &inner).await);
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!(
                    live = node.live_count(),
                    expect = node.settings.bootstrap_expect,
                    "cluster: waiting for bootstrap_expect members (default: every seed plus this node; set cluster.bootstrap_expect if a seed is this node under another address)"
                );
                last_log = tokio::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            node.refresh_members().await;
        }
    } else if !c.seeds.is_empty() {
        let until = tokio::time::Instant::now() + node.settings.join_timeout;
        while node.live_count() < 2 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            node.refresh_members().await;
        }
        if node.live_count() < 2 {
            tracing::warn!("cluster: no live peer within join_timeout_seconds; going on alone");
        }
    }

    // Catch up with every live peer before taking part as a primary or reporting ready.
    readiness.set_not_ready("cluster", "catching up");
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let synced = loop {
        if node.anti_entropy_round().await {
            break true;
        }
        if tokio::time::Instant::now() > until || shutdown.is_cancelled() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        node.refresh_members().await;
    };
    if synced {
        node.set_caught_up().await;
    } else {
        // the roles start, but the node is not caught up (not ready, no primary of its own
        // copy) until a round with every live peer succeeds
        tracing::warn!(
            "cluster: could not sync with every peer within 60 s; going on, not ready until a round with each of them succeeds"
        );
        node.catch_up_in_background("after a late start");
    }
    inner
        .put(LOCAL_KEYSPACE, JOINED_KEY, b"1".to_vec(), None)
        .await?;
    spawn_anti_entropy(tasks, shutdown, node.clone());
    spawn_heartbeat(tasks, shutdown, node.clone());
    tracing::info!(
        live = node.live_count(),
        caught_up = synced,
        "cluster: joined"
    );

    // A rolling upgrade: while a live node of an older data protocol serves, this one replicates
    // (it is a full member for RPC and anti-entropy) but does not initialise its roles or open
    // its HTTP listener.
    if !wait_out_older_nodes(&node, readiness, shutdown).await {
        return Err(stop_before_serving(handle, rpc_handle, &inner).await);
    }

    let cluster = Arc::new(Cluster {
        node: node.clone(),
        chitchat: tokio::sync::Mutex::new(Some(handle)),
        rpc: std::sync::Mutex::new(Some(rpc_handle)),
        rpc_on_http,
    });
    let opened = Opened {
        store: Arc::new(super::store::ClusterStore::new(node.clone())),
        sealer: opened.sealer,
        bus: Arc::new(super::bus::ClusterBus::new(node)),
        collectors: opened.collectors,
    };
    Ok((opened, cluster))
}

/// Stopped before serving (while the cluster forms or older nodes hold the node back): not an
/// error, the process exits cleanly.
#[derive(Debug, thiserror::Error)]
#[error("stopped before serving")]
pub struct StoppedBeforeServing;

/// Leaves a cluster this node never served in: gossip and RPC stop, the local store is flushed.
async fn stop_before_serving(
    gossip: ChitchatHandle,
    rpc: actix_web::dev::ServerHandle,
    inner: &Arc<dyn Store>,
) -> anyhow::Error {
    tracing::info!("cluster: stopped before serving");
    if let Err(e) = gossip.shutdown().await {
        tracing::debug!(error = %e, "gossip shutdown");
    }
    rpc.stop(true).await;
    if let Err(e) = inner.flush().await {
        return anyhow::Error::new(e).context("flushing the local store");
    }
    StoppedBeforeServing.into()
}

/// Waits while a live node of an older data protocol serves (a rolling upgrade), reporting it in
/// `readiness`; goes on once no older node has been seen live for a whole failure-detection
/// interval (an older node only briefly taken for dead does not release it). False: `shutdown`
/// came first.
async fn wait_out_older_nodes(
    node: &Node,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> bool {
    let settle = node.settings.gossip_interval * 40;
    let mut last_log: Option<tokio::time::Instant> = None;
    let mut clear_since: Option<tokio::time::Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            return false;
        }
        match node.held_back() {
            Some(why) => {
                clear_since = None;
                readiness.set_not_ready("cluster", &why);
                if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                    tracing::warn!("cluster: {why}");
                    last_log = Some(tokio::time::Instant::now());
                }
            }
            None if last_log.is_none() => return true,
            None => {
                let since = *clear_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= settle {
                    tracing::info!("cluster: no older node left; starting");
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        node.refresh_members().await;
    }
}

fn spawn_membership(
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
    node: Arc<Node>,
    readiness: Arc<Readiness>,
) {
    tasks.spawn("cluster-membership", shutdown, move |token| async move {
        let mut watcher = node.chitchat.lock().await.live_nodes_watcher();
        let mut tick = tokio::time::interval(node.settings.gossip_interval);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {}
                r = watcher.changed() => if r.is_err() { break },
            }
            node.refresh_members().await;
            // a serving node that an older one holds back: not ready in gossip, sockets closed
            readiness.hold_sessions(node.held_back().is_some());
            node.gossip_ready().await;
        }
    });
}

/// The seeds that resolve now, as socket addresses (for telling a member's stale gossip from a
/// stranger's: [`super::gossip::SkewSeen`]).
async fn resolved_seeds(seeds: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for seed in seeds {
        if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(2), resolve(seed)).await {
            out.push(a);
        }
    }
    out
}

/// The number of distinct nodes among the seeds and this node: the initial cluster a node with an
/// empty data dir waits for (`cluster.bootstrap_expect = 0`). A seed that does not resolve yet
/// counts by its name.
async fn auto_bootstrap_expect(seeds: &[String], me: SocketAddr) -> usize {
    let mut nodes = std::collections::BTreeSet::new();
    nodes.insert(me.to_string());
    for seed in seeds {
        match resolve(seed).await {
            Ok(a) => nodes.insert(a.to_string()),
            Err(_) => nodes.insert(seed.clone()),
        };
    }
    nodes.len()
}

/// The heartbeat (pause detection, [`Node::beat`]) every gossip interval, and every second a
/// write probe to the peers ([`Node::probe_writes`]) for readiness and the resolution of
/// prepared transitions whose decision did not arrive ([`Node::resolve_provisionals`]).
fn spawn_heartbeat(tasks: &mut Tasks, shutdown: &CancellationToken, node: Arc<Node>) {
    tasks.spawn("cluster-heartbeat", shutdown, move |token| async move {
        let every = node
            .settings
            .gossip_interval
            .min(Duration::from_millis(250));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_probe = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {}
            }
            node.beat();
            if last_probe.elapsed() >= Duration::from_secs(1) {
                last_probe = tokio::time::Instant::now();
                let n = node.clone();
                // off the heartbeat's path: a slow peer must not delay the beat
                tokio::spawn(async move {
                    n.probe_writes().await;
                    // decisions on prepared single-use transitions that did not arrive
                    n.resolve_provisionals(n.settings.rpc_timeout).await;
                });
            }
        }
    });
}

fn spawn_anti_entropy(tasks: &mut Tasks, shutdown: &CancellationToken, node: Arc<Node>) {
    tasks.spawn("cluster-anti-entropy", shutdown, move |token| async move {
        let mut tick = tokio::time::interval(node.settings.anti_entropy_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => { node.anti_entropy_round().await; }
            }
        }
    });
}

impl Cluster {
    /// Serialises role initialisation across the cluster: first-start defaults (default tenants and
    /// their signing keys) are created by exactly one node; the others find them when they get the
    /// lease. The lease is a compare-and-swap at its key's primary, with a TTL in case its holder dies.
    pub async fn init_lease(&self) -> anyhow::Result<Vec<u8>> {
        self.init_lease_until(&tokio_util::sync::CancellationToken::new())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stopped"))
    }

    /// [`init_lease`](Self::init_lease), given up when `shutdown` comes first (`None`): a node
    /// asked to stop while another one initialises does not wait for it.
    pub async fn init_lease_until(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let me = format!("{}/{}", self.node.id(), crate::clock::random_id()).into_bytes();
        let store = super::store::ClusterStore::new(self.node.clone());
        let mut waited = 0u32;
        // an attempt that failed may have taken the lease all the same (its answer lost)
        let mut uncertain = false;
        loop {
            match store
                .compare_and_swap(
                    keyspaces::SYSTEM,
                    INIT_LOCK_KEY,
                    None,
                    Some((me.clone(), Some(Duration::from_secs(60)))),
                )
                .await
            {
                Ok(Cas::Swapped) => return Ok(Some(me)),
                // this node's own earlier attempt, applied though its answer was lost
                Ok(Cas::Conflict(Some(held))) if held == me => return Ok(Some(me)),
                Ok(Cas::Conflict(_)) => {}
                Err(e) => {
                    uncertain = true;
                    tracing::warn!(error = %e, "cluster: init lease attempt failed")
                }
            }
            waited += 1;
            if waited % 50 == 0 {
                tracing::info!("cluster: waiting for another node to finish initialising");
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    if uncertain {
                        // (released only if it holds this node's value)
                        self.release_init_lease(me).await;
                    }
                    return Ok(None);
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    pub async fn release_init_lease(&self, lease: Vec<u8>) {
        let store = super::store::ClusterStore::new(self.node.clone());
        if let Err(e) = store
            .compare_and_swap(keyspaces::SYSTEM, INIT_LOCK_KEY, Some(lease), None)
            .await
        {
            tracing::warn!(error = %e, "cluster: releasing the init lease failed (it expires)");
        }
    }

    /// Tells the peers this node serves requests (or no longer does); while an older node holds
    /// it back, it gossips not ready whatever this says.
    pub async fn set_ready(&self, ready: bool) {
        self.node.set_serving(ready).await;
    }

    /// Waits while an older node holds this one back (see `start`): an older node that joined
    /// after this one started but before it served. False: `shutdown` came first.
    pub async fn wait_out_older_nodes(
        &self,
        readiness: &Readiness,
        shutdown: &CancellationToken,
    ) -> bool {
        wait_out_older_nodes(&self.node, readiness, shutdown).await
    }

    /// Singleton jobs run only where this is true: the live, caught-up member with the lowest id.
    pub fn is_leader(&self) -> bool {
        self.node.is_leader()
    }

    /// Leaves: not ready in gossip, a last gossip round, then gossip and RPC stop.
    pub async fn leave(&self) {
        self.set_ready(false).await;
        tokio::time::sleep(self.node.settings.gossip_interval * 2).await;
        if let Some(h) = self.chitchat.lock().await.take() {
            if let Err(e) = h.shutdown().await {
                tracing::debug!(error = %e, "gossip shutdown");
            }
        }
        self.stop_rpc_server().await;
    }

    async fn stop_rpc_server(&self) {
        let handle = self.rpc.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            h.stop(true).await;
        }
    }

    /// On a shared RPC/HTTP address: stops the bootstrap RPC server and waits until the address
    /// can be bound again, for the public server (with the RPC routes) to listen on it. Peers'
    /// calls in between fail like calls to a briefly unreachable node (retried, or repaired by
    /// anti-entropy).
    pub async fn hand_rpc_to_http(
        &self,
        addr: SocketAddr,
    ) -> anyhow::Result<std::net::TcpListener> {
        self.stop_rpc_server().await;
        let mut last = None;
        for _ in 0..100 {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => return Ok(l),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(anyhow::anyhow!(
            "cannot listen on {addr} after stopping the bootstrap RPC server: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }
}

#[cfg(test)]
mod tests {
    //! Two or three nodes in one process over real UDP gossip and real RPC on localhost.

    use super::*;
    use crate::clock::SystemClock;
    use crate::cluster::version::Versioned;
    use crate::store::{SledStore, Store, StoreError};
    use std::sync::atomic::Ordering;

    fn free_port() -> u16 {
        loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }

    struct TestNode {
        opened: Opened,
        cluster: Arc<Cluster>,
        token: CancellationToken,
        readiness: Arc<Readiness>,
        _tasks: Tasks,
    }

    /// A cluster node's configuration for these tests (50 ms gossip, no periodic anti-entropy).
    fn test_config(
        id: &str,
        port: u16,
        seeds: &[u16],
        expect: usize,
        secret: &str,
    ) -> crate::config::Config {
        let mut cfg = crate::config::Config::default();
        cfg.cluster.enabled = true;
        cfg.cluster.node_id = id.into();
        cfg.cluster.gossip_addr = format!("127.0.0.1:{port}");
        cfg.cluster.seeds = seeds.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        cfg.cluster.secret = crate::config::Secret::new(secret);
        cfg.cluster.bootstrap_expect = expect;
        cfg.cluster.gossip_interval_ms = 50;
        cfg.cluster.anti_entropy_interval_seconds = 3600;
        cfg
    }

    fn test_opened(store: Arc<dyn Store>) -> Opened {
        Opened {
            store,
            sealer: crate::store::Sealer::new(&[1u8; 32]),
            bus: Arc::new(crate::bus::LocalBus::new()),
            collectors: Vec::new(),
        }
    }

    async fn node(id: &str, port: u16, seeds: &[u16], expect: usize) -> TestNode {
        node_with_secret(id, port, seeds, expect, "unit-test-cluster-secret").await
    }

    async fn node_with_secret(
        id: &str,
        port: u16,
        seeds: &[u16],
        expect: usize,
        secret: &str,
    ) -> TestNode {
        node_on_clock(id, port, seeds, expect, secret, Arc::new(SystemClock)).await
    }

    async fn node_on_clock(
        id: &str,
        port: u16,
        seeds: &[u16],
        expect: usize,
        secret: &str,
        clock: SharedClock,
    ) -> TestNode {
        let settings = test_config(id, port, seeds, expect, secret)
            .finish()
            .unwrap();
        let readiness = Arc::new(Readiness::default());
        start_test_node(
            super::super::DATA_PROTOCOL,
            settings,
            clock,
            readiness,
            CancellationToken::new(),
        )
        .await
    }

    /// A node of data protocol `protocol` on a temporary sled store.
    async fn start_test_node(
        protocol: u32,
        settings: Settings,
        clock: SharedClock,
        readiness: Arc<Readiness>,
        token: CancellationToken,
    ) -> TestNode {
        try_start_test_node(protocol, settings, clock, readiness, token)
            .await
            .unwrap()
    }

    async fn try_start_test_node(
        protocol: u32,
        settings: Settings,
        clock: SharedClock,
        readiness: Arc<Readiness>,
        token: CancellationToken,
    ) -> anyhow::Result<TestNode> {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary(clock.clone()).unwrap());
        let mut tasks = Tasks::default();
        let (opened, cluster) = start_speaking(
            protocol,
            &settings,
            test_opened(store),
            clock,
            &readiness,
            &mut tasks,
            &token,
        )
        .await?;
        Ok(TestNode {
            opened,
            cluster,
            token,
            readiness,
            _tasks: tasks,
        })
    }

    /// A node of a newer data protocol joining a live older one (a rolling upgrade) replicates
    /// but does not finish starting until the older node has left; an older node that joins a
    /// serving newer one later makes it not ready and refuses its writes until it leaves too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_newer_node_holds_back_while_an_older_one_serves() {
        let old = super::super::DATA_PROTOCOL;
        let (pa, pb) = (free_port(), free_port());
        let a = node("a", pa, &[], 1).await;
        let settings = test_config("b", pb, &[pa], 2, "unit-test-cluster-secret")
            .finish()
            .unwrap();
        let readiness = Arc::new(Readiness::default());
        let starting = tokio::spawn(start_test_node(
            old + 1,
            settings,
            Arc::new(SystemClock),
            readiness.clone(),
            CancellationToken::new(),
        ));
        let held = |r: &Readiness| {
            r.failing()
                .into_iter()
                .any(|(c, why)| c == "cluster" && why.contains(&format!("a (protocol {old})")))
        };
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while !held(&readiness) {
            assert!(
                std::time::Instant::now() < until,
                "{:?}",
                readiness.failing()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // b holds back (it has joined and caught up, so its replica takes writes); a serves
        assert!(!starting.is_finished());
        // a node stopped while it holds back leaves cleanly (not an error: the process exits 0)
        let (b2_readiness, b2_token) = (Arc::new(Readiness::default()), CancellationToken::new());
        let b2 = tokio::spawn(try_start_test_node(
            old + 1,
            test_config("b2", free_port(), &[pa], 2, "unit-test-cluster-secret")
                .finish()
                .unwrap(),
            Arc::new(SystemClock),
            b2_readiness.clone(),
            b2_token.clone(),
        ));
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while !held(&b2_readiness) {
            assert!(
                std::time::Instant::now() < until,
                "{:?}",
                b2_readiness.failing()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        b2_token.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(30), b2)
            .await
            .expect("b2 did not stop")
            .unwrap();
        match stopped {
            Err(e) => assert!(e.is::<StoppedBeforeServing>(), "{e:#}"),
            Ok(_) => panic!("b2 started while a older node served"),
        }
        a.opened
            .store
            .put("unit_things", "by-a", b"v".to_vec(), None)
            .await
            .unwrap();
        a.cluster.node.refresh_members().await;
        let members = a.cluster.node.members();
        let b_seen = members.iter().find(|m| m.node_id == "b").unwrap();
        assert_eq!((b_seen.protocol, b_seen.ready), (old + 1, false));
        assert!(
            a.cluster.node.health().is_empty(),
            "{:?}",
            a.cluster.node.health()
        );
        // a leaves (the last older node): b starts
        a.token.cancel();
        a.cluster.leave().await;
        let b = tokio::time::timeout(Duration::from_secs(60), starting)
            .await
            .expect("b never started after a left")
            .unwrap();
        assert_eq!(b.cluster.node.held_back(), None);
        assert_eq!(
            b.opened.store.get("unit_things", "by-a").await.unwrap(),
            Some(b"v".to_vec())
        );
        b.opened
            .store
            .put("unit_things", "by-b", b"v".to_vec(), None)
            .await
            .unwrap();
        b.cluster.set_ready(true).await;
        let sessions = b.readiness.sessions();
        // an older node joins the serving b: b is not ready and refuses its own writes, its
        // sessions are told to close, and it gossips not ready...
        let c = node("c", free_port(), &[pb], 1).await;
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while b.cluster.node.held_back().is_none()
            || *sessions.borrow() != crate::readiness::Sessions::HeldBack
        {
            assert!(std::time::Instant::now() < until, "b never saw c");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(b.cluster.node.metrics.held_back.get(), 1);
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            c.cluster.node.refresh_members().await;
            let members = c.cluster.node.members();
            if members.iter().any(|m| m.node_id == "b" && !m.ready) {
                break;
            }
            assert!(std::time::Instant::now() < until, "c never saw b not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let err = b
            .opened
            .store
            .put("unit_things", "refused", b"v".to_vec(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(
            b.cluster
                .node
                .health()
                .iter()
                .any(|h| h.contains("c (protocol")),
            "{:?}",
            b.cluster.node.health()
        );
        assert!(!b.cluster.is_leader());
        // ...while c serves; once c has left, b writes again
        c.opened
            .store
            .put("unit_things", "by-c", b"v".to_vec(), None)
            .await
            .unwrap();
        c.token.cancel();
        c.cluster.leave().await;
        let until = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match b
                .opened
                .store
                .put("unit_things", "again", b"v".to_vec(), None)
                .await
            {
                Ok(()) => break,
                Err(e) => assert!(std::time::Instant::now() < until, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // ...and its sessions may open again
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while *sessions.borrow() != crate::readiness::Sessions::Open {
            assert!(
                std::time::Instant::now() < until,
                "b's sessions stay closed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(b.cluster.node.metrics.held_back.get(), 0);
        b.token.cancel();
        b.cluster.leave().await;
    }

    /// The replicated store keeps every `Store` promise (TTLs, CAS, scans, batches, export and
    /// import): the conformance suite through a cluster node on a fake clock, so every write goes
    /// through the replica and its version envelopes. One node here, three in
    /// [`three_nodes`]. The node lives for the rest of the test process.
    async fn cluster_store() -> (Arc<dyn Store>, Arc<crate::clock::FakeClock>) {
        let clock = crate::clock::FakeClock::new(1_800_000_000_000);
        let port = free_port();
        let n = node_on_clock("a", port, &[], 1, "unit-test-cluster-secret", clock.clone()).await;
        let store = n.opened.store.clone();
        Box::leak(Box::new(n));
        (store, clock)
    }
    crate::store::conformance::backend_tests!(cluster_store, true);

    /// A node of three restarted alone (its peers down; `updates` consistent) takes and releases
    /// its init lease: the release is an update of a `system` record, which must not need a
    /// majority, or every later start waits for the lease's TTL. (Attacker review finding.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_restarted_node_releases_its_init_lease() {
        let ports = [free_port(), free_port(), free_port()];
        let mut cfg = test_config("a", ports[0], &ports, 3, "unit-test-cluster-secret");
        cfg.cluster.join_timeout_seconds = 1;
        let settings = cfg.finish().unwrap();
        let clock: SharedClock = Arc::new(SystemClock);
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary(clock.clone()).unwrap());
        // it joined before: a restart, not a first start
        store
            .put(LOCAL_KEYSPACE, JOINED_KEY, b"1".to_vec(), None)
            .await
            .unwrap();
        let opened = test_opened(store);
        let readiness = Arc::new(Readiness::default());
        let (mut tasks, token) = (Tasks::default(), CancellationToken::new());
        let (opened, cluster) = start(&settings, opened, clock, &readiness, &mut tasks, &token)
            .await
            .unwrap();
        assert!(cluster.node.settings.updates_consistent);
        // alone of three: what it holds may lack a revocation made by the other two
        let e = opened.store.current().unwrap_err();
        assert!(e.to_string().contains("cut off"), "{e}");
        // and a wallet session is not judged on its copy (ended on the other side, it would go
        // on working here): 503, not the 401 an unknown token gets on a node that is current
        #[cfg(feature = "wallet")]
        {
            let ctx = crate::roles::RoleContext {
                store: opened.store.clone(),
                ..crate::roles::RoleContext::for_tests(Arc::new(SystemClock))
            };
            let wallet = crate::roles::wallet::WalletService::new(
                ctx,
                crate::config::WalletConfig::default(),
            );
            let Err(refused) = wallet.authenticate("any-token").await else {
                panic!("a cut-off node judged a wallet session on its copy");
            };
            assert_eq!(
                crate::error::ErrorCode::error_code(&refused),
                crate::error::Code::Unavailable
            );
        }
        let lease = cluster.init_lease().await.unwrap();
        // another attempt while it is held gives up once the node is asked to stop
        let stop = CancellationToken::new();
        stop.cancel();
        let waited = tokio::time::timeout(Duration::from_secs(30), cluster.init_lease_until(&stop))
            .await
            .expect("a stopping node kept waiting for the init lease");
        assert!(waited.unwrap().is_none());
        cluster.release_init_lease(lease).await;
        let held = opened
            .store
            .get(keyspaces::SYSTEM, INIT_LOCK_KEY)
            .await
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), cluster.init_lease()).await;
        // the sandbox admin token it holds is used as it is: no majority to read it at
        for ks in [keyspaces::SYSTEM, keyspaces::ADMIN] {
            let sealed = opened
                .sealer
                .seal(b"sandbox_admin_token", format!("token-in-{ks}").as_bytes())
                .unwrap();
            let rec = crate::cluster::version::Versioned {
                version: cluster.node.replica.new_version(),
                value: Some(sealed),
                deadline_ms: None,
                keep_until_ms: None,
            };
            let ks = crate::cluster::replica::intern(ks).unwrap();
            cluster
                .node
                .replica
                .merge(ks, "sandbox_admin_token", &rec)
                .await
                .unwrap();
            let t = tokio::time::timeout(
                Duration::from_secs(10),
                crate::server::first_start::sandbox_admin_token(&opened),
            )
            .await
            .expect("reading the admin token waited for peers")
            .expect("a node restarted alone could not read its admin token");
            // an earlier release's token (in `system`) is used until an `admin` one is there
            assert_eq!(t.expose(), format!("token-in-{ks}"));
        }
        token.cancel();
        assert!(held.is_none(), "init lease still held: {held:?}");
        assert!(next.is_ok(), "the next init waited for the lease's TTL");
    }

    mod three_nodes {
        //! The conformance suite on three in-process nodes (`single_use` and `updates`
        //! consistent, as `auto` makes them from three nodes): every compare-and-swap — and so
        //! every update and racing redemption of the suite — is sent to the next node in turn,
        //! as a round-robin balancer would, so all three execute and forward them concurrently.

        use super::*;
        use crate::store::StoreResult;
        use std::sync::atomic::AtomicUsize;

        /// Reads and plain writes at the first node; compare-and-swaps and settled reads at each
        /// node in turn.
        struct RoundRobin {
            inner: Arc<dyn Store>,
            nodes: Vec<Arc<dyn Store>>,
            next: AtomicUsize,
        }

        impl RoundRobin {
            fn next(&self) -> &Arc<dyn Store> {
                &self.nodes[self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len()]
            }
        }

        crate::store::test_wrapper::store_wrapper!(RoundRobin, own get_settled {
            async fn get(&self, ks: &'static str, key: &str) -> StoreResult<Option<Vec<u8>>> {
                self.inner.get(ks, key).await
            }
            async fn get_settled(
                &self,
                ks: &'static str,
                key: &str,
            ) -> StoreResult<Option<Vec<u8>>> {
                // read at the primary from each node in turn, as the compare-and-swaps are
                self.next().get_settled(ks, key).await
            }
            async fn put(
                &self,
                ks: &'static str,
                key: &str,
                value: Vec<u8>,
                ttl: Option<Duration>,
            ) -> StoreResult<()> {
                self.inner.put(ks, key, value, ttl).await
            }
            async fn compare_and_swap(
                &self,
                ks: &'static str,
                key: &str,
                expected: Option<Vec<u8>>,
                new: Option<(Vec<u8>, Option<Duration>)>,
            ) -> StoreResult<Cas> {
                self.next().compare_and_swap(ks, key, expected, new).await
            }
        });

        /// Three fresh nodes on one fake clock; they live until the test's runtime ends.
        async fn three_node_store() -> (Arc<dyn Store>, Arc<crate::clock::FakeClock>) {
            let clock = crate::clock::FakeClock::new(1_800_000_000_000);
            let ports = [free_port(), free_port(), free_port()];
            let secret = "unit-test-cluster-secret";
            let (a, b, c) = tokio::join!(
                node_on_clock("a", ports[0], &ports, 3, secret, clock.clone()),
                node_on_clock("b", ports[1], &ports, 3, secret, clock.clone()),
                node_on_clock("c", ports[2], &ports, 3, secret, clock.clone())
            );
            for n in [&a, &b, &c] {
                let s = &n.cluster.node.settings;
                assert!(s.single_use_consistent && s.updates_consistent);
            }
            let store = Arc::new(RoundRobin {
                inner: a.opened.store.clone(),
                nodes: [&a, &b, &c].map(|n| n.opened.store.clone()).to_vec(),
                next: AtomicUsize::new(0),
            });
            Box::leak(Box::new([a, b, c]));
            (store, clock)
        }
        crate::store::conformance::backend_tests!(three_node_store, true);
    }

    /// A transition of `key` to `value` as an executor that is gone ("z") made it, on the
    /// version `b` holds: (the transition's record, its base). Prepare it where a scenario needs.
    async fn gone_executors_transition(
        b: &Node,
        ks: &'static str,
        key: &str,
        value: &[u8],
    ) -> (Versioned, crate::cluster::version::Version) {
        let base = b.replica.read(ks, key).await.unwrap().unwrap().version;
        let mut version = b.replica.new_version();
        version.node = "z".into();
        let rec = Versioned {
            version,
            value: Some(value.to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        (rec, base)
    }

    async fn three() -> Vec<TestNode> {
        let ports = [free_port(), free_port(), free_port()];
        let (a, b, c) = tokio::join!(
            node("a", ports[0], &ports, 3),
            node("b", ports[1], &ports, 3),
            node("c", ports[2], &ports, 3)
        );
        vec![a, b, c]
    }

    /// A node back from a pause (simulated: its last heartbeat moved back past the threshold)
    /// whose keys another node redeemed meanwhile must not redeem them again from its stale copy.
    async fn paused_primary_catches_up_before_its_compare_and_swap(nodes: &[TestNode]) {
        let ks = "unit_codes";
        let x = &nodes[0].cluster.node;
        // a key whose primary is x
        let key = (0..1000)
            .map(|i| format!("code-{i}"))
            .find(|k| x.primary_order(ks, k).first().map(|(id, _)| id.as_str()) == Some("a"))
            .unwrap();
        nodes[0]
            .opened
            .store
            .put(ks, &key, b"unused".to_vec(), None)
            .await
            .unwrap();
        // while x was stopped, b stood in and redeemed the code; x never heard of it
        let redeemed = nodes[1].cluster.node.replica.tombstone();
        for n in &nodes[1..] {
            n.cluster
                .node
                .replica
                .merge(ks, &key, &redeemed)
                .await
                .unwrap();
        }
        assert!(x
            .replica
            .read(ks, &key)
            .await
            .unwrap()
            .unwrap()
            .value
            .is_some());
        x.pretend_paused();
        // the stale primary's own attempt: it pulls the newest version first and loses
        let again = nodes[0]
            .opened
            .store
            .compare_and_swap(ks, &key, Some(b"unused".to_vec()), None)
            .await
            .unwrap();
        assert_eq!(again, Cas::Conflict(None));
        assert!(x.metrics.standing_lost.get() >= 1);
        // and it earns its standing back by catching up
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while !x.is_caught_up() {
            assert!(std::time::Instant::now() < until, "{:?}", x.health());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `single_use` and `updates = "consistent"` (auto with three nodes): a primary that is
    /// caught up (no pause) but missed a redemption the other two made — a healed partition —
    /// reads the key from a majority before its compare-and-swap and loses.
    // Over 80 lines: a multi-node scenario test, step by step.
    async fn consistent_primary_reads_a_majority_before_a_single_use_transition(
        nodes: &[TestNode],
    ) {
        let x = &nodes[0].cluster.node;
        assert!(x.settings.single_use_consistent);
        assert_eq!((x.configured_nodes(), x.majority()), (3, 2));
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while !x.is_caught_up() || x.live_count() < 3 {
            assert!(std::time::Instant::now() < until, "{:?}", x.health());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for ks in ["issuer_codes", "unit_plain"] {
            let key = (0..1000)
                .map(|i| format!("healed-{i}"))
                .find(|k| x.primary_order(ks, k).first().map(|(id, _)| id.as_str()) == Some("a"))
                .unwrap();
            nodes[0]
                .opened
                .store
                .put(ks, &key, b"unused".to_vec(), None)
                .await
                .unwrap();
            // redeemed on the other side of a partition, which has healed since
            let redeemed = nodes[1].cluster.node.replica.tombstone();
            for n in &nodes[1..] {
                n.cluster
                    .node
                    .replica
                    .merge(ks, &key, &redeemed)
                    .await
                    .unwrap();
            }
            let got = nodes[0]
                .opened
                .store
                .compare_and_swap(ks, &key, Some(b"unused".to_vec()), None)
                .await
                .unwrap();
            // a single-use keyspace (`single_use`) and any other (`updates`, consistent too
            // from three nodes): the update is made on what a majority holds, not on the
            // primary's stale copy
            assert_eq!(got, Cas::Conflict(None), "{ks}: applied once");
        }

        // Two nodes that both execute a transition of one code at the same instant (as when
        // their membership views disagree about the primary): peers accept a transition only
        // on the version it was made on, so at most one reaches a majority.
        for round in 0..5 {
            let key = format!("contended-{round}");
            nodes[0]
                .opened
                .store
                .put("issuer_codes", &key, b"v0".to_vec(), None)
                .await
                .unwrap();
            let (a, b) = (nodes[0].cluster.node.clone(), nodes[1].cluster.node.clone());
            let (ra, rb) = tokio::join!(
                a.cas_local(
                    "issuer_codes",
                    &key,
                    Some(b"v0".to_vec()),
                    Some((b"by-a".to_vec(), None))
                ),
                b.cas_local(
                    "issuer_codes",
                    &key,
                    Some(b"v0".to_vec()),
                    Some((b"by-b".to_vec(), None))
                )
            );
            let won: Vec<&str> = [("a", &ra), ("b", &rb)]
                .into_iter()
                .filter(|(_, r)| matches!(r, Ok((Cas::Swapped, _))))
                .map(|(n, _)| n)
                .collect();
            assert!(won.len() <= 1, "round {round}: {ra:?} {rb:?}");
            // the third node holds the winner's value (or the untouched code)
            let held = nodes[2]
                .cluster
                .node
                .replica
                .read("issuer_codes", &key)
                .await
                .unwrap()
                .and_then(|v| v.value);
            match won.first() {
                Some(n) => assert_eq!(held, Some(format!("by-{n}").into_bytes())),
                None => assert!(held.as_deref().is_none_or(|v| v == b"v0"), "{held:?}"),
            }
        }
    }

    /// `consistent`: two nodes that both execute the insert of one named record at the same
    /// instant (both believe they are its primary: membership views disagree, or the primary
    /// looked suspect to one of them) — a default tenant's signing key, a c_nonce's use marker —
    /// create it at most once, and every node ends with that one. Before inserts in
    /// [`super::super::node::EXCLUSIVE_INSERT_KEYSPACES`] took the prepare round, both executors
    /// answered "created" with their own key (a three-node joint start under load once left the
    /// default verifier's record naming one key and its key record holding the other), and both
    /// issued on one c_nonce. An insert in another keyspace stays one write at its executor.
    async fn exclusive_inserts_are_made_once(nodes: &[TestNode]) {
        for ks in ["verifier_keys", "issuer_nonces"] {
            for round in 0..20 {
                let key = format!("joint-{round}");
                let (a, b) = (nodes[0].cluster.node.clone(), nodes[1].cluster.node.clone());
                let (ra, rb) = tokio::join!(
                    a.cas_local(ks, &key, None, Some((b"by-a".to_vec(), None))),
                    b.cas_local(ks, &key, None, Some((b"by-b".to_vec(), None)))
                );
                let won: Vec<&str> = [("a", &ra), ("b", &rb)]
                    .into_iter()
                    .filter(|(_, r)| matches!(r, Ok((Cas::Swapped, _))))
                    .map(|(n, _)| n)
                    .collect();
                assert!(won.len() <= 1, "{ks} round {round}: {ra:?} {rb:?}");
                // the loser saw the winner's record (a conflict) or was told to retry (503)
                for r in [&ra, &rb] {
                    match r {
                        Ok((Cas::Swapped, _)) | Err(StoreError::Unavailable(_)) => {}
                        Ok((Cas::Conflict(Some(v)), _)) => {
                            assert_eq!(
                                Some(v.as_slice()),
                                won.first().map(|n| if *n == "a" {
                                    &b"by-a"[..]
                                } else {
                                    &b"by-b"[..]
                                })
                            )
                        }
                        other => panic!("{ks} round {round}: {other:?}"),
                    }
                }
                // a retry of the insert finds what was created (or creates it once)
                let retried = a
                    .cas_local(ks, &key, None, Some((b"by-a".to_vec(), None)))
                    .await
                    .unwrap()
                    .0;
                let created = match (won.first(), retried) {
                    (Some(n), Cas::Conflict(Some(v))) => {
                        assert_eq!(v, format!("by-{n}").into_bytes());
                        v
                    }
                    (None, Cas::Swapped) => b"by-a".to_vec(),
                    (w, r) => panic!("{ks} round {round}: won {w:?}, retry {r:?}"),
                };
                // every node holds the one created
                let until = std::time::Instant::now() + Duration::from_secs(10);
                for (i, n) in nodes.iter().enumerate() {
                    loop {
                        let held = n.cluster.node.replica.read(ks, &key).await.unwrap();
                        if held.as_ref().and_then(|v| v.value.as_deref()) == Some(&created[..]) {
                            break;
                        }
                        assert!(
                            std::time::Instant::now() < until,
                            "{ks} round {round}: node {i} holds {held:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }

    /// `consistent`: a transition whose first round the peers accepted but whose acknowledgements
    /// arrived too late (the executor lost its majority between the majority read and the acks)
    /// fails with 503 and leaves nothing on the peers that accepted it — the code is not burnt,
    /// the next redemption succeeds once. Without the second round (provisional until the
    /// executor commits) both peers kept the consumed code and the retry got a conflict.
    async fn consistent_failed_transition_leaves_nothing_on_the_accepting_peers(
        nodes: &[TestNode],
    ) {
        let ks = "issuer_codes";
        let a = nodes[0].cluster.node.clone();
        let key = "late-acks";
        nodes[0]
            .opened
            .store
            .put(ks, key, b"unused".to_vec(), None)
            .await
            .unwrap();
        for n in &nodes[1..] {
            n.cluster
                .node
                .stall_prepares_ms
                .store(2_500, Ordering::SeqCst);
        }
        let got = a.cas_local(ks, key, Some(b"unused".to_vec()), None).await;
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
        for n in &nodes[1..] {
            n.cluster.node.stall_prepares_ms.store(0, Ordering::SeqCst);
        }
        // the abort reached the peers (or they ask the executor): nothing provisional is left
        // and every node still holds the unused code — anti-entropy has nothing to spread
        let until = std::time::Instant::now() + Duration::from_secs(20);
        for n in nodes {
            let node = &n.cluster.node;
            while node.replica.provisional_of(ks, key).is_some() {
                assert!(std::time::Instant::now() < until, "provisional kept");
                node.resolve_provisionals(Duration::ZERO).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let held = node
                .replica
                .read(ks, key)
                .await
                .unwrap()
                .and_then(|v| v.value);
            assert_eq!(held.as_deref(), Some(&b"unused"[..]), "on {}", node.id());
        }
        for n in &nodes[1..] {
            n.cluster
                .node
                .sync_with("a", &a.settings.rpc_advertise)
                .await
                .unwrap();
        }
        // the holder's retry: redeemed, once
        let first = nodes[2]
            .opened
            .store
            .compare_and_swap(ks, key, Some(b"unused".to_vec()), None)
            .await
            .unwrap();
        assert_eq!(first, Cas::Swapped);
        let again = nodes[1]
            .opened
            .store
            .compare_and_swap(ks, key, Some(b"unused".to_vec()), None)
            .await
            .unwrap();
        assert_eq!(again, Cas::Conflict(None));
    }

    /// A prepared transition whose decision never arrived is resolved by asking its executor:
    /// committed there — written here; still provisional there — kept; neither — dropped. While
    /// held, it is in no digest (anti-entropy cannot spread it) and a competing transition made
    /// on the same version is refused.
    // Over 80 lines: a multi-node scenario test, step by step.
    async fn lost_decisions_are_resolved_by_asking_the_executor(nodes: &[TestNode]) {
        let ks = "issuer_nonces";
        let (a, b, c) = (
            &nodes[0].cluster.node,
            &nodes[1].cluster.node,
            &nodes[2].cluster.node,
        );
        let mut base = Vec::new();
        for key in ["lost-commit", "lost-abort", "pending"] {
            nodes[0]
                .opened
                .store
                .put(ks, key, b"unused".to_vec(), None)
                .await
                .unwrap();
            base.push(c.replica.version_of(ks, key).unwrap());
        }
        let digest = c.replica.digest();
        let by_a = |_: usize| Versioned {
            version: a.replica.new_version(),
            value: None,
            deadline_ms: a.replica.deadline(Some(Duration::from_secs(60))),
            keep_until_ms: None,
        };
        let (commit, abort, pending) = (by_a(0), by_a(1), by_a(2));
        for (key, rec, base) in [
            ("lost-commit", &commit, &base[0]),
            ("lost-abort", &abort, &base[1]),
            ("pending", &pending, &base[2]),
        ] {
            assert!(c.replica.prepare(ks, key, rec, base).await.unwrap());
        }
        assert_eq!(
            c.replica.digest(),
            digest,
            "provisional records are in no digest"
        );
        // a competing transition on the same version is refused while one is held
        let competing = Versioned {
            version: b.replica.new_version(),
            value: None,
            deadline_ms: None,
            keep_until_ms: None,
        };
        assert!(!c
            .replica
            .prepare(ks, "lost-abort", &competing, &base[1])
            .await
            .unwrap());
        // a committed "lost-commit" (its decision to c lost), never decided "lost-abort" (a
        // restarted executor), and still holds "pending" as provisional itself
        a.replica.commit(ks, "lost-commit", &commit).await.unwrap();
        assert!(a
            .replica
            .prepare(ks, "pending", &pending, &base[2])
            .await
            .unwrap());
        assert_eq!(c.resolve_provisionals(Duration::ZERO).await, 2);
        assert_eq!(
            c.replica
                .read(ks, "lost-commit")
                .await
                .unwrap()
                .unwrap()
                .version,
            commit.version
        );
        assert!(c.replica.provisional_of(ks, "lost-commit").is_none());
        assert!(c.replica.provisional_of(ks, "lost-abort").is_none());
        assert_eq!(
            c.replica
                .read(ks, "lost-abort")
                .await
                .unwrap()
                .unwrap()
                .value
                .as_deref(),
            Some(&b"unused"[..])
        );
        assert_eq!(
            c.replica.provisional_of(ks, "pending"),
            Some(pending.version.clone())
        );
        a.replica.commit(ks, "pending", &pending).await.unwrap();
        assert_eq!(c.resolve_provisionals(Duration::ZERO).await, 1);
        assert!(c
            .replica
            .read(ks, "pending")
            .await
            .unwrap()
            .unwrap()
            .is_tombstone());
    }

    /// A transition its executor (a node "z", since gone for good) prepared on b and c before it
    /// died between its two rounds must not block the record: the next update settles it among
    /// the peers — z, b and c are a majority of the nodes, so z may have committed it and
    /// answered its client: it stands — and then goes through. Before, the provisional copies
    /// stayed until z answered (for a record without a TTL: forever) and every update was 503.
    async fn peers_settle_what_a_dead_executor_left_prepared(nodes: &[TestNode]) {
        let ks = "unit_things";
        let key = "revocable";
        nodes[0]
            .opened
            .store
            .put(ks, key, b"valid".to_vec(), None)
            .await
            .unwrap();
        let b = &nodes[1].cluster.node;
        let (rec, base) = gone_executors_transition(b, ks, key, b"renamed").await;
        for n in &nodes[1..] {
            assert!(n
                .cluster
                .node
                .replica
                .prepare(ks, key, &rec, &base)
                .await
                .unwrap());
        }
        // an update through every node in turn, from what it reads: the first ones may be
        // refused (503) until the peers settled it — in the background within seconds, or by
        // the executor's own wait — then every one goes through
        let until = std::time::Instant::now() + Duration::from_secs(20);
        for (i, n) in nodes.iter().enumerate() {
            loop {
                let cur = n.opened.store.get(ks, key).await.unwrap();
                assert_ne!(cur.as_deref(), Some(&b"valid"[..]).filter(|_| i > 0));
                let next = format!("revoked-{i}").into_bytes();
                match n
                    .opened
                    .store
                    .compare_and_swap(ks, key, cur.clone(), Some((next, None)))
                    .await
                {
                    Ok(Cas::Swapped) => break,
                    got => assert!(
                        std::time::Instant::now() < until,
                        "the record cannot be updated through node {i} (read {cur:?}): {got:?}"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for n in nodes {
            assert!(n.cluster.node.replica.provisional_of(ks, key).is_none());
        }
        // z's committed value was seen before the updates replaced it
        let history = nodes[2].opened.store.get(ks, key).await.unwrap();
        assert_eq!(history.as_deref(), Some(&b"revoked-2"[..]));
    }

    /// Without `cluster.node_id` a data dir keeps the id it took at its first start: a new one
    /// gets its address and a random part (an address another node had does not give its id),
    /// one that started in cluster mode before keeps its bare address.
    #[tokio::test]
    async fn a_derived_node_id_is_kept_by_its_data_dir() {
        let clock = crate::clock::FakeClock::new(1_700_000_000_000);
        let addr: SocketAddr = "10.0.0.2:7946".parse().unwrap();
        let fresh: Arc<dyn Store> =
            Arc::new(crate::store::sled_store::SledStore::temporary(clock.clone()).unwrap());
        let id = derived_node_id(&fresh, addr).await.unwrap();
        assert!(id.starts_with("10.0.0.2:7946-") && id.len() == "10.0.0.2:7946-".len() + 8);
        let moved: SocketAddr = "10.0.0.5:7946".parse().unwrap();
        assert_eq!(derived_node_id(&fresh, moved).await.unwrap(), id);
        let other: Arc<dyn Store> =
            Arc::new(crate::store::sled_store::SledStore::temporary(clock.clone()).unwrap());
        assert_ne!(derived_node_id(&other, addr).await.unwrap(), id);
        let earlier: Arc<dyn Store> =
            Arc::new(crate::store::sled_store::SledStore::temporary(clock).unwrap());
        next_generation(&earlier, 1_700_000_000_000).await.unwrap();
        assert_eq!(
            derived_node_id(&earlier, addr).await.unwrap(),
            "10.0.0.2:7946"
        );
    }

    /// The member ids a node has seen are kept in its local keyspace and counted after they
    /// leave gossip's list (cluster review: gossip forgets a dead node after an hour and starts
    /// empty after a restart, and the majority shrank with it); retired ids are not counted.
    async fn the_members_seen_are_remembered(nodes: &[TestNode]) {
        let x = &nodes[0].cluster.node;
        let stored = |x: &Node| {
            let inner = x.replica.inner.clone();
            async move {
                let raw = inner
                    .get(LOCAL_KEYSPACE, "members_seen")
                    .await
                    .unwrap()
                    .unwrap();
                serde_json::from_slice::<std::collections::BTreeSet<String>>(&raw).unwrap()
            }
        };
        let ids: std::collections::BTreeSet<String> = nodes
            .iter()
            .map(|n| n.cluster.node.id().to_string())
            .collect();
        assert_eq!(stored(x).await, ids);
        // what the next start decides `auto` consistency by
        let retired = [x.id().to_string()];
        assert_eq!(remembered_members(&x.replica.inner, &[]).await.unwrap(), 3);
        assert_eq!(
            remembered_members(&x.replica.inner, &retired)
                .await
                .unwrap(),
            2
        );
        // a node gossip no longer lists (gone for an hour, or unseen since a restart)
        x.remember(["gone".to_string()].into_iter()).await;
        assert!(stored(x).await.contains("gone"));
        assert_eq!((x.configured_nodes(), x.majority()), (4, 3));
        // what a restart reads back
        x.load_seen().await.unwrap();
        assert_eq!((x.configured_nodes(), x.majority()), (4, 3));
        // forgotten again, as `cluster.retired_nodes = ["gone"]` does at the next start
        let mut kept = stored(x).await;
        kept.remove("gone");
        x.replica
            .inner
            .put(
                LOCAL_KEYSPACE,
                "members_seen",
                serde_json::to_vec(&kept).unwrap(),
                None,
            )
            .await
            .unwrap();
        x.load_seen().await.unwrap();
        assert_eq!((x.configured_nodes(), x.majority()), (3, 2));
    }

    /// A node's own bookkeeping (its generation, its prepared copies) is read by no peer,
    /// through either read.
    async fn a_node_local_keyspace_is_read_by_no_peer(nodes: &[TestNode]) {
        use crate::cluster::node::RpcError;
        use crate::cluster::wire::{GetResp, KeyReq, PATH_GET, PATH_GET_SETTLED};
        let a = nodes[0].cluster.node.clone();
        let b_addr = nodes[1].cluster.node.settings.rpc_advertise.clone();
        for path in [PATH_GET, PATH_GET_SETTLED] {
            let req = KeyReq {
                ks: LOCAL_KEYSPACE.into(),
                key: GENERATION_KEY.into(),
            };
            let got = a.call::<_, GetResp>("b", &b_addr, path, &req).await;
            assert!(
                matches!(got, Err(RpcError::Remote(ref e)) if e.contains("not replicated")),
                "{path}: {got:?}"
            );
        }
    }

    /// The three nodes a, b, c, once `key` holds `v0` (written through a).
    async fn abc_with(
        nodes: &[TestNode],
        ks: &'static str,
        key: &str,
    ) -> (Arc<Node>, Arc<Node>, Arc<Node>) {
        nodes[0]
            .opened
            .store
            .put(ks, key, b"v0".to_vec(), None)
            .await
            .unwrap();
        let node = |i: usize| nodes[i].cluster.node.clone();
        (node(0), node(1), node(2))
    }

    /// Two executors of one key's transitions (membership views that disagree for a moment):
    /// b and c hold a competing transition (by "z") prepared when a makes its own, so both
    /// refuse a's. No node holds a's, so a makes it again shortly instead of answering 503;
    /// once z's is decided, a compares again on what it left and answers a definite conflict.
    async fn a_transition_every_peer_refused_for_a_competing_one_is_made_again(nodes: &[TestNode]) {
        let (ks, key) = ("unit_things", "competed");
        let (a, b, c) = abc_with(nodes, ks, key).await;
        let (rec, base) = gone_executors_transition(&b, ks, key, b"by-z").await;
        for n in [&b, &c] {
            assert!(n.replica.prepare(ks, key, &rec, &base).await.unwrap());
        }
        let retried = a.metrics.competing_retries.get();
        let made = {
            let a = a.clone();
            tokio::spawn(async move {
                a.cas_local(ks, key, Some(b"v0".to_vec()), Some((b"v1".to_vec(), None)))
                    .await
            })
        };
        let until = std::time::Instant::now() + Duration::from_secs(15);
        while a.metrics.competing_retries.get() == retried && !made.is_finished() {
            assert!(std::time::Instant::now() < until, "never refused");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // z's is decided (committed) while a waits to make its own again
        for n in [&b, &c] {
            n.replica.commit(ks, key, &rec).await.unwrap();
        }
        let got = made.await.unwrap().map(|(cas, _)| cas);
        assert!(
            matches!(got, Ok(Cas::Conflict(Some(ref v))) if v == b"by-z"),
            "{got:?}"
        );
    }

    /// Review of the suspect skipping: a suspects c, both healthy. c committed a transition
    /// and answered its client; its decision to b is still on the way, so b holds it only
    /// prepared. a's majority read has a majority without c — but b's answer holds a
    /// transition undecided, so a waits for c too and reads c's committed value, not the
    /// version from before it (which a read that stopped at the majority would answer).
    async fn a_read_that_meets_an_undecided_copy_waits_for_a_suspect(nodes: &[TestNode]) {
        let ks = "unit_things";
        // several keys: c's answer, still asked for, may come before b's and be counted anyway
        let keys: Vec<String> = (0..8).map(|i| format!("undecided-at-b-{i}")).collect();
        for key in &keys {
            let (a, b, c) = abc_with(nodes, ks, key).await;
            let base = b.replica.read(ks, key).await.unwrap().unwrap().version;
            // (c's clock past v0's, should v0 still be on its way to c)
            c.replica.hlc.observe(base.hlc);
            let rec = Versioned {
                version: c.replica.new_version(),
                value: Some(b"by-c".to_vec()),
                deadline_ms: None,
                keep_until_ms: None,
            };
            assert!(b.replica.prepare(ks, key, &rec, &base).await.unwrap());
            c.replica.commit(ks, key, &rec).await.unwrap();
            // (a's write probe trusts c again within a second: the read follows at once)
            a.suspect("c");
            let read = a.read_settled_local(ks, key).await.unwrap();
            assert_eq!(
                read.and_then(|r| r.value).as_deref(),
                Some(&b"by-c"[..]),
                "{key}"
            );
        }
        // b settles its copies with c (the decisions "lost")
        let b = nodes[1].cluster.node.clone();
        let until = std::time::Instant::now() + Duration::from_secs(15);
        while keys
            .iter()
            .any(|k| b.replica.provisional_of(ks, k).is_some())
        {
            b.resolve_provisionals(Duration::ZERO).await;
            assert!(std::time::Instant::now() < until, "never settled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A transition its peers settle as committed (its executor gone) reaches the peers that
    /// never prepared it at once, not at the next anti-entropy round (an hour in these tests):
    /// until then a later transition whose majority read missed the settling node could be made
    /// without it — and for an insert, "first created wins" would let the settled one replace
    /// an answered one later (attacker review).
    async fn a_settled_commit_reaches_the_peers_that_did_not_prepare_it(nodes: &[TestNode]) {
        let (ks, key) = ("unit_things", "settled-spread");
        nodes[0]
            .opened
            .store
            .put(ks, key, b"v0".to_vec(), None)
            .await
            .unwrap();
        let b = nodes[1].cluster.node.clone();
        let (rec, base) = gone_executors_transition(&b, ks, key, b"by-z").await;
        // prepared on b only: z (gone) and b make a majority of three, so it may have been
        // answered — it stands
        assert!(b.replica.prepare(ks, key, &rec, &base).await.unwrap());
        let until = std::time::Instant::now() + Duration::from_secs(15);
        while b.replica.provisional_of(ks, key).is_some() {
            b.settle_provisional(ks, key, &rec, &base).await;
            assert!(std::time::Instant::now() < until, "never settled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (i, n) in nodes.iter().enumerate() {
            loop {
                let held = n.cluster.node.replica.read(ks, key).await.unwrap();
                if held.as_ref().is_some_and(|h| h.version == rec.version) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < until,
                    "node {i} holds {held:?}, not the settled commit"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Transitions of a key whose provisional copy lingers (its executor died between its two
    /// rounds) queue behind each other at their executor; an unrelated key — whatever its hash —
    /// does not queue behind them (the per-key lock was striped and held through the wait).
    async fn an_unrelated_key_does_not_queue_behind_a_stuck_one(nodes: &[TestNode]) {
        let ks = "unit_things";
        let (stuck, other) = ("stuck", "other");
        for k in [stuck, other] {
            nodes[0]
                .opened
                .store
                .put(ks, k, b"v0".to_vec(), None)
                .await
                .unwrap();
        }
        let b = nodes[1].cluster.node.clone();
        let (rec, base) = gone_executors_transition(&b, ks, stuck, b"x").await;
        // only b holds it: whether it stands is not known until c answers
        assert!(b.replica.prepare(ks, stuck, &rec, &base).await.unwrap());
        let mut stuck_calls = Vec::new();
        for _ in 0..3 {
            let b = b.clone();
            stuck_calls.push(tokio::spawn(async move {
                b.cas_local(
                    ks,
                    stuck,
                    Some(b"v0".to_vec()),
                    Some((b"v1".to_vec(), None)),
                )
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let got = b
            .cas_local(
                ks,
                other,
                Some(b"v0".to_vec()),
                Some((b"v1".to_vec(), None)),
            )
            .await;
        let waited = started.elapsed();
        for c in stuck_calls {
            let _ = c.await;
        }
        assert!(matches!(got, Ok((Cas::Swapped, _))), "{got:?}");
        // not a timing assertion on speed: the unrelated key must not have waited out the stuck
        // key's wait (2 × rpc_timeout per queued transition)
        assert!(
            waited < b.settings.rpc_timeout,
            "an unrelated key's update waited {waited:?} behind a stuck key"
        );
        assert!(b.replica.provisional_of(ks, stuck).is_none());
    }

    /// An update executed by c (whose clock runs ahead), prepared on b and c, decided just after
    /// a delete through a that ran concurrently: once the delete is acknowledged, the record
    /// stays deleted. Before, the delete was a last-writer-wins tombstone stamped by a's older
    /// clock, and the update committed after it brought the record back on b and c.
    async fn a_delete_is_not_undone_by_an_update_decided_after_it(nodes: &[TestNode]) {
        let ks = "unit_things";
        let key = "deleted-wallet";
        nodes[0]
            .opened
            .store
            .put(ks, key, b"A".to_vec(), None)
            .await
            .unwrap();
        let (b, c) = (nodes[1].cluster.node.clone(), nodes[2].cluster.node.clone());
        let base = b.replica.read(ks, key).await.unwrap().unwrap().version;
        let mut v = c.replica.new_version();
        v.hlc += 10_000 << 16; // ten seconds ahead
        let rec = Versioned {
            version: v,
            value: Some(b"B".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        for n in [&b, &c] {
            assert!(n.replica.prepare(ks, key, &rec, &base).await.unwrap());
        }
        // c's decision, 300 ms later
        let decided = {
            let rec = rec.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                for n in [&c, &b] {
                    n.replica.commit(ks, key, &rec).await.unwrap();
                }
            })
        };
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match nodes[0].opened.store.delete(ks, key).await {
                Ok(_) => break,
                Err(e) => assert!(std::time::Instant::now() < until, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        decided.await.unwrap();
        for (i, n) in nodes.iter().enumerate() {
            assert_eq!(
                n.opened.store.get(ks, key).await.unwrap(),
                None,
                "node {i}: the deleted record came back"
            );
        }
    }

    /// A read at the key's primary (`Store::get_settled`) through a node whose copy lags answers
    /// the primary's value and merges it there, where a plain read answers the lagging copy; a
    /// fenced delete through that node compares the primary's value, not its copy; and a read
    /// made while the primary holds a transition of the key undecided answers once it is
    /// decided, with the transition's value.
    // Over 80 lines: a multi-node scenario test, step by step.
    async fn a_settled_read_answers_the_primarys_value_over_a_lagging_copy(nodes: &[TestNode]) {
        let ks = "unit_things";
        let a = &nodes[0].cluster.node;
        // a key whose primary is b, for every node
        let key_at_b = |prefix: &str| {
            (0..1000)
                .map(|i| format!("{prefix}-{i}"))
                .find(|k| {
                    nodes.iter().all(|n| {
                        n.cluster
                            .node
                            .primary_order(ks, k)
                            .first()
                            .map(|(id, _)| id.as_str())
                            == Some("b")
                    })
                })
                .unwrap()
        };
        let via_a = &nodes[0].opened.store;
        for deleted in [false, true] {
            let key = key_at_b(if deleted { "lagging-del" } else { "lagging" });
            via_a.put(ks, &key, b"v1".to_vec(), None).await.unwrap();
            // an update a missed: on b and c only
            let v2 = Versioned {
                version: nodes[1].cluster.node.replica.new_version(),
                value: Some(b"v2".to_vec()),
                deadline_ms: None,
                keep_until_ms: None,
            };
            for n in &nodes[1..] {
                n.cluster.node.replica.merge(ks, &key, &v2).await.unwrap();
            }
            assert_eq!(
                via_a.get(ks, &key).await.unwrap().as_deref(),
                Some(&b"v1"[..])
            );
            if deleted {
                // the fence compares the primary's value: a's copy would conflict
                assert!(via_a.delete(ks, &key).await.unwrap());
                for (i, n) in nodes.iter().enumerate() {
                    assert_eq!(
                        n.opened.store.get(ks, &key).await.unwrap(),
                        None,
                        "node {i}"
                    );
                }
                continue;
            }
            assert_eq!(
                via_a.get_settled(ks, &key).await.unwrap().as_deref(),
                Some(&b"v2"[..])
            );
            // merged here
            let here = a.replica.read(ks, &key).await.unwrap().unwrap();
            assert_eq!(here.version, v2.version);
        }

        // a transition c executes, prepared on b and c, decided 300 ms later
        let key = key_at_b("pending");
        via_a.put(ks, &key, b"v1".to_vec(), None).await.unwrap();
        let (b, c) = (nodes[1].cluster.node.clone(), nodes[2].cluster.node.clone());
        let base = b.replica.read(ks, &key).await.unwrap().unwrap().version;
        let rec = Versioned {
            version: c.replica.new_version(),
            value: Some(b"v2".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        for n in [&b, &c] {
            assert!(n.replica.prepare(ks, &key, &rec, &base).await.unwrap());
        }
        let decided = {
            let (rec, key, b) = (rec.clone(), key.clone(), b.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                for n in [&c, &b] {
                    n.replica.commit(ks, &key, &rec).await.unwrap();
                }
            })
        };
        let got = via_a.get_settled(ks, &key).await;
        decided.await.unwrap();
        assert_eq!(got.unwrap().as_deref(), Some(&b"v2"[..]));
        assert!(b.replica.provisional_of(ks, &key).is_none());
    }

    /// A process with another cluster secret, seeded with a member, is never listed (its gossip
    /// is dropped) and the members' writes still succeed.
    async fn process_without_the_secret_does_not_join(nodes: &[TestNode]) {
        let a_port = nodes[0].cluster.node.settings.gossip_listen.port();
        let rogue = node_with_secret(
            "0-rogue",
            free_port(),
            &[a_port],
            1,
            "another-secret-of-some-length",
        )
        .await;
        let a = &nodes[0].cluster.node;
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while a.metrics.gossip_dropped.get() == 0 {
            assert!(
                std::time::Instant::now() < until,
                "the rogue's gossip never arrived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // a few more gossip rounds of the rogue's
        tokio::time::sleep(Duration::from_millis(500)).await;
        for n in nodes {
            n.cluster.node.refresh_members().await;
            let ids: Vec<String> = n
                .cluster
                .node
                .members()
                .iter()
                .map(|m| m.node_id.clone())
                .collect();
            assert_eq!(ids, ["a", "b", "c"], "{ids:?}");
        }
        rogue.cluster.node.refresh_members().await;
        assert_eq!(rogue.cluster.node.live_count(), 1);
        nodes[1]
            .opened
            .store
            .put("unit_things", "after-rogue", b"v".to_vec(), None)
            .await
            .unwrap();
        assert!(
            nodes[0].cluster.node.health().is_empty(),
            "{:?}",
            nodes[0].cluster.node.health()
        );
        rogue.token.cancel();
        rogue.cluster.leave().await;
    }

    /// A start's generation is its start time, and past every earlier start's even when the
    /// clock was stepped back (attacker review: a repeated generation would take requests signed
    /// for the earlier incarnation).
    #[tokio::test]
    async fn a_generation_is_never_reused_by_a_clock_stepped_back() {
        let clock: SharedClock = Arc::new(SystemClock);
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary(clock).unwrap());
        assert_eq!(next_generation(&store, 5_000).await.unwrap(), 5_000);
        assert_eq!(next_generation(&store, 4_000).await.unwrap(), 5_001);
        assert_eq!(next_generation(&store, 5_001).await.unwrap(), 5_002);
        assert_eq!(next_generation(&store, 9_000).await.unwrap(), 9_000);
    }

    /// Nodes whose admin tokens (or retired ids, or consistency modes) differ each name the
    /// other in `settings_differ` (cluster review: a token revoked on two nodes of three stayed
    /// good on the third, and nothing said so); the fingerprint depends on the set of tokens,
    /// not their order, and on the cluster's key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nodes_whose_shared_settings_differ_say_so() {
        let secret = "unit-test-cluster-secret";
        let tok = |t: &str| crate::config::Secret::new(t);
        let start = |id: &str, port, seeds: Vec<u16>, tokens: Vec<&str>| {
            let mut cfg = test_config(id, port, &seeds, 1, secret);
            cfg.admin.tokens = tokens.into_iter().map(tok).collect();
            start_test_node(
                super::super::DATA_PROTOCOL,
                cfg.finish().unwrap(),
                Arc::new(SystemClock),
                Arc::new(Readiness::default()),
                CancellationToken::new(),
            )
        };
        let ap = free_port();
        let a = start(
            "a",
            ap,
            vec![],
            vec!["token-one-0123456789", "token-two-0123456789"],
        )
        .await;
        let b = start(
            "b",
            free_port(),
            vec![ap],
            vec!["token-two-0123456789", "token-one-0123456789"],
        )
        .await;
        let c = start("c", free_port(), vec![ap], vec!["token-one-0123456789"]).await;
        let (an, bn, cn) = (&a.cluster.node, &b.cluster.node, &c.cluster.node);
        assert_eq!(
            an.settings.settings_fingerprint,
            bn.settings.settings_fingerprint
        );
        assert_ne!(
            an.settings.settings_fingerprint,
            cn.settings.settings_fingerprint
        );
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            for n in [an, bn, cn] {
                n.refresh_members().await;
            }
            if an.settings_differ() == ["c"]
                && bn.settings_differ() == ["c"]
                && cn.settings_differ() == ["a", "b"]
            {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "{:?} {:?} {:?}",
                an.settings_differ(),
                bn.settings_differ(),
                cn.settings_differ()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(an.metrics.settings_differ.get(), 1);
        // keyed: the same settings under another cluster key give another fingerprint; the
        // tokens' order does not count
        let key = crate::cluster::derive_rpc_key(secret, "idstack");
        let other = crate::cluster::derive_rpc_key("another-cluster-secret", "idstack");
        let fp = |k: &[u8; 32], toks: &[&str]| {
            crate::cluster::node::settings_fingerprint(
                k,
                toks.iter().copied(),
                &Default::default(),
                "x",
            )
        };
        assert_eq!(fp(&key, &["t1", "t2"]), fp(&key, &["t2", "t1"]));
        assert_ne!(fp(&key, &["t1"]), fp(&other, &["t1"]));
        assert_ne!(fp(&key, &["t1"]), fp(&key, &["t1", "t2"]));
    }

    /// A node listed in `cluster.retired_nodes` that still runs (stopped later than the docs
    /// say, or back from a restored VM) is no member of the nodes that retired it: not in their
    /// member list — never live, a primary or a voter — and its calls are refused (cluster
    /// review: it was counted out of the majority but still voted, so both sides of a partition
    /// could make one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_retired_node_that_still_runs_is_no_member() {
        use crate::cluster::{auth, wire::PATH_DIGEST};
        let secret = "unit-test-cluster-secret";
        let key =
            crate::cluster::derive_rpc_key(secret, &crate::config::Config::default().cluster.id);
        let ap = free_port();
        let mut cfg = test_config("a", ap, &[], 1, secret);
        cfg.cluster.retired_nodes = vec!["r".into()];
        let a = start_test_node(
            super::super::DATA_PROTOCOL,
            cfg.finish().unwrap(),
            Arc::new(SystemClock),
            Arc::new(Readiness::default()),
            CancellationToken::new(),
        )
        .await;
        let node = a.cluster.node.clone();
        let addr = node.settings.rpc_advertise.clone();
        let call = |nonce: &str, caller: &str| {
            let ts = node.now_ms();
            let to = auth::Target::Incarnation("a", node.settings.generation);
            let headers = vec![
                (auth::HEADER_TS, ts.to_string()),
                (auth::HEADER_NONCE, nonce.to_string()),
                (
                    auth::HEADER_GENERATION,
                    node.settings.generation.to_string(),
                ),
                (
                    auth::HEADER_HEAD_SIG,
                    auth::sign_head(&key, to, "POST", PATH_DIGEST, ts, nonce),
                ),
                (
                    auth::HEADER_SIG,
                    auth::sign(&key, to, "POST", PATH_DIGEST, ts, nonce, b"{}"),
                ),
                (auth::HEADER_NODE, caller.to_string()),
            ];
            let addr = addr.clone();
            async move { raw_rpc(&addr, PATH_DIGEST, &headers, 2, b"{}").await.0 }
        };
        assert_eq!(call("n1", "q").await, 200);
        assert_eq!(call("n2", "r").await, 403);
        // r gossips with a (it does not know it is retired): a sees it and does not count it
        let r = tokio::spawn(start_test_node(
            super::super::DATA_PROTOCOL,
            test_config("r", free_port(), &[ap], 1, secret)
                .finish()
                .unwrap(),
            Arc::new(SystemClock),
            Arc::new(Readiness::default()),
            CancellationToken::new(),
        ));
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while node.metrics.retired_alive.get() != 1 {
            assert!(std::time::Instant::now() < until, "a never heard r");
            tokio::time::sleep(Duration::from_millis(50)).await;
            node.refresh_members().await;
        }
        assert!(node.members().iter().all(|m| m.node_id != "r"));
        assert_eq!(node.live_count(), 1);
        r.abort();
    }

    /// The older (node-only) form of a request is taken only from a live member of an older
    /// protocol, and who is calling is an unauthenticated header. Attacker review: (1) a request
    /// captured while a node ran protocol 2, replayed after its restart as protocol 3 with the
    /// caller header naming a live protocol-2 member, ran on the new incarnation (empty replay
    /// cache); (2) a node-form request refused because its caller is no older member (a current
    /// node whose view was stale) kept no nonce, and its replay under a spoofed header ran
    /// though its caller saw it fail. Now (1) is refused as signed before the incarnation
    /// started, and (2) is answered with the generation and its nonce kept: the replay is one.
    // Over 80 lines: a rolling-upgrade scenario, step by step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn node_form_requests_do_not_replay_under_a_spoofed_caller() {
        use crate::cluster::{auth, wire::PATH_DIGEST};
        let secret = "unit-test-cluster-secret";
        let key =
            crate::cluster::derive_rpc_key(secret, &crate::config::Config::default().cluster.id);
        let cfg = |id: &str, port, seeds: &[u16], n| {
            test_config(id, port, seeds, n, secret).finish().unwrap()
        };
        let clock = || -> SharedClock { Arc::new(SystemClock) };
        let ready = || Arc::new(Readiness::default());
        let pp = free_port();
        let p = start_test_node(
            2,
            cfg("p", pp, &[], 1),
            clock(),
            ready(),
            CancellationToken::new(),
        )
        .await;
        let node_form = |nonce: &str, caller: &str| {
            let (ts, to) = (p.cluster.node.now_ms(), auth::Target::Node("t"));
            vec![
                (auth::HEADER_TS, ts.to_string()),
                (auth::HEADER_NONCE, nonce.to_string()),
                (
                    auth::HEADER_HEAD_SIG,
                    auth::sign_head(&key, to, "POST", PATH_DIGEST, ts, nonce),
                ),
                (
                    auth::HEADER_SIG,
                    auth::sign(&key, to, "POST", PATH_DIGEST, ts, nonce, b"{}"),
                ),
                (auth::HEADER_NODE, caller.to_string()),
            ]
        };
        // answered, once the listener is up
        let status = |addr: String, h: Vec<(&'static str, String)>| async move {
            let until = std::time::Instant::now() + Duration::from_secs(20);
            while tokio::net::TcpStream::connect(&addr).await.is_err() {
                assert!(std::time::Instant::now() < until, "{addr} never listened");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            raw_rpc(&addr, PATH_DIGEST, &h, 2, b"{}").await
        };
        // t at protocol 2 takes a node-form request from p: captured
        let t2 = start_test_node(
            2,
            cfg("t", free_port(), &[pp], 2),
            clock(),
            ready(),
            CancellationToken::new(),
        )
        .await;
        let captured = node_form("captured", "p");
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = status(
                t2.cluster.node.settings.rpc_advertise.clone(),
                captured.clone(),
            )
            .await;
            if got.0 == 200 {
                break;
            }
            // p not yet a live member in t's view
            assert!(std::time::Instant::now() < until, "never accepted: {got:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t2.token.cancel();
        t2.cluster.leave().await;
        // restarted as protocol 3 (held back while p lives; its RPC listener serves)
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (pt3, token) = (free_port(), CancellationToken::new());
        let t3 = tokio::spawn(try_start_test_node(
            3,
            cfg("t", pt3, &[pp], 2),
            clock(),
            ready(),
            token.clone(),
        ));
        let addr3 = format!("127.0.0.1:{pt3}");
        // a fresh node-form request from p is taken once p is a live member in t's view: so the
        // refusals below are not for want of p
        let until = std::time::Instant::now() + Duration::from_secs(20);
        let mut i = 0;
        loop {
            i += 1;
            let got = status(addr3.clone(), node_form(&format!("fresh-{i}"), "p")).await;
            if got.0 == 200 {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "p's own requests refused: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // (1) the capture from before the restart
        let (code, _, body) = status(addr3.clone(), captured).await;
        assert_eq!(code, 401, "{}", String::from_utf8_lossy(&body));
        // (2) signed now by a key holder that is no older member: the generation, nonce kept...
        let h = node_form("from-c", "c");
        let (code, _, body) = status(addr3.clone(), h.clone()).await;
        assert_eq!(code, 401);
        assert!(
            auth::other_incarnation(&body).is_some(),
            "{}",
            String::from_utf8_lossy(&body)
        );
        // ...so its replay labelled as from p is a replay
        let mut spoofed = h;
        spoofed.last_mut().unwrap().1 = "p".into();
        let (code, _, body) = status(addr3.clone(), spoofed).await;
        assert_eq!(code, 401, "{}", String::from_utf8_lossy(&body));
        assert!(auth::other_incarnation(&body).is_none());
        token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), t3).await;
        p.token.cancel();
        p.cluster.leave().await;
    }

    /// Sends a raw HTTP/1.1 request head and the first bytes of its body, and reads the answer:
    /// (status, response signature header, body). The 30 s guard only keeps a server that waits
    /// for the rest of the body from hanging the test (then the test fails on the missing
    /// answer); nothing is asserted about time.
    async fn raw_rpc(
        addr: &str,
        path: &str,
        headers: &[(&str, String)],
        content_length: u64,
        body_start: &[u8],
    ) -> (u16, Option<String>, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n"
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body_start).await.unwrap();
        let mut buf = Vec::new();
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let text = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        return (text, buf[end + 4..end + 4 + len].to_vec());
                    }
                }
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed without an answer");
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        let (text, body) = tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("no answer while the body is incomplete");
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        let sig = text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(crate::cluster::auth::HEADER_RESP_SIG)
                .then(|| v.trim().to_string())
        });
        (status, sig, body)
    }

    /// The RPC listener judges a request's head before it reads its body: without a valid head
    /// signature a request announcing a 60 MiB body it never sends is refused at once (before,
    /// the node buffered whatever arrived, without a deadline); so is a head signed for another
    /// node, and a head replayed after its request was cut off (before, neither named the target
    /// nor reserved the nonce: the copy was read like the original); a signed head announcing
    /// more than the RPC body limit gets 413; a signed head whose body stalls is cut off; signed
    /// requests still work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rpc_refuses_an_unauthenticated_head_before_reading_the_body() {
        use crate::cluster::auth;
        use crate::cluster::wire::{DigestResp, Empty, PATH_APPLY, PATH_DIGEST};
        let secret = "unit-test-cluster-secret";
        let n = node("a", free_port(), &[], 1).await;
        let node = n.cluster.node.clone();
        let addr = node.settings.rpc_advertise.clone();
        let key =
            crate::cluster::derive_rpc_key(secret, &crate::config::Config::default().cluster.id);
        let signed_for = |target: &str, path: &str, nonce: &str, head_sig: Option<String>| {
            let ts = node.now_ms();
            let mut h = vec![
                (auth::HEADER_TS, ts.to_string()),
                (auth::HEADER_NONCE, nonce.to_string()),
                // the full signature cannot be right for a body that never arrives
                (auth::HEADER_SIG, "00".repeat(32)),
            ];
            if let Some(s) = head_sig {
                h.push((auth::HEADER_HEAD_SIG, s));
            }
            h.push((
                auth::HEADER_GENERATION,
                node.settings.generation.to_string(),
            ));
            let to = auth::Target::Incarnation(target, node.settings.generation);
            let good = auth::sign_head(&key, to, "POST", path, ts, nonce);
            (h, good)
        };
        let signed = |path: &str, nonce: &str, head_sig: Option<String>| {
            signed_for("a", path, nonce, head_sig)
        };
        const SIXTY_MIB: u64 = 60 * 1024 * 1024;

        // a forged head signature, a missing one, one for another path: 401 with the body unread
        let (h, _) = signed(PATH_APPLY, "attack-1", Some("00".repeat(32)));
        let (status, sig, body) =
            raw_rpc(&addr, PATH_APPLY, &h, SIXTY_MIB, b"{\"records\":[").await;
        assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
        // the refusal is signed like every answer (a peer believes it)
        assert!(auth::verify_response(
            &key,
            PATH_APPLY,
            "attack-1",
            401,
            &body,
            sig.as_deref()
        ));
        let (h, _) = signed(PATH_APPLY, "attack-2", None);
        let (status, _, _) = raw_rpc(&addr, PATH_APPLY, &h, SIXTY_MIB, b"{").await;
        assert_eq!(status, 401);
        let (mut h, _) = signed(PATH_APPLY, "attack-3", None);
        let (_, for_digest) = signed(PATH_DIGEST, "attack-3", None);
        h.push((auth::HEADER_HEAD_SIG, for_digest));
        let (status, _, _) = raw_rpc(&addr, PATH_APPLY, &h, SIXTY_MIB, b"{").await;
        assert_eq!(status, 401);
        // a head captured on its way to another node (b) of the cluster
        let (mut h, for_b) = signed_for("b", PATH_APPLY, "attack-4", None);
        h.push((auth::HEADER_HEAD_SIG, for_b));
        let (status, _, body) = raw_rpc(&addr, PATH_APPLY, &h, SIXTY_MIB, b"{").await;
        assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));

        // a valid head announcing more than the RPC body limit: 413, signed, body unread
        let (mut h, good) = signed(PATH_APPLY, "too-large", None);
        h.push((auth::HEADER_HEAD_SIG, good));
        let (status, sig, body) = raw_rpc(&addr, PATH_APPLY, &h, 65 * 1024 * 1024, b"{").await;
        assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
        assert!(auth::verify_response(
            &key,
            PATH_APPLY,
            "too-large",
            413,
            &body,
            sig.as_deref()
        ));

        // a valid head whose body stalls: the node stops waiting (rpc_timeout) and refuses it
        let (mut h, good) = signed(PATH_APPLY, "stalled", None);
        h.push((auth::HEADER_HEAD_SIG, good));
        let (status, _, body) = raw_rpc(&addr, PATH_APPLY, &h, 1000, b"{").await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("did not arrive"), "{body}");
        // its head again (its body never verified, so the whole request never used the nonce):
        // the first head reserved the nonce, so the copy is refused before its body
        let (status, _, body) = raw_rpc(&addr, PATH_APPLY, &h, SIXTY_MIB, b"{").await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("replayed"), "{body}");

        // signed requests work
        let _: DigestResp = node.call("a", &addr, PATH_DIGEST, &Empty {}).await.unwrap();
        n.token.cancel();
        n.cluster.leave().await;
    }

    /// Two processes under one node id (a copied data dir, a cloned machine): each sees the
    /// other's heartbeat advancing and reports not ready, naming it; a peer is not affected.
    /// Once the copy stops, the node is ready again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_processes_under_one_node_id_report_it() {
        let (pa, pb) = (free_port(), free_port());
        let a = node("a", pa, &[], 1).await;
        let b = node("b", pb, &[pa], 2).await;
        let copy = node("a", free_port(), &[pb], 1).await;
        let twin = |n: &TestNode| {
            n.cluster
                .node
                .health()
                .iter()
                .any(|h| h.contains("another process runs with this node's id"))
        };
        let until = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            for n in [&a, &b, &copy] {
                n.cluster.node.refresh_members().await;
            }
            if twin(&a) && twin(&copy) {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "a: {:?}, copy: {:?}",
                a.cluster.node.health(),
                copy.cluster.node.health()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            a.cluster.node.twins(),
            vec![(
                copy.cluster.node.settings.gossip_advertise.to_string(),
                copy.cluster.node.settings.generation
            )]
        );
        assert!(!twin(&b), "{:?}", b.cluster.node.health());
        // neither copy writes for its clients meanwhile; b does
        let store = |n: &TestNode| crate::cluster::store::ClusterStore::new(n.cluster.node.clone());
        for n in [&a, &copy] {
            let e = store(n)
                .put("things", "twin", b"x".to_vec(), None)
                .await
                .unwrap_err();
            assert!(e.to_string().contains("another process"), "{e}");
        }
        store(&b)
            .put("things", "b", b"x".to_vec(), None)
            .await
            .unwrap();
        // the copy stops: a is itself again
        copy.token.cancel();
        copy.cluster.leave().await;
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while twin(&a) {
            assert!(
                std::time::Instant::now() < until,
                "{:?}",
                a.cluster.node.health()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.cluster.node.refresh_members().await;
        }
        store(&a)
            .put("things", "a", b"x".to_vec(), None)
            .await
            .unwrap();
    }

    /// Attack, end to end: a request to node a captured on the wire just before a restarts,
    /// replayed to the restarted a (same id, new generation, empty replay cache) inside the
    /// window. Before, a took it again; now it is refused before its body, with a signed answer
    /// naming a's new generation. A caller whose view still names the old generation (gossip
    /// not yet propagated) gets through: it retries once, signed for the generation in the
    /// answer. (The restarted a listens on another port here; the node id is what counts.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_captured_before_a_restart_is_refused_after_it() {
        use crate::cluster::auth;
        use crate::cluster::wire::{DigestResp, Empty, PATH_DIGEST};
        let secret = "unit-test-cluster-secret";
        let key =
            crate::cluster::derive_rpc_key(secret, &crate::config::Config::default().cluster.id);
        let first = node("a", free_port(), &[], 1).await;
        let (old_gen, old_addr) = (
            first.cluster.node.settings.generation,
            first.cluster.node.settings.rpc_advertise.clone(),
        );
        // a peer's request to a, as it goes over the wire
        let (ts, nonce, body) = (first.cluster.node.now_ms(), "captured", b"{}");
        let to = auth::Target::Incarnation("a", old_gen);
        let h = vec![
            (auth::HEADER_TS, ts.to_string()),
            (auth::HEADER_NONCE, nonce.to_string()),
            (auth::HEADER_GENERATION, old_gen.to_string()),
            (
                auth::HEADER_HEAD_SIG,
                auth::sign_head(&key, to, "POST", PATH_DIGEST, ts, nonce),
            ),
            (
                auth::HEADER_SIG,
                auth::sign(&key, to, "POST", PATH_DIGEST, ts, nonce, body),
            ),
            (auth::HEADER_NODE, "b".to_string()),
        ];
        let (status, _, answer) = raw_rpc(&old_addr, PATH_DIGEST, &h, 2, body).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        // a restarts
        first.token.cancel();
        first.cluster.leave().await;
        let second = node("a", free_port(), &[], 1).await;
        let (new_gen, new_addr) = (
            second.cluster.node.settings.generation,
            second.cluster.node.settings.rpc_advertise.clone(),
        );
        assert_ne!(new_gen, old_gen);
        // the captured request, replayed: refused unread, the refusal signed and naming new_gen
        let (status, sig, answer) = raw_rpc(&new_addr, PATH_DIGEST, &h, 2, body).await;
        assert_eq!(status, 401, "{}", String::from_utf8_lossy(&answer));
        assert!(auth::verify_response(
            &key,
            PATH_DIGEST,
            nonce,
            401,
            &answer,
            sig.as_deref()
        ));
        assert_eq!(auth::other_incarnation(&answer), Some(new_gen));
        // a caller whose view of a is the old incarnation (here: the stopped a's own view)
        // signs for old_gen, is told new_gen, and its retry passes
        let stale = first.cluster.node.members();
        assert!(
            stale
                .iter()
                .any(|m| m.node_id == "a" && m.generation == old_gen),
            "{stale:?}"
        );
        let _: DigestResp = first
            .cluster
            .node
            .call("a", &new_addr, PATH_DIGEST, &Empty {})
            .await
            .unwrap();
        second.token.cancel();
        second.cluster.leave().await;
    }

    /// `n` keys `<prefix>-<i>` whose first primary, as `a` sees it, is `primary` — once `a`
    /// sees all three nodes live and caught up (a node not caught up is never first).
    async fn keys_led_by(
        a: &Node,
        ks: &'static str,
        prefix: &str,
        primary: &str,
        n: usize,
    ) -> Vec<String> {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let led: Vec<String> = (0..1000)
                .map(|i| format!("{prefix}-{i}"))
                .filter(|k| {
                    a.primary_order(ks, k).first().map(|(id, _)| id.as_str()) == Some(primary)
                })
                .take(n)
                .collect();
            // every member caught up in a's view: one that is not is ranked last, and a key
            // found led by another would change hands when it catches up
            let settled = a
                .members()
                .iter()
                .all(|m| m.state == "alive" && (m.caught_up || m.node_id == a.id()));
            if a.is_caught_up() && a.live_count() == 3 && settled && led.len() == n {
                return led;
            }
            assert!(std::time::Instant::now() < until, "{:?}", a.health());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The end of a scenario: every node cancelled and gone.
    async fn leave_all(nodes: &[TestNode]) {
        for n in nodes {
            n.token.cancel();
            n.cluster.leave().await;
        }
    }

    /// A consistent compare-and-swap whose primary cannot be connected to (stopped, its death
    /// not gossiped yet) never reached it: the next node in line decides, and its answer is
    /// definite — a conflict is a conflict, not "the outcome is unknown" (which is for a primary
    /// that got the request and did not answer: it may have made the transition).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_unreachable_primary_leaves_the_outcome_known() {
        let nodes = three().await;
        let ks = "unit_things";
        let a = nodes[0].cluster.node.clone();
        let key = keys_led_by(&a, ks, "held-by-c", "c", 1).await.remove(0);
        nodes[0]
            .opened
            .store
            .put(ks, &key, b"v0".to_vec(), None)
            .await
            .unwrap();
        // c's RPC server stops (its gossip goes on: a still lists it alive)
        nodes[2].cluster.stop_rpc_server().await;
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&nodes[2].cluster.node.settings.rpc_advertise)
            .await
            .is_ok()
        {
            assert!(std::time::Instant::now() < until, "c still listens");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(a.live_peers().iter().any(|(id, _)| id == "c"));
        let stale = nodes[0]
            .opened
            .store
            .compare_and_swap(ks, &key, Some(b"other".to_vec()), None)
            .await;
        assert!(
            matches!(stale, Ok(Cas::Conflict(Some(ref v))) if v == b"v0"),
            "{stale:?}"
        );
        let swapped = nodes[0]
            .opened
            .store
            .compare_and_swap(ks, &key, Some(b"v0".to_vec()), Some((b"v1".to_vec(), None)))
            .await;
        assert!(matches!(swapped, Ok(Cas::Swapped)), "{swapped:?}");
        leave_all(&nodes).await;
    }

    /// `n`'s RPC address, listened on by the test once its server stopped (a peer's port taken).
    async fn take_rpc_address(n: &TestNode) -> (String, tokio::net::TcpListener) {
        n.cluster.stop_rpc_server().await;
        let rpc_addr = n.cluster.node.settings.rpc_advertise.clone();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::net::TcpListener::bind(&rpc_addr).await {
                Ok(l) => return (rpc_addr, l),
                Err(e) => assert!(std::time::Instant::now() < until, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An address on the path to a peer answers its RPC instead of the peer (its server down, its
    /// port taken): a head claiming a body of 256 MiB, then bytes as fast as they are taken. The
    /// call fails on the head (no signed length: only a refusal's few bytes are read) and the
    /// body is not read on; the same answer with a signed length it then exceeds is cut off at
    /// that length. (Before, the whole body was read into memory, and only then found unsigned.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_answer_is_read_no_further_than_its_signed_head_says() {
        use crate::cluster::{auth, wire::PATH_DIGEST};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const OFFERED: u64 = 256 << 20;
        let nodes = three().await;
        let a = nodes[0].cluster.node.clone();
        let (rpc_addr, listener) = take_rpc_address(&nodes[2]).await;
        // a's digest calls get a head (with a length signed under the cluster key when told so,
        // far below what follows), then zeros until a goes away, and what was written is
        // reported; every other call (b's, a's background ones) is closed unanswered
        let key = crate::cluster::derive_rpc_key(
            "unit-test-cluster-secret",
            &crate::config::Config::default().cluster.id,
        );
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let signed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let serving = signed.clone();
        let fake = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (sent_tx, signed) = (sent_tx.clone(), serving.load(Ordering::SeqCst));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match socket.read(&mut buf).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let header = |name: &str| {
                        text.lines().find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                    };
                    let from_a = header(auth::HEADER_NODE).as_deref() == Some("a");
                    if !from_a || !text.starts_with(&format!("POST {PATH_DIGEST} ")) {
                        return;
                    }
                    let nonce = header(auth::HEADER_NONCE).unwrap_or_default();
                    let len = if signed {
                        let h = auth::sign_response_len(&key, PATH_DIGEST, &nonce, 200, 1000);
                        format!("{}: {h}\r\n", auth::HEADER_RESP_LEN)
                    } else {
                        String::new()
                    };
                    let answer =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {OFFERED}\r\n{len}\r\n");
                    let mut sent = 0u64;
                    if socket.write_all(answer.as_bytes()).await.is_ok() {
                        let zeros = vec![0u8; 64 * 1024];
                        while sent < OFFERED && socket.write_all(&zeros).await.is_ok() {
                            sent += zeros.len() as u64;
                        }
                    }
                    let _ = sent_tx.send(sent);
                });
            }
        });
        for (sign, expect) in [(false, "over 65536 bytes"), (true, "over 1000 bytes")] {
            signed.store(sign, Ordering::SeqCst);
            let e = a
                .call::<_, crate::cluster::wire::DigestResp>(
                    "c",
                    &rpc_addr,
                    PATH_DIGEST,
                    &crate::cluster::wire::Empty {},
                )
                .await
                .unwrap_err();
            assert!(e.to_string().contains(expect), "{e}");
            // the fake stops once a has gone: far short of what it offered (the socket buffers
            // hold a few MiB at most)
            let sent = tokio::time::timeout(Duration::from_secs(60), sent_rx.recv())
                .await
                .expect("the caller kept reading")
                .unwrap();
            assert!(sent < OFFERED / 4, "{sent} bytes taken");
        }
        fake.abort();
        leave_all(&nodes).await;
    }

    /// A grey failure: c's RPC accepts connections and never answers while its gossip goes on,
    /// so every node keeps listing it alive. The first call that times out makes c suspect, and
    /// it stays suspect (no call to it succeeds): transitions whose primary is `a` no longer
    /// wait for c on their majority read, decision or replication, and one whose primary is c
    /// is made by the next in line. Before, the suspicion lapsed after 3 s, then each transition
    /// waited out c's RPC timeout on its read and its decision (about 4 s), and a forward to c
    /// was answered 503 "outcome unknown" after 4 s, over and over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_peer_whose_rpc_hangs_is_waited_for_once_not_on_every_transition() {
        let nodes = three().await;
        let ks = "unit_things";
        let a = nodes[0].cluster.node.clone();
        let mine = keys_led_by(&a, ks, "grey-a", "a", 8).await;
        let at_c = keys_led_by(&a, ks, "grey-c", "c", 1).await.remove(0);
        let store = nodes[0].opened.store.clone();
        for k in mine.iter().chain([&at_c]) {
            store.put(ks, k, b"v0".to_vec(), None).await.unwrap();
        }
        // c's RPC address now accepts and never answers
        let (_, listener) = take_rpc_address(&nodes[2]).await;
        let hang = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let swap = |k: String| {
            let store = store.clone();
            async move {
                store
                    .compare_and_swap(ks, &k, Some(b"v0".to_vec()), Some((b"v1".to_vec(), None)))
                    .await
            }
        };
        // the first transition waits out c once (its majority read)
        let got = swap(mine[0].clone()).await;
        assert!(matches!(got, Ok(Cas::Swapped)), "{got:?}");
        assert!(a.is_suspect("c"));
        assert!(
            a.live_peers().iter().any(|(id, _)| id == "c"),
            "gossip lists c"
        );
        // past the suspicion's old 3 s
        tokio::time::sleep(Duration::from_secs(4)).await;
        // Nothing below waits for c: each step takes milliseconds. The bound is a liveness
        // check (waiting for c would take about 4 s a transition, 2 s a write: over 40 s).
        let rest = tokio::time::timeout(Duration::from_secs(20), async {
            for k in &mine[1..] {
                let got = swap(k.clone()).await;
                assert!(matches!(got, Ok(Cas::Swapped)), "{k}: {got:?}");
                store
                    .put(ks, &format!("{k}-w"), b"w".to_vec(), None)
                    .await
                    .unwrap();
            }
            // c's own key: made by the next in line, a definite answer
            let got = swap(at_c.clone()).await;
            assert!(matches!(got, Ok(Cas::Swapped)), "{at_c}: {got:?}");
        })
        .await;
        assert!(rest.is_ok(), "transitions waited for the hung peer");
        assert!(a.is_suspect("c"));
        // and the majority (a and b) holds every transition
        for k in mine.iter().chain([&at_c]) {
            let at_b = nodes[1].cluster.node.replica.read(ks, k).await.unwrap();
            assert_eq!(
                at_b.and_then(|r| r.value).as_deref(),
                Some(&b"v1"[..]),
                "{k}"
            );
        }
        hang.abort();
        leave_all(&nodes).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    // Over 80 lines: a multi-node scenario test, step by step.
    async fn writes_replicate_cas_is_single_winner_and_events_reach_every_node() {
        let nodes = three().await;
        let ks = "unit_things";
        // a write on one node is on the others before put returns (replication factor 3)
        nodes[0]
            .opened
            .store
            .put(ks, "k1", b"v1".to_vec(), None)
            .await
            .unwrap();
        for n in &nodes[1..] {
            let local = n.cluster.node.replica.read(ks, "k1").await.unwrap();
            assert_eq!(local.unwrap().value.unwrap(), b"v1");
        }
        // delete is replicated as a tombstone
        assert!(nodes[1].opened.store.delete(ks, "k1").await.unwrap());
        for n in &nodes {
            assert_eq!(n.opened.store.get(ks, "k1").await.unwrap(), None);
        }

        // concurrent single-use transitions from every node on the same keys: one winner each —
        // once the nodes agree on the keys' primaries (on a loaded machine the `caught_up` flags
        // may still be gossiping; while views differ two nodes can both be primary, the AP
        // membership-change window documented in docs/cluster.md)
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let agree = (0..30).all(|i| {
                let key = format!("code{i}");
                let first = |n: &TestNode| {
                    n.cluster
                        .node
                        .primary_order(ks, &key)
                        .first()
                        .map(|(id, _)| id.clone())
                };
                nodes.iter().all(|n| first(n) == first(&nodes[0]))
            });
            if agree {
                break;
            }
            assert!(std::time::Instant::now() < until, "views never converged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 0..30 {
            let key = format!("code{i}");
            nodes[0]
                .opened
                .store
                .put(ks, &key, b"unused".to_vec(), None)
                .await
                .unwrap();
            let attempts = nodes.iter().map(|n| {
                let store = n.opened.store.clone();
                let key = key.clone();
                async move {
                    store
                        .compare_and_swap(ks, &key, Some(b"unused".to_vec()), None)
                        .await
                        .unwrap()
                }
            });
            let results = futures_util::future::join_all(attempts).await;
            let wins = results.iter().filter(|r| **r == Cas::Swapped).count();
            assert_eq!(wins, 1, "{key}: {results:?}");
        }
        // create-if-absent from every node at once: one value cluster-wide
        let attempts = nodes.iter().enumerate().map(|(i, n)| {
            let store = n.opened.store.clone();
            async move {
                store
                    .compare_and_swap(ks, "singleton", None, Some((vec![i as u8], None)))
                    .await
                    .unwrap()
            }
        });
        let results = futures_util::future::join_all(attempts).await;
        assert_eq!(results.iter().filter(|r| **r == Cas::Swapped).count(), 1);
        let first = nodes[0].opened.store.get(ks, "singleton").await.unwrap();
        for n in &nodes {
            assert_eq!(n.opened.store.get(ks, "singleton").await.unwrap(), first);
        }

        // an event published on one node reaches subscribers on every node
        let mut subs: Vec<_> = nodes.iter().map(|n| n.opened.bus.subscribe()).collect();
        nodes[2]
            .opened
            .bus
            .publish("mediator.queued", "recipient-key")
            .await;
        for rx in subs.iter_mut() {
            let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (ev.topic.as_str(), ev.payload.as_str()),
                ("mediator.queued", "recipient-key")
            );
        }

        // a record written only locally (as if replication had been missed) is found by a
        // read on another node, and anti-entropy copies the rest
        let rec = crate::cluster::version::Versioned {
            version: nodes[0].cluster.node.replica.new_version(),
            value: Some(b"missed".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        for i in 0..5 {
            nodes[0]
                .cluster
                .node
                .replica
                .merge(ks, &format!("only-a-{i}"), &rec)
                .await
                .unwrap();
        }
        assert_eq!(
            nodes[1]
                .opened
                .store
                .get(ks, "only-a-0")
                .await
                .unwrap()
                .unwrap(),
            b"missed"
        );
        assert!(nodes[2]
            .cluster
            .node
            .replica
            .read(ks, "only-a-1")
            .await
            .unwrap()
            .is_none());
        let repaired = nodes[2]
            .cluster
            .node
            .sync_with("a", &nodes[0].cluster.node.settings.rpc_advertise)
            .await
            .unwrap();
        assert!(repaired >= 5, "{repaired}");
        assert_eq!(
            nodes[2].cluster.node.replica.digest(),
            nodes[0].cluster.node.replica.digest()
        );
        // scans see what the cluster holds
        let scanned = nodes[2]
            .opened
            .store
            .scan_prefix(ks, "only-a-", 100)
            .await
            .unwrap();
        assert_eq!(scanned.len(), 5);

        // exactly one leader for singleton jobs
        let leaders = nodes.iter().filter(|n| n.cluster.is_leader()).count();
        assert_eq!(leaders, 1);

        paused_primary_catches_up_before_its_compare_and_swap(&nodes).await;
        consistent_primary_reads_a_majority_before_a_single_use_transition(&nodes).await;
        exclusive_inserts_are_made_once(&nodes).await;
        consistent_failed_transition_leaves_nothing_on_the_accepting_peers(&nodes).await;
        lost_decisions_are_resolved_by_asking_the_executor(&nodes).await;
        peers_settle_what_a_dead_executor_left_prepared(&nodes).await;
        a_settled_commit_reaches_the_peers_that_did_not_prepare_it(&nodes).await;
        a_read_that_meets_an_undecided_copy_waits_for_a_suspect(&nodes).await;
        a_transition_every_peer_refused_for_a_competing_one_is_made_again(&nodes).await;
        a_node_local_keyspace_is_read_by_no_peer(&nodes).await;
        an_unrelated_key_does_not_queue_behind_a_stuck_one(&nodes).await;
        a_delete_is_not_undone_by_an_update_decided_after_it(&nodes).await;
        a_settled_read_answers_the_primarys_value_over_a_lagging_copy(&nodes).await;
        process_without_the_secret_does_not_join(&nodes).await;
        the_members_seen_are_remembered(&nodes).await;
        leave_all(&nodes).await;
    }
}
