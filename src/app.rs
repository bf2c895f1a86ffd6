//! Builds the application from the enabled roles and owns startup and ordered shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{middleware, web, App, HttpResponse};
use anyhow::Context;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_actix_web::AppExt;

use crate::clock::{SharedClock, SystemClock};
use crate::config::{Mode, Settings, StoreBackend};
use crate::http::{self, auth::AdminTokens, metrics::Metrics, openapi::ApiDoc};
use crate::role::Role;
use crate::roles::Services;
use crate::server::state::{AppState, Readiness};
use crate::store::open::{open, Opened};
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
    services: &Services,
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
    let services = services.clone();
    // `cluster.rpc_addr` = this listener: the public server carries the internal RPC routes too
    #[cfg(feature = "cluster")]
    let cluster = state.cluster.clone().map(web::Data::from);
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
        .app_data(web::Data::from(state.admin.clone()))
        .app_data(web::Data::from(state.rate_limits.clone()))
        .app_data(web::Data::from(state.metrics.clone()))
        .app_data(web::Data::new(state.settings.raw.server.clone()))
        .map(move |app| {
            #[cfg(feature = "cluster")]
            if let Some(c) = cluster {
                return app.app_data(c);
            }
            app
        })
        .app_data(json)
        .app_data(form)
        .app_data(path)
        .app_data(query)
        .app_data(payload)
        .configure(crate::server::health::configure)
        .configure(crate::server::contexts::configure)
        .configure(move |cfg| crate::roles::configure(cfg, &services))
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
                .wrap(middleware::from_fn(http::web::response_headers))
                .wrap(middleware::from_fn(http::observe::observe))
                .wrap(middleware::from_fn(http::connection::mark_request))
        })
        .split_for_parts()
}

async fn openapi_json(doc: web::Data<OpenApiJson>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}

