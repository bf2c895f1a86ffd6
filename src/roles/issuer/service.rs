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
    pub(super) status_blocks: tokio::sync::Mutex<HashMap<String, std::ops::Range<u64>>>,
    /// Watches of unknown outcomes still running ([`IssuerService::watch_unknown_outcome`]).
    pub(super) watches: Arc<AtomicUsize>,
}

pub(super) fn hash(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

pub(super) fn secs(d: u64) -> Duration {
    Duration::from_secs(d)
}

impl IssuerService {
    pub fn new(ctx: RoleContext, cfg: IssuerConfig) -> Self {
        Self {
            tenants: Tenants::new(&ctx, ks::TENANTS, ks::KEYS),
            ctx,
            cfg,
            status_blocks: Default::default(),
            watches: Default::default(),
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
