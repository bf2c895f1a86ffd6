//! The embedded sled backend. One tree per keyspace (`idstack-<keyspace>`), records framed as
//! `[layout][deadline ms, i64 BE, 0 = none][payload]`.
//!
//! Point operations (get, put, delete, compare-and-swap, a batch of one) and the first rows of a
//! scan run inline on the calling task: sled serves them from its page cache and hands log writes
//! to its own IO threads, so they take microseconds and do not wait for the disk. `flush`, batches
//! of several operations, long scans and whole-store walks go to the blocking pool. A
//! blocking-pool hop per call cost two thread wake-ups, which was a third of the server's CPU
//! under mediator load (BENCHMARKS.md). One wait remains inline: while a multi-operation batch
//! waits for sled's global write lock (held off by a flush writing to disk), sled's fair lock
//! makes point operations queue behind it, for at most that flush.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;

use super::{
    BatchOp, Cas, ExportRecord, Store, StoreError, StoreResult, StoreStats, LAYOUT_VERSION,
};
use crate::clock::SharedClock;

const TREE_PREFIX: &str = "idstack-";
const HEADER: usize = 9;
const RECORD_FORMAT: u8 = 1;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    flusher: Arc<GroupFlush>,
    trees: Arc<RwLock<HashMap<String, sled::Tree>>>,
    clock: SharedClock,
    path: PathBuf,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode(value: &[u8], expires_at_ms: Option<i64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&expires_at_ms.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Splits a raw record into (deadline, payload).
fn decode(raw: &[u8]) -> Option<(Option<i64>, &[u8])> {
    if raw.len() < HEADER || raw[0] != RECORD_FORMAT {
        return None;
    }
    let mut d = [0u8; 8];
    d.copy_from_slice(&raw[1..HEADER]);
    let deadline = i64::from_be_bytes(d);
    Some(((deadline != 0).then_some(deadline), &raw[HEADER..]))
}

/// The payload of a raw record if it is well-formed and not expired at `now`.
fn live(raw: &[u8], now: i64) -> Option<&[u8]> {
    match decode(raw) {
        Some((Some(deadline), _)) if deadline <= now => None,
        Some((_, payload)) => Some(payload),
        None => None,
    }
}

fn deadline(now: i64, ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|t| {
        now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
            .max(1)
    })
}

async fn blocking<T, F>(f: F) -> StoreResult<T>
where
    F: FnOnce() -> StoreResult<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
}

/// Rows a scan reads on the calling task before it moves to the blocking pool.
const INLINE_SCAN_ROWS: usize = 256;

/// Feeds the live rows of `iter` to `keep` until `full` says the accumulator has enough or
/// `visits` rows (expired ones included) were read; true when the prefix is exhausted.
fn walk_live<A>(
    iter: &mut sled::Iter,
    acc: &mut A,
    visits: usize,
    now: i64,
    full: impl Fn(&A) -> bool,
    keep: impl Fn(&mut A, &[u8], &[u8]),
) -> StoreResult<bool> {
    for _ in 0..visits {
        if full(acc) {
            return Ok(false);
        }
        let Some(item) = iter.next() else {
            return Ok(true);
        };
        let (k, raw) = item.map_err(backend)?;
        if let Some(v) = live(&raw, now) {
            keep(acc, &k, v);
        }
    }
    Ok(false)
}

/// Group commit for `flush`: one synchronous `Db::flush` at a time on the blocking pool, and a
/// caller whose write is already covered by a flush that started after it returns without
/// flushing again. Not sled's `flush_async`: concurrent calls of it deadlock in release builds
/// (sled 0.34, spacejam/sled#1308), which wedged the store under concurrent mediator forwards.
#[derive(Default)]
struct GroupFlush {
    /// Tickets handed out: a caller takes one after its writes, before it waits.
    issued: std::sync::atomic::AtomicU64,
    /// Every ticket up to this one is durable.
    durable: std::sync::atomic::AtomicU64,
    running: tokio::sync::Mutex<()>,
}

impl GroupFlush {
    async fn flush(&self, db: &sled::Db) -> StoreResult<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let ticket = self.issued.fetch_add(1, SeqCst) + 1;
        let _running = self.running.lock().await;
        if self.durable.load(SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket issued so far belongs to a write made before this flush starts.
        let covers = self.issued.load(SeqCst);
        let db = db.clone();
        blocking(move || db.flush().map(drop).map_err(backend)).await?;
        self.durable.fetch_max(covers, SeqCst);
        Ok(())
    }
}

