//! `GET /api/system`: what this node is (version, features, roles, URLs, store size). Admin only.

use actix_web::{get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::http::auth::Admin;
use crate::server::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct SystemInfo {
    version: &'static str,
    features: Vec<&'static str>,
    roles: Vec<&'static str>,
    public_url: String,
    mode: crate::config::Mode,
    store_size_bytes: u64,
    cluster_enabled: bool,
}

/// Node information for the console and operators.
#[utoipa::path(tag = "system", security(("admin_token" = [])), responses(
    (status = 200, body = SystemInfo),
    (status = 401, body = crate::error::Problem, content_type = "application/problem+json")))]
#[get("/api/system")]
pub async fn system_info(
    _admin: Admin,
    state: web::Data<AppState>,
) -> ApiResult<web::Json<SystemInfo>> {
    let stats = state.store.stats().await?;
    Ok(web::Json(SystemInfo {
        version: env!("CARGO_PKG_VERSION"),
        features: crate::role::compiled_features(),
        roles: state.roles.iter().map(|r| r.as_str()).collect(),
        public_url: state.public_url.to_string(),
        mode: state.settings.raw.server.mode,
        store_size_bytes: stats.size_on_disk_bytes,
        cluster_enabled: state.settings.raw.cluster.enabled,
    }))
}

/// The key that signs every tenant's outgoing webhooks (`X-Idstack-Signature`; derived from the
/// master key, the same on every node). A receiver that serves one tenant gets that tenant's own
/// key instead (`GET /api/issuers/{id}/webhook-secret`, `GET /api/verifiers/{id}/webhook-secret`):
/// with this one it could forge any tenant's events.
#[utoipa::path(tag = "system", security(("admin_token" = [])), responses(
    (status = 200, body = crate::http::webhook::WebhookSecret),
    (status = 401, body = crate::error::Problem, content_type = "application/problem+json")))]
#[get("/api/system/webhook-secret")]
pub async fn webhook_secret(
    _admin: Admin,
    state: web::Data<AppState>,
) -> web::Json<crate::http::webhook::WebhookSecret> {
    web::Json(crate::http::webhook::WebhookSecret::deployment(
        &state.sealer,
    ))
}
