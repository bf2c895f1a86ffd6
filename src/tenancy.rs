//! Tenant session coordinator (seed: credo-ts's tenant lifecycle). Every request that touches a
//! wallet holds a [`TenantSession`] guard:
//! - a global cap on open sessions (weighted: the first session of a tenant, which loads and
//!   unseals its keys, costs `open_weight` permits; joining an already open tenant costs 1);
//! - a per-tenant cap;
//! - an acquire timeout, after which the caller gets [`AcquireError::Timeout`] (→ 503 + Retry-After);
//! - FIFO fairness (tokio's semaphores queue waiters in order);
//! - an idle cache of opened tenant contexts, evicted by capacity and idle time.
//!
//! The guard releases on drop, whatever ends the request (return, `?`, panic, cancellation), so a
//! forgotten `destroy()` — the deadlock credo warns about — cannot happen.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub max_open_sessions: usize,
    pub max_sessions_per_tenant: usize,
    pub acquire_timeout: Duration,
    /// Permits the first session of a tenant holds (opening costs more than joining).
    pub open_weight: u32,
    /// Opened contexts kept for reuse after their last session ends.
    pub idle_capacity: usize,
    pub idle_ttl: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            max_open_sessions: 10_000,
            max_sessions_per_tenant: 64,
            acquire_timeout: Duration::from_secs(5),
            open_weight: 4,
            idle_capacity: 1_000,
            idle_ttl: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcquireError {
    #[error("no tenant session became free within the acquire timeout")]
    Timeout,
    #[error("opening the tenant failed: {0}")]
    Open(String),
}

struct Entry<C> {
    sessions: Arc<Semaphore>,
    open: usize,
    context: Option<Arc<C>>,
    last_used: Instant,
}

/// Counters exposed as metrics.
#[derive(Default, Debug)]
pub struct Stats {
    pub open_sessions: AtomicI64,
    pub waiters: AtomicI64,
    pub opened: AtomicU64,
    pub evictions: AtomicU64,
    pub timeouts: AtomicU64,
}

pub struct Coordinator<C: Send + Sync + 'static> {
    cfg: CoordinatorConfig,
    global: Arc<Semaphore>,
    tenants: Mutex<HashMap<String, Entry<C>>>,
    pub stats: Stats,
}

/// A held tenant session. Dropping it releases everything.
pub struct TenantSession<C: Send + Sync + 'static> {
    pub tenant: String,
    pub context: Arc<C>,
    coordinator: Arc<Coordinator<C>>,
    _global: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
}

impl<C: Send + Sync + 'static> std::ops::Deref for TenantSession<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.context
    }
}

impl<C: Send + Sync + 'static> Drop for TenantSession<C> {
    fn drop(&mut self) {
        self.coordinator
            .stats
            .open_sessions
            .fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut map) = self.coordinator.tenants.lock() {
            if let Some(e) = map.get_mut(&self.tenant) {
                e.open = e.open.saturating_sub(1);
                e.last_used = Instant::now();
            }
        }
        // permits are released by their own Drop right after this
    }
}

