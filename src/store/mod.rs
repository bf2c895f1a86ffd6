//! The store: a small trait over named keyspaces that every role talks to, never to sled itself.
//!
//! Semantics every backend keeps (sled, Redis in `redis_store`, and the cluster layer):
//! - a record may carry a deadline; once past it the record is absent for every read and CAS,
//!   and a background sweep deletes it;
//! - `compare_and_swap` is the one primitive for single-use transitions (codes, nonces, sessions);
//! - `batch` applies several writes atomically, across keyspaces;
//! - values are opaque bytes; secrets are sealed by the caller with [`seal::Sealer`] before `put`.

#[cfg(test)]
pub(crate) mod conformance;
pub mod lease;
pub mod open;
#[cfg(feature = "redis")]
pub mod redis_bus;
#[cfg(feature = "redis")]
pub mod redis_store;
pub mod seal;
pub mod sled_store;
#[cfg(test)]
pub mod test_wrapper;

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use seal::{MacKey, Sealer};
pub use sled_store::SledStore;

/// On-disk layout version; bumped (with a migration) whenever the record encoding changes.
pub const LAYOUT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store backend error: {0}")]
    Backend(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt record in {keyspace}/{key}: {reason}")]
    Corrupt {
        keyspace: String,
        key: String,
        reason: String,
    },
    #[error("sealing: {0}")]
    Seal(String),
    #[error("store layout: {0}")]
    Layout(String),
    /// A value that could be written but not read back ([`MAX_STORED_DEPTH`]): the input that
    /// made it is refused (422), nothing is stored.
    #[error("{0}")]
    TooDeep(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    /// The expected value matched and the new value is in place.
    Swapped,
    /// Someone else got there first; this is what is there now (`None` = absent or expired).
    Conflict(Option<Vec<u8>>),
}

/// One write of an atomic batch.
#[derive(Debug, Clone)]
pub enum BatchOp {
    Put {
        keyspace: &'static str,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    },
    Delete {
        keyspace: &'static str,
        key: String,
    },
}

/// A record as exported: keyspace, key, value (base64, still sealed where it was), deadline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportRecord {
    pub keyspace: String,
    pub key: String,
    pub value_b64: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct StoreStats {
    pub size_on_disk_bytes: u64,
    pub keyspaces: Vec<(String, u64)>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, keyspace: &'static str, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// The record as a compare-and-swap issued now would find it: read where compare-and-swaps
    /// execute, once any transition of the key still in flight there is decided. In cluster mode
    /// that is the key's primary (a network round trip), and the answer may be newer than
    /// [`Store::get`]'s local copy, which can lag it; the answer is merged locally. A tombstone
    /// there reads as absent, like everywhere. For a check whose answer must not come from a
    /// lagging copy, or a compare-and-swap whose expected value must be the current one without
    /// a round that is meant to conflict. Single-node backends (sled, Redis) are their own
    /// primary: [`Store::get`].
    async fn get_settled(&self, keyspace: &'static str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.get(keyspace, key).await
    }
    async fn put(
        &self,
        keyspace: &'static str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreResult<()>;
    /// Removes the record; returns whether a live record was there.
    async fn delete(&self, keyspace: &'static str, key: &str) -> StoreResult<bool>;
    /// Replaces `expected` (None = absent/expired) by `new` (None = delete), atomically.
    async fn compare_and_swap(
        &self,
        keyspace: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> StoreResult<Cas>;
    /// Live records whose key starts with `prefix`, in key order, at most `limit`.
    async fn scan_prefix(
        &self,
        keyspace: &'static str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Vec<u8>)>>;
    /// How many live records `scan_prefix` would return, counting stops at `limit`. Backends
    /// override it to count without copying values (a mediator queue is counted per forward).
    async fn count_prefix(
        &self,
        keyspace: &'static str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<usize> {
        Ok(self.scan_prefix(keyspace, prefix, limit).await?.len())
    }
    /// How many live records `scan_prefix` would return and the bytes of their values, counting
    /// stops at `limit` records. Backends override it to measure without copying values (a
    /// wallet's credentials are weighed on every credential it stores).
    async fn measure_prefix(
        &self,
        keyspace: &'static str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<(usize, usize)> {
        let rows = self.scan_prefix(keyspace, prefix, limit).await?;
        Ok((rows.len(), rows.iter().map(|(_, v)| v.len()).sum()))
    }
    async fn batch(&self, ops: Vec<BatchOp>) -> StoreResult<()>;
    /// Deletes expired records; returns how many.
    async fn sweep_expired(&self) -> StoreResult<u64>;
    /// Whether every node works on the same records (an external store such as Redis), so a
    /// sweep is cluster-wide work one node does ([`lease::Lease`]). `false` where each node
    /// sweeps records of its own (sled, and each replica's copies in cluster mode).
    fn shared_by_nodes(&self) -> bool {
        false
    }
    /// Whether this store's copy may be read where a missed write must not be served as if
    /// current (a revocation in a status list): `Unavailable` on a cluster node in consistent
    /// mode that is cut off from a majority of the nodes or catching up. Everywhere else `Ok`.
    fn current(&self) -> StoreResult<()> {
        Ok(())
    }
    /// A real write + read + flush, for readiness.
    async fn probe(&self) -> StoreResult<()>;
    async fn flush(&self) -> StoreResult<()>;
    async fn stats(&self) -> StoreResult<StoreStats>;
    /// Every live record, for `idstack store export`.
    async fn export_all(&self) -> StoreResult<Vec<ExportRecord>>;
    /// Writes exported records back (overwriting same keys).
    async fn import(&self, records: Vec<ExportRecord>) -> StoreResult<u64>;
}

/// JSON helpers over any store.
impl dyn Store {
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        keyspace: &'static str,
        key: &str,
    ) -> StoreResult<Option<T>> {
        match self.get(keyspace, key).await? {
            None => Ok(None),
            Some(bytes) => decode_json(keyspace, key, &bytes).map(Some),
        }
    }

    /// [`Store::get_settled`], decoded.
    pub async fn get_settled_json<T: DeserializeOwned>(
        &self,
        keyspace: &'static str,
        key: &str,
    ) -> StoreResult<Option<T>> {
        match self.get_settled(keyspace, key).await? {
            None => Ok(None),
            Some(bytes) => decode_json(keyspace, key, &bytes).map(Some),
        }
    }

    pub async fn put_json<T: Serialize + ?Sized>(
        &self,
        keyspace: &'static str,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> StoreResult<()> {
        let bytes = to_json(value)?;
        self.put(keyspace, key, bytes, ttl).await
    }

    /// Inserts only if absent; `false` when something live is already there.
    pub async fn insert_new_json<T: Serialize + ?Sized>(
        &self,
        keyspace: &'static str,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> StoreResult<bool> {
        let bytes = to_json(value)?;
        Ok(matches!(
            self.compare_and_swap(keyspace, key, None, Some((bytes, ttl)))
                .await?,
            Cas::Swapped
        ))
    }

    /// Read-modify-write with compare-and-swap, retried on conflict. `f` returns the new value
    /// (or an error that aborts with nothing written). Returns `None` when the record is absent.
    pub async fn update_json<T, E, F>(
        &self,
        keyspace: &'static str,
        key: &str,
        ttl: Option<Duration>,
        f: F,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<StoreError>,
        F: FnMut(T) -> Result<T, E>,
    {
        self.update_json_from(keyspace, key, ttl, None, f).await
    }

    /// [`update_json`](Self::update_json) whose first attempt starts from `current` — the record's
    /// value just read with [`Store::get_settled`], so `f` first sees the primary's value, not a
    /// local copy that may lag it. `None`: read locally, as `update_json` does.
    pub async fn update_json_from<T, E, F>(
        &self,
        keyspace: &'static str,
        key: &str,
        ttl: Option<Duration>,
        current: Option<Vec<u8>>,
        f: F,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<StoreError>,
        F: FnMut(T) -> Result<T, E>,
    {
        self.update_json_with_ttl(keyspace, key, |_: &T| ttl, current, f)
            .await
    }

    /// [`update_json_from`](Self::update_json_from) whose TTL is taken from the new value: for a
    /// record whose lifetime is part of its content (`ttl_of` gives what is left of it). A TTL of
    /// `None` stores the record without expiry, so an update of an expiring record must say how
    /// long it has left — or it lives for ever.
    pub async fn update_json_with_ttl<T, E, F, L>(
        &self,
        keyspace: &'static str,
        key: &str,
        ttl_of: L,
        mut current: Option<Vec<u8>>,
        mut f: F,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<StoreError>,
        F: FnMut(T) -> Result<T, E>,
        L: Fn(&T) -> Option<Duration>,
    {
        // The value a failed compare-and-swap found: the next attempt starts from it instead of
        // reading again (in cluster mode the local copy may lag the key's primary, and re-reading
        // it could conflict over and over).
        for attempt in 0..64u32 {
            if attempt > 0 {
                // Contention (a hot record, or a CAS that crosses the network in cluster mode):
                // back off a random 0..=min(2^attempt, 128) ms so the contenders spread out instead
                // of colliding again in lockstep.
                let cap = 1u64 << attempt.min(7);
                let wait = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=cap);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            let old = match current.take() {
                Some(v) => v,
                None => match self.get(keyspace, key).await? {
                    Some(v) => v,
                    None => return Ok(None),
                },
            };
            let value: T = serde_json::from_slice(&old).map_err(|e| StoreError::Corrupt {
                keyspace: keyspace.to_string(),
                key: key.to_string(),
                reason: e.to_string(),
            })?;
            let new = f(value)?;
            let bytes = to_json(&new)?;
            let ttl = ttl_of(&new);
            match self
                .compare_and_swap(keyspace, key, Some(old), Some((bytes, ttl)))
                .await?
            {
                Cas::Swapped => return Ok(Some(new)),
                Cas::Conflict(Some(now)) => current = Some(now),
                // deleted (or expired) meanwhile
                Cas::Conflict(None) => return Ok(None),
            }
        }
        // Still losing after 64 rounds: a transient overload of one record, answered 503 + Retry-After.
        Err(StoreError::Unavailable(format!("update of {keyspace}/{key} kept conflicting")).into())
    }

    pub async fn scan_json<T: DeserializeOwned>(
        &self,
        keyspace: &'static str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, T)>> {
        self.scan_prefix(keyspace, prefix, limit)
            .await?
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_slice(&v)
                    .map(|t| (k.clone(), t))
                    .map_err(|e| StoreError::Corrupt {
                        keyspace: keyspace.to_string(),
                        key: k,
                        reason: e.to_string(),
                    })
            })
            .collect()
    }
}

pub(crate) fn decode_json<T: DeserializeOwned>(
    keyspace: &str,
    key: &str,
    bytes: &[u8],
) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        keyspace: keyspace.to_string(),
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// How deeply `v` nests (a scalar is 0), without recursion. A record is read back with
/// serde_json's limit of 128 levels: outsider JSON stored a few levels down must be bounded
/// below it, or the record is written and never read again.
pub fn json_depth(v: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            serde_json::Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            serde_json::Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// Deepest nesting a stored JSON record may have: serde_json refuses to read text nested deeper
/// than 128, so a deeper record could be written and then never read again (every read of it,
/// and every scan it is part of, would fail for its whole lifetime).
pub const MAX_STORED_DEPTH: usize = 120;

pub fn to_json<T: Serialize + ?Sized>(value: &T) -> StoreResult<Vec<u8>> {
    let bytes =
        serde_json::to_vec(value).map_err(|e| StoreError::Backend(format!("encode: {e}")))?;
    if text_depth(&bytes) > MAX_STORED_DEPTH {
        return Err(StoreError::TooDeep(format!(
            "the data nests deeper than {MAX_STORED_DEPTH} levels, past what can be stored and read back"
        )));
    }
    Ok(bytes)
}

/// How deep the JSON text `bytes` nests (objects and arrays), read without parsing it.
fn text_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Keyspaces the foundation owns. Roles declare their own next to their code.
pub mod keyspaces {
    /// Server-wide records: leases, markers, the seal canary, layout version.
    pub const SYSTEM: &str = "system";
    /// The sandbox admin token, sealed. Created once (in cluster mode insert-only like key
    /// records: the token created first wins on every node).
    pub const ADMIN: &str = "admin";
    /// Readiness write probe.
    pub const HEALTH: &str = "health";
    /// Leases of jobs that run on one node at a time ([`super::lease::Lease`]).
    pub const JOBS: &str = "jobs";
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    fn nested(depth: usize) -> serde_json::Value {
        let mut v = serde_json::json!("leaf with [brackets] and {braces} and \"quotes\\\\");
        for i in 0..depth {
            v = if i % 2 == 0 {
                serde_json::json!([v])
            } else {
                serde_json::json!({ "k[{": v })
            };
        }
        v
    }

    /// A record nested past what serde_json reads back is refused when written, not stored to
    /// fail every later read; one within the bound is written and read back. Brackets inside
    /// strings do not count.
    #[test]
    fn a_record_too_deep_to_read_back_is_not_written() {
        let ok = to_json(&nested(MAX_STORED_DEPTH)).unwrap();
        assert_eq!(text_depth(&ok), MAX_STORED_DEPTH);
        serde_json::from_slice::<serde_json::Value>(&ok).unwrap();
        assert!(to_json(&nested(MAX_STORED_DEPTH + 1)).is_err());
        // the input that made it is refused, not a server error
        let e = to_json(&nested(MAX_STORED_DEPTH + 1)).unwrap_err();
        assert_eq!(
            crate::error::ApiError::from(e).code,
            crate::error::Code::Validation
        );
        let deep = nested(200);
        assert!(to_json(&deep).is_err());
        assert_eq!(text_depth(br#"{"a":"]]]}}}[[[","b":[1,{"c":"\"["}]}"#), 3);
    }
}
