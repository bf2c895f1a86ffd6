//! This node's copy of the replicated data: the local store holding versioned envelopes, a
//! per-key lock stripe so local writes and merges of remote writes never interleave, and an
//! in-memory index of (keyspace, key) -> version that anti-entropy digests are computed from.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::version::{decode, encode, Hlc, Version, Versioned};
use crate::clock::SharedClock;
use crate::store::{keyspaces, BatchOp, Store, StoreError, StoreResult};

/// Keyspaces that stay on this node (the readiness probe, cluster bookkeeping).
pub const LOCAL_KEYSPACE: &str = "cluster_local";

pub fn is_local_keyspace(ks: &str) -> bool {
    ks == keyspaces::HEALTH || ks == LOCAL_KEYSPACE
}

/// Keyspaces whose records are private keys (issuer, verifier and mediator signing keys, wallet
/// keys). Insert-only: a key record is created once and may be deleted, never replaced. When two
/// nodes did create different keys for one id (nodes configured to start alone, a partition at
/// first start), the **first created** (lowest version) wins on every node — never the last
/// writer — and a node that held the other one is flagged ([`Replica::replaced_keys`]): what it
/// has in memory is no longer the cluster's key, so it is not ready until restarted.
/// The sandbox admin token is one too: a node that made another one (its own in memory) is not
/// ready until restarted with the cluster's.
///
/// Only records whose id does not already name their key: a wallet key is stored at
/// `{wallet}/{thumbprint}` and an issuer's or verifier's at `{tenant}/{thumbprint}`, so two
/// values under one such id hold the same key (sealed twice), and "first created wins" would
/// only bring back a value deleted and stored again while a node was away (attacker review: a
/// wallet key deleted and re-imported during a node's absence came back from that node, every
/// other node flagged itself not ready, and the deleted copy won). Those are last writer wins,
/// as every other record is; tenant keys stored at `{tenant}` (before keys had their own places)
/// stay insert-only.
const INSERT_ONLY: [&str; 4] = [
    "issuer_keys",
    "verifier_keys",
    "mediator_keys",
    crate::store::keyspaces::ADMIN,
];

/// Whether record `key` of `ks` is insert-only (above).
pub fn is_insert_only(ks: &str, key: &str) -> bool {
    match ks {
        "issuer_keys" | "verifier_keys" => !key.contains('/'),
        _ => INSERT_ONLY.contains(&ks),
    }
}

/// Whether `rec` from a peer replaces `cur` (record `key` of `ks`) here: last writer wins, except
/// that an insert-only record's live value is only ever replaced by the same value or by an older
/// (first-created) different one; deletes (tombstones) still apply by version.
pub fn replaces(ks: &str, key: &str, cur: &Versioned, rec: &Versioned) -> bool {
    match (&cur.value, &rec.value) {
        (Some(a), Some(b)) if a != b && is_insert_only(ks, key) => rec.version < cur.version,
        _ => rec.version > cur.version,
    }
}

/// Keyspace names arrive over RPC as strings; the store API wants `&'static str`. Names are
/// interned once (there are a few dozen); the table is capped so a bad peer cannot grow it.
pub fn intern(ks: &str) -> StoreResult<&'static str> {
    static TABLE: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let table = TABLE.get_or_init(Mutex::default);
    let mut t = table
        .lock()
        .map_err(|_| StoreError::Backend("keyspace table poisoned".into()))?;
    if let Some(s) = t.get(ks) {
        return Ok(s);
    }
    if t.len() >= 1024 || ks.is_empty() || ks.len() > 128 {
        return Err(StoreError::Backend(format!(
            "refusing keyspace name `{ks}`"
        )));
    }
    let leaked: &'static str = Box::leak(ks.to_string().into_boxed_str());
    t.insert(ks.to_string(), leaked);
    Ok(leaked)
}

#[derive(Debug, Clone)]
struct Entry {
    version: Version,
    deadline: Option<i64>,
    hash: u64,
    /// A fence of this version is kept ([`Replica::ops_for`]).
    fenced: bool,
}

