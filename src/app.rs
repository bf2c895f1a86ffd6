//! Builds the application from the enabled roles and owns startup and ordered shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{middleware, web, App, HttpResponse, HttpServer};
use anyhow::Context;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;

use crate::clock::{random_token, SharedClock, SystemClock};
use crate::config::{Mode, Secret, Settings, StoreBackend};
use crate::http::{self, auth::AdminTokens, metrics::Metrics, openapi::ApiDoc};
use crate::roles::Role;
use crate::state::{AppState, Readiness};
use crate::store::seal::{load_or_generate_master_key, KeySource};
use crate::store::{keyspaces, Cas, Sealer, SledStore, Store};
use crate::tasks::Tasks;

/// Things a caller (main or a test) may inject.
pub struct RunOptions {
    /// Written with `{"http": "<addr>", "public_url": ...}` once the node is listening and its roles are initialised.
    pub ready_file: Option<PathBuf>,
    pub clock: SharedClock,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            ready_file: None,
            clock: Arc::new(SystemClock),
        }
    }
}

/// The rendered OpenAPI document, shared by the `/openapi.json` handler.
pub struct OpenApiJson(pub String);

/// Builds the actix app for `state`, and the OpenAPI document of exactly the mounted handlers.
pub fn build_app(
    state: web::Data<AppState>,
) -> (
    App<
        impl ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<impl MessageBody>,
            Error = actix_web::Error,
            InitError = (),
        >,
    >,
    utoipa::openapi::OpenApi,
) {
    let (json, form, path, query, payload) =
        http::extractor_configs(state.settings.raw.server.body_limit_bytes);
    let roles_state = state.clone();
    // `cluster.rpc_addr` = this listener: the public server carries the internal RPC routes too
    #[cfg(feature = "cluster")]
    let rpc_node = state
        .cluster
        .as_ref()
        .filter(|c| c.rpc_on_http)
        .map(|c| c.node.clone());
    App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .app_data(state.clone())
        .app_data(json)
        .app_data(form)
        .app_data(path)
        .app_data(query)
        .app_data(payload)
        .configure(http::health::configure)
        .configure(http::contexts::configure)
        .configure(move |cfg| crate::roles::configure(cfg, &roles_state))
        .map(move |app| {
            app.configure(http::web::configure)
                .configure(move |cfg| {
                    #[cfg(feature = "cluster")]
                    if let Some(node) = rpc_node {
                        crate::cluster::rpc::configure(cfg, node);
                    }
                    let _ = cfg;
                })
                .route("/openapi.json", web::get().to(openapi_json))
                .default_service(web::to(http::route_not_found))
                .wrap(middleware::from_fn(http::body_deadline::body_deadline))
                .wrap(middleware::from_fn(http::observe::observe))
        })
        .split_for_parts()
}

async fn openapi_json(doc: web::Data<OpenApiJson>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}

/// Everything startup prepares before the listener opens; also used by the CLI store commands.
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub sealer: Sealer,
    /// The event bus matching the store: in-process for sled, Redis pub/sub for Redis; cluster
    /// mode replaces it.
    pub bus: Arc<dyn crate::bus::Bus>,
    /// Set once the node has joined its cluster (`app::run` in cluster mode).
    pub cluster: Option<crate::cluster::Handle>,
    /// Backend-specific Prometheus collectors (Redis latency and errors), registered by `run`.
    pub collectors: Vec<Box<dyn prometheus::core::Collector>>,
}

/// Opens the store and the sealer (with the sandbox master-key fallback) and checks that the
/// master key is the one the data was sealed with.
pub async fn open_store(settings: &Settings, clock: SharedClock) -> anyhow::Result<Opened> {
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
            Sealer::new(&crate::cluster::derive_master_key(
                secret.expose(),
                &settings.raw.cluster.id,
            ))
        }
        (None, _) if settings.raw.server.mode == Mode::Sandbox => {
            let (s, src) = load_or_generate_master_key(&store_cfg.path)?;
            if src == KeySource::Generated {
                tracing::warn!(
                    path = %store_cfg.path.join(crate::store::seal::MASTER_KEY_FILE).display(),
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
        cluster: None,
        collectors: Vec::new(),
    })
}

