//! Test stores that wrap another one and change a few of its methods (fault injection).

/// `impl Store for $ty` with the methods given, and every other one passed to `self.inner`
/// unchanged. The plain form takes `get`, `put` and `compare_and_swap`; `own get_settled` adds the
/// read at the primary, `own get_settled batch` batches too; `only batch` takes `batch` alone,
/// `only scan_prefix` `scan_prefix` alone, `only get` `get` alone, `only compare_and_swap`
/// `compare_and_swap` alone.
/// Unless given, `get_settled` is `self.inner`'s, never the trait's default, which would read
/// through the wrapper's `get`.
// not every feature set has a test that wraps a store
#[allow(unused_macros)]
macro_rules! store_wrapper {
    ($ty:ty { $($custom:tt)* }) => {
        $crate::store::test_wrapper::store_wrapper!($ty, own get_settled {
            async fn get_settled(
                &self,
                ks: &'static str,
                key: &str,
            ) -> crate::store::StoreResult<Option<Vec<u8>>> {
                self.inner.get_settled(ks, key).await
            }
            $($custom)*
        });
    };
    ($ty:ty, own get_settled { $($custom:tt)* }) => {
        $crate::store::test_wrapper::store_wrapper!($ty, own get_settled batch {
            async fn batch(&self, ops: Vec<crate::store::BatchOp>) -> crate::store::StoreResult<()> {
                self.inner.batch(ops).await
            }
            $($custom)*
        });
    };
    ($ty:ty, only get { $($custom:tt)* }) => {
        $crate::store::test_wrapper::store_wrapper!(@writes $ty, [] { $($custom)* });
    };
    ($ty:ty, only compare_and_swap { $($custom:tt)* }) => {
        $crate::store::test_wrapper::store_wrapper!(@add_get [@add_put [$ty]] { $($custom)* });
    };
    ($ty:ty, only batch { $($custom:tt)* }) => {
        $crate::store::test_wrapper::store_wrapper!(@point_ops $ty, own get_settled batch {
            $($custom)*
        });
    };
    ($ty:ty, only scan_prefix { $($custom:tt)* }) => {
        $crate::store::test_wrapper::store_wrapper!(@point_ops $ty, own get_settled batch scan_prefix {
            async fn batch(&self, ops: Vec<crate::store::BatchOp>) -> crate::store::StoreResult<()> {
                self.inner.batch(ops).await
            }
            $($custom)*
        });
    };
    // get, get_settled, put and compare_and_swap passed through, into the form named
    (@point_ops $ty:ty, $($form:ident)* { $($custom:tt)* }) => {
        $crate::store::test_wrapper::store_wrapper!(@add_get [@writes $ty, [, $($form)*]] {
            async fn get_settled(
                &self,
                ks: &'static str,
                key: &str,
            ) -> crate::store::StoreResult<Option<Vec<u8>>> {
                self.inner.get_settled(ks, key).await
            }
            $($custom)*
        });
    };
    // put and compare_and_swap passed through, into the form `[…]` names (empty: the plain one)
    (@writes $ty:ty, [$($form:tt)*] { $($custom:tt)* }) => {
        $crate::store::test_wrapper::store_wrapper!(@add_put [$ty $($form)*] {
            async fn compare_and_swap(
                &self,
                ks: &'static str,
                key: &str,
                expected: Option<Vec<u8>>,
                new: Option<(Vec<u8>, Option<std::time::Duration>)>,
            ) -> crate::store::StoreResult<crate::store::Cas> {
                self.inner.compare_and_swap(ks, key, expected, new).await
            }
            $($custom)*
        });
    };
    // `get` passed through, then on to the arm `[…]` names
    (@add_get [$($next:tt)*] { $($custom:tt)* }) => {
        $crate::store::test_wrapper::store_wrapper!($($next)* {
            async fn get(
                &self,
                ks: &'static str,
                key: &str,
            ) -> crate::store::StoreResult<Option<Vec<u8>>> {
                self.inner.get(ks, key).await
            }
            $($custom)*
        });
    };
    // `put` passed through, then on to the arm `[…]` names
    (@add_put [$($next:tt)*] { $($custom:tt)* }) => {
        $crate::store::test_wrapper::store_wrapper!($($next)* {
            async fn put(
                &self,
                ks: &'static str,
                key: &str,
                value: Vec<u8>,
                ttl: Option<std::time::Duration>,
            ) -> crate::store::StoreResult<()> {
                self.inner.put(ks, key, value, ttl).await
            }
            $($custom)*
        });
    };
    ($ty:ty, own get_settled batch { $($custom:tt)* }) => {
        $crate::store::test_wrapper::store_wrapper!($ty, own get_settled batch scan_prefix {
            async fn scan_prefix(
                &self,
                ks: &'static str,
                prefix: &str,
                limit: usize,
            ) -> crate::store::StoreResult<Vec<(String, Vec<u8>)>> {
                self.inner.scan_prefix(ks, prefix, limit).await
            }
            $($custom)*
        });
    };
    ($ty:ty, own get_settled batch scan_prefix { $($custom:tt)* }) => {
        #[async_trait::async_trait]
        impl crate::store::Store for $ty {
            $($custom)*
            async fn delete(&self, ks: &'static str, key: &str) -> crate::store::StoreResult<bool> {
                self.inner.delete(ks, key).await
            }
            async fn sweep_expired(&self) -> crate::store::StoreResult<u64> {
                self.inner.sweep_expired().await
            }
            fn current(&self) -> crate::store::StoreResult<()> {
                self.inner.current()
            }
            async fn probe(&self) -> crate::store::StoreResult<()> {
                self.inner.probe().await
            }
            async fn flush(&self) -> crate::store::StoreResult<()> {
                self.inner.flush().await
            }
            async fn stats(&self) -> crate::store::StoreResult<crate::store::StoreStats> {
                self.inner.stats().await
            }
            async fn export_all(&self) -> crate::store::StoreResult<Vec<crate::store::ExportRecord>> {
                self.inner.export_all().await
            }
            async fn import(
                &self,
                records: Vec<crate::store::ExportRecord>,
            ) -> crate::store::StoreResult<u64> {
                self.inner.import(records).await
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use store_wrapper;

#[cfg(test)]
/// A store that yields to the scheduler before every read and write, as a networked one (Redis,
/// the cluster) does: concurrent requests interleave between their store steps.
pub struct Yielding {
    pub inner: std::sync::Arc<dyn crate::store::Store>,
}

#[cfg(test)]
store_wrapper!(Yielding {
    async fn get(&self, ks: &'static str, key: &str) -> crate::store::StoreResult<Option<Vec<u8>>> {
        tokio::task::yield_now().await;
        self.inner.get(ks, key).await
    }
    async fn put(
        &self,
        ks: &'static str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<std::time::Duration>,
    ) -> crate::store::StoreResult<()> {
        tokio::task::yield_now().await;
        self.inner.put(ks, key, value, ttl).await
    }
    async fn compare_and_swap(
        &self,
        ks: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<std::time::Duration>)>,
    ) -> crate::store::StoreResult<crate::store::Cas> {
        tokio::task::yield_now().await;
        self.inner.compare_and_swap(ks, key, expected, new).await
    }
});
