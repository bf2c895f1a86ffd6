//! Opening the store: the backend `store.backend` names (sled, Redis), the sealer with the master
//! key (configured, derived from the cluster secret, or the sandbox fallback generated next to
//! the data), the event bus that matches the backend, and the check that the key opens the data.

use std::sync::Arc;

use anyhow::Context;

use super::seal::{load_or_generate_master_key, KeySource};
use super::{keyspaces, Sealer, SledStore, Store};
use crate::clock::SharedClock;
use crate::config::{Mode, Settings, StoreBackend};

/// The store, its sealer and its event bus, as startup and the CLI store commands open them (a
/// cluster node then wraps them in the replicated store and bus).
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub sealer: Sealer,
    /// The event bus matching the store: in-process for sled, Redis pub/sub for Redis; cluster
    /// mode replaces it.
    pub bus: Arc<dyn crate::bus::Bus>,
    /// Backend-specific Prometheus collectors (Redis latency and errors), registered by `run`.
    pub collectors: Vec<Box<dyn prometheus::core::Collector>>,
}

/// Opens the store and the sealer (with the sandbox master-key fallback) and checks that the
/// master key is the one the data was sealed with.
pub async fn open(settings: &Settings, clock: SharedClock) -> anyhow::Result<Opened> {
    if settings.raw.store.backend == StoreBackend::Redis {
        return open_redis(settings, clock).await;
    }
    let store_cfg = &settings.raw.store;
    let dir = store_cfg.path.clone();
    let cache = store_cfg.cache_capacity_bytes;
    let sled_clock = clock.clone();
    let store = tokio::task::spawn_blocking(move || SledStore::open(&dir, cache, sled_clock))
        .await
        .context("store open task")?
        .context("opening the store")?;
    let store: Arc<dyn Store> = Arc::new(store);
    let sealer = match (&settings.master_key, &settings.cluster_secret) {
        (Some(k), _) => Sealer::from_secret(k).context("store.master_key")?,
        // Cluster mode: records sealed on one node are opened on another, so every node needs the
        // same key; without store.master_key it is derived from the cluster secret.
        (None, Some(secret)) if settings.raw.cluster.enabled => {
            tracing::info!("cluster mode: master key derived from cluster.secret (set store.master_key to decouple them)");
            Sealer::new(&super::seal::derive_master_key(
                secret.expose(),
                &settings.raw.cluster.id,
            ))
        }
        (None, _) if settings.raw.server.mode == Mode::Sandbox => {
            let (s, src) = load_or_generate_master_key(&store_cfg.path)?;
            if src == KeySource::Generated {
                tracing::warn!(
                    path = %store_cfg.path.join(super::seal::MASTER_KEY_FILE).display(),
                    "sandbox mode: generated a master key next to the data (0600). Anyone who can read it can open sealed secrets; set store.master_key_file for production"
                );
            }
            s
        }
        (None, _) => anyhow::bail!(
            "production mode needs store.master_key or store.master_key_file (32 bytes, base64 or hex)"
        ),
    };
    check_master_key(&store, &sealer).await?;
    Ok(Opened {
        store,
        sealer,
        bus: Arc::new(crate::bus::LocalBus::new()),
        collectors: Vec::new(),
    })
}

/// Redis: stateless nodes sharing one Redis, so the master key must come from config (the same on
/// every node; a key generated next to a node's data dir cannot work) — sandbox mode included.
#[cfg(feature = "redis")]
async fn open_redis(settings: &Settings, clock: SharedClock) -> anyhow::Result<Opened> {
    use super::redis_store::{RedisOptions, RedisStore};
    let key = settings.master_key.as_ref().context(
        "store.backend = \"redis\" needs store.master_key or store.master_key_file, the same on every node",
    )?;
    let sealer = Sealer::from_secret(key).context("store.master_key")?;
    let opts = RedisOptions::from_settings(settings);
    let store = RedisStore::connect(opts.clone(), clock)
        .await
        .context("connecting to Redis (store.redis.url)")?;
    let collectors = store.metrics().collectors();
    let bus = super::redis_bus::RedisBus::start(&opts, store.conn());
    let store: Arc<dyn Store> = Arc::new(store);
    check_master_key(&store, &sealer).await?;
    Ok(Opened {
        store,
        sealer,
        bus: Arc::new(bus),
        collectors,
    })
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_settings: &Settings, _clock: SharedClock) -> anyhow::Result<Opened> {
    anyhow::bail!("store.backend = \"redis\" but this build has no `redis` feature")
}

/// A sealed canary in the system keyspace: created once, and it must open with today's key.
pub async fn check_master_key(store: &Arc<dyn Store>, sealer: &Sealer) -> anyhow::Result<()> {
    const KEY: &str = "seal_canary";
    const PLAINTEXT: &[u8] = b"idstack master key canary";
    match store.get(keyspaces::SYSTEM, KEY).await? {
        Some(sealed) => {
            sealer.open(KEY.as_bytes(), &sealed).map_err(|_| {
                anyhow::anyhow!(
                    "the configured master key does not open this store's sealed data; refusing to start (wrong store.master_key or data dir?)"
                )
            })?;
        }
        None => {
            let sealed = sealer.seal(KEY.as_bytes(), PLAINTEXT)?;
            store
                .compare_and_swap(keyspaces::SYSTEM, KEY, None, Some((sealed, None)))
                .await?;
        }
    }
    Ok(())
}