/// [`open_store`] for the CLI commands that work on a stopped node's data (export, import,
/// admin-token): on a cluster node, records are read and written through their version envelopes.
pub async fn open_store_offline(settings: &Settings, clock: SharedClock) -> anyhow::Result<Opened> {
    let opened = open_store(settings, clock.clone()).await?;
    #[cfg(feature = "cluster")]
    if settings.raw.cluster.enabled {
        return Ok(Opened {
            store: crate::cluster::offline::wrap(opened.store, settings, clock),
            ..opened
        });
    }
    let _ = clock;
    Ok(opened)
}

/// Redis: stateless nodes sharing one Redis, so the master key must come from config (the same on
/// every node; a key generated next to a node's data dir cannot work) — sandbox mode included.
#[cfg(feature = "redis")]
async fn open_redis(settings: &Settings, clock: SharedClock) -> anyhow::Result<Opened> {
    use crate::store::redis_store::{RedisOptions, RedisStore};
    let key = settings.master_key.as_ref().context(
        "store.backend = \"redis\" needs store.master_key or store.master_key_file, the same on every node",
    )?;
    let sealer = Sealer::from_secret(key).context("store.master_key")?;
    let opts = RedisOptions::from_settings(settings);
    let store = RedisStore::connect(opts.clone(), clock)
        .await
        .context("connecting to Redis (store.redis.url)")?;
    let collectors = store.metrics().collectors();
    let bus = crate::bus_redis::RedisBus::start(&opts, store.conn());
    let store: Arc<dyn Store> = Arc::new(store);
    check_master_key(&store, &sealer).await?;
    Ok(Opened {
        store,
        sealer,
        bus: Arc::new(bus),
        cluster: None,
        collectors,
    })
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_settings: &Settings, _clock: SharedClock) -> anyhow::Result<Opened> {
    anyhow::bail!("store.backend = \"redis\" but this build has no `redis` feature")
}

/// A sealed canary in the system keyspace: created once, and it must open with today's key.
pub(crate) async fn check_master_key(
    store: &Arc<dyn Store>,
    sealer: &Sealer,
) -> anyhow::Result<()> {
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

const ADMIN_TOKEN_KEY: &str = "sandbox_admin_token";

/// How long an idle HTTP/1.1 connection stays open: longer than the pool idle timeout of the
/// clients idstack ships (load harness 20 s), shorter than a balancer's usual 60 s.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Sandbox: one admin token generated on first start, stored sealed, printed once.
async fn sandbox_admin_token(opened: &Opened) -> anyhow::Result<Secret> {
    if let Some(t) = stored_admin_token(opened).await? {
        tracing::info!(
            "sandbox admin token loaded from the store (print it with `idstack admin-token`)"
        );
        return Ok(t);
    }
    let token = random_token(24);
    let sealed = opened
        .sealer
        .seal(ADMIN_TOKEN_KEY.as_bytes(), token.as_bytes())?;
    match opened
        .store
        .compare_and_swap(
            keyspaces::SYSTEM,
            ADMIN_TOKEN_KEY,
            None,
            Some((sealed, None)),
        )
        .await?
    {
        Cas::Swapped => {
            // Printed once, to stderr, on purpose: the operator needs it.
            eprintln!(
                "\n  idstack sandbox admin token (shown once; `idstack admin-token` prints it again):\n\n      {token}\n"
            );
            Ok(Secret::new(token))
        }
        Cas::Conflict(_) => stored_admin_token(opened)
            .await?
            .context("admin token vanished"),
    }
}

/// Puts the sandbox admin token this node uses back into a store that lost it (insert-only: the
/// nodes of a deployment loaded the same one), so `idstack admin-token` prints it again.
pub(crate) async fn restore_sandbox_admin_token(
    store: &dyn Store,
    sealer: &Sealer,
    token: &Secret,
) -> anyhow::Result<()> {
    let sealed = sealer.seal(ADMIN_TOKEN_KEY.as_bytes(), token.expose().as_bytes())?;
    store
        .compare_and_swap(
            keyspaces::SYSTEM,
            ADMIN_TOKEN_KEY,
            None,
            Some((sealed, None)),
        )
        .await?;
    Ok(())
}

pub async fn stored_admin_token(opened: &Opened) -> anyhow::Result<Option<Secret>> {
    match opened.store.get(keyspaces::SYSTEM, ADMIN_TOKEN_KEY).await? {
        None => Ok(None),
        Some(sealed) => {
            let plain = opened.sealer.open(ADMIN_TOKEN_KEY.as_bytes(), &sealed)?;
            Ok(Some(Secret::new(
                String::from_utf8_lossy(&plain).into_owned(),
            )))
        }
    }
}

fn derive_public_url(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    };
    format!("http://{host}:{}", addr.port())
}