impl SledStore {
    /// Opens (or creates) the store under `data_dir/sled-v<LAYOUT_VERSION>`.
    pub fn open(data_dir: &Path, cache_capacity: u64, clock: SharedClock) -> StoreResult<Self> {
        super::seal::create_private_dir(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(format!("sled-v{LAYOUT_VERSION}"));
        // sled creates its own directory 0755: made here first, private (the data directory of
        // an install from before, or a container's, may be 0755)
        super::seal::create_private_dir(&path).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", path.display()))
        })?;
        // one that sled made 0755 before (an install from an earlier release) is made private
        // too (secrets review: its files stayed readable by every local user)
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode());
            if mode.is_ok_and(|m| m & 0o077 != 0) {
                if let Err(e) =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                {
                    tracing::warn!(path = %path.display(), error = %e, "the store directory is readable by other users and could not be made private (chmod 700 it)");
                }
            }
        }
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_capacity)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        Self::from_db(db, path, clock)
    }

    /// A store in a temporary directory that disappears on drop. For tests.
    pub fn temporary(clock: SharedClock) -> StoreResult<Self> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(backend)?;
        Self::from_db(db, PathBuf::from("<temporary>"), clock)
    }

    fn from_db(db: sled::Db, path: PathBuf, clock: SharedClock) -> StoreResult<Self> {
        let meta = db.open_tree("meta").map_err(backend)?;
        match meta.get("layout_version").map_err(backend)? {
            None => {
                meta.insert("layout_version", &LAYOUT_VERSION.to_be_bytes())
                    .map_err(backend)?;
            }
            Some(v) if v.as_ref() == LAYOUT_VERSION.to_be_bytes() => {}
            Some(v) => {
                return Err(StoreError::Layout(format!(
                    "data at {} has layout {:?}, this build reads {LAYOUT_VERSION}; export with the older version and import",
                    path.display(),
                    v.as_ref()
                )))
            }
        }
        Ok(Self {
            db,
            flusher: Arc::default(),
            trees: Arc::default(),
            clock,
            path,
        })
    }

    fn tree(&self, keyspace: &str) -> StoreResult<sled::Tree> {
        if let Ok(map) = self.trees.read() {
            if let Some(t) = map.get(keyspace) {
                return Ok(t.clone());
            }
        }
        let tree = self
            .db
            .open_tree(format!("{TREE_PREFIX}{keyspace}"))
            .map_err(backend)?;
        if let Ok(mut map) = self.trees.write() {
            map.insert(keyspace.to_string(), tree.clone());
        }
        Ok(tree)
    }

    /// Walks the live records under `prefix` into `acc` (see [`walk_live`]): the first rows
    /// inline (a queue, a connection's keys), the rest where it stopped on the blocking pool, so
    /// one big keyspace cannot stall an HTTP worker.
    async fn walk_prefix<A, F, K>(
        &self,
        keyspace: &str,
        prefix: &str,
        mut acc: A,
        full: F,
        keep: K,
    ) -> StoreResult<A>
    where
        A: Send + 'static,
        F: Fn(&A) -> bool + Copy + Send + 'static,
        K: Fn(&mut A, &[u8], &[u8]) + Copy + Send + 'static,
    {
        let tree = self.tree(keyspace)?;
        let now = self.clock.now_ms();
        let mut iter = tree.scan_prefix(prefix.as_bytes());
        if walk_live(&mut iter, &mut acc, INLINE_SCAN_ROWS, now, full, keep)? || full(&acc) {
            return Ok(acc);
        }
        blocking(move || {
            walk_live(&mut iter, &mut acc, usize::MAX, now, full, keep)?;
            Ok(acc)
        })
        .await
    }

    fn all_trees(&self) -> Vec<(String, sled::Tree)> {
        self.db
            .tree_names()
            .into_iter()
            .filter_map(|n| {
                let name = String::from_utf8(n.to_vec()).ok()?;
                let ks = name.strip_prefix(TREE_PREFIX)?.to_string();
                let tree = self.tree(&ks).ok()?;
                Some((ks, tree))
            })
            .collect()
    }
}