fn entry_hash(key: &str, v: &Version) -> u64 {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0u8]);
    h.update(v.hlc.to_be_bytes());
    h.update(v.node.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Per keyspace: how many records and an order-independent hash of their (key, version).
pub type KsDigest = BTreeMap<String, (u64, u64)>;

/// Records closer than this to their deadline are left out of digests: two nodes may disagree on
/// whether they are still there, and repairing them is pointless.
const NEAR_EXPIRY_MS: i64 = 5_000;

pub struct Replica {
    pub inner: Arc<dyn Store>,
    pub hlc: Hlc,
    pub node_id: String,
    pub clock: SharedClock,
    pub tombstone_ttl: Duration,
    stripes: Vec<tokio::sync::Mutex<()>>,
    index: Mutex<HashMap<&'static str, BTreeMap<String, Entry>>>,
    replaced: Mutex<BTreeSet<String>>,
    /// Consistent single-use transitions prepared here, not yet committed or aborted.
    provisional: Mutex<HashMap<(&'static str, String), Provisional>>,
}

/// A prepared single-use transition ([`Replica::prepare`]).
struct Provisional {
    rec: Versioned,
    base: Version,
    since: std::time::Instant,
}

/// A prepared transition as kept on disk (in [`LOCAL_KEYSPACE`] under [`PROVISIONAL_PREFIX`]):
/// a restart must not forget it. Its executor may have committed it with this node's
/// acknowledgement counted in the majority and then lost every decision call; a node that forgot
/// it would let a competing transition on the old version be prepared by a majority, and both
/// would have been answered success (attacker review).
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    ks: String,
    key: String,
    rec: Versioned,
    base: Version,
}

/// Key prefix of fences (in [`LOCAL_KEYSPACE`], `f/<keyspace>/<key>`): the tombstone a version
/// with a `keep_until_ms` leaves behind once its deadline has passed ([`Replica::write_locked`]).
const FENCE_PREFIX: &str = "f/";

fn fence_key(ks: &str, key: &str) -> String {
    format!("{FENCE_PREFIX}{ks}/{key}")
}

/// Key prefix of prepared transitions kept on disk (`p/<keyspace>/<key>`).
const PROVISIONAL_PREFIX: &str = "p/";

fn kept_key(ks: &str, key: &str) -> String {
    format!("{PROVISIONAL_PREFIX}{ks}/{key}")
}

impl Replica {
    pub fn new(
        inner: Arc<dyn Store>,
        node_id: String,
        clock: SharedClock,
        tombstone_ttl: Duration,
    ) -> Self {
        Self {
            inner,
            hlc: Hlc::default(),
            node_id,
            clock,
            tombstone_ttl,
            stripes: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            index: Mutex::default(),
            replaced: Mutex::default(),
            provisional: Mutex::default(),
        }
    }

    /// Builds the index from what is on disk (once, at start).
    pub async fn load_index(&self) -> StoreResult<usize> {
        let all = self.inner.export_all().await?;
        let mut n = 0;
        let mut max_hlc = 0;
        if let Ok(mut idx) = self.index.lock() {
            for r in all {
                if is_local_keyspace(&r.keyspace) {
                    continue;
                }
                let ks = intern(&r.keyspace)?;
                let raw = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    &r.value_b64,
                )
                .map_err(|e| StoreError::Backend(e.to_string()))?;
                let v = decode(&raw);
                max_hlc = max_hlc.max(v.version.hlc);
                let deadline = v.deadline_ms.or(r.expires_at_ms);
                idx.entry(ks).or_default().insert(
                    r.key.clone(),
                    Entry {
                        hash: entry_hash(&r.key, &v.version),
                        version: v.version,
                        deadline,
                        fenced: false,
                    },
                );
                n += 1;
            }
        }
        // fences outlast their versions' records: what they remember is the newest version
        // held of their key (a newer record that replaced it keeps its own entry)
        for (k, raw) in self
            .inner
            .scan_prefix(LOCAL_KEYSPACE, FENCE_PREFIX, usize::MAX)
            .await?
        {
            let Some((ks, key)) = k
                .strip_prefix(FENCE_PREFIX)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            let ks = intern(ks)?;
            let fence = decode(&raw);
            max_hlc = max_hlc.max(fence.version.hlc);
            if let Ok(mut idx) = self.index.lock() {
                let m = idx.entry(ks).or_default();
                match m.get_mut(key) {
                    // the record of the fenced version: remembered until the fence's end
                    Some(e) if e.version == fence.version => {
                        e.deadline = e.deadline.max(fence.deadline_ms);
                        e.fenced = true;
                    }
                    Some(e) if e.version > fence.version => {}
                    _ => {
                        m.insert(
                            key.to_string(),
                            Entry {
                                hash: entry_hash(key, &fence.version),
                                version: fence.version,
                                deadline: fence.deadline_ms,
                                fenced: true,
                            },
                        );
                    }
                }
            }
        }
        self.hlc.observe(max_hlc);
        Ok(n)
    }

    /// A new version of `ks`/`key` with `value`, living `ttl`: remembered past its deadline as
    /// long as the version this node holds of the key would have lived ([`Replica::outlives`]).
    pub fn record_of(
        &self,
        ks: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Versioned {
        let version = self.new_version();
        let deadline_ms = self.deadline(ttl);
        let keep_until_ms = self.outlives(ks, key, &version, deadline_ms);
        Versioned {
            version,
            value: Some(value),
            deadline_ms,
            keep_until_ms,
        }
    }

    /// Until when a version `version` of `ks`/`key` ending at `deadline` must be remembered (as a
    /// tombstone) once it has ended, for what this node holds of the key: the end of the version
    /// held (its deadline, or `tombstone_ttl` from now for one without, as a delete is
    /// remembered), when that is later. A node that was away holding that version would otherwise
    /// bring it back once the new one has expired, everywhere, until the old one's own deadline:
    /// an offer's unredeemed state, say, after its redeemed state expired. `None`: the deadline
    /// is the end (no deadline, nothing held, or nothing held longer).
    fn outlives(
        &self,
        ks: &str,
        key: &str,
        version: &Version,
        deadline: Option<i64>,
    ) -> Option<i64> {
        let deadline = deadline?;
        let held_until = self.index.lock().ok().and_then(|idx| {
            idx.get(ks)
                .and_then(|m| m.get(key))
                .filter(|e| e.version != *version)
                .map(|e| e.deadline)
        })?;
        let until = held_until.unwrap_or_else(|| {
            self.clock
                .now_ms()
                .saturating_add(i64::try_from(self.tombstone_ttl.as_millis()).unwrap_or(i64::MAX))
        });
        (until > deadline).then_some(until)
    }

    /// `rec` as this node keeps it: its `keep_until_ms` raised to what this node's own copy of
    /// the key calls for, and a tombstone's deadline raised to it (a tombstone is its own fence).
    fn kept(&self, ks: &str, key: &str, rec: &Versioned) -> Versioned {
        let mut rec = rec.clone();
        let keep = rec
            .keep_until_ms
            .max(self.outlives(ks, key, &rec.version, rec.deadline_ms))
            .filter(|k| rec.deadline_ms.is_some_and(|d| *k > d));
        if rec.is_tombstone() {
            rec.deadline_ms = rec.deadline_ms.max(keep);
            rec.keep_until_ms = None;
        } else {
            rec.keep_until_ms = keep;
        }
        rec
    }

    /// The store operations that keep `rec` here (already [`Replica::kept`]): the record until
    /// its deadline (deleted if that has passed), and while it has a later `keep_until_ms` a
    /// fence: a tombstone of its version until then, read in its place once the record has gone
    /// ([`Replica::read`]).
    /// `had_fence`: the version held before had one, which goes (only then is the fence
    /// touched: a write is one store operation, sled's fast path, unless a fence is involved).
    fn ops_for(
        &self,
        ks: &'static str,
        key: &str,
        rec: &Versioned,
        had_fence: bool,
    ) -> Vec<BatchOp> {
        let mut ops = Vec::with_capacity(2);
        ops.push(match self.ttl_until(rec.deadline_ms) {
            Some(ttl) => BatchOp::Put {
                keyspace: ks,
                key: key.to_string(),
                value: encode(rec),
                ttl,
            },
            None => BatchOp::Delete {
                keyspace: ks,
                key: key.to_string(),
            },
        });
        let fence = rec
            .keep_until_ms
            .and_then(|k| Some((k, self.ttl_until(Some(k))??)));
        match fence {
            Some((keep, ttl)) => ops.push(BatchOp::Put {
                keyspace: LOCAL_KEYSPACE,
                key: fence_key(ks, key),
                value: encode(&Versioned {
                    version: rec.version.clone(),
                    value: None,
                    deadline_ms: Some(keep),
                    keep_until_ms: None,
                }),
                ttl: Some(ttl),
            }),
            // the fence of an older version has nothing left to remember
            None if had_fence => ops.push(BatchOp::Delete {
                keyspace: LOCAL_KEYSPACE,
                key: fence_key(ks, key),
            }),
            None => {}
        }
        ops
    }

    /// Whether a fence is kept for the version of `ks`/`key` held here.
    fn fenced(&self, ks: &str, key: &str) -> bool {
        self.index.lock().ok().is_some_and(|idx| {
            idx.get(ks)
                .and_then(|m| m.get(key))
                .is_some_and(|e| e.fenced)
        })
    }

    /// Applies store operations: one of them as a plain put or delete (sled's fast path: a batch
    /// of one cost a third of the mediator's CPU), more as one batch.
    async fn apply(&self, mut ops: Vec<BatchOp>) -> StoreResult<()> {
        if ops.len() != 1 {
            return self.inner.batch(ops).await;
        }
        match ops.pop() {
            Some(BatchOp::Put {
                keyspace,
                key,
                value,
                ttl,
            }) => self.inner.put(keyspace, &key, value, ttl).await,
            Some(BatchOp::Delete { keyspace, key }) => {
                self.inner.delete(keyspace, &key).await.map(|_| ())
            }
            None => Ok(()),
        }
    }

    /// Until when this node remembers `rec` (its deadline, or its fence's).
    fn held_until(rec: &Versioned) -> Option<i64> {
        match (rec.deadline_ms, rec.keep_until_ms) {
            (Some(d), Some(k)) => Some(d.max(k)),
            (d, _) => d,
        }
    }

    pub fn new_version(&self) -> Version {
        Version {
            hlc: self.hlc.tick(self.clock.now_ms()),
            node: self.node_id.clone(),
        }
    }

    pub fn deadline(&self, ttl: Option<Duration>) -> Option<i64> {
        ttl.map(|t| {
            self.clock
                .now_ms()
                .saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
                .max(1)
        })
    }

    /// A tombstone version for a delete made now.
    pub fn tombstone(&self) -> Versioned {
        Versioned {
            version: self.new_version(),
            value: None,
            deadline_ms: self.deadline(Some(self.tombstone_ttl)),
            keep_until_ms: None,
        }
    }

    /// A tombstone for deleting `ks`/`key` now: kept `tombstone_ttl`, and at least as long as the
    /// record it deletes would have lived (cluster review: an acknowledged mediator message lives
    /// 14 days, a tombstone 7, so a node back after 7–14 days delivered it again).
    pub fn tombstone_of(&self, ks: &str, key: &str) -> Versioned {
        let mut t = self.tombstone();
        let record_deadline = self.index.lock().ok().and_then(|idx| {
            idx.get(ks)
                .and_then(|m| m.get(key))
                .and_then(|e| e.deadline)
        });
        if let (Some(d), Some(r)) = (t.deadline_ms, record_deadline) {
            t.deadline_ms = Some(d.max(r));
        }
        t
    }

    fn stripe_of(&self, ks: &str, key: &str) -> usize {
        (super::ring::weight("", ks, key) % self.stripes.len() as u64) as usize
    }

    /// Locks the key's stripe (several keys: in stripe order, so two batches cannot deadlock).
    pub async fn lock<'a>(
        &'a self,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<tokio::sync::MutexGuard<'a, ()>> {
        let mut idx: Vec<usize> = keys
            .into_iter()
            .map(|(ks, k)| self.stripe_of(ks, k))
            .collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            if let Some(m) = self.stripes.get(i) {
                guards.push(m.lock().await);
            }
        }
        guards
    }

    /// What this node holds for the key: value, tombstone, or nothing (never held, or expired).
    /// A version whose deadline has passed while its fence lasts reads as the fence's tombstone.
    pub async fn read(&self, ks: &'static str, key: &str) -> StoreResult<Option<Versioned>> {
        if let Some(raw) = self.inner.get(ks, key).await? {
            let mut rec = decode(&raw);
            // a fenced version carries its keep to the peers that read it here (anti-entropy, a
            // quorum read): one that never held what it replaced fences it too
            if rec.value.is_some() && self.fenced(ks, key) {
                if let Some(fence) = self
                    .inner
                    .get(LOCAL_KEYSPACE, &fence_key(ks, key))
                    .await?
                    .map(|raw| decode(&raw))
                    .filter(|f| f.version == rec.version)
                {
                    rec.keep_until_ms = fence.deadline_ms;
                }
            }
            return Ok(Some(rec));
        }
        // only a key the index still remembers can have a fence
        if self.version_of(ks, key).is_none() {
            return Ok(None);
        }
        Ok(self
            .inner
            .get(LOCAL_KEYSPACE, &fence_key(ks, key))
            .await?
            .map(|raw| decode(&raw)))
    }

    fn ttl_until(&self, deadline: Option<i64>) -> Option<Option<Duration>> {
        match deadline {
            None => Some(None),
            Some(d) => {
                let left = d - self.clock.now_ms();
                (left > 0).then(|| Some(Duration::from_millis(left as u64)))
            }
        }
    }

    fn index_set(&self, ks: &'static str, key: &str, rec: Option<&Versioned>) {
        if let Ok(mut idx) = self.index.lock() {
            let m = idx.entry(ks).or_default();
            match rec {
                Some(r) => {
                    m.insert(
                        key.to_string(),
                        Entry {
                            hash: entry_hash(key, &r.version),
                            version: r.version.clone(),
                            deadline: Self::held_until(r),
                            fenced: r.keep_until_ms.is_some(),
                        },
                    );
                }
                None => {
                    m.remove(key);
                }
            }
        }
    }

    /// Writes a record version (the caller holds the key's stripe lock).
    pub async fn write_locked(
        &self,
        ks: &'static str,
        key: &str,
        rec: &Versioned,
    ) -> StoreResult<()> {
        self.hlc.observe(rec.version.hlc);
        let rec = self.kept(ks, key, rec);
        let had_fence = self.fenced(ks, key);
        self.apply(self.ops_for(ks, key, &rec, had_fence)).await?;
        // past its deadline and its fence's: absent everywhere
        let live = self.ttl_until(Self::held_until(&rec)).is_some();
        self.index_set(ks, key, live.then_some(&rec));
        Ok(())
    }

    /// Forgets the key on this node entirely (no tombstone; the caller holds the stripe lock).
    pub async fn remove_locked(&self, ks: &'static str, key: &str) -> StoreResult<()> {
        let mut ops = vec![BatchOp::Delete {
            keyspace: ks,
            key: key.to_string(),
        }];
        if self.fenced(ks, key) {
            ops.push(BatchOp::Delete {
                keyspace: LOCAL_KEYSPACE,
                key: fence_key(ks, key),
            });
        }
        self.apply(ops).await?;
        self.index_set(ks, key, None);
        Ok(())
    }

    /// Writes several versions atomically (the caller holds their stripe locks).
    pub async fn write_batch_locked(
        &self,
        recs: &[(&'static str, String, Versioned)],
    ) -> StoreResult<()> {
        let mut ops = Vec::with_capacity(recs.len() * 2);
        let mut kept = Vec::with_capacity(recs.len());
        for (ks, key, rec) in recs {
            self.hlc.observe(rec.version.hlc);
            let rec = self.kept(ks, key, rec);
            // (a batch anyway: a fence an earlier op of this batch made for the key goes too)
            ops.extend(self.ops_for(ks, key, &rec, true));
            kept.push((*ks, key, rec));
        }
        self.inner.batch(ops).await?;
        for (ks, key, rec) in kept {
            let live = self.ttl_until(Self::held_until(&rec)).is_some();
            self.index_set(ks, key, live.then_some(&rec));
        }
        Ok(())
    }

    /// First round of a consistent single-use transition made on version `base` of the record
    /// (by the node named in its version): held here as **provisional** — not written, not read,
    /// not in digests, so anti-entropy never spreads it — until the executor commits or aborts it
    /// ([`Replica::commit`], [`Replica::abort`]). Refused while this node holds another
    /// provisional transition of the key, or a version newer than `base` other than `rec`
    /// itself: of two transitions made on one version each node prepares at most one, so at most
    /// one can be prepared by a majority. Returns whether it was accepted.
    pub async fn prepare(
        &self,
        ks: &'static str,
        key: &str,
        rec: &Versioned,
        base: &Version,
    ) -> StoreResult<bool> {
        if is_local_keyspace(ks) {
            return Ok(false);
        }
        let _g = self.lock([(ks, key)]).await;
        self.prepare_locked(ks, key, rec, base).await
    }

    /// [`Replica::prepare`] with the key's stripe lock held by the caller.
    pub async fn prepare_locked(
        &self,
        ks: &'static str,
        key: &str,
        rec: &Versioned,
        base: &Version,
    ) -> StoreResult<bool> {
        if let Some(p) = self.provisional_of(ks, key) {
            return Ok(p == rec.version);
        }
        match self.read(ks, key).await? {
            Some(cur) if cur.version == rec.version => return Ok(true),
            Some(cur) if cur.version > *base => return Ok(false),
            _ => {}
        }
        // on disk before it counts (the caller's stripe lock orders it with the decision's removal)
        self.keep_provisional(ks, key, rec, base).await?;
        if let Ok(mut p) = self.provisional.lock() {
            p.insert(
                (ks, key.to_string()),
                Provisional {
                    rec: rec.clone(),
                    base: base.clone(),
                    since: std::time::Instant::now(),
                },
            );
        }
        Ok(true)
    }

    async fn keep_provisional(
        &self,
        ks: &str,
        key: &str,
        rec: &Versioned,
        base: &Version,
    ) -> StoreResult<()> {
        if rec.version.node == self.node_id {
            // this node's own transition is not reloaded (see `load_provisionals`)
            return Ok(());
        }
        // gone with the record's deadline at the latest, as the copy in memory
        let Some(ttl) = self.ttl_until(rec.deadline_ms) else {
            return Ok(());
        };
        let kept = crate::store::to_json(&Kept {
            ks: ks.to_string(),
            key: key.to_string(),
            rec: rec.clone(),
            base: base.clone(),
        })?;
        self.inner
            .put(LOCAL_KEYSPACE, &kept_key(ks, key), kept, ttl)
            .await
    }

    /// Drops the disk copy of a key's prepared transition (the decision arrived, or it was
    /// replaced); the caller holds the key's stripe lock.
    async fn forget_provisional(&self, ks: &str, key: &str, rec: &Versioned) {
        if rec.version.node != self.node_id {
            self.drop_kept(&kept_key(ks, key)).await;
        }
    }

    /// Deletes one disk copy (`p/…` key). A copy left behind is reloaded after a restart and
    /// settled again (asked of its executor): harmless, so a failure is only logged.
    async fn drop_kept(&self, kept_key: &str) {
        if let Err(e) = self.inner.delete(LOCAL_KEYSPACE, kept_key).await {
            tracing::warn!(key = kept_key, error = %e, "could not drop a prepared transition's disk copy");
        }
    }

    /// Reloads the prepared transitions kept on disk (once, at start, before serving RPC): each
    /// is held again as provisional, undecided, and settled like any whose decision did not
    /// arrive ([`crate::cluster::node::Node::resolve_provisionals`]). One this node already holds
    /// the record of, or a newer version than its base, is dropped, and so is one this node
    /// executed (undecided at the restart: aborted). Returns how many are held.
    pub async fn load_provisionals(&self) -> StoreResult<usize> {
        let kept = self
            .inner
            .scan_prefix(LOCAL_KEYSPACE, PROVISIONAL_PREFIX, 1_000_000)
            .await?;
        let mut held = 0;
        for (k, bytes) in kept {
            let Ok(p) = serde_json::from_slice::<Kept>(&bytes) else {
                tracing::warn!(key = %k, "dropping an unreadable prepared transition");
                self.drop_kept(&k).await;
                continue;
            };
            let ks = match intern(&p.ks) {
                Ok(ks) if kept_key(ks, &p.key) == k => ks,
                _ => {
                    self.drop_kept(&k).await;
                    continue;
                }
            };
            let _g = self.lock([(ks, p.key.as_str())]).await;
            // An insert is made on "no version": a tombstone older than it is a delete from
            // before it, not what replaced it (as `Held::of` judges a peer's answer).
            let before_insert = |r: &Versioned| {
                p.base == Version::default() && r.value.is_none() && r.version < p.rec.version
            };
            // (this node's own transition is never kept: the task that was deciding it is gone
            // with the restart, so it was not committed — its record would be here — and the
            // peers that ask this node find neither and drop their copies)
            let moot = p.rec.version.node == self.node_id
                || self.read(ks, &p.key).await?.is_some_and(|cur| {
                    cur.version == p.rec.version || (cur.version > p.base && !before_insert(&cur))
                });
            if moot {
                self.drop_kept(&k).await;
                continue;
            }
            if let Ok(mut map) = self.provisional.lock() {
                map.insert(
                    (ks, p.key.clone()),
                    Provisional {
                        rec: p.rec,
                        base: p.base,
                        since: std::time::Instant::now(),
                    },
                );
                held += 1;
            }
        }
        Ok(held)
    }

    /// Second round, commit: the executor had the transition prepared by a majority. Written
    /// (last writer wins, as any replicated write), and the provisional copy dropped — as is any
    /// other provisional transition of the key made on an older version, which can no longer
    /// reach a majority. Written before the provisional copy is dropped, so a reader that finds
    /// no provisional copy ([`Replica::provisional_of`]) then finds the committed record.
    pub async fn commit(&self, ks: &'static str, key: &str, rec: &Versioned) -> StoreResult<()> {
        self.merge(ks, key, rec).await?;
        let _g = self.lock([(ks, key)]).await;
        let held = self.version_of(ks, key);
        let dropped = self.provisional.lock().ok().and_then(|mut p| {
            let k = (ks, key.to_string());
            let decided = p.get(&k).is_some_and(|pr| {
                pr.rec.version == rec.version || held.as_ref().is_some_and(|h| *h > pr.base)
            });
            decided.then(|| p.remove(&k)).flatten()
        });
        if let Some(pr) = dropped {
            self.forget_provisional(ks, key, &pr.rec).await;
        }
        Ok(())
    }

    /// Second round, abort (the transition did not reach a majority): the provisional copy is
    /// dropped, nothing was written.
    pub async fn abort(&self, ks: &str, key: &str, version: &Version) {
        let Ok(ks) = intern(ks) else { return };
        let _g = self.lock([(ks, key)]).await;
        let dropped = self.provisional.lock().ok().and_then(|mut p| {
            let k = (ks, key.to_string());
            let this = p.get(&k).is_some_and(|pr| pr.rec.version == *version);
            this.then(|| p.remove(&k)).flatten()
        });
        if let Some(pr) = dropped {
            self.forget_provisional(ks, key, &pr.rec).await;
        }
    }

    /// The version of the provisional transition of a key held here, if any.
    pub fn provisional_of(&self, ks: &str, key: &str) -> Option<Version> {
        let ks = intern(ks).ok()?;
        self.provisional
            .lock()
            .ok()?
            .get(&(ks, key.to_string()))
            .map(|p| p.rec.version.clone())
    }

    /// The provisional transition of a key held here, if any: (record, base, held since).
    pub fn provisional_entry(
        &self,
        ks: &str,
        key: &str,
    ) -> Option<(Versioned, Version, std::time::Instant)> {
        let ks = intern(ks).ok()?;
        self.provisional
            .lock()
            .ok()?
            .get(&(ks, key.to_string()))
            .map(|p| (p.rec.clone(), p.base.clone(), p.since))
    }

    /// How many prepared transitions this node holds.
    pub fn provisional_count(&self) -> usize {
        self.provisional.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Provisional transitions held longer than `older_than` (the executor's decision may have
    /// been lost): (keyspace, key, record, base version). Those past the record's deadline are
    /// dropped.
    pub fn stale_provisionals(
        &self,
        older_than: Duration,
    ) -> Vec<(&'static str, String, Versioned, Version)> {
        let now = self.clock.now_ms();
        let Ok(mut p) = self.provisional.lock() else {
            return Vec::new();
        };
        p.retain(|_, pr| pr.rec.deadline_ms.is_none_or(|d| d > now));
        p.iter()
            .filter(|(_, pr)| pr.since.elapsed() >= older_than)
            .map(|((ks, key), pr)| (*ks, key.clone(), pr.rec.clone(), pr.base.clone()))
            .collect()
    }

    /// Merges a version from another node: kept only if newer than what is here (last writer
    /// wins), except for key records ([`replaces`]).
    pub async fn merge(&self, ks: &'static str, key: &str, rec: &Versioned) -> StoreResult<bool> {
        if is_local_keyspace(ks) {
            return Ok(false);
        }
        let _g = self.lock([(ks, key)]).await;
        let take = match self.read(ks, key).await? {
            Some(cur) => {
                let take = replaces(ks, key, &cur, rec);
                if take
                    && is_insert_only(ks, key)
                    && cur.value.is_some()
                    && rec.value.is_some()
                    && cur.value != rec.value
                {
                    tracing::error!(keyspace = ks, key, "two different keys were created for one id; the first created is kept cluster-wide and this node, which held the other, is not ready until restarted");
                    if let Ok(mut r) = self.replaced.lock() {
                        r.insert(format!("{ks}/{key}"));
                    }
                }
                take
            }
            None => true,
        };
        if take {
            self.write_locked(ks, key, rec).await?;
        }
        Ok(take)
    }

    /// Key records (`keyspace/key`) this node held a different, later-created value of, replaced
    /// by the cluster's first-created one since it started: its in-memory copies may be stale.
    pub fn replaced_keys(&self) -> Vec<String> {
        self.replaced
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Per-keyspace digest of the index.
    pub fn digest(&self) -> KsDigest {
        let horizon = self.clock.now_ms() + NEAR_EXPIRY_MS;
        let mut out = BTreeMap::new();
        if let Ok(idx) = self.index.lock() {
            for (ks, m) in idx.iter() {
                let (mut n, mut h) = (0u64, 0u64);
                for e in m.values() {
                    if e.deadline.is_some_and(|d| d <= horizon) {
                        continue;
                    }
                    n += 1;
                    h ^= e.hash;
                }
                if n > 0 {
                    out.insert(ks.to_string(), (n, h));
                }
            }
        }
        out
    }

    /// Every (key, version) of a keyspace, for anti-entropy.
    pub fn versions(&self, ks: &str) -> Vec<(String, Version)> {
        self.versions_page(ks, None, usize::MAX).0
    }

    /// [`Replica::versions`] a page at a time: at most `limit` entries of keys after `after`,
    /// and the key to continue after when more remain (cluster review: one listing of a large
    /// keyspace outgrew the RPC timeout, and a node that missed writes never caught up).
    pub fn versions_page(
        &self,
        ks: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(String, Version)>, Option<String>) {
        use std::ops::Bound;
        let horizon = self.clock.now_ms() + NEAR_EXPIRY_MS;
        let Ok(idx) = self.index.lock() else {
            return (Vec::new(), None);
        };
        let Some(m) = idx.get(ks) else {
            return (Vec::new(), None);
        };
        let start = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut last = None;
        for (k, e) in m.range((start, Bound::Unbounded)) {
            if out.len() == limit {
                return (out, last);
            }
            last = Some(k.clone());
            if e.deadline.is_none_or(|d| d > horizon) {
                out.push((k.clone(), e.version.clone()));
            }
        }
        (out, None)
    }

    pub fn version_of(&self, ks: &str, key: &str) -> Option<Version> {
        self.index.lock().ok().and_then(|idx| {
            idx.get(ks)
                .and_then(|m| m.get(key))
                .map(|e| e.version.clone())
        })
    }

    /// Drops index entries past their deadline (the store's sweeper deletes the records).
    pub fn prune_index(&self) {
        let now = self.clock.now_ms();
        if let Ok(mut idx) = self.index.lock() {
            for m in idx.values_mut() {
                m.retain(|_, e| e.deadline.is_none_or(|d| d > now));
            }
        }
    }

    pub fn record_count(&self) -> usize {
        self.index
            .lock()
            .map(|idx| idx.values().map(BTreeMap::len).sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::store::SledStore;

    fn replica(node: &str, clock: Arc<FakeClock>) -> Replica {
        let inner: Arc<dyn Store> = Arc::new(SledStore::temporary(clock.clone()).unwrap());
        Replica::new(inner, node.into(), clock, Duration::from_secs(3600))
    }

    /// A delete is remembered at least as long as the record it deletes would have lived: a node
    /// away longer than `tombstone_ttl` but less than the record's own life cannot bring it back.
    #[tokio::test]
    async fn a_tombstone_outlives_the_record_it_deletes() {
        let clock = FakeClock::new(1_000_000);
        let a = replica("a", clock.clone());
        let ks = intern("things").unwrap();
        let ttl_ms = a.tombstone_ttl.as_millis() as i64;
        let long = Versioned {
            version: a.new_version(),
            value: Some(b"message".to_vec()),
            deadline_ms: Some(1_000_000 + 2 * ttl_ms),
            keep_until_ms: None,
        };
        assert!(a.merge(ks, "long", &long).await.unwrap());
        let t = a.tombstone_of(ks, "long");
        assert!(t.is_tombstone());
        assert_eq!(t.deadline_ms, Some(1_000_000 + 2 * ttl_ms));
        // a record without a deadline, or a short one: the tombstone's own ttl
        let short = Versioned {
            deadline_ms: Some(1_000_000 + 5),
            ..long.clone()
        };
        assert!(a.merge(ks, "short", &short).await.unwrap());
        assert_eq!(
            a.tombstone_of(ks, "short").deadline_ms,
            Some(1_000_000 + ttl_ms)
        );
        assert_eq!(
            a.tombstone_of(ks, "absent").deadline_ms,
            Some(1_000_000 + ttl_ms)
        );
    }

    /// An update that expires before the version it replaced is remembered, as a tombstone,
    /// until that version would have ended (cluster review: a node away while an offer was
    /// redeemed brought the unredeemed offer back once the redeemed one had expired, on every
    /// node, for the rest of the offer's life). Also on a node that never held the old version
    /// (the writer's `keep_until_ms` travels with the update) and after a restart.
    #[tokio::test]
    async fn an_update_that_expires_first_is_not_undone_by_the_version_it_replaced() {
        let clock = FakeClock::new(1_000_000);
        let a = replica("a", clock.clone());
        let b = replica("b", clock.clone());
        let ks = intern("things").unwrap();
        let v1 = Versioned {
            version: a.new_version(),
            value: Some(b"unredeemed".to_vec()),
            deadline_ms: Some(1_100_000),
            keep_until_ms: None,
        };
        assert!(a.merge(ks, "offer", &v1).await.unwrap());
        clock.advance_ms(1);
        let v2 = a.record_of(
            ks,
            "offer",
            b"redeemed".to_vec(),
            Some(Duration::from_secs(10)),
        );
        assert_eq!(v2.keep_until_ms, Some(1_100_000));
        assert!(a.merge(ks, "offer", &v2).await.unwrap());
        assert!(b.merge(ks, "offer", &v2).await.unwrap());
        // an update that outlives what it replaces needs nothing more
        let longer = a.record_of(ks, "offer", b"x".to_vec(), Some(Duration::from_secs(500)));
        assert_eq!(longer.keep_until_ms, None);
        // read here (by anti-entropy, a quorum read), the update carries its keep along
        let answer = a.read(ks, "offer").await.unwrap().unwrap();
        assert_eq!(answer.keep_until_ms, Some(1_100_000));
        let d = replica("d", clock.clone());
        assert!(d.merge(ks, "offer", &answer).await.unwrap());
        // a write that is no fence is one store operation; the fence goes with the next version
        let plain = a.record_of(ks, "other", b"x".to_vec(), None);
        assert!(a.merge(ks, "other", &plain).await.unwrap());
        assert!(!a.fenced(ks, "other") && a.fenced(ks, "offer"));

        clock.advance_ms(20_000); // v2 has expired; v1 would still live 80 s
        for r in [&a, &b, &d] {
            r.inner.sweep_expired().await.unwrap();
            r.prune_index();
            let held = r.read(ks, "offer").await.unwrap().unwrap();
            assert!(held.is_tombstone());
            assert_eq!(held.version, v2.version);
            assert!(
                !r.merge(ks, "offer", &v1).await.unwrap(),
                "the version a node that was away held came back"
            );
            assert!(r
                .versions(ks)
                .iter()
                .any(|(k, v)| k == "offer" && *v == v2.version));
        }
        // the node that was away takes the tombstone from a peer's answer
        let c = replica("c", clock.clone());
        assert!(c.merge(ks, "offer", &v1).await.unwrap());
        let answer = a.read(ks, "offer").await.unwrap().unwrap();
        assert!(c.merge(ks, "offer", &answer).await.unwrap());
        assert!(c.read(ks, "offer").await.unwrap().unwrap().is_tombstone());
        assert_eq!(c.digest(), b.digest());
        // a restart reads the fence back
        let again = Replica::new(a.inner.clone(), "a".into(), clock.clone(), a.tombstone_ttl);
        again.load_index().await.unwrap();
        assert!(!again.merge(ks, "offer", &v1).await.unwrap());
        // once v1's own life is over, nothing is left
        clock.advance_ms(80_001);
        for r in [&a, &b, &c, &d, &again] {
            r.inner.sweep_expired().await.unwrap();
            r.prune_index();
            assert!(r.read(ks, "offer").await.unwrap().is_none());
        }
        assert_eq!(b.record_count(), 0);
    }

    /// A keyspace's versions listed a page at a time are the whole listing, each key once.
    #[tokio::test]
    async fn versions_are_listed_a_page_at_a_time() {
        let clock = FakeClock::new(1_000_000);
        let a = replica("a", clock.clone());
        let ks = intern("paged").unwrap();
        for i in 0..25 {
            let rec = a.record_of(ks, &format!("k{i:02}"), b"v".to_vec(), None);
            assert!(a.merge(ks, &format!("k{i:02}"), &rec).await.unwrap());
        }
        // one about to expire: left out, and the pages go on past it
        let rec = a.record_of(ks, "k05x", b"v".to_vec(), Some(Duration::from_millis(10)));
        assert!(a.merge(ks, "k05x", &rec).await.unwrap());
        let (mut all, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let (page, next) = a.versions_page(ks, after.as_deref(), 10);
            assert!(page.len() <= 10);
            all.extend(page);
            pages += 1;
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(all, a.versions(ks));
        assert_eq!(all.len(), 25);
    }

    #[tokio::test]
    async fn merge_keeps_the_newest_version_and_tombstones_win_over_older_writes() {
        let clock = FakeClock::new(1_000_000);
        let a = replica("a", clock.clone());
        let b = replica("b", clock.clone());
        let ks = intern("things").unwrap();
        let v1 = Versioned {
            version: a.new_version(),
            value: Some(b"one".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        clock.advance_ms(1);
        let v2 = Versioned {
            version: b.new_version(),
            value: Some(b"two".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        // arrival order does not matter: both converge on v2
        assert!(a.merge(ks, "k", &v1).await.unwrap());
        assert!(a.merge(ks, "k", &v2).await.unwrap());
        assert!(b.merge(ks, "k", &v2).await.unwrap());
        assert!(!b.merge(ks, "k", &v1).await.unwrap());
        assert_eq!(
            a.read(ks, "k").await.unwrap().unwrap().value.unwrap(),
            b"two"
        );
        assert_eq!(
            b.read(ks, "k").await.unwrap().unwrap().value.unwrap(),
            b"two"
        );
        assert_eq!(a.digest(), b.digest());
        // a delete on b; a stale write of v1 arriving later does not resurrect it
        clock.advance_ms(1);
        let t = b.tombstone();
        assert!(b.merge(ks, "k", &t).await.unwrap());
        assert!(!b.merge(ks, "k", &v1).await.unwrap());
        assert!(b.read(ks, "k").await.unwrap().unwrap().is_tombstone());
        assert_ne!(a.digest(), b.digest());
        a.merge(ks, "k", &t).await.unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.versions("things"), b.versions("things"));
    }

    #[tokio::test]
    async fn key_records_are_insert_only_first_created_wins_and_the_holder_of_the_other_is_flagged()
    {
        let clock = FakeClock::new(1_000_000);
        let a = replica("a", clock.clone());
        let b = replica("b", clock.clone());
        let ks = intern("mediator_keys").unwrap();
        let first = Versioned {
            version: a.new_version(),
            value: Some(b"key-of-a".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        clock.advance_ms(5);
        let later = Versioned {
            version: b.new_version(),
            value: Some(b"key-of-b".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        a.merge(ks, "mediator", &first).await.unwrap();
        b.merge(ks, "mediator", &later).await.unwrap();
        // the later, different key never replaces the first one (no last-writer-wins)...
        assert!(!a.merge(ks, "mediator", &later).await.unwrap());
        assert!(a.replaced_keys().is_empty());
        // ...and the first created replaces the later one where that was held, which is flagged
        assert!(b.merge(ks, "mediator", &first).await.unwrap());
        assert_eq!(
            b.replaced_keys(),
            vec!["mediator_keys/mediator".to_string()]
        );
        for r in [&a, &b] {
            assert_eq!(
                r.read(ks, "mediator")
                    .await
                    .unwrap()
                    .unwrap()
                    .value
                    .unwrap(),
                b"key-of-a"
            );
        }
        assert_eq!(a.digest(), b.digest());
        // a delete still applies, and the same id may then be created again
        clock.advance_ms(5);
        let t = a.tombstone();
        assert!(b.merge(ks, "mediator", &t).await.unwrap());
        clock.advance_ms(5);
        let again = Versioned {
            version: a.new_version(),
            value: Some(b"new-key".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        assert!(b.merge(ks, "mediator", &again).await.unwrap());
        // an ordinary keyspace stays last-writer-wins
        let other = intern("issuer_offers").unwrap();
        a.merge(other, "o", &first).await.unwrap();
        assert!(a.merge(other, "o", &later).await.unwrap());
    }

    /// The sandbox admin token is insert-only as key records are: two nodes that each made one
    /// (their views of the init lease's primary disagreed) end up with the first made, and the
    /// node that held the other, in memory too, is flagged.
    #[tokio::test]
    async fn the_sandbox_admin_token_is_insert_only_like_key_records() {
        let clock = FakeClock::new(1_000_000);
        let a = replica("a", clock.clone());
        let b = replica("b", clock.clone());
        let ks = intern(crate::store::keyspaces::ADMIN).unwrap();
        let key = "sandbox_admin_token";
        let first = Versioned {
            version: a.new_version(),
            value: Some(b"token-of-a".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        clock.advance_ms(5);
        let later = Versioned {
            version: b.new_version(),
            value: Some(b"token-of-b".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        a.merge(ks, key, &first).await.unwrap();
        b.merge(ks, key, &later).await.unwrap();
        assert!(!a.merge(ks, key, &later).await.unwrap());
        assert!(b.merge(ks, key, &first).await.unwrap());
        assert_eq!(b.replaced_keys(), vec![format!("{ks}/{key}")]);
        assert_eq!(a.digest(), b.digest());
    }

    /// A key record whose id names its key (a wallet's `{wallet}/{thumbprint}`, a tenant's
    /// `{tenant}/{thumbprint}`) is last writer wins (attacker review: a key deleted and stored
    /// again while a node was away came back from that node as the "first created", every other
    /// node was flagged not ready, and the deleted copy won). Legacy `{tenant}` places and the
    /// mediator's key stay first-created-wins.
    #[tokio::test]
    async fn a_key_stored_again_after_a_delete_is_not_undone_by_a_node_that_was_away() {
        for (ks, key) in [("wallet_keys", "w1/thumb"), ("issuer_keys", "iss/thumb")] {
            let clock = FakeClock::new(1_000_000);
            let a = replica("a", clock.clone());
            let c = replica("c", clock.clone());
            let ks = intern(ks).unwrap();
            let x = Versioned {
                version: a.new_version(),
                value: Some(b"sealed-once".to_vec()),
                deadline_ms: None,
                keep_until_ms: None,
            };
            a.merge(ks, key, &x).await.unwrap();
            c.merge(ks, key, &x).await.unwrap();
            // c is away: deleted, then the same key stored again (sealed anew) on a
            clock.advance_ms(5);
            let gone = Versioned {
                version: a.new_version(),
                value: None,
                deadline_ms: None,
                keep_until_ms: None,
            };
            assert!(a.merge(ks, key, &gone).await.unwrap());
            clock.advance_ms(5);
            let y = Versioned {
                version: a.new_version(),
                value: Some(b"sealed-again".to_vec()),
                deadline_ms: None,
                keep_until_ms: None,
            };
            assert!(a.merge(ks, key, &y).await.unwrap());
            // c comes back: it takes y, and a keeps y
            assert!(c.merge(ks, key, &y).await.unwrap(), "{ks}");
            assert!(!a.merge(ks, key, &x).await.unwrap(), "{ks}");
            assert!(a.replaced_keys().is_empty() && c.replaced_keys().is_empty());
            assert_eq!(a.digest(), c.digest());
        }
        assert!(is_insert_only("issuer_keys", "legacy-tenant"));
        assert!(is_insert_only("mediator_keys", "mediator/key"));
        assert!(!is_insert_only("wallet_keys", "w1/thumb"));
    }

    #[tokio::test]
    async fn records_past_their_deadline_are_not_written_and_leave_the_digest() {
        let clock = FakeClock::new(1_000_000);
        let a = replica("a", clock.clone());
        let ks = intern("sessions").unwrap();
        let old = Versioned {
            version: a.new_version(),
            value: Some(b"x".to_vec()),
            deadline_ms: Some(999_000),
            keep_until_ms: None,
        };
        a.merge(ks, "gone", &old).await.unwrap();
        assert!(a.read(ks, "gone").await.unwrap().is_none());
        let soon = Versioned {
            version: a.new_version(),
            value: Some(b"x".to_vec()),
            deadline_ms: Some(1_060_000),
            keep_until_ms: None,
        };
        a.merge(ks, "live", &soon).await.unwrap();
        assert_eq!(a.digest()["sessions"].0, 1);
        clock.advance_ms(58_000); // within the near-expiry horizon
        assert!(a.digest().is_empty());
        clock.advance_ms(10_000);
        a.prune_index();
        assert_eq!(a.record_count(), 0);
    }

    #[tokio::test]
    async fn index_is_rebuilt_from_disk() {
        let clock = FakeClock::new(5_000_000);
        let inner: Arc<dyn Store> = Arc::new(SledStore::temporary(clock.clone()).unwrap());
        let a = Replica::new(
            inner.clone(),
            "a".into(),
            clock.clone(),
            Duration::from_secs(60),
        );
        let ks = intern("things").unwrap();
        let rec = Versioned {
            version: a.new_version(),
            value: Some(b"v".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        a.merge(ks, "k1", &rec).await.unwrap();
        let b = Replica::new(inner, "a".into(), clock, Duration::from_secs(60));
        assert_eq!(b.load_index().await.unwrap(), 1);
        assert_eq!(b.version_of("things", "k1"), Some(rec.version.clone()));
        // the clock continues past what is on disk
        assert!(b.new_version() > rec.version);
    }

    /// A prepared transition outlives a restart of the node that prepared it (kept on disk,
    /// reloaded undecided); a decided one — committed, aborted, or replaced by a newer version —
    /// does not come back. Before, a restart forgot every prepared transition: one whose
    /// executor committed it with this node counted in its majority and lost its decision calls
    /// could then be overwritten by a competing transition on the old version.
    #[tokio::test]
    async fn prepared_transitions_survive_a_restart_decided_ones_do_not() {
        let clock = FakeClock::new(5_000_000);
        let inner: Arc<dyn Store> = Arc::new(SledStore::temporary(clock.clone()).unwrap());
        let open = || {
            Replica::new(
                inner.clone(),
                "b".into(),
                clock.clone(),
                Duration::from_secs(60),
            )
        };
        let b = open();
        let ks = intern("things").unwrap();
        let base = Versioned {
            version: b.new_version(),
            value: Some(b"v0".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        for k in ["pending", "committed", "aborted", "replaced", "own"] {
            b.merge(ks, k, &base).await.unwrap();
        }
        let executor = replica("a", clock.clone());
        executor.hlc.observe(base.version.hlc);
        let transition = |value: &[u8]| Versioned {
            version: executor.new_version(),
            value: Some(value.to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        let mut made = BTreeMap::new();
        for k in ["pending", "committed", "aborted", "replaced"] {
            let t = transition(b"v1");
            assert!(b.prepare(ks, k, &t, &base.version).await.unwrap());
            made.insert(k, t);
        }
        // and one b executed itself, undecided when it restarts: aborted by the restart
        let own = Versioned {
            version: b.new_version(),
            value: Some(b"mine".to_vec()),
            deadline_ms: None,
            keep_until_ms: None,
        };
        assert!(b.prepare(ks, "own", &own, &base.version).await.unwrap());
        // an insert (made on "no version"), and a delete from before it that b has not seen
        let older_delete = Versioned {
            version: executor.new_version(),
            value: None,
            deadline_ms: None,
            keep_until_ms: None,
        };
        let insert = transition(b"new");
        let none = Version::default();
        assert!(b.prepare(ks, "inserted", &insert, &none).await.unwrap());
        b.commit(ks, "committed", &made["committed"]).await.unwrap();
        b.abort(ks, "aborted", &made["aborted"].version).await;
        // a decided transition's disk copy goes with the decision; b's own is never kept
        let on_disk = |k: &str| {
            let inner = inner.clone();
            let key = kept_key("things", k);
            async move { inner.get(LOCAL_KEYSPACE, &key).await.unwrap().is_some() }
        };
        for (k, kept) in [
            ("pending", true),
            ("replaced", true),
            ("inserted", true),
            ("committed", false),
            ("aborted", false),
            ("own", false),
        ] {
            assert_eq!(on_disk(k).await, kept, "{k}");
        }
        // the restart: what was in memory is gone
        drop(b);
        let b = open();
        b.load_index().await.unwrap();
        // before the copies are reloaded, anti-entropy brought: a newer version of "replaced"
        // (the transition can no longer apply), and the delete from before the insert (it
        // still can)
        b.merge(ks, "replaced", &transition(b"v2")).await.unwrap();
        b.merge(ks, "inserted", &older_delete).await.unwrap();
        assert_eq!(b.load_provisionals().await.unwrap(), 2);
        assert_eq!(
            b.provisional_of(ks, "inserted"),
            Some(insert.version.clone())
        );
        assert!(!on_disk("replaced").await);
        assert_eq!(
            b.provisional_of(ks, "pending"),
            Some(made["pending"].version.clone())
        );
        for k in ["committed", "aborted", "replaced", "own"] {
            assert_eq!(b.provisional_of(ks, k), None, "{k}");
        }
        // still refused: a competing transition on the old version
        let competing = transition(b"other");
        assert!(!b
            .prepare(ks, "pending", &competing, &base.version)
            .await
            .unwrap());
        // decided after the restart: gone from disk too
        b.commit(ks, "pending", &made["pending"]).await.unwrap();
        b.abort(ks, "inserted", &insert.version).await;
        let again = open();
        again.load_index().await.unwrap();
        assert_eq!(again.load_provisionals().await.unwrap(), 0);
        assert_eq!(
            again
                .read(ks, "pending")
                .await
                .unwrap()
                .and_then(|r| r.value),
            Some(b"v1".to_vec())
        );
    }
}
