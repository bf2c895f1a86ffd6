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

#[derive(Serialize, ToSchema)]
pub struct WebhookSecret {
    /// Hex HMAC-SHA256 key: webhook bodies carry `<header>: sha256=<hex HMAC of the body>`.
    secret: String,
    /// The header whose signature this key checks: `X-Idstack-Signature` (the deployment's key,
    /// every tenant's events) or `X-Idstack-Tenant-Signature` (one tenant's key, its events only).
    header: &'static str,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct WebhookSecretQuery {
    /// The key of this issuer tenant's webhooks.
    issuer: Option<String>,
    /// The key of this verifier tenant's webhooks.
    verifier: Option<String>,
}

/// The key that signs outgoing webhooks (derived from the master key; the same on every node):
/// the deployment's, or with `issuer` or `verifier` that tenant's own. Give a receiver that
/// serves one tenant that tenant's key: with the deployment's it could forge any tenant's events.
#[utoipa::path(tag = "system", security(("admin_token" = [])), params(WebhookSecretQuery), responses(
    (status = 200, body = WebhookSecret),
    (status = 400, body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 401, body = crate::error::Problem, content_type = "application/problem+json")))]
#[get("/api/system/webhook-secret")]
pub async fn webhook_secret(
    _admin: Admin,
    state: web::Data<AppState>,
    q: web::Query<WebhookSecretQuery>,
) -> ApiResult<web::Json<WebhookSecret>> {
    use crate::http::webhook::{Sender, SIGNATURE_HEADER, TENANT_SIGNATURE_HEADER};
    let (key, header) = match (&q.issuer, &q.verifier) {
        (None, None) => (
            crate::http::webhook::signing_key(&state.sealer),
            SIGNATURE_HEADER,
        ),
        (Some(tenant), None) | (None, Some(tenant)) => {
            let role = if q.issuer.is_some() {
                "issuer"
            } else {
                "verifier"
            };
            let sender = Sender { role, tenant };
            (
                crate::http::webhook::tenant_key(&state.sealer, sender),
                TENANT_SIGNATURE_HEADER,
            )
        }
        (Some(_), Some(_)) => {
            return Err(crate::error::ApiError::bad_request(
                "name one tenant: issuer or verifier, not both",
            ))
        }
    };
    Ok(web::Json(WebhookSecret {
        secret: key.iter().map(|b| format!("{b:02x}")).collect(),
        header,
    }))
}
