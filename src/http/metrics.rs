//! Prometheus metrics: request counts and latency by route pattern and status, store and process
//! gauges. Roles register their own collectors on [`Metrics::registry`].

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// `GET /metrics` access: open when no `metrics.token` is configured, else the token as a bearer
/// token (compared in constant time).
pub fn authorize(
    req: &actix_web::HttpRequest,
    token: Option<&crate::config::Secret>,
) -> crate::error::ApiResult<()> {
    let Some(token) = token else { return Ok(()) };
    super::ratelimit::tokens_locked(req)?;
    let accepted = super::auth::AdminTokens::new(std::slice::from_ref(token));
    match super::auth::bearer_token(req) {
        Some(t) if accepted.check(t) => Ok(()),
        sent => {
            if sent.is_some() {
                super::ratelimit::charge_failed_token(req)?;
            }
            Err(crate::error::ApiError::new(
                crate::error::Code::Unauthorized,
                "/metrics needs the metrics token (metrics.token) as a bearer token",
            ))
        }
    }
}

type Refresher = Box<dyn Fn() + Send + Sync>;

pub struct Metrics {
    pub registry: Registry,
    /// Scrape-time updates, by name (one per name: a role initialised again replaces its own).
    refreshers: std::sync::Mutex<Vec<(String, Refresher)>>,
    /// Collectors registered through [`Metrics::register_once`], by name.
    once: std::sync::Mutex<std::collections::HashMap<String, Box<dyn std::any::Any + Send + Sync>>>,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub panics: IntCounter,
    pub store_size_bytes: IntGauge,
    pub store_swept: IntCounter,
    /// Connections the node closed below HTTP (`http::connection`), by reason.
    pub connections_closed: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("idstack".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by method, route and status",
            ),
            &["method", "route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route"],
        )?;
        let panics = IntCounter::new("handler_panics_total", "handler panics caught")?;
        let store_size_bytes = IntGauge::new("store_size_bytes", "store size on disk")?;
        let store_swept = IntCounter::new("store_expired_swept_total", "expired records swept")?;
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "http_connections_closed_total",
                "connections closed below HTTP: refused (the address holds its share), head_timeout (a request head not received in time), write_stall (the client took nothing written)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(connections_closed.clone()))?;
        // every reason shows from the start (at 0), so a rate over it has a series to read
        for reason in ["refused", "head_timeout", "write_stall"] {
            connections_closed.with_label_values(&[reason]);
        }
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(panics.clone()))?;
        registry.register(Box::new(store_size_bytes.clone()))?;
        registry.register(Box::new(store_swept.clone()))?;
        // process_* gauges (RSS, CPU, open fds) on Linux; unprefixed as Prometheus convention wants.
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            registry.register(Box::new(pc))?;
        }
        Ok(Self {
            registry,
            refreshers: std::sync::Mutex::default(),
            once: std::sync::Mutex::default(),
            http_requests,
            http_duration,
            panics,
            store_size_bytes,
            store_swept,
            connections_closed,
        })
    }

    /// Registers a function, under `name`, that updates gauges just before each scrape; one of
    /// the same name registered before is replaced.
    pub fn add_refresher(&self, name: &str, f: Refresher) {
        if let Ok(mut r) = self.refreshers.lock() {
            r.retain(|(n, _)| n != name);
            r.push((name.to_string(), f));
        }
    }

    /// Registers collector `c` once: a second call with a collector of the same name (a role
    /// whose initialisation is retried, after a rolling upgrade refused its first writes) gets
    /// the one registered first, which keeps counting.
    pub fn register_once<C>(&self, c: C) -> Result<C, prometheus::Error>
    where
        C: prometheus::core::Collector + Clone + Send + Sync + 'static,
    {
        let name = c
            .desc()
            .first()
            .map(|d| d.fq_name.clone())
            .unwrap_or_default();
        let mut once = self
            .once
            .lock()
            .map_err(|_| prometheus::Error::Msg("metrics lock poisoned".into()))?;
        if let Some(existing) = once.get(&name).and_then(|b| b.downcast_ref::<C>()) {
            return Ok(existing.clone());
        }
        self.registry.register(Box::new(c.clone()))?;
        once.insert(name, Box::new(c.clone()));
        Ok(c)
    }

    pub fn render(&self) -> String {
        if let Ok(r) = self.refreshers.lock() {
            for (_, f) in r.iter() {
                f();
            }
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