#[async_trait]
impl Store for SledStore {
    async fn get(&self, keyspace: &'static str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let tree = self.tree(keyspace)?;
        let now = self.clock.now_ms();
        Ok(tree
            .get(key.as_bytes())
            .map_err(backend)?
            .and_then(|raw| live(&raw, now).map(<[u8]>::to_vec)))
    }

    async fn put(
        &self,
        keyspace: &'static str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreResult<()> {
        let tree = self.tree(keyspace)?;
        let raw = encode(&value, deadline(self.clock.now_ms(), ttl));
        tree.insert(key.as_bytes(), raw)
            .map(|_| ())
            .map_err(backend)
    }

    async fn delete(&self, keyspace: &'static str, key: &str) -> StoreResult<bool> {
        let tree = self.tree(keyspace)?;
        let now = self.clock.now_ms();
        Ok(tree
            .remove(key.as_bytes())
            .map_err(backend)?
            .is_some_and(|raw| live(&raw, now).is_some()))
    }

    async fn compare_and_swap(
        &self,
        keyspace: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> StoreResult<Cas> {
        let tree = self.tree(keyspace)?;
        let now = self.clock.now_ms();
        let new_raw = new.map(|(v, ttl)| encode(&v, deadline(now, ttl)));
        loop {
            let current = tree.get(key.as_bytes()).map_err(backend)?;
            let current_live = current.as_deref().and_then(|raw| live(raw, now));
            if current_live != expected.as_deref() {
                return Ok(Cas::Conflict(current_live.map(<[u8]>::to_vec)));
            }
            match tree
                .compare_and_swap(key.as_bytes(), current, new_raw.clone())
                .map_err(backend)?
            {
                Ok(()) => return Ok(Cas::Swapped),
                Err(_) => continue, // raced with a writer between get and CAS: re-evaluate
            }
        }
    }

    async fn scan_prefix(
        &self,
        keyspace: &'static str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.walk_prefix(
            keyspace,
            prefix,
            Vec::new(),
            move |out: &Vec<_>| out.len() >= limit,
            |out, k, v| out.push((String::from_utf8_lossy(k).into_owned(), v.to_vec())),
        )
        .await
    }

    async fn count_prefix(
        &self,
        keyspace: &'static str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<usize> {
        Ok(self.measure_prefix(keyspace, prefix, limit).await?.0)
    }

    /// Values are not copied: sled hands out shared buffers.
    async fn measure_prefix(
        &self,
        keyspace: &'static str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<(usize, usize)> {
        self.walk_prefix(
            keyspace,
            prefix,
            (0, 0),
            move |(n, _)| *n >= limit,
            |(n, bytes), _, v| {
                *n += 1;
                *bytes += v.len();
            },
        )
        .await
    }