struct WaiterGuard<'a>(&'a AtomicI64);
impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<C: Send + Sync + 'static> Coordinator<C> {
    pub fn new(cfg: CoordinatorConfig) -> Arc<Self> {
        let permits = cfg.max_open_sessions.max(1);
        Arc::new(Self {
            global: Arc::new(Semaphore::new(permits)),
            tenants: Mutex::default(),
            cfg,
            stats: Stats::default(),
        })
    }

    /// Acquires a session on `tenant`, opening its context with `open` when it is not cached.
    pub async fn acquire<F, Fut>(
        self: &Arc<Self>,
        tenant: &str,
        open: F,
    ) -> Result<TenantSession<C>, AcquireError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, String>>,
    {
        self.stats.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = WaiterGuard(&self.stats.waiters);
        let deadline = tokio::time::Instant::now() + self.cfg.acquire_timeout;
        let (tenant_sem, cached, first) = {
            let mut map = self
                .tenants
                .lock()
                .map_err(|_| AcquireError::Open("coordinator poisoned".into()))?;
            self.evict_idle(&mut map);
            let e = map.entry(tenant.to_string()).or_insert_with(|| Entry {
                sessions: Arc::new(Semaphore::new(self.cfg.max_sessions_per_tenant.max(1))),
                open: 0,
                context: None,
                last_used: Instant::now(),
            });
            (
                e.sessions.clone(),
                e.context.clone(),
                e.open == 0 && e.context.is_none(),
            )
        };
        let weight = if first {
            self.cfg.open_weight.max(1)
        } else {
            1
        }
        .min(self.cfg.max_open_sessions.max(1) as u32);
        let timeout = |_| {
            self.stats.timeouts.fetch_add(1, Ordering::SeqCst);
            AcquireError::Timeout
        };
        let tenant_permit = tokio::time::timeout_at(deadline, tenant_sem.acquire_owned())
            .await
            .map_err(timeout)?
            .map_err(|_| AcquireError::Open("tenant closed".into()))?;
        let global_permit =
            tokio::time::timeout_at(deadline, self.global.clone().acquire_many_owned(weight))
                .await
                .map_err(timeout)?
                .map_err(|_| AcquireError::Open("coordinator closed".into()))?;
        let context = match cached {
            Some(c) => c,
            None => {
                let c = Arc::new(open().await.map_err(AcquireError::Open)?);
                self.stats.opened.fetch_add(1, Ordering::SeqCst);
                c
            }
        };
        {
            let mut map = self
                .tenants
                .lock()
                .map_err(|_| AcquireError::Open("coordinator poisoned".into()))?;
            if let Some(e) = map.get_mut(tenant) {
                e.open += 1;
                e.last_used = Instant::now();
                if e.context.is_none() {
                    e.context = Some(context.clone());
                }
            }
        }
        self.stats.open_sessions.fetch_add(1, Ordering::SeqCst);
        Ok(TenantSession {
            tenant: tenant.to_string(),
            context,
            coordinator: self.clone(),
            _global: global_permit,
            _tenant: tenant_permit,
        })
    }

    /// Drops a tenant's cached context (after its keys changed or it was deleted).
    pub fn invalidate(&self, tenant: &str) {
        if let Ok(mut map) = self.tenants.lock() {
            if let Some(e) = map.get_mut(tenant) {
                e.context = None;
                if e.open == 0 {
                    map.remove(tenant);
                }
            }
        }
    }

    fn evict_idle(&self, map: &mut HashMap<String, Entry<C>>) {
        let now = Instant::now();
        let before = map.len();
        map.retain(|_, e| e.open > 0 || now.duration_since(e.last_used) < self.cfg.idle_ttl);
        let mut idle: Vec<(String, Instant)> = map
            .iter()
            .filter(|(_, e)| e.open == 0)
            .map(|(k, e)| (k.clone(), e.last_used))
            .collect();
        if idle.len() > self.cfg.idle_capacity {
            idle.sort_by_key(|(_, t)| *t);
            let excess = idle.len() - self.cfg.idle_capacity;
            for (k, _) in idle.into_iter().take(excess) {
                map.remove(&k);
            }
        }
        let evicted = before.saturating_sub(map.len());
        self.stats
            .evictions
            .fetch_add(evicted as u64, Ordering::SeqCst);
    }

    pub fn cached_contexts(&self) -> usize {
        self.tenants
            .lock()
            .map(|m| m.values().filter(|e| e.context.is_some()).count())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(global: usize, per_tenant: usize, timeout_ms: u64) -> CoordinatorConfig {
        CoordinatorConfig {
            max_open_sessions: global,
            max_sessions_per_tenant: per_tenant,
            acquire_timeout: Duration::from_millis(timeout_ms),
            open_weight: 1,
            idle_capacity: 10,
            idle_ttl: Duration::from_secs(60),
        }
    }

    async fn open_ok() -> Result<u32, String> {
        Ok(7)
    }

    #[tokio::test]
    async fn cap_then_waiters_served_in_order() {
        let c = Coordinator::<u32>::new(cfg(2, 10, 5_000));
        let a = c.acquire("t1", open_ok).await.unwrap();
        let b = c.acquire("t2", open_ok).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for i in 0..3 {
            let c = c.clone();
            let order = order.clone();
            handles.push(tokio::spawn(async move {
                let s = c.acquire(&format!("w{i}"), open_ok).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(s);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await; // queue them in order
        }
        assert_eq!(c.stats.waiters.load(Ordering::SeqCst), 3);
        drop(a);
        drop(b);
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(c.stats.open_sessions.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn timeout_when_full() {
        let c = Coordinator::<u32>::new(cfg(1, 10, 50));
        let _held = c.acquire("t1", open_ok).await.unwrap();
        assert_eq!(
            c.acquire("t2", open_ok).await.err(),
            Some(AcquireError::Timeout)
        );
        assert_eq!(c.stats.timeouts.load(Ordering::SeqCst), 1);
        assert_eq!(c.stats.waiters.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn per_tenant_cap() {
        let c = Coordinator::<u32>::new(cfg(100, 1, 50));
        let _held = c.acquire("t1", open_ok).await.unwrap();
        assert_eq!(
            c.acquire("t1", open_ok).await.err(),
            Some(AcquireError::Timeout)
        );
        assert!(c.acquire("t2", open_ok).await.is_ok());
    }

    #[tokio::test]
    async fn panics_early_returns_and_cancellation_release() {
        let c = Coordinator::<u32>::new(cfg(1, 1, 200));
        // panic while holding
        let c2 = c.clone();
        let r = tokio::spawn(async move {
            let _s = c2.acquire("t", open_ok).await.unwrap();
            panic!("handler bug");
        })
        .await;
        assert!(r.is_err());
        // early return with `?`
        async fn early(c: &Arc<Coordinator<u32>>) -> Result<(), String> {
            let _s = c.acquire("t", open_ok).await.map_err(|e| e.to_string())?;
            Err("validation failed".into())
        }
        assert!(early(&c).await.is_err());
        // a cancelled request (future dropped mid-flight)
        let c3 = c.clone();
        let h = tokio::spawn(async move {
            let _s = c3.acquire("t", open_ok).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        h.abort();
        let _ = h.await;
        // everything was released: the single permit is free again
        assert!(c.acquire("t", open_ok).await.is_ok());
        assert_eq!(c.stats.open_sessions.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn open_failure_releases_and_context_is_cached() {
        let c = Coordinator::<u32>::new(cfg(1, 1, 100));
        let e = c
            .acquire("t", || async { Err::<u32, _>("bad key".to_string()) })
            .await
            .err();
        assert_eq!(e, Some(AcquireError::Open("bad key".into())));
        let opens = Arc::new(AtomicU64::new(0));
        for _ in 0..3 {
            let o = opens.clone();
            let s = c
                .acquire("t", move || async move {
                    o.fetch_add(1, Ordering::SeqCst);
                    Ok(1)
                })
                .await
                .unwrap();
            assert_eq!(*s, 1);
        }
        assert_eq!(
            opens.load(Ordering::SeqCst),
            1,
            "opened once, then served from the idle cache"
        );
        c.invalidate("t");
        assert_eq!(c.cached_contexts(), 0);
    }

    #[tokio::test]
    async fn weighted_first_open() {
        let mut conf = cfg(4, 10, 50);
        conf.open_weight = 4;
        let c = Coordinator::<u32>::new(conf);
        let first = c.acquire("t1", open_ok).await.unwrap();
        // opening another tenant needs 4 permits: none left
        assert_eq!(
            c.acquire("t2", open_ok).await.err(),
            Some(AcquireError::Timeout)
        );
        drop(first);
        let _a = c.acquire("t1", open_ok).await.unwrap(); // cached now: costs 1
        let _b = c.acquire("t1", open_ok).await.unwrap();
        let _c = c.acquire("t1", open_ok).await.unwrap();
        assert!(c.acquire("t1", open_ok).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousand_tenants_five_sessions_each_no_deadlock() {
        let c = Coordinator::<u32>::new(CoordinatorConfig {
            max_open_sessions: 500,
            max_sessions_per_tenant: 3,
            acquire_timeout: Duration::from_secs(60),
            open_weight: 2,
            idle_capacity: 200,
            idle_ttl: Duration::from_secs(60),
        });
        let mut handles = Vec::new();
        for t in 0..1000 {
            for _ in 0..5 {
                let c = c.clone();
                handles.push(tokio::spawn(async move {
                    let s = c.acquire(&format!("tenant-{t}"), open_ok).await.unwrap();
                    tokio::task::yield_now().await;
                    drop(s);
                }));
            }
        }
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(c.stats.open_sessions.load(Ordering::SeqCst), 0);
        assert_eq!(c.stats.waiters.load(Ordering::SeqCst), 0);
    }
}
