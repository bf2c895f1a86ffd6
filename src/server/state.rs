//! Shared application state handed to every handler.

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::http::auth::AdminTokens;
use crate::http::metrics::Metrics;
pub use crate::readiness::Readiness;
use crate::role::Role;
use crate::roles::RoleContext;
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
    /// CA certificates an SD-JWT VC issuer's `x5c` chain may end at (`x509.trust_anchors`,
    /// `x509.sd_jwt_anchors`).
    pub x509_anchors: Arc<crate::crypto::x509::TrustAnchors>,
    /// IACAs an mdoc's document signer may chain to (`x509.trust_anchors`,
    /// `x509.iaca_anchors`).
    pub iaca_anchors: Arc<crate::crypto::x509::TrustAnchors>,
    /// What the roles keep opened of the mdoc PKI (see [`RoleContext::mdoc_pki`]).
    pub mdoc_pki: Arc<crate::roles::mdoc_pki::Cache>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub admin: Arc<AdminTokens>,
    /// Per-client-IP request limits (`server.rate_limit`), shared by every worker.
    pub rate_limits: Arc<crate::http::ratelimit::RateLimits>,
    /// The cluster this node is part of (`None`: single node).
    pub cluster: Option<crate::cluster::Handle>,
    /// The HTTP workers' heartbeats (readiness: a stalled worker).
    pub workers: Arc<crate::server::workers::WorkerBeats>,
}

impl AppState {
    /// What the role engines may touch (see [`RoleContext`]).
    pub fn role_context(&self) -> RoleContext {
        RoleContext {
            store: self.store.clone(),
            sealer: self.sealer.clone(),
            clock: self.clock.clone(),
            http: self.http.clone(),
            bus: self.bus.clone(),
            public_url: self.public_url.clone(),
            metrics: self.metrics.clone(),
            mode: self.settings.raw.server.mode,
            x509_anchors: self.x509_anchors.clone(),
            iaca_anchors: self.iaca_anchors.clone(),
            sessions: self.readiness.sessions(),
            mdoc_pki: self.mdoc_pki.clone(),
        }
    }

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

#[cfg(test)]
impl AppState {
    /// An in-memory state (temporary sled, fixed master key) on the given clock, for unit tests.
    pub fn for_tests(clock: crate::clock::SharedClock) -> Self {
        let ctx = RoleContext::for_tests(clock);
        let settings = crate::config::Config::default().finish().unwrap();
        Self {
            rate_limits: Arc::new(
                crate::http::ratelimit::RateLimits::new(&settings.raw.server.rate_limit).unwrap(),
            ),
            settings: Arc::new(settings),
            public_url: ctx.public_url,
            roles: crate::role::Role::compiled_in().into(),
            store: ctx.store,
            bus: ctx.bus,
            sealer: ctx.sealer,
            clock: ctx.clock,
            http: ctx.http,
            x509_anchors: ctx.x509_anchors,
            iaca_anchors: ctx.iaca_anchors,
            mdoc_pki: ctx.mdoc_pki,
            metrics: ctx.metrics,
            readiness: Arc::default(),
            admin: Arc::new(AdminTokens::new(&[])),
            cluster: None,
            workers: Arc::default(),
        }
    }
}
