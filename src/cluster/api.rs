//! `GET /api/cluster`: this node's view of the cluster. Admin only.

use std::collections::BTreeMap;

use actix_web::{get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::node::{Member, PeerSync};
use super::Cluster;
use crate::http::auth::Admin;

#[derive(Serialize, ToSchema)]
pub struct ClusterView {
    /// Whether this node runs in cluster mode.
    pub enabled: bool,
    pub node_id: String,
    pub cluster_id: String,
    /// This node has pulled what it missed since it started.
    pub caught_up: bool,
    /// This node runs the singleton jobs.
    pub leader: bool,
    /// Records held locally (including tombstones).
    pub records: usize,
    /// Hash of this node's anti-entropy digest (every keyspace's record count and hash of keys
    /// and versions, records near their deadline left out): equal on two nodes that hold the
    /// same versions of every key.
    pub digest: String,
    /// Single-use transitions this node holds prepared, awaiting their executor's decision.
    pub provisional: usize,
    /// `cluster.single_use` in force: `consistent` or `available`.
    pub single_use: &'static str,
    /// `cluster.updates` in force: `consistent` or `available`.
    pub updates: &'static str,
    /// Nodes a majority is counted against (`bootstrap_expect`, or every node this node has
    /// ever listed as a member, less `cluster.retired_nodes`).
    pub configured_nodes: usize,
    /// The node ids this node remembers as members (kept across restarts): a node retired for
    /// good stays among them until `cluster.retired_nodes` names it.
    pub remembered_nodes: Vec<String>,
    /// Nodes (this one included) a single-use transition needs in consistent mode.
    pub majority: usize,
    /// Live nodes, this one included.
    pub live: usize,
    /// Live peers whose admin tokens, `retired_nodes`, `single_use` or `updates` differ from
    /// this node's (a keyed fingerprint of them is gossiped): set them the same on every node.
    pub settings_differ: Vec<String>,
    pub members: Vec<MemberView>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberView {
    #[serde(flatten)]
    pub member: Member,
    /// Anti-entropy with this peer, as seen from this node (replication lag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<PeerSync>,
}

/// Members (alive or dead), their roles and readiness, and anti-entropy lag per peer.
#[utoipa::path(tag = "system", security(("admin_token" = [])), responses(
    (status = 200, body = ClusterView),
    (status = 401, body = crate::error::Problem, content_type = "application/problem+json")))]
#[get("/api/cluster")]
pub async fn cluster_info(
    _admin: Admin,
    cluster: Option<web::Data<Cluster>>,
) -> web::Json<ClusterView> {
    let Some(c) = &cluster else {
        return web::Json(ClusterView {
            enabled: false,
            node_id: String::new(),
            cluster_id: String::new(),
            caught_up: false,
            leader: true,
            records: 0,
            digest: String::new(),
            provisional: 0,
            single_use: "available",
            updates: "available",
            configured_nodes: 1,
            remembered_nodes: Vec::new(),
            majority: 1,
            live: 1,
            settings_differ: Vec::new(),
            members: Vec::new(),
        });
    };
    let node = &c.node;
    let mut sync: BTreeMap<String, PeerSync> = node.peer_sync();
    let members = node
        .members()
        .iter()
        .cloned()
        .map(|m| MemberView {
            sync: sync.remove(&m.node_id),
            member: m,
        })
        .collect();
    web::Json(ClusterView {
        enabled: true,
        node_id: node.id().to_string(),
        cluster_id: node.settings.cluster_id.clone(),
        caught_up: node.is_caught_up(),
        leader: node.is_leader(),
        records: node.replica.record_count(),
        digest: digest_hex(&node.replica.digest()),
        provisional: node.replica.provisional_count(),
        single_use: if node.settings.single_use_consistent {
            "consistent"
        } else {
            "available"
        },
        updates: if node.settings.updates_consistent {
            "consistent"
        } else {
            "available"
        },
        configured_nodes: node.configured_nodes(),
        remembered_nodes: node.remembered_ids(),
        majority: node.majority(),
        live: node.live_count(),
        settings_differ: node.settings_differ(),
        members,
    })
}

fn digest_hex(d: &super::replica::KsDigest) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (ks, (n, x)) in d {
        h.update(ks.as_bytes());
        h.update([0u8]);
        h.update(n.to_be_bytes());
        h.update(x.to_be_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