    async fn batch(&self, ops: Vec<BatchOp>) -> StoreResult<()> {
        use sled::Transactional;
        if let [_] = ops.as_slice() {
            // One operation is atomic on its own. sled's batches and transactions seal and write
            // its IO buffer twice each (to pin their place in the log), and every write wakes all
            // of sled's idle IO threads: a third of the mediator's CPU went there when each
            // acknowledged message was deleted in a batch of one.
            return match ops.into_iter().next() {
                Some(BatchOp::Put {
                    keyspace,
                    key,
                    value,
                    ttl,
                }) => self.put(keyspace, &key, value, ttl).await,
                Some(BatchOp::Delete { keyspace, key }) => {
                    self.delete(keyspace, &key).await.map(drop)
                }
                None => Ok(()),
            };
        }
        let now = self.clock.now_ms();
        let mut names: Vec<&'static str> = Vec::new();
        for op in &ops {
            let ks = match op {
                BatchOp::Put { keyspace, .. } | BatchOp::Delete { keyspace, .. } => *keyspace,
            };
            if !names.contains(&ks) {
                names.push(ks);
            }
        }
        let trees = names
            .iter()
            .map(|n| self.tree(n))
            .collect::<StoreResult<Vec<_>>>()?;
        // Several operations: on the blocking pool. sled's batches and transactions take its
        // global write lock, which waits for a flush in progress (flushes hold the read side
        // through their disk write).
        blocking(move || {
            if let [tree] = trees.as_slice() {
                // One keyspace: sled's atomic batch, without the bookkeeping of a transaction.
                let mut b = sled::Batch::default();
                for op in ops {
                    match op {
                        BatchOp::Put {
                            key, value, ttl, ..
                        } => b.insert(key.as_bytes(), encode(&value, deadline(now, ttl))),
                        BatchOp::Delete { key, .. } => b.remove(key.as_bytes()),
                    }
                }
                return tree.apply_batch(b).map_err(backend);
            }
            trees
                .as_slice()
                .transaction(|tx| {
                    for op in &ops {
                        match op {
                            BatchOp::Put {
                                keyspace,
                                key,
                                value,
                                ttl,
                            } => {
                                let i = names.iter().position(|n| n == keyspace).unwrap_or(0);
                                tx[i].insert(key.as_bytes(), encode(value, deadline(now, *ttl)))?;
                            }
                            BatchOp::Delete { keyspace, key } => {
                                let i = names.iter().position(|n| n == keyspace).unwrap_or(0);
                                tx[i].remove(key.as_bytes())?;
                            }
                        }
                    }
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|e| backend(format!("{e:?}")))
        })
        .await
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        let trees = self.all_trees();
        let now = self.clock.now_ms();
        blocking(move || {
            let mut n = 0u64;
            for (_, tree) in trees {
                for item in tree.iter() {
                    let (k, raw) = item.map_err(backend)?;
                    if live(&raw, now).is_none() && decode(&raw).is_some() {
                        // CAS so a record rewritten since we read it is left alone.
                        if tree
                            .compare_and_swap(&k, Some(raw), None as Option<&[u8]>)
                            .map_err(backend)?
                            .is_ok()
                        {
                            n += 1;
                        }
                    }
                }
            }
            Ok(n)
        })
        .await
    }

    async fn probe(&self) -> StoreResult<()> {
        let tree = self.tree(super::keyspaces::HEALTH)?;
        // A key per probe: concurrent probes must not read each other's stamp.
        let key = crate::clock::random_id();
        let stamp = self.clock.now_ms().to_be_bytes();
        let unavailable = |e: sled::Error| StoreError::Unavailable(e.to_string());
        blocking(move || {
            tree.insert(key.as_bytes(), &stamp).map_err(unavailable)?;
            let back = tree.get(key.as_bytes()).map_err(unavailable)?;
            tree.remove(key.as_bytes()).map_err(unavailable)?;
            match back {
                Some(v) if v.as_ref() == stamp => Ok(()),
                _ => Err(StoreError::Unavailable(
                    "probe read back a different value".into(),
                )),
            }
        })
        .await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.flusher.flush(&self.db).await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let db = self.db.clone();
        blocking(move || {
            Ok(StoreStats {
                size_on_disk_bytes: db.size_on_disk().map_err(backend)?,
                keyspaces: Vec::new(),
            })
        })
        .await
    }

    async fn export_all(&self) -> StoreResult<Vec<ExportRecord>> {
        let trees = self.all_trees();
        let now = self.clock.now_ms();
        blocking(move || {
            let mut out = Vec::new();
            for (ks, tree) in trees {
                if ks == super::keyspaces::HEALTH {
                    continue;
                }
                for item in tree.iter() {
                    let (k, raw) = item.map_err(backend)?;
                    let Some((deadline, payload)) = decode(&raw) else {
                        continue;
                    };
                    if live(&raw, now).is_none() {
                        continue;
                    }
                    out.push(ExportRecord {
                        keyspace: ks.clone(),
                        key: String::from_utf8_lossy(&k).into_owned(),
                        value_b64: B64.encode(payload),
                        expires_at_ms: deadline,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn import(&self, records: Vec<ExportRecord>) -> StoreResult<u64> {
        let mut prepared = Vec::with_capacity(records.len());
        for r in records {
            let value = B64.decode(&r.value_b64).map_err(|e| StoreError::Corrupt {
                keyspace: r.keyspace.clone(),
                key: r.key.clone(),
                reason: e.to_string(),
            })?;
            let tree = self.tree(&r.keyspace)?;
            prepared.push((tree, r.key, encode(&value, r.expires_at_ms)));
        }
        blocking(move || {
            let n = prepared.len() as u64;
            for (tree, key, raw) in prepared {
                tree.insert(key.as_bytes(), raw).map_err(backend)?;
            }
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    const KS: &str = "test";

    async fn store() -> (Arc<dyn Store>, Arc<FakeClock>) {
        let clock = FakeClock::new(1_000_000);
        (
            Arc::new(SledStore::temporary(clock.clone()).unwrap()),
            clock,
        )
    }

    crate::store::conformance::backend_tests!(store);

    /// Opens `dir` again after a store on it was dropped. sled releases its file lock when its IO
    /// threads are done with the last buffers, a moment after the drop.
    async fn reopen(dir: &Path, clock: SharedClock) -> SledStore {
        for _ in 0..100 {
            match SledStore::open(dir, 1 << 20, clock.clone()) {
                Ok(s) => return s,
                Err(StoreError::Unavailable(e)) if e.contains("lock") => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
        panic!("the store's lock was not released within 5 s")
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_checks_layout() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::new(0);
        {
            let s = SledStore::open(dir.path(), 1 << 20, clock.clone()).unwrap();
            s.put(KS, "k", b"v".to_vec(), None).await.unwrap();
            s.flush().await.unwrap();
        }
        let s = reopen(dir.path(), clock).await;
        assert_eq!(s.get(KS, "k").await.unwrap(), Some(b"v".to_vec()));
        assert!(dir.path().join("sled-v1").exists());
    }

    /// Scans longer than the inline part go on where it stopped, on the blocking pool: nothing
    /// skipped or repeated, expired rows left out on both sides of the boundary, limits kept.
    #[tokio::test]
    async fn long_scans_continue_past_the_inline_rows() {
        let (s, clock) = store().await;
        let n = INLINE_SCAN_ROWS * 2 + 37;
        for i in 0..n {
            // Every fifth row expires; the rest live.
            let ttl = (i % 5 == 0).then(|| Duration::from_secs(1));
            s.put(KS, &format!("q/{i:05}"), vec![1], ttl).await.unwrap();
        }
        s.put(KS, "r/other", vec![1], None).await.unwrap();
        clock.advance_ms(2_000);
        let want: Vec<String> = (0..n)
            .filter(|i| i % 5 != 0)
            .map(|i| format!("q/{i:05}"))
            .collect();
        let keys =
            |rows: Vec<(String, Vec<u8>)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(s.scan_prefix(KS, "q/", usize::MAX).await.unwrap()),
            want
        );
        assert_eq!(
            keys(
                s.scan_prefix(KS, "q/", INLINE_SCAN_ROWS + 10)
                    .await
                    .unwrap()
            ),
            want[..INLINE_SCAN_ROWS + 10]
        );
        assert_eq!(keys(s.scan_prefix(KS, "q/", 3).await.unwrap()), want[..3]);
        // Counting agrees with scanning on both sides of the boundary.
        assert_eq!(
            s.count_prefix(KS, "q/", usize::MAX).await.unwrap(),
            want.len()
        );
        assert_eq!(
            s.count_prefix(KS, "q/", INLINE_SCAN_ROWS + 10)
                .await
                .unwrap(),
            INLINE_SCAN_ROWS + 10
        );
        assert_eq!(s.count_prefix(KS, "q/", 3).await.unwrap(), 3);
        assert_eq!(s.count_prefix(KS, "none/", 3).await.unwrap(), 0);
    }

    /// Many concurrent write + flush pairs (the mediator's forward path) all complete, are durable
    /// after a reopen, and share flushes instead of running one each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flushes_complete_and_are_grouped() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::new(0);
        {
            let s = SledStore::open(dir.path(), 1 << 20, clock.clone()).unwrap();
            let writers: Vec<_> = (0..200)
                .map(|i| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        s.put(KS, &format!("k{i}"), vec![1], None).await.unwrap();
                        s.flush().await.unwrap();
                    })
                })
                .collect();
            for w in writers {
                tokio::time::timeout(Duration::from_secs(60), w)
                    .await
                    .expect("flush completes")
                    .unwrap();
            }
            use std::sync::atomic::Ordering::SeqCst;
            assert_eq!(s.flusher.issued.load(SeqCst), 200);
            assert_eq!(s.flusher.durable.load(SeqCst), 200, "every ticket durable");
        }
        let s = reopen(dir.path(), clock).await;
        for i in 0..200 {
            assert!(s.get(KS, &format!("k{i}")).await.unwrap().is_some(), "k{i}");
        }
    }
}
