//! [`ClusterStore`]: the [`Store`] every role talks to in cluster mode. Reads are local (with a
//! fall-back to the peers for a record this node has not received yet), writes are versioned,
//! applied locally and replicated synchronously, compare-and-swap runs at the key's primary.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;

use super::node::Node;
use super::replica::is_local_keyspace;
use super::version::{decode, Versioned};
use super::wire::Record;
use crate::store::{BatchOp, Cas, ExportRecord, Store, StoreResult, StoreStats};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct ClusterStore {
    node: Arc<Node>,
}

impl ClusterStore {
    /// A delete under `cluster.updates` / `cluster.single_use = "consistent"`: an update like any
    /// other — a compare-and-swap of the value read, at the key's primary, under a majority — so
    /// an update made on an older version that is still being decided cannot bring the record
    /// back after the delete was acknowledged (a last-writer-wins tombstone could be older than
    /// that update's version). Absent: `false`.
    ///
    /// The value to compare is the primary's, never this node's copy: a tombstone written here
    /// (by a batch, or a lagging copy) would read as absent and skip the fence. It is read with
    /// [`Node::get_settled`] — at the primary, after any transition in flight on the key is
    /// decided — and a conflict answers the primary's value again.
    async fn delete_fenced(&self, keyspace: &'static str, key: &str) -> StoreResult<bool> {
        let mut current = self
            .node
            .get_settled(keyspace, key)
            .await?
            .and_then(|r| r.value);
        for round in 0..64u32 {
            let Some(cur) = current.take() else {
                return Ok(false);
            };
            if round > 0 {
                // a competing update landed between our read and our swap: back off a little
                tokio::time::sleep(Duration::from_millis(1 << round.min(7))).await;
            }
            match self.node.cas(keyspace, key, Some(cur), None).await? {
                Cas::Swapped => return Ok(true),
                Cas::Conflict(now) => current = now,
            }
        }
        Err(crate::store::StoreError::Unavailable(format!(
            "delete of {keyspace}/{key} kept conflicting"
        )))
    }

    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Refuses this node's own writes while it holds back for older nodes in a rolling upgrade
    /// ([`Node::held_back`]): only they may change how records are used until they have left;
    /// and while another process runs under its node id ([`Node::twins`]).
    /// The `system` keyspace's leases and markers and the sandbox admin token stay writable; writes peers send (replication,
    /// a compare-and-swap executed here as its primary) are not made through this store.
    fn writable(&self, keyspace: &str) -> StoreResult<()> {
        if keyspace == crate::store::keyspaces::SYSTEM || keyspace == crate::store::keyspaces::ADMIN
        {
            return Ok(());
        }
        // two processes under one node id (a copied data dir): each would count itself and a
        // different peer as a majority and stamp versions that tie, so neither writes for its
        // clients until one is stopped (cluster review: both could redeem one code)
        if !self.node.twins().is_empty() {
            self.node
                .held_back_refusals
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(crate::store::StoreError::Unavailable(
                "another process runs with this node's id; this node writes nothing until one of them is stopped".into(),
            ));
        }
        match self.node.held_back() {
            None => Ok(()),
            // the node ids stay in the log and /health/ready, not in answers to clients
            Some(why) => {
                tracing::debug!("write refused: {why}");
                self.node
                    .held_back_refusals
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(crate::store::StoreError::Unavailable(
                    "this node holds back during a rolling upgrade while older nodes serve; retry"
                        .into(),
                ))
            }
        }
    }

    fn inner(&self) -> &Arc<dyn Store> {
        &self.node.replica.inner
    }

    async fn write(&self, ks: &'static str, key: &str, rec: Versioned) -> StoreResult<()> {
        {
            let _g = self.node.replica.lock([(ks, key)]).await;
            self.node.replica.write_locked(ks, key, &rec).await?;
        }
        self.node
            .replicate(vec![Record {
                ks: ks.to_string(),
                key: key.to_string(),
                rec,
                if_version: None,
            }])
            .await
    }
}

