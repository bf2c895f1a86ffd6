//! The issuer service: its state, constructor and the helpers every protocol step shares. The
//! steps live one per file beside it (garage's one-file-per-operation): `tenants`, `metadata`,
//! `offers`, `grants` (authorize, token), `credential` (nonce, credential), `status`.
//! Handlers only translate HTTP; everything with a rule lives in those files.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use super::ks;
use super::model::Issuer;
use crate::config::IssuerConfig;
use crate::crypto::sha256_hex;
use crate::roles::tenants::Tenants;
use crate::roles::RoleContext;

pub const PRE_AUTH_GRANT: &str = "urn:ietf:params:oauth:grant-type:pre-authorized_code";
pub(super) const ACCESS_TOKEN_TTL: u64 = 600;
pub const MAX_BATCH: usize = 10;

pub struct IssuerService {
    pub(crate) ctx: RoleContext,
    pub(super) cfg: IssuerConfig,
    pub(super) tenants: Tenants<Issuer>,
    /// Status-list indices this process has reserved but not yet handed out, per issuer
    /// (`next..end`). See [`super::status::STATUS_BLOCK`].
    /// With each block, the issuer's order of indices its counter record holds.
    #[allow(clippy::type_complexity)]
    pub(super) status_blocks:
        tokio::sync::Mutex<HashMap<String, (std::ops::Range<u64>, super::status::IndexOrder)>>,
    /// Watches of unknown outcomes still running ([`IssuerService::watch_unknown_outcome`]).
    pub(super) watches: Arc<AtomicUsize>,
    /// How they ended, by [`super::outcome::Watched`] (`None`: the metric could not be
    /// registered, as when a second service shares a test context).
    pub(super) watch_outcomes: Option<prometheus::IntCounterVec>,
    /// Status lists as last signed here ([`super::status::ServedLists`]).
    pub(super) served_lists: super::status::ServedLists,
}

pub(super) fn hash(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

pub(super) fn secs(d: u64) -> Duration {
    Duration::from_secs(d)
}

impl IssuerService {
    pub fn new(ctx: RoleContext, cfg: IssuerConfig) -> Self {
        let watches = Arc::<AtomicUsize>::default();
        Self {
            tenants: Tenants::new(&ctx, ks::TENANTS, ks::KEYS),
            watch_outcomes: register_metrics(&ctx, &watches).ok(),
            ctx,
            cfg,
            status_blocks: Default::default(),
            served_lists: Default::default(),
            watches,
        }
    }

    pub(super) fn now(&self) -> i64 {
        self.ctx.clock.now_secs()
    }

    /// The credential issuer identifier of a tenant.
    pub fn issuer_url(&self, id: &str) -> String {
        format!("{}/issuers/{id}", self.ctx.public_url)
    }
}

/// The unknown-outcome watches as operators see them: how many run (read at scrape time), and how
/// they ended. `store_failing` is an update that may have landed and could not be taken back.
fn register_metrics(
    ctx: &RoleContext,
    watches: &Arc<AtomicUsize>,
) -> Result<prometheus::IntCounterVec, prometheus::Error> {
    let running = prometheus::IntGauge::new(
        "issuer_unknown_outcome_watches",
        "offer updates of unknown outcome (the store failed to confirm them) being watched, to take them back if they landed",
    )?;
    let ended = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "issuer_unknown_outcomes_total",
            "watches of offer updates of unknown outcome, by how they ended: undone (had landed, taken back), never_landed, store_failing (still unknown when the window closed)",
        ),
        &["ended"],
    )?;
    let running = ctx.metrics.register_once(running)?;
    let ended = ctx.metrics.register_once(ended)?;
    let watches = watches.clone();
    ctx.metrics.add_refresher(
        "issuer",
        Box::new(move || {
            running.set(
                i64::try_from(watches.load(std::sync::atomic::Ordering::Relaxed))
                    .unwrap_or(i64::MAX),
            );
        }),
    );
    Ok(ended)
}
