//! W3C VC-API verification: `POST /vc-api/credentials/verify` and `/vc-api/presentations/verify`
//! for JWT (VCDM 1.1 `vc`/`vp` claims and VC-JOSE `vc+jwt`) and Data Integrity (eddsa-rdfc-2022).
//!
//! These run the same policy engine as OID4VP ([`super::verify`]): the issuer-key binding, the
//! validity window (not-before included), status, and the issuer allow-list of the `default`
//! verifier. The answer is 200 only when every check passed; otherwise 400 with a problem document
//! that carries the same `checks` / `errors` result.

use actix_web::{http::StatusCode, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::service::VerifierService;
use super::verify::{self, Audience, Ctx, Outcome, Trust};
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
    /// `challenge` (the presentation's nonce) and `domain` (its audience); when either is given,
    /// both must match the presentation's proof.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub options: Value,
}

/// The verification result (VC-API). A failed verification is a 400 problem document with these
/// same members added.
#[derive(Debug, Serialize, ToSchema, Default)]
pub struct VerifyResult {
    pub verified: bool,
    /// The checks that ran and passed (policy names: `signature`, `validity`, `status`, ...).
    pub checks: Vec<String>,
    pub warnings: Vec<String>,
    /// `<policy>: <reason>` for every check that failed.
    pub errors: Vec<String>,
}

/// The policies a VC-API verification runs. A presentation that carries no credential has only
/// its own: its proof (`signature`) and, when asked, `nonce_audience`; the credential-level checks
/// do not apply to it.
fn policies(audience: bool, credentials: bool) -> Vec<String> {
    let mut p = vec!["signature"];
    if credentials {
        p.extend([
            "validity",
            "status",
            "issuer_allowlist",
            "disclosure_integrity",
        ]);
    }
    // Holder binding (the presenter is the subject) is a relying party's policy, not part of
    // VC-API verification: a presentation may carry credentials about someone else.
    if audience {
        p.push("nonce_audience");
    }
    p.into_iter().map(str::to_string).collect()
}

fn answer(out: &Outcome, enabled: &[String]) -> HttpResponse {
    let mut r = VerifyResult::default();
    for p in out.results(enabled) {
        if p.passed {
            r.checks.push(p.name);
        } else {
            r.errors
                .push(format!("{}: {}", p.name, p.reason.unwrap_or_default()));
        }
    }
    r.verified = r.errors.is_empty() && !r.checks.is_empty();
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

/// The trust of the `default` verifier (no verifier: no issuer is trusted).
async fn trusted_issuers(svc: &VerifierService) -> ApiResult<Trust> {
    match svc.get_verifier("default").await {
        Ok(v) => svc.trust(&v).await,
        Err(_) => Ok(Trust::Only(Vec::new())),
    }
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

/// Verify a credential (VC-API): 200 when verified, 400 with the failed checks otherwise.
#[utoipa::path(tag = "verifier", request_body = VerifyCredential, responses((status = 200, body = VerifyResult), (status = 400, description = "verification failed (a problem document with `verified`, `checks`, `errors`) or malformed input", body = crate::error::Problem)))]
#[post("/vc-api/credentials/verify")]
pub async fn verify_credential(
    svc: web::Data<VerifierService>,
    body: web::Json<VerifyCredential>,
) -> ApiResult<HttpResponse> {
    let trusted = trusted_issuers(&svc).await?;
    let ctx = Ctx {
        dcql_query: None,
        presentation_definition: None,
        audience: None,
        now: svc.ctx.clock.now_secs(),
        http: &svc.ctx.http,
        trust: &trusted,
        status_cache: &svc.status_cache,
        anchors: &svc.ctx.x509_anchors,
        require_status: false,
        mdoc_transcript: None,
    };
    let mut out = Outcome::default();
    let envelope = crate::crypto::envelope::enveloped_vc_jwt(&body.verifiable_credential);
    match (&body.verifiable_credential, envelope) {
        (Value::String(jwt), _) => {
            verify::jwt_credential(&ctx, &mut out, "credential", jwt).await;
        }
        (Value::Object(_), Some(jwt)) => {
            let jwt =
                jwt.map_err(|e| ApiError::bad_request(format!("verifiableCredential: {e}")))?;
            verify::jwt_credential(&ctx, &mut out, "credential", jwt).await;
        }
        (Value::Object(_), None) => {
            verify::ldp_credential(&ctx, &mut out, "credential", &body.verifiable_credential).await;
        }
        _ => {
            return Err(ApiError::bad_request(
                "verifiableCredential must be a JWT string or a JSON-LD object",
            ))
        }
    }
    if let Some(e) = out.limit {
        return Err(e.into());
    }
    Ok(answer(&out, &policies(false, true)))
}

/// Verify a presentation and the credentials in it (VC-API). `options.challenge` / `options.domain`
/// are checked against the proof (Data Integrity) or `nonce` / `aud` (JWT).
#[utoipa::path(tag = "verifier", request_body = VerifyPresentation, responses((status = 200, body = VerifyResult), (status = 400, description = "verification failed (a problem document with `verified`, `checks`, `errors`) or malformed input", body = crate::error::Problem)))]
#[post("/vc-api/presentations/verify")]
pub async fn verify_presentation(
    svc: web::Data<VerifierService>,
    body: web::Json<VerifyPresentation>,
) -> ApiResult<HttpResponse> {
    let challenge = string_option(&body.options, "challenge")?;
    let domain = string_option(&body.options, "domain")?;
    let trusted = trusted_issuers(&svc).await?;
    let audience = (challenge.is_some() || domain.is_some()).then_some(Audience {
        nonce: challenge.as_deref(),
        client_id: domain.as_deref(),
    });
    let ctx = Ctx {
        dcql_query: None,
        presentation_definition: None,
        audience,
        now: svc.ctx.clock.now_secs(),
        http: &svc.ctx.http,
        trust: &trusted,
        status_cache: &svc.status_cache,
        anchors: &svc.ctx.x509_anchors,
        require_status: false,
        mdoc_transcript: None,
    };
    let mut out = Outcome::default();
    let vp = &body.verifiable_presentation;
    let jwt = match (vp, crate::crypto::envelope::enveloped_vp_jwt(vp)) {
        (Value::String(jwt), _) => Some(jwt.as_str()),
        (Value::Object(_), Some(jwt)) => Some(
            jwt.map_err(|e| ApiError::bad_request(format!("verifiablePresentation: {e}")))?,
        ),
        (Value::Object(_), None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "verifiablePresentation must be a JWT string, an EnvelopedVerifiablePresentation or a JSON-LD object",
            ))
        }
    };
    let credentials = match jwt {
        Some(jwt) => {
            verify::jwt_vp(&ctx, &mut out, "presentation", jwt, true).await;
            crate::crypto::jws::decode_unverified(jwt)
                .map(|(_, payload, _, _)| carries_credentials(&payload))
                .unwrap_or(true)
        }
        None => {
            verify::ldp_vp(&ctx, &mut out, "presentation", vp.clone()).await;
            carries_credentials(vp)
        }
    };
    if let Some(e) = out.limit {
        return Err(e.into());
    }
    Ok(answer(&out, &policies(audience.is_some(), credentials)))
}

/// Whether a presentation (a JSON-LD object, a VC-JOSE `vp+jwt` payload or a VCDM 1.1 JWT's
/// claims with `vp`) names any credential.
fn carries_credentials(vp: &Value) -> bool {
    let vp = if vp["vp"].is_object() { &vp["vp"] } else { vp };
    match &vp["verifiableCredential"] {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        _ => true,
    }
}