#[async_trait]
impl Store for ClusterStore {
    async fn get(&self, keyspace: &'static str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        if is_local_keyspace(keyspace) {
            return self.inner().get(keyspace, key).await;
        }
        match self.node.replica.read(keyspace, key).await? {
            Some(rec) => Ok(rec.value),
            // not here (yet): a write that has not reached this node, or a node that was down
            None => Ok(self
                .node
                .fetch_from_peers(keyspace, key)
                .await?
                .and_then(|r| r.value)),
        }
    }

    /// Whether this node reaches a majority and has caught up ([`Node::current`]).
    fn current(&self) -> StoreResult<()> {
        self.node
            .current()
            .map_err(crate::store::StoreError::Unavailable)
    }

    /// At the key's primary ([`Node::get_settled`]), merged here.
    async fn get_settled(&self, keyspace: &'static str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        if is_local_keyspace(keyspace) {
            return self.inner().get(keyspace, key).await;
        }
        Ok(self
            .node
            .get_settled(keyspace, key)
            .await?
            .and_then(|r| r.value))
    }

    async fn put(
        &self,
        keyspace: &'static str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreResult<()> {
        if is_local_keyspace(keyspace) {
            return self.inner().put(keyspace, key, value, ttl).await;
        }
        self.writable(keyspace)?;
        let rec = self.node.replica.record_of(keyspace, key, value, ttl);
        self.write(keyspace, key, rec).await
    }

    async fn delete(&self, keyspace: &'static str, key: &str) -> StoreResult<bool> {
        if is_local_keyspace(keyspace) {
            return self.inner().delete(keyspace, key).await;
        }
        self.writable(keyspace)?;
        if self.node.fences_updates(keyspace) {
            return self.delete_fenced(keyspace, key).await;
        }
        let existed = self.get(keyspace, key).await?.is_some();
        let rec = self.node.replica.tombstone_of(keyspace, key);
        self.write(keyspace, key, rec).await?;
        Ok(existed)
    }

    async fn compare_and_swap(
        &self,
        keyspace: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> StoreResult<Cas> {
        if is_local_keyspace(keyspace) {
            return self
                .inner()
                .compare_and_swap(keyspace, key, expected, new)
                .await;
        }
        self.writable(keyspace)?;
        self.node.cas(keyspace, key, expected, new).await
    }

    async fn scan_prefix(
        &self,
        keyspace: &'static str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Vec<u8>)>> {
        if is_local_keyspace(keyspace) {
            return self.inner().scan_prefix(keyspace, prefix, limit).await;
        }
        // Every node holds every record (full replication), so the local copy answers.
        scan_decoded(self.inner(), keyspace, prefix, limit).await
    }

    async fn batch(&self, ops: Vec<BatchOp>) -> StoreResult<()> {
        let mut local_ops = Vec::new();
        let mut recs: Vec<(&'static str, String, Versioned)> = Vec::new();
        for op in ops {
            match op {
                BatchOp::Put { keyspace, .. } | BatchOp::Delete { keyspace, .. }
                    if is_local_keyspace(keyspace) =>
                {
                    local_ops.push(op)
                }
                BatchOp::Put {
                    keyspace,
                    key,
                    value,
                    ttl,
                } => {
                    let rec = self.node.replica.record_of(keyspace, &key, value, ttl);
                    recs.push((keyspace, key, rec))
                }
                BatchOp::Delete { keyspace, key } => {
                    let t = self.node.replica.tombstone_of(keyspace, &key);
                    recs.push((keyspace, key, t))
                }
            }
        }
        // refused whole, before any of it is written
        for (ks, _, _) in &recs {
            self.writable(ks)?;
        }
        if !local_ops.is_empty() {
            self.inner().batch(local_ops).await?;
        }
        if recs.is_empty() {
            return Ok(());
        }
        {
            let keys: Vec<(&str, &str)> = recs.iter().map(|(ks, k, _)| (*ks, k.as_str())).collect();
            let _g = self.node.replica.lock(keys).await;
            self.node.replica.write_batch_locked(&recs).await?;
        }
        self.node
            .replicate(
                recs.into_iter()
                    .map(|(ks, key, rec)| Record {
                        ks: ks.to_string(),
                        key,
                        rec,
                        if_version: None,
                    })
                    .collect(),
            )
            .await
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        // Local: every node drops its own expired copies (they are absent for reads anyway).
        let n = self.inner().sweep_expired().await?;
        self.node.replica.prune_index();
        Ok(n)
    }

    async fn probe(&self) -> StoreResult<()> {
        self.inner().probe().await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.inner().flush().await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.inner().stats().await
    }

    async fn export_all(&self) -> StoreResult<Vec<ExportRecord>> {
        export_decoded(self.inner()).await
    }

    /// Imported records carry the lowest version there is: whatever the cluster wrote since the
    /// export (an update, a revocation, a delete's tombstone) wins over them on every node
    /// (cluster review: stamped at import time, one node restored from last night's export
    /// rolled every node back to it — revocations undone, status-list counters rewound). A key
    /// the cluster does not hold still reaches every node; an insert-only key record (a tenant's
    /// signing key) still wins as the first created.
    async fn import(&self, records: Vec<ExportRecord>) -> StoreResult<u64> {
        let now = self.node.now_ms();
        let mut n = 0;
        for r in records {
            let Some((ks, key, value, ttl)) = decode_import(r, now)? else {
                continue;
            };
            if is_local_keyspace(ks) {
                self.inner().put(ks, &key, value, ttl).await?;
            } else {
                let deadline = self.node.replica.deadline(ttl);
                self.write(ks, &key, imported(value, deadline)).await?;
            }
            n += 1;
        }
        Ok(n)
    }
}

/// One record of an export to import: its keyspace, key, value and time left (`None`: it has
/// expired since the export).
pub(super) type Imported = (&'static str, String, Vec<u8>, Option<Duration>);

/// Decodes an export record for [`Store::import`] at `now` (unix ms).
pub(super) fn decode_import(r: ExportRecord, now: i64) -> StoreResult<Option<Imported>> {
    let ks = super::replica::intern(&r.keyspace)?;
    let value = B64
        .decode(&r.value_b64)
        .map_err(|e| crate::store::StoreError::Backend(e.to_string()))?;
    let ttl = match r.expires_at_ms {
        Some(d) if d <= now => return Ok(None),
        Some(d) => Some(Duration::from_millis((d - now) as u64)),
        None => None,
    };
    Ok(Some((ks, r.key, value, ttl)))
}

/// An imported record: the lowest clock there is (see `ClusterStore::import`), its value's
/// digest as the writer, so two different values imported on two nodes still differ in version
/// and converge on one (diff review: with one version for both, anti-entropy took them for equal).
pub(super) fn imported(value: Vec<u8>, deadline_ms: Option<i64>) -> Versioned {
    let digest = crate::crypto::sha256_hex(&value);
    Versioned {
        version: super::version::Version {
            hlc: 0,
            node: format!("import:{}", &digest[..16]),
        },
        value: Some(value),
        deadline_ms,
        keep_until_ms: None,
    }
}

/// A prefix scan of the local store with envelopes decoded and tombstones left out (they take room
/// in the underlying scan, so it is widened until `limit` live records or the end).
pub(super) async fn scan_decoded(
    inner: &Arc<dyn Store>,
    keyspace: &'static str,
    prefix: &str,
    limit: usize,
) -> StoreResult<Vec<(String, Vec<u8>)>> {
    if is_local_keyspace(keyspace) {
        return inner.scan_prefix(keyspace, prefix, limit).await;
    }
    let mut want = limit;
    loop {
        let raw = inner.scan_prefix(keyspace, prefix, want).await?;
        let got = raw.len();
        let live: Vec<(String, Vec<u8>)> = raw
            .into_iter()
            .filter_map(|(k, v)| decode(&v).value.map(|v| (k, v)))
            .collect();
        if live.len() >= limit || got < want {
            return Ok(live.into_iter().take(limit).collect());
        }
        want = want.saturating_mul(2).max(16);
    }
}

/// Every live record of the local store, envelopes decoded (what `store export` writes).
pub(super) async fn export_decoded(inner: &Arc<dyn Store>) -> StoreResult<Vec<ExportRecord>> {
    let raw = inner.export_all().await?;
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        if is_local_keyspace(&r.keyspace) {
            continue;
        }
        let bytes = B64
            .decode(&r.value_b64)
            .map_err(|e| crate::store::StoreError::Backend(e.to_string()))?;
        let v = decode(&bytes);
        if let Some(value) = v.value {
            out.push(ExportRecord {
                keyspace: r.keyspace,
                key: r.key,
                value_b64: B64.encode(value),
                expires_at_ms: v.deadline_ms.or(r.expires_at_ms),
            });
        }
    }
    Ok(out)
}
