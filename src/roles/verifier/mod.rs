//! The verifier role: OpenID4VP 1.0 with DCQL (and presentation definitions), named verification
//! policies, single-use sessions, results by poll, SSE and webhook.

pub mod error;
#[cfg(test)]
mod mdoc_trust_tests;
pub mod model;
pub mod protocol;
pub mod query;
pub mod response;
pub mod routes;
pub mod service;
pub mod sessions;
pub mod tenants;
#[cfg(test)]
mod tests;
pub mod vc_api;
pub mod vc_verify;
pub mod verify;

use std::sync::Arc;

use actix_web::web;

pub use service::VerifierService;

use crate::config::VerifierConfig;
use crate::roles::RoleContext;

pub mod ks {
    pub const TENANTS: &str = "verifier_tenants";
    pub const KEYS: &str = "verifier_keys";
    pub const SESSIONS: &str = "verifier_sessions";
}

pub async fn init(ctx: &RoleContext, cfg: &VerifierConfig) -> anyhow::Result<Arc<VerifierService>> {
    let svc = Arc::new(VerifierService::new(ctx.clone(), cfg.clone()));
    svc.init().await?;
    Ok(svc)
}

pub fn configure(
    cfg: &mut utoipa_actix_web::service_config::ServiceConfig,
    svc: &Arc<VerifierService>,
) {
    cfg.app_data(web::Data::from(svc.clone()));
    routes::configure(cfg);
    protocol::configure(cfg);
    cfg.service(vc_api::verify_credential)
        .service(vc_api::verify_presentation);
}