/// Runs the server until `shutdown` is cancelled, then stops in order: readiness goes 503, HTTP
/// drains, background tasks stop, the store flushes.
pub async fn run(
    settings: Settings,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let raw = &settings.raw;
    let opened = open_store(&settings, opts.clock.clone()).await?;
    let readiness = Arc::new(Readiness::default());
    let mut tasks = Tasks::default();
    let mut opened = if raw.cluster.enabled {
        join_cluster(&settings, opened, &opts, &readiness, &mut tasks, &shutdown).await?
    } else {
        opened
    };

    let mut tokens = settings.admin_tokens.clone();
    let mut sandbox_token = None;
    if tokens.is_empty() {
        match raw.server.mode {
            Mode::Sandbox => {
                let t = sandbox_admin_token(&opened).await?;
                sandbox_token = Some(t.clone());
                tokens.push(t);
            }
            Mode::Production => tracing::warn!(
                "no admin.tokens configured: the management API (/api/...) is disabled"
            ),
        }
    }

    // On a shared RPC/HTTP address the bootstrap RPC server holds it until the roles are up.
    #[cfg(feature = "cluster")]
    let rpc_on_http = opened.cluster.as_ref().is_some_and(|c| c.rpc_on_http);
    #[cfg(not(feature = "cluster"))]
    let rpc_on_http = false;
    let listener = if rpc_on_http {
        None
    } else {
        Some(
            std::net::TcpListener::bind(settings.bind)
                .with_context(|| format!("cannot listen on {}", settings.bind))?,
        )
    };
    let addr = match &listener {
        Some(l) => l.local_addr()?,
        None => settings.bind,
    };
    let public_url = if raw.server.public_url.is_empty() {
        derive_public_url(addr)
    } else {
        raw.server.public_url.trim_end_matches('/').to_string()
    };
    // The idstack JSON-LD context this node serves (and names in the ldp_vc it issues), and other
    // deployments' copies: resolved offline by the JSON-LD loader.
    crate::crypto::di::register_context_origin(&public_url);
    for origin in &raw.server.trusted_context_origins {
        crate::crypto::di::register_context_origin(origin);
    }

    let http = crate::http::outbound::client(&raw.http.outbound, raw.server.mode)
        .context("http client (http.outbound)")?;
    let metrics = Arc::new(Metrics::new().context("metrics")?);
    // JSON-LD verification limits (process-wide: the first configuration wins).
    crate::crypto::di::configure(&raw.jsonld);
    #[cfg(feature = "cluster")]
    if let Some(c) = &opened.cluster {
        c.node
            .metrics
            .register(&metrics.registry)
            .context("cluster metrics")?;
    }
    for c in std::mem::take(&mut opened.collectors) {
        metrics
            .registry
            .register(c)
            .context("registering store metrics")?;
    }
    let state = AppState {
        settings: settings.clone(),
        public_url: public_url.clone().into(),
        roles: settings.roles.clone().into(),
        store: opened.store.clone(),
        bus: opened.bus.clone(),
        sealer: opened.sealer.clone(),
        clock: opts.clock.clone(),
        http,
        x509_anchors: Arc::new(
            crate::crypto::x509::TrustAnchors::load(&raw.x509.trust_anchors)
                .map_err(|e| anyhow::anyhow!("x509.trust_anchors: {e}"))?,
        ),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        admin: Arc::new(AdminTokens::new(&tokens)),
        rate_limits: Arc::new(
            crate::http::ratelimit::RateLimits::new(&raw.server.rate_limit)
                .map_err(anyhow::Error::msg)?,
        ),
        services: Arc::default(),
        cluster: opened.cluster.clone(),
    };
    for role in settings.roles.iter() {
        readiness.set_not_ready(role.as_str(), "initialising");
    }
    init_roles(&state).await?;
    // On a store shared by nodes, mark the first-start state complete: its absence later is a
    // data loss the guard reacts to (src/first_start.rs).
    if state.store.shared_by_nodes() {
        crate::first_start::mark(state.store.as_ref(), state.clock.now_ms())
            .await
            .context("writing the first-start marker")?;
    }

    let data = web::Data::new(state.clone());
    let (_, api) = build_app(data.clone());
    let doc = web::Data::new(OpenApiJson(
        api.to_pretty_json().context("rendering OpenAPI")?,
    ));

    let workers = match raw.server.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    };
    let listener = match listener {
        Some(l) => l,
        #[cfg(feature = "cluster")]
        None => match &state.cluster {
            Some(c) => c.hand_rpc_to_http(addr).await?,
            None => anyhow::bail!("no listener"),
        },
        #[cfg(not(feature = "cluster"))]
        None => anyhow::bail!("no listener"),
    };
    let app_data = data.clone();
    let server = HttpServer::new(move || build_app(app_data.clone()).0.app_data(doc.clone()))
        .workers(workers)
        .keep_alive(KEEP_ALIVE)
        .client_request_timeout(Duration::from_millis(raw.server.client_request_timeout_ms))
        .client_disconnect_timeout(Duration::from_millis(
            raw.server.client_disconnect_timeout_ms,
        ))
        // Small request/response exchanges (a WebSocket DIDComm round trip) must not wait ~40 ms
        // for Nagle and delayed ACKs.
        .tcp_nodelay(true)
        .disable_signals()
        .shutdown_timeout(raw.server.shutdown_timeout_seconds)
        .listen(listener)?
        .run();
    let handle = server.handle();
    let server_task = tokio::spawn(server);

    spawn_sweeper(&mut tasks, &shutdown, &state);
    #[cfg(feature = "cluster")]
    if let Some(c) = &state.cluster {
        c.set_ready(true).await;
        readiness.set_ready("cluster");
    }
    if raw.store.backend == StoreBackend::Redis {
        spawn_store_probe(&mut tasks, &shutdown, &state);
    }
    if state.store.shared_by_nodes() {
        crate::first_start::spawn_guard(&mut tasks, &shutdown, &state, sandbox_token);
    }

    let roles: Vec<&str> = settings.roles.iter().map(|r| Role::as_str(*r)).collect();
    tracing::info!(%addr, %public_url, roles = ?roles, features = ?crate::roles::compiled_features(), "idstack listening");
    if let Some(path) = &opts.ready_file {
        let body = serde_json::json!({ "http": addr.to_string(), "public_url": public_url });
        std::fs::write(path, body.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }

    tokio::select! {
        _ = shutdown.cancelled() => {}
        res = server_task => {
            // The server stopped on its own: that is a failure.
            res.context("http server task")?.context("http server")?;
            anyhow::bail!("http server stopped unexpectedly");
        }
    }

    tracing::info!("shutting down: not ready, draining HTTP");
    readiness.begin_shutdown();
    #[cfg(feature = "cluster")]
    if let Some(c) = &state.cluster {
        c.set_ready(false).await;
    }
    handle.stop(true).await;
    #[cfg(feature = "cluster")]
    if let Some(c) = &state.cluster {
        c.leave().await;
    }
    tasks
        .shutdown(Duration::from_secs(
            raw.server.shutdown_timeout_seconds.max(1),
        ))
        .await;
    state.store.flush().await.context("final store flush")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Cluster mode: joins (or forms) the cluster and swaps in the replicated store and bus.
async fn join_cluster(
    settings: &Settings,
    opened: Opened,
    opts: &RunOptions,
    readiness: &Arc<Readiness>,
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
) -> anyhow::Result<Opened> {
    #[cfg(feature = "cluster")]
    {
        let (opened, _) = crate::cluster::start(
            settings,
            opened,
            opts.clock.clone(),
            readiness,
            tasks,
            shutdown,
        )
        .await
        .context("joining the cluster")?;
        Ok(opened)
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = (settings, opened, opts, readiness, tasks, shutdown);
        anyhow::bail!("cluster.enabled is set but this build has no `cluster` feature")
    }
}

/// Initialises the roles; in a cluster one node at a time, so first-start defaults (tenants and
/// their signing keys) are created exactly once cluster-wide.
async fn init_roles(state: &AppState) -> anyhow::Result<()> {
    #[cfg(feature = "cluster")]
    if let Some(c) = &state.cluster {
        let lease = c.init_lease().await?;
        let res = crate::roles::init(state).await;
        c.release_init_lease(lease).await;
        return res.context("role initialisation");
    }
    crate::roles::init(state)
        .await
        .context("role initialisation")
}

fn spawn_sweeper(tasks: &mut Tasks, shutdown: &CancellationToken, state: &AppState) {
    let store = state.store.clone();
    let metrics = state.metrics.clone();
    let clock = state.clock.clone();
    let every = Duration::from_secs(state.settings.raw.store.sweep_interval_seconds.max(1));
    // On a store every node shares (Redis) the sweep is cluster-wide work: one node at a time.
    let lease = store
        .shared_by_nodes()
        .then(|| crate::store::lease::Lease::new("store-sweeper", every * 3));
    tasks.spawn("store-sweeper", shutdown, move |token| async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    let mine = match &lease {
                        None => true,
                        Some(l) => l.hold(store.as_ref(), clock.now_ms()).await.unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "sweeper lease unavailable");
                            false
                        }),
                    };
                    if mine {
                        match store.sweep_expired().await {
                            Ok(n) => metrics.store_swept.inc_by(n),
                            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
                        }
                    }
                    if let Err(e) = store.flush().await {
                        tracing::warn!(error = %e, "periodic flush failed");
                    }
                }
            }
        }
    });
}

/// An external store can go away under a running node: probe it every second and report it as a
/// readiness component (`/health/ready` then names it), so balancers route around the node until
/// the store is back. Requests meanwhile fail fast with 503 (the backend's command timeout).
fn spawn_store_probe(tasks: &mut Tasks, shutdown: &CancellationToken, state: &AppState) {
    let store = state.store.clone();
    let readiness = state.readiness.clone();
    tasks.spawn("store-probe", shutdown, move |token| async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut was_ok = true;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    let res = tokio::time::timeout(Duration::from_secs(3), store.probe()).await;
                    match res {
                        Ok(Ok(())) => {
                            if !was_ok {
                                tracing::info!("store reachable again");
                            }
                            was_ok = true;
                            readiness.set_ready("store_backend");
                        }
                        Ok(Err(e)) => {
                            if was_ok {
                                tracing::warn!(error = %e, "store unreachable");
                            }
                            was_ok = false;
                            readiness.set_not_ready("store_backend", e.to_string());
                        }
                        Err(_) => {
                            was_ok = false;
                            readiness.set_not_ready("store_backend", "probe timed out");
                        }
                    }
                }
            }
        }
    });
}
