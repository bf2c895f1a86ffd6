//! The issuer role: OpenID4VCI 1.0 credential issuer with hosted status lists.

pub mod authorize;
pub mod credential;
pub mod error;
pub mod formats;
pub mod grants;
pub mod mdoc;
pub mod metadata;
pub mod model;
mod nonces;
pub mod offers;
pub mod outcome;
pub mod proofs;
pub mod protocol;
pub mod routes;
pub mod service;
pub mod status;
pub mod tenants;
#[cfg(test)]
mod tests;
pub mod vc_api;
pub mod vc_input;
pub mod vc_issue;

use std::sync::Arc;

use actix_web::web;

pub use service::IssuerService;

use crate::config::IssuerConfig;
use crate::roles::RoleContext;

/// The issuer's keyspaces.
pub mod ks {
    pub const TENANTS: &str = "issuer_tenants";
    pub const KEYS: &str = "issuer_keys";
    pub const OFFERS: &str = "issuer_offers";
    /// Pre-authorized codes, issuer_state values and authorization codes (by hash).
    pub const CODES: &str = "issuer_codes";
    pub const TOKENS: &str = "issuer_tokens";
    pub const NONCES: &str = "issuer_nonces";
    pub const CREDS: &str = "issuer_credentials";
    pub const STATUS: &str = "issuer_status";
    pub const COUNTERS: &str = "issuer_counters";
}

pub async fn init(ctx: &RoleContext, cfg: &IssuerConfig) -> anyhow::Result<Arc<IssuerService>> {
    let svc = Arc::new(IssuerService::new(ctx.clone(), cfg.clone()));
    svc.init().await?;
    Ok(svc)
}

pub fn configure(
    cfg: &mut utoipa_actix_web::service_config::ServiceConfig,
    svc: &Arc<IssuerService>,
) {
    cfg.app_data(web::Data::from(svc.clone()));
    routes::configure(cfg);
    protocol::configure(cfg);
    cfg.service(vc_api::issue);
}