/// How long an idle HTTP/1.1 connection stays open: longer than the pool idle timeout of the
/// clients idstack ships (load harness 20 s), shorter than a balancer's usual 60 s.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// [`open`] for the CLI commands that work on a stopped node's data (export, import,
/// admin-token): on a cluster node, records are read and written through their version envelopes.
pub async fn open_store_offline(settings: &Settings, clock: SharedClock) -> anyhow::Result<Opened> {
    let opened = open(settings, clock.clone()).await?;
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
// Over 80 lines: startup and ordered shutdown are one sequence with one owner (C8); each step is a
// call, and reading them in order is the point.
pub async fn run(
    settings: Settings,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let raw = &settings.raw;
    let opened = open(&settings, opts.clock.clone()).await?;
    let readiness = Arc::new(Readiness::default());
    let mut tasks = Tasks::default();
    let (mut opened, cluster) = if raw.cluster.enabled {
        match join_cluster(&settings, opened, &opts, &readiness, &mut tasks, &shutdown).await? {
            Some(joined) => joined,
            // stopped while the cluster formed or older nodes held this one back
            None => return Ok(()),
        }
    } else {
        (opened, None)
    };

    let mut tokens = settings.admin_tokens.clone();
    let mut sandbox_token = None;
    if tokens.is_empty() {
        match raw.server.mode {
            Mode::Sandbox => {
                // Created under the cluster's init lease, as the first-start roles are: nodes
                // starting together must agree on one token (each used the one it made, and
                // only one of them was stored: the others' printed tokens worked on their node
                // alone).
                #[cfg(feature = "cluster")]
                let lease = match &cluster {
                    Some(c) => match c.init_lease_until(&shutdown).await? {
                        Some(lease) => Some(lease),
                        // stopped while another node initialised: leave as any stop does
                        None => {
                            c.leave().await;
                            tasks
                                .shutdown(Duration::from_secs(
                                    raw.server.shutdown_timeout_seconds.max(1),
                                ))
                                .await;
                            opened.store.flush().await.context("final store flush")?;
                            return Ok(());
                        }
                    },
                    None => None,
                };
                let t = crate::server::first_start::sandbox_admin_token(&opened).await;
                #[cfg(feature = "cluster")]
                if let (Some(c), Some(lease)) = (&cluster, lease) {
                    c.release_init_lease(lease).await;
                }
                let t = t?;
                sandbox_token = Some(t.clone());
                tokens.push(t);
            }
            Mode::Production => tracing::warn!(
                "no admin.tokens configured: the management API (/api/...) is disabled"
            ),
        }
    }

    if raw.server.mode == Mode::Sandbox && !settings.bind.ip().is_loopback() {
        // (secrets review: the container image and the all-in-one compose file run sandbox mode
        // on 0.0.0.0 unless told otherwise, and nothing said so)
        tracing::warn!(
            bind = %settings.bind,
            "sandbox mode on a non-loopback address: the master key is a file in the data directory (a copy of the data opens every sealed key), the admin token is printed on first start, an empty trusted_issuers list trusts this node's own issuers, outbound fetches may reach loopback over plain http, and any origin may redirect to the authorization endpoint. Set server.mode = \"production\" (with store.master_key_file and admin.tokens_file) for anything but a developer's machine"
        );
    }
    if raw.server.mode == Mode::Production
        && settings.metrics_token.is_none()
        && !settings.bind.ip().is_loopback()
    {
        tracing::warn!(
            "no metrics.token in production mode: /metrics (route patterns, store and process figures) is open to anyone who reaches {}",
            settings.bind
        );
    }
    // On a shared RPC/HTTP address the bootstrap RPC server holds it until the roles are up.
    #[cfg(feature = "cluster")]
    let rpc_on_http = cluster.as_ref().is_some_and(|c| c.rpc_on_http);
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
    if let Some(c) = &cluster {
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
            crate::crypto::x509::TrustAnchors::load(&raw.x509.sd_jwt_files())
                .map_err(|e| anyhow::anyhow!("x509.trust_anchors / sd_jwt_anchors: {e}"))?,
        ),
        iaca_anchors: Arc::new(
            crate::crypto::x509::TrustAnchors::load_scoped(
                &raw.x509.iaca_files(),
                &raw.x509.iaca_doc_types,
            )
            .map_err(|e| anyhow::anyhow!("x509.trust_anchors / iaca_anchors: {e}"))?,
        ),
        mdoc_pki: Arc::default(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        admin: Arc::new(AdminTokens::new(&tokens)),
        rate_limits: Arc::new(
            crate::http::ratelimit::RateLimits::new(&raw.server.rate_limit)
                .map_err(anyhow::Error::msg)?,
        ),
        cluster,
        workers: Arc::default(),
    };
    for role in settings.roles.iter() {
        readiness.set_not_ready(role.as_str(), "initialising");
    }
    let Some(services) = init_roles(&state, &shutdown).await? else {
        // stopped while older nodes held this one back: leave as a serving node would
        leave_and_flush(&state, tasks).await?;
        tracing::info!("stopped before serving");
        return Ok(());
    };
    // On a store shared by nodes, mark the first-start state complete: its absence later is a
    // data loss the guard reacts to (src/server/first_start.rs).
    if state.store.shared_by_nodes() {
        crate::server::first_start::mark(state.store.as_ref(), state.clock.now_ms())
            .await
            .context("writing the first-start marker")?;
    }

    let data = web::Data::new(state.clone());
    let (_, api) = build_app(data.clone(), &services);
    let doc = web::Data::new(OpenApiJson(
        http::openapi::render(&api).context("rendering OpenAPI")?,
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
    // Connections from one address are counted unless cluster peers share this listener: their
    // connections cannot be told apart from a client's when they are accepted.
    #[cfg(feature = "cluster")]
    let count_connections = !state.cluster.as_ref().is_some_and(|c| c.rpc_on_http);
    #[cfg(not(feature = "cluster"))]
    let count_connections = true;
    let server = public_server(PublicServer {
        listener,
        workers,
        state: data.clone(),
        services: services.clone(),
        doc,
        limits: count_connections.then(|| state.rate_limits.clone()),
    })?;
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
        crate::server::first_start::spawn_guard(
            &mut tasks,
            &shutdown,
            &state,
            &services,
            sandbox_token,
        );
    }

    let roles: Vec<&str> = settings.roles.iter().map(|r| Role::as_str(*r)).collect();
    tracing::info!(%addr, %public_url, roles = ?roles, features = ?crate::role::compiled_features(), "idstack listening");
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
    leave_and_flush(&state, tasks).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// What the public HTTP server is built from ([`public_server`]).
struct PublicServer {
    listener: std::net::TcpListener,
    workers: usize,
    state: web::Data<AppState>,
    services: Services,
    doc: web::Data<OpenApiJson>,
    /// Counts connections per address (`None`: not counted).
    limits: Option<Arc<http::ratelimit::RateLimits>>,
}

/// The public HTTP/1.1 server: what `HttpServer` builds, with each accepted connection admitted
/// and wrapped by [`http::connection::Guarded`] (per-address connection counts, later request
/// heads and stalled writes timed), which `HttpServer` has no place for.
fn public_server(p: PublicServer) -> std::io::Result<actix_server::Server> {
    use actix_http::{HttpService, Request};
    use actix_service::{fn_service, map_config, ServiceFactoryExt};
    use actix_web::dev::{AppConfig, Extensions};
    use http::connection::{Guarded, Timeouts};

    let server_cfg = &p.state.settings.raw.server;
    let timeouts = Timeouts {
        head: Duration::from_millis(server_cfg.client_request_timeout_ms),
        write_stall: Duration::from_millis(server_cfg.write_stall_timeout_ms),
    };
    let closed = p.state.metrics.connections_closed.clone();
    let request_timeout = Duration::from_millis(server_cfg.client_request_timeout_ms);
    let disconnect_timeout = Duration::from_millis(server_cfg.client_disconnect_timeout_ms);
    let shutdown_timeout = server_cfg.shutdown_timeout_seconds;
    let local_addr = p.listener.local_addr()?;
    let builder = actix_server::Server::build();
    let shutdown_signal = builder.graceful_shutdown_signal();
    let PublicServer {
        listener,
        workers,
        state,
        services,
        doc,
        limits,
    } = p;
    Ok(builder
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(shutdown_timeout)
        .listen("idstack-http", listener, move || {
            // runs once per worker, on its thread: its heartbeat ticks on its own event loop
            state.workers.start_worker();
            let app = build_app(state.clone(), &services).0.app_data(doc.clone());
            let signal = shutdown_signal.clone();
            let http = HttpService::<Guarded, _, _>::build()
                // keep-alive connections close when the server stops, as HttpServer's do
                .graceful_shutdown_signal(move || {
                    let signal = signal.clone();
                    async move { signal.notified().await }
                })
                .keep_alive(KEEP_ALIVE)
                .client_request_timeout(request_timeout)
                .client_disconnect_timeout(disconnect_timeout)
                .local_addr(local_addr)
                .on_connect_ext(|io: &Guarded, ext: &mut Extensions| {
                    ext.insert(io.watch());
                })
                .h1(map_config(
                    actix_service::IntoServiceFactory::<_, Request>::into_factory(app)
                        .map_err(|err| err.error_response()),
                    // nothing here reads the host or address of the app config
                    |_| AppConfig::default(),
                ));
            let limits = limits.clone();
            let closed = closed.clone();
            fn_service(move |io: tokio::net::TcpStream| {
                // Small request/response exchanges (a WebSocket DIDComm round trip) must not
                // wait ~40 ms for Nagle and delayed ACKs.
                let _ = io.set_nodelay(true);
                let peer = io.peer_addr().ok();
                let admitted = Guarded::admit(
                    io,
                    peer.map(|a| a.ip()),
                    limits.as_ref(),
                    timeouts,
                    Some(closed.clone()),
                );
                std::future::ready(match admitted {
                    Ok(io) => Ok((io, peer)),
                    Err(_) => Err(actix_http::error::DispatchError::Io(std::io::Error::other(
                        "too many connections from this address",
                    ))),
                })
            })
            .and_then(http)
        })?
        .run())
}

/// The end of every stop: the cluster left, background tasks stopped (with a deadline), the
/// store flushed.
async fn leave_and_flush(state: &AppState, tasks: Tasks) -> anyhow::Result<()> {
    #[cfg(feature = "cluster")]
    if let Some(c) = &state.cluster {
        c.leave().await;
    }
    tasks
        .shutdown(Duration::from_secs(
            state.settings.raw.server.shutdown_timeout_seconds.max(1),
        ))
        .await;
    state.store.flush().await.context("final store flush")
}

/// Cluster mode: joins (or forms) the cluster and swaps in the replicated store and bus. `None`:
/// `shutdown` came before the node could serve (it has left the cluster; not an error).
async fn join_cluster(
    settings: &Settings,
    opened: Opened,
    opts: &RunOptions,
    readiness: &Arc<Readiness>,
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(Opened, Option<crate::cluster::Handle>)>> {
    #[cfg(feature = "cluster")]
    {
        match crate::cluster::start(
            settings,
            opened,
            opts.clock.clone(),
            readiness,
            tasks,
            shutdown,
        )
        .await
        {
            Ok((opened, cluster)) => Ok(Some((opened, Some(cluster)))),
            Err(e) if e.is::<crate::cluster::StoppedBeforeServing>() => Ok(None),
            Err(e) => Err(e.context("joining the cluster")),
        }
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = (settings, opened, opts, readiness, tasks, shutdown);
        anyhow::bail!("cluster.enabled is set but this build has no `cluster` feature")
    }
}

/// Initialises the roles (each marked ready once it is); in a cluster one node at a time, so
/// first-start defaults (tenants and their signing keys) are created exactly once cluster-wide.
/// An older node that joins meanwhile (a rolling upgrade) makes init's writes fail: the node
/// then waits until it has left and initialises again (init is idempotent: first-start records
/// are created by compare-and-swap, role metrics are registered once). `None`: `shutdown` came
/// first.
async fn init_roles(
    state: &AppState,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Services>> {
    let ctx = state.role_context();
    let init = || {
        crate::roles::init(&ctx, &state.settings.raw, &state.roles, |role| {
            state.readiness.set_ready(role.as_str())
        })
    };
    #[cfg(feature = "cluster")]
    if let Some(c) = &state.cluster {
        use std::sync::atomic::Ordering;
        loop {
            let Some(lease) = c.init_lease_until(shutdown).await? else {
                return Ok(None);
            };
            let refused_before = c.node.held_back_refusals.load(Ordering::SeqCst);
            let res = init().await;
            c.release_init_lease(lease).await;
            // refused because an older node held this one back (even if it is gone by now)
            let held = c.node.held_back_refusals.load(Ordering::SeqCst) > refused_before;
            match res {
                Ok(services) => return Ok(Some(services)),
                Err(e) if held || c.node.held_back().is_some() => {
                    tracing::warn!(error = %e, "role initialisation refused: an older node joined; waiting for it to leave");
                    if !c.wait_out_older_nodes(&state.readiness, shutdown).await {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e.context("role initialisation")),
            }
        }
    }
    let _ = shutdown;
    init().await.context("role initialisation").map(Some)
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

/// The committed `openapi.json` is the default build's document: this fails when the handlers
/// changed and the file was not regenerated. The document is the one `run` serves: `build_app`
/// over every role's service (in-memory store), rendered by `openapi::render`.
#[cfg(all(
    test,
    feature = "issuer",
    feature = "verifier",
    feature = "wallet",
    feature = "mediator",
    feature = "cluster",
    feature = "swagger-ui",
    feature = "redis"
))]
mod openapi_tests {
    use super::*;
    use crate::http::openapi::{render, COMMITTED_FILE, UPDATE_ENV};

    #[tokio::test]
    async fn committed_openapi_json_is_current() {
        let state = AppState::for_tests(crate::clock::FakeClock::new(1_700_000_000_000));
        let services = init_roles(&state, &CancellationToken::new())
            .await
            .unwrap()
            .unwrap();
        let (_, api) = build_app(web::Data::new(state), &services);
        let generated = render(&api).unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED_FILE);
        if std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1") {
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            let (g, c): (Vec<&str>, Vec<&str>) =
                (generated.lines().collect(), committed.lines().collect());
            let line = (0..g.len().max(c.len()))
                .find(|&i| g.get(i) != c.get(i))
                .unwrap_or(g.len());
            let (want, got) = (
                g.get(line).copied().unwrap_or("(end)"),
                c.get(line).copied().unwrap_or("(end)"),
            );
            panic!(
                "{COMMITTED_FILE} is not the generated OpenAPI document (first difference at line {}: \
                 generated `{}`, committed `{}`).\nRegenerate it with\n    \
                 {UPDATE_ENV}=1 cargo test --lib committed_openapi_json_is_current\nand commit it.",
                line + 1,
                want.trim(),
                got.trim()
            );
        }
    }
}
