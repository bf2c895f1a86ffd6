//! The wallet role: a multi-tenant cloud wallet (accounts, wallets, keys, DIDs, credentials) that
//! receives from any OpenID4VCI issuer and presents to any OpenID4VP verifier.
//!
//! `routes.rs` translates HTTP; the engine is [`WalletService`] (`service.rs`: the struct and what
//! the steps share) with one file per step: `access.rs` (session token → [`SignedIn`], membership
//! → [`Viewer`] / [`Owner`] proofs), `accounts.rs`, `wallets.rs`, `keys.rs` (keys and DIDs),
//! `credentials.rs`, `exchange.rs` (OpenID4VCI / OpenID4VP), `mdoc.rs` (mso_mdoc: device keys,
//! checking what an issuer sends, status). Its errors are [`WalletError`].

pub mod access;
mod accounts;
mod credentials;
mod devices;
pub mod error;
mod exchange;
mod invitations;
mod keys;
mod mdoc;
mod members;
pub mod model;
mod passwords;
pub mod routes;
pub mod service;
mod wallets;

use std::sync::Arc;

use actix_web::web;

pub use access::{Opened, Owner, SignedIn, Viewer};
pub use error::WalletError;
pub use service::WalletService;

use crate::config::WalletConfig;
use crate::roles::RoleContext;

pub mod ks {
    pub const ACCOUNTS: &str = "wallet_accounts";
    pub const EMAILS: &str = "wallet_emails";
    pub const LOGIN_FAILURES: &str = "wallet_login_failures";
    /// Failed logins of one device token (keyed by a digest of it), see `devices`.
    pub const DEVICE_LOGIN_FAILURES: &str = "wallet_device_login_failures";
    pub const SESSIONS: &str = "wallet_sessions";
    pub const WALLETS: &str = "wallet_wallets";
    /// `a/<account>/<wallet>` and `w/<wallet>/<account>` → role: an index written after each
    /// wallet's roster (`WalletRecord::roster`) changes; access takes the lesser of the two.
    /// `c/<account>/<wallet>` and `cw/<wallet>`: who created which wallet (the creation quota).
    /// `i/<account>/<wallet>`: a pending invitation (see `invitations`).
    pub const MEMBERS: &str = "wallet_members";
    pub const KEYS: &str = "wallet_keys";
    pub const DIDS: &str = "wallet_dids";
    pub const CREDS: &str = "wallet_credentials";
    pub const HISTORY: &str = "wallet_history";
    /// `<wallet>/<sha256 of the request text>` → the OpenID4VP request as resolve-request
    /// fetched it (shown to the user), which present answers instead of fetching it again.
    pub const RESOLVED: &str = "wallet_resolved_requests";
}

pub fn init(ctx: &RoleContext, cfg: &WalletConfig) -> anyhow::Result<Arc<WalletService>> {
    let svc = Arc::new(WalletService::new(ctx.clone(), cfg.clone()));
    register_metrics(ctx, &svc)?;
    Ok(svc)
}

/// Coordinator gauges, read at scrape time.
fn register_metrics(ctx: &RoleContext, svc: &Arc<WalletService>) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let c = svc.coordinator.clone();
    let open = prometheus::IntGauge::new("wallet_open_sessions", "open wallet tenant sessions")?;
    let waiters = prometheus::IntGauge::new(
        "wallet_session_waiters",
        "requests waiting for a wallet tenant session",
    )?;
    let evictions =
        prometheus::IntGauge::new("wallet_context_evictions", "idle wallet contexts evicted")?;
    let open = ctx.metrics.register_once(open)?;
    let waiters = ctx.metrics.register_once(waiters)?;
    let evictions = ctx.metrics.register_once(evictions)?;
    ctx.metrics.add_refresher(
        "wallet",
        Box::new(move || {
            open.set(c.stats.open_sessions.load(Ordering::Relaxed));
            waiters.set(c.stats.waiters.load(Ordering::Relaxed));
            evictions.set(c.stats.evictions.load(Ordering::Relaxed) as i64);
        }),
    );
    Ok(())
}

pub fn configure(
    cfg: &mut utoipa_actix_web::service_config::ServiceConfig,
    svc: &Arc<WalletService>,
) {
    cfg.app_data(web::Data::from(svc.clone()));
    routes::configure(cfg);
}
