//! The JSON-LD context idstack's ldp_vc credentials name, served so that outside verifiers
//! (jsonld-signatures, Digital Bazaar's vc, ...) can expand them. idstack itself never fetches
//! it: `crypto::di::loader` bundles it for this node's URL (see docs/ARCHITECTURE.md).

use actix_web::{get, http::header, HttpResponse};

use crate::crypto::di::IDSTACK_CONTEXT;

fn context_response() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/ld+json")
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400, immutable"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .body(IDSTACK_CONTEXT)
}

/// idstack's credentials context (`application/ld+json`), at the URL new credentials name.
#[utoipa::path(tag = "system", responses((status = 200, content_type = "application/ld+json", body = Object)))]
#[get("/contexts/credentials/v1")]
pub async fn credentials_v1() -> HttpResponse {
    context_response()
}

/// The same context at the path earlier docs named.
#[utoipa::path(tag = "system", responses((status = 200, content_type = "application/ld+json", body = Object)))]
#[get("/contexts/credentials-v1")]
pub async fn credentials_v1_legacy_path() -> HttpResponse {
    context_response()
}

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(credentials_v1)
        .service(credentials_v1_legacy_path);
}
