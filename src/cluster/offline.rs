//! The local store of a cluster node opened by the CLI (`store export|import`, `admin-token`) while
//! the node is stopped: records read without their version envelopes, writes versioned like
//! the node would (they reach the peers through anti-entropy once the node runs again). No network.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::replica::{is_local_keyspace, Replica};
use super::version::Versioned;
use crate::store::{BatchOp, Cas, ExportRecord, Store, StoreResult, StoreStats};

pub struct OfflineStore {
    replica: Arc<Replica>,
}

/// Wraps a cluster node's local store for offline use.
pub fn wrap(
    inner: Arc<dyn Store>,
    settings: &crate::config::Settings,
    clock: crate::clock::SharedClock,
) -> Arc<dyn Store> {
    let c = &settings.raw.cluster;
    let node_id = if c.node_id.is_empty() {
        c.gossip_addr.clone()
    } else {
        c.node_id.clone()
    };
    Arc::new(OfflineStore {
        replica: Arc::new(Replica::new(
            inner,
            node_id,
            clock,
            Duration::from_secs(c.tombstone_ttl_seconds.max(60)),
        )),
    })
}

impl OfflineStore {
    fn inner(&self) -> &Arc<dyn Store> {
        &self.replica.inner
    }

    async fn write(&self, ks: &'static str, key: &str, rec: Versioned) -> StoreResult<()> {
        let _g = self.replica.lock([(ks, key)]).await;
        self.replica.write_locked(ks, key, &rec).await
    }
}

/// `get_settled` is the trait's default, a local read: offline, this copy is the only one there is.
#[async_trait]
impl Store for OfflineStore {
    async fn get(&self, keyspace: &'static str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        if is_local_keyspace(keyspace) {
            return self.inner().get(keyspace, key).await;
        }
        Ok(self
            .replica
            .read(keyspace, key)
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
        let rec = self.replica.record_of(keyspace, key, value, ttl);
        self.write(keyspace, key, rec).await
    }

    async fn delete(&self, keyspace: &'static str, key: &str) -> StoreResult<bool> {
        let existed = self.get(keyspace, key).await?.is_some();
        self.write(keyspace, key, self.replica.tombstone_of(keyspace, key))
            .await?;
        Ok(existed)
    }

