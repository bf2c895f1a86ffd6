//! What a role engine may touch: the narrow context every role service (and the tenant keys,
//! the webhook sender) is built from, plus the role's own config section. Nothing here reaches
//! the HTTP edge (admin tokens, rate limits, readiness, the cluster handle): a role cannot see or
//! change them, and a reader of a service's constructor sees everything it may use. The one thing
//! a role reads of the node's state is [`Sessions`]: whether its long-lived sessions must close.

use std::sync::Arc;

use crate::bus::Bus;
use crate::clock::SharedClock;
use crate::config::Mode;
use crate::crypto::x509::TrustAnchors;
use crate::http::metrics::Metrics;
use crate::readiness::Sessions;
use crate::store::{Sealer, Store};

#[derive(Clone)]
pub struct RoleContext {
    pub store: Arc<dyn Store>,
    /// Seals secrets at rest with the node's master key.
    pub sealer: Sealer,
    pub clock: SharedClock,
    /// Outbound HTTP (did:web, status lists, webhooks, other issuers): the guarded client of
    /// [`crate::http::outbound`] (destination checks, timeouts, no proxy).
    pub http: reqwest::Client,
    /// Notifications between nodes (in-process on one node).
    pub bus: Arc<dyn Bus>,
    /// Base URL handed to wallets (`server.public_url`, or derived from the bound address).
    pub public_url: Arc<str>,
    pub metrics: Arc<Metrics>,
    /// Sandbox or production (`server.mode`): sandbox conveniences such as trusting this node's
    /// own issuers.
    pub mode: Mode,
    /// CA certificates an SD-JWT VC issuer's `x5c` chain may end at (`x509.trust_anchors`,
    /// `x509.sd_jwt_anchors`).
    pub x509_anchors: Arc<TrustAnchors>,
    /// IACAs an mdoc's document signer may chain to (`x509.trust_anchors`,
    /// `x509.iaca_anchors`; in sandbox mode [`crate::roles::mdoc_pki::trust_anchors`] adds the
    /// deployment's own).
    pub iaca_anchors: Arc<TrustAnchors>,
    /// Whether long-lived sessions (WebSockets) may stay open: the node stops, or a rolling
    /// upgrade holds it back.
    pub sessions: tokio::sync::watch::Receiver<Sessions>,
    /// The mdoc document signers and anchor set this node has opened, each for the stored
    /// record it was made from (one per node: every role's context shares it).
    pub mdoc_pki: Arc<crate::roles::mdoc_pki::Cache>,
}

#[cfg(test)]
impl RoleContext {
    /// An in-memory context (temporary sled, fixed master key) on the given clock, for unit tests.
    pub fn for_tests(clock: SharedClock) -> Self {
        let settings = crate::config::Config::default().finish().unwrap();
        let store = crate::store::SledStore::temporary(clock.clone()).unwrap();
        let http =
            crate::http::outbound::client(&settings.raw.http.outbound, settings.raw.server.mode)
                .unwrap();
        Self {
            store: Arc::new(store),
            sealer: Sealer::new(&[9u8; 32]),
            clock,
            http,
            bus: Arc::new(crate::bus::LocalBus::new()),
            public_url: "http://127.0.0.1:8080".into(),
            metrics: Arc::new(Metrics::new().unwrap()),
            mode: settings.raw.server.mode,
            x509_anchors: Arc::default(),
            iaca_anchors: Arc::default(),
            sessions: crate::readiness::Readiness::default().sessions(),
            mdoc_pki: Arc::default(),
        }
    }
}
