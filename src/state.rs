//! Shared application state handed to every handler.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::http::auth::AdminTokens;
use crate::http::metrics::Metrics;
use crate::roles::Role;
use crate::store::{Sealer, Store};

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    /// Base URL handed to wallets (`server.public_url`, or derived from the bound address).
    pub public_url: Arc<str>,
    pub roles: Arc<[Role]>,
    pub store: Arc<dyn Store>,
    /// Notifications between nodes (in-process on one node).
    pub bus: Arc<dyn crate::bus::Bus>,
    pub sealer: Sealer,
    pub clock: SharedClock,
    /// Outbound HTTP (did:web, status lists, webhooks, other issuers): the guarded client of
    /// [`crate::http::outbound`] (destination checks, timeouts, no proxy).
    pub http: reqwest::Client,
    /// CA certificates an issuer's `x5c` chain may end at (`x509.trust_anchors`).
    pub x509_anchors: Arc<crate::crypto::x509::TrustAnchors>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub admin: Arc<AdminTokens>,
    /// Per-client-IP request limits (`server.rate_limit`), shared by every worker.
    pub rate_limits: Arc<crate::http::ratelimit::RateLimits>,
    /// Role services, filled by each role's `init`.
    pub services: Arc<crate::roles::Services>,
    /// The cluster this node is part of (`None`: single node).
    pub cluster: Option<crate::cluster::Handle>,
}

impl AppState {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether this node runs singleton jobs (always on a single node; in a cluster, only on the
    /// live member with the lowest id).
    pub fn runs_singletons(&self) -> bool {
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            return c.is_leader();
        }
        true
    }
}

/// Per-component readiness, reported by `/health/ready`.
#[derive(Debug, Default)]
pub struct Readiness {
    components: RwLock<BTreeMap<String, Result<(), String>>>,
    shutting_down: AtomicBool,
}

impl Readiness {
    pub fn set_ready(&self, component: &str) {
        self.set(component, Ok(()));
    }
    pub fn set_not_ready(&self, component: &str, reason: impl Into<String>) {
        self.set(component, Err(reason.into()));
    }
    fn set(&self, component: &str, state: Result<(), String>) {
        if let Ok(mut m) = self.components.write() {
            m.insert(component.to_string(), state);
        }
    }
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
    /// Failing components with their reasons; empty = ready.
    pub fn failing(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .components
            .read()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_ref().err().map(|e| (k.clone(), e.clone())))
                    .collect()
            })
            .unwrap_or_default();
        if self.is_shutting_down() {
            out.push(("server".into(), "shutting down".into()));
        }
        out
    }
}

#[cfg(test)]
impl AppState {
    /// An in-memory state (temporary sled, fixed master key) on the given clock, for unit tests.
    pub fn for_tests(clock: crate::clock::SharedClock) -> Self {
        let settings = crate::config::Config::default().finish().unwrap();
        let store = crate::store::SledStore::temporary(clock.clone()).unwrap();
        let http =
            crate::http::outbound::client(&settings.raw.http.outbound, settings.raw.server.mode)
                .unwrap();
        Self {
            rate_limits: Arc::new(
                crate::http::ratelimit::RateLimits::new(&settings.raw.server.rate_limit).unwrap(),
            ),
            settings: Arc::new(settings),
            public_url: "http://127.0.0.1:8080".into(),
            roles: crate::roles::Role::compiled_in().into(),
            store: Arc::new(store),
            bus: Arc::new(crate::bus::LocalBus::new()),
            sealer: Sealer::new(&[9u8; 32]),
            clock,
            http,
            x509_anchors: Arc::default(),
            metrics: Arc::new(Metrics::new().unwrap()),
            readiness: Arc::default(),
            admin: Arc::new(AdminTokens::new(&[])),
            services: Arc::default(),
            cluster: None,
        }
    }
}