    async fn compare_and_swap(
        &self,
        keyspace: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> StoreResult<Cas> {
        let _g = self.replica.lock([(keyspace, key)]).await;
        let cur = self
            .replica
            .read(keyspace, key)
            .await?
            .and_then(|r| r.value);
        if cur != expected {
            return Ok(Cas::Conflict(cur));
        }
        let rec = match new {
            Some((v, ttl)) => self.replica.record_of(keyspace, key, v, ttl),
            None => self.replica.tombstone_of(keyspace, key),
        };
        self.replica.write_locked(keyspace, key, &rec).await?;
        Ok(Cas::Swapped)
    }

    async fn scan_prefix(
        &self,
        keyspace: &'static str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Vec<u8>)>> {
        super::store::scan_decoded(self.inner(), keyspace, prefix, limit).await
    }

    async fn batch(&self, ops: Vec<BatchOp>) -> StoreResult<()> {
        for op in ops {
            match op {
                BatchOp::Put {
                    keyspace,
                    key,
                    value,
                    ttl,
                } => self.put(keyspace, &key, value, ttl).await?,
                BatchOp::Delete { keyspace, key } => {
                    self.delete(keyspace, &key).await?;
                }
            }
        }
        Ok(())
    }

    async fn sweep_expired(&self) -> StoreResult<u64> {
        self.inner().sweep_expired().await
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
        super::store::export_decoded(self.inner()).await
    }

    /// As `ClusterStore::import`: imported records carry the lowest version there is.
    async fn import(&self, records: Vec<ExportRecord>) -> StoreResult<u64> {
        use super::store::{decode_import, imported};
        let now = self.replica.clock.now_ms();
        let mut n = 0;
        for r in records {
            let Some((ks, key, value, ttl)) = decode_import(r, now)? else {
                continue;
            };
            if is_local_keyspace(ks) {
                self.inner().put(ks, &key, value, ttl).await?;
            } else {
                let deadline = self.replica.deadline(ttl);
                self.write(ks, &key, imported(value, deadline)).await?;
            }
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::store::SledStore;

    /// The offline view (what `idstack store export/import/admin-token` use on a cluster node's
    /// data) keeps every `Store` promise.
    async fn store() -> (Arc<dyn Store>, Arc<FakeClock>) {
        let clock = FakeClock::new(1_000_000);
        let inner: Arc<dyn Store> = Arc::new(SledStore::temporary(clock.clone()).unwrap());
        let mut cfg = crate::config::Config::default();
        cfg.cluster.node_id = "n1".into();
        let settings = cfg.finish().unwrap();
        (wrap(inner, &settings, clock.clone()), clock)
    }
    crate::store::conformance::backend_tests!(store);

    #[tokio::test]
    async fn offline_view_reads_and_writes_versioned_records() {
        let clock = FakeClock::new(1_000_000);
        let inner: Arc<dyn Store> = Arc::new(SledStore::temporary(clock.clone()).unwrap());
        let mut cfg = crate::config::Config::default();
        cfg.cluster.node_id = "n1".into();
        let settings = cfg.finish().unwrap();
        let s = wrap(inner.clone(), &settings, clock.clone());
        s.put("things", "a", b"1".to_vec(), None).await.unwrap();
        // on disk: an envelope; through the view: the value
        assert_ne!(inner.get("things", "a").await.unwrap().unwrap(), b"1");
        assert_eq!(s.get("things", "a").await.unwrap().unwrap(), b"1");
        assert_eq!(
            s.compare_and_swap("things", "a", Some(b"1".to_vec()), None)
                .await
                .unwrap(),
            Cas::Swapped
        );
        assert_eq!(s.get("things", "a").await.unwrap(), None);
        s.import(vec![ExportRecord {
            keyspace: "things".into(),
            key: "b".into(),
            value_b64: "Mg==".into(),
            expires_at_ms: None,
        }])
        .await
        .unwrap();
        let exported = s.export_all().await.unwrap();
        assert_eq!(exported.len(), 1, "tombstones are not exported");
        assert_eq!(exported[0].value_b64, "Mg==");
        assert_eq!(s.scan_prefix("things", "", 10).await.unwrap().len(), 1);
    }

    /// One node restored from an export must not roll the cluster back to it: what the cluster
    /// wrote since (here: a newer value of `a`) wins over the imported copy on every node.
    #[tokio::test]
    async fn imported_records_lose_to_anything_the_cluster_wrote_since() {
        use crate::cluster::replica::replaces;
        let clock = FakeClock::new(1_000_000);
        let inner: Arc<dyn Store> = Arc::new(SledStore::temporary(clock.clone()).unwrap());
        let replica = Arc::new(Replica::new(
            inner,
            "n1".into(),
            clock.clone(),
            Duration::from_secs(3600),
        ));
        let s = OfflineStore {
            replica: replica.clone(),
        };
        s.put("things", "a", b"revoked".to_vec(), None)
            .await
            .unwrap();
        let newer = replica.read("things", "a").await.unwrap().unwrap();
        clock.advance_ms(60_000);
        let rec = |key: &str, v: &[u8]| ExportRecord {
            keyspace: "things".into(),
            key: key.into(),
            value_b64: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v),
            expires_at_ms: None,
        };
        s.import(vec![rec("a", b"valid"), rec("b", b"only exported")])
            .await
            .unwrap();
        let imported = replica.read("things", "a").await.unwrap().unwrap();
        assert_eq!(imported.version.hlc, 0);
        assert!(
            replaces("things", "k", &imported, &newer),
            "the peers' copy wins here"
        );
        assert!(
            !replaces("things", "k", &newer, &imported),
            "and stays theirs"
        );
        assert_eq!(
            s.get("things", "b").await.unwrap().unwrap(),
            b"only exported"
        );
        // two different values imported on two nodes: one replaces the other, the same way on
        // both (not two equal versions that anti-entropy would take for the same record)
        let (x, y) = (
            super::super::store::imported(b"x".to_vec(), None),
            super::super::store::imported(b"y".to_vec(), None),
        );
        assert_ne!(x.version, y.version);
        assert_ne!(
            replaces("things", "k", &x, &y),
            replaces("things", "k", &y, &x)
        );
    }
}
