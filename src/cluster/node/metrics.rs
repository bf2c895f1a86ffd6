//! The cluster's Prometheus metrics.

use super::*;

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
    pub retired_alive: IntGauge,
    pub settings_differ: IntGauge,
    /// Peers whose authentic gossip this node refuses as stale (shared with the transport).
    pub skewed: std::sync::Arc<crate::cluster::gossip::SkewSeen>,
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
            skewed: Default::default(),
            settings_differ: IntGauge::new(
                "cluster_settings_differ",
                "live peers whose admin tokens, retired_nodes, single_use or updates differ from this node's",
            )?,
            retired_alive: IntGauge::new(
                "cluster_retired_alive",
                "nodes listed in cluster.retired_nodes that still gossip (no members: stop them)",
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
        r.register(Box::new(self.retired_alive.clone()))?;
        r.register(Box::new(self.settings_differ.clone()))?;
        Ok(())
    }
}
