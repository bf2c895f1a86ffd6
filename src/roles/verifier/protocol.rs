//! Public OpenID4VP endpoints wallets call: the request object and the response endpoint.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{get, post, web, HttpResponse};

use super::service::VerifierService;
use crate::error::ApiResult;
use crate::error::OAuthCode::InvalidRequest;
use crate::http::oauth::OAuthError;

type Svc = web::Data<VerifierService>;

/// The request object behind `request_uri` (`application/oauth-authz-req+jwt`): signed when the
/// verifier has a key, otherwise an unsigned JWT (`redirect_uri:` client identifier).
#[utoipa::path(tag = "verifier", params(("verifier" = String, Path), ("session" = String, Path)), responses((status = 200, content_type = "application/oauth-authz-req+jwt", body = String), (status = 404, body = crate::error::Problem), (status = 410, body = crate::error::Problem)))]
#[get("/verifiers/{verifier}/requests/{session}")]
pub async fn request_object(
    svc: Svc,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (v, s) = path.into_inner();
    let jwt = svc.request_object(&v, &s, None).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/oauth-authz-req+jwt")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(jwt))
}

/// `request_uri_method=post`: the wallet posts its metadata (and `wallet_nonce`, echoed back).
#[utoipa::path(tag = "verifier", params(("verifier" = String, Path), ("session" = String, Path)), request_body(content = String, content_type = "application/x-www-form-urlencoded"), responses((status = 200, content_type = "application/oauth-authz-req+jwt", body = String), (status = 404, body = crate::error::Problem)))]
#[post("/verifiers/{verifier}/requests/{session}")]
pub async fn request_object_post(
    svc: Svc,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let (v, s) = path.into_inner();
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let jwt = svc
        .request_object(&v, &s, form.get("wallet_nonce").cloned())
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/oauth-authz-req+jwt")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(jwt))
}

/// The response endpoint (`direct_post`, `direct_post.jwt`): `vp_token` + `state`, or an encrypted
/// `response`, or the wallet's `error`. Answers `{}` or `{"redirect_uri": ...}`.
#[utoipa::path(tag = "verifier", params(("verifier" = String, Path), ("session" = String, Path)), request_body(content = String, content_type = "application/x-www-form-urlencoded"), responses((status = 200, description = "Accepted"), (status = 400, description = "OAuth error: invalid_request (rejected presentation, wrong state, replay)"), (status = 404, description = "Unknown session"), (status = 410, description = "Expired session")))]
#[post("/verifiers/{verifier}/responses/{session}")]
pub async fn response(
    svc: Svc,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, OAuthError> {
    let (v, s) = path.into_inner();
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| OAuthError::from(InvalidRequest.because(format!("form body: {e}"))))?;
    let out = svc.handle_response(&v, &s, form).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(match out.redirect_uri {
            Some(u) => serde_json::json!({ "redirect_uri": u }),
            None => serde_json::json!({}),
        }))
}

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(request_object)
        .service(request_object_post)
        .service(response);
}
