//! W3C VC-API verification: `POST /vc-api/credentials/verify` and `/vc-api/presentations/verify`,
//! the HTTP adapter of `vc_verify.rs` (the same engine as OpenID4VP). The answer is 200 only when
//! every check passed; otherwise 400 with a problem document that carries the same `checks` /
//! `errors` result.

use super::verify::{bounded, EVALUATION_DEADLINE};
use actix_web::{http::StatusCode, post, web, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::service::VerifierService;
use super::vc_verify::VerifyResult;
use crate::error::{ApiError, ApiResult, Code, PROBLEM_TYPE_BASE};

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyCredential {
    #[serde(rename = "verifiableCredential")]
    #[schema(value_type = Object)]
    pub verifiable_credential: Value,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub options: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyPresentation {
    #[serde(rename = "verifiablePresentation")]
    #[schema(value_type = Object)]
    pub verifiable_presentation: Value,
    /// `challenge` (the presentation's nonce) and `domain` (its audience): each one given must
    /// match the presentation's proof; one left out is not checked. Give both: with `challenge`
    /// alone, a presentation a holder made for another audience with that nonce verifies.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub options: Value,
}

/// 200 with the result when verified, else the 400 problem document carrying it.
fn answer(r: VerifyResult) -> HttpResponse {
    if r.verified {
        return HttpResponse::Ok().json(r);
    }
    let code = Code::VerificationFailed;
    HttpResponse::build(StatusCode::BAD_REQUEST)
        .content_type("application/problem+json")
        .json(serde_json::json!({
            "type": format!("{PROBLEM_TYPE_BASE}{}", code.as_str()),
            "title": code.title(),
            "status": 400,
            "code": code.as_str(),
            "detail": r.errors.join("; "),
            "verified": false,
            "checks": r.checks,
            "warnings": r.warnings,
            "errors": r.errors,
        }))
}

fn string_option(options: &Value, name: &str) -> ApiResult<Option<String>> {
    match &options[name] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(ApiError::validation(format!(
            "options.{name} must be a string"
        ))),
    }
}

/// A verification that passed [`EVALUATION_DEADLINE`]: the remote parties it fetched from were
/// too slow (424).
fn too_slow() -> crate::error::ApiError {
    crate::error::ApiError::new(
        crate::error::Code::RemoteFailed,
        format!(
            "the verification took longer than {} s (the documents it fetched answered too slowly)",
            EVALUATION_DEADLINE.as_secs()
        ),
    )
}

/// Verify a credential (VC-API): 200 when verified, 400 with the failed checks otherwise.
#[utoipa::path(tag = "verifier", request_body = VerifyCredential, responses((status = 200, body = VerifyResult), (status = 400, description = "verification failed (a problem document with `verified`, `checks`, `errors`) or malformed input", body = crate::error::Problem), (status = 424, description = "the documents the verification fetched answered too slowly (30 s in all)", body = crate::error::Problem), (status = 429, description = "too many verification requests from this address (`rate_limited`, Retry-After)", body = crate::error::Problem)))]
#[post(
    "/vc-api/credentials/verify",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::verify)"
)]
pub async fn verify_credential(
    svc: web::Data<VerifierService>,
    body: web::Json<VerifyCredential>,
) -> ApiResult<HttpResponse> {
    let r = bounded(svc.vc_api_verify_credential(&body.verifiable_credential))
        .await
        .ok_or_else(too_slow)??;
    Ok(answer(r))
}

/// Verify a presentation and the credentials in it (VC-API). `options.challenge` / `options.domain`
/// are checked against the proof (Data Integrity) or `nonce` / `aud` (JWT).
#[utoipa::path(tag = "verifier", request_body = VerifyPresentation, responses((status = 200, body = VerifyResult), (status = 400, description = "verification failed (a problem document with `verified`, `checks`, `errors`) or malformed input", body = crate::error::Problem), (status = 424, description = "the documents the verification fetched answered too slowly (30 s in all)", body = crate::error::Problem), (status = 429, description = "too many verification requests from this address (`rate_limited`, Retry-After)", body = crate::error::Problem)))]
#[post(
    "/vc-api/presentations/verify",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::verify)"
)]
pub async fn verify_presentation(
    svc: web::Data<VerifierService>,
    body: web::Json<VerifyPresentation>,
) -> ApiResult<HttpResponse> {
    let challenge = string_option(&body.options, "challenge")?;
    let domain = string_option(&body.options, "domain")?;
    let r = bounded(svc.vc_api_verify_presentation(
        &body.verifiable_presentation,
        challenge.as_deref(),
        domain.as_deref(),
    ))
    .await
    .ok_or_else(too_slow)??;
    Ok(answer(r))
}
