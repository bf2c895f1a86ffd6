//! W3C VC-API `POST /vc-api/credentials/issue`: the HTTP adapter of `vc_issue.rs` (sign a
//! caller-supplied credential with the key of the issuer it names). Admin token.

use actix_web::{post, web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::service::IssuerService;
use crate::error::{ApiResult, Problem};
use crate::http::auth::Admin;

#[derive(Debug, Deserialize, ToSchema)]
pub struct IssueRequest {
    #[schema(value_type = Object)]
    pub credential: Value,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub options: Value,
}

/// Issue a credential (VC-API). `options.format`: `ldp` (default; VCDM 2.0 + eddsa-rdfc-2022),
/// `jwt` (VCDM 1.1 `vc` claim when the context is v1, else VC-JOSE `vc+jwt` with the credential as
/// payload) or `enveloped` (VCDM 2.0 only: that `vc+jwt` as an `EnvelopedVerifiableCredential`).
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), request_body = IssueRequest, responses(
    (status = 201, description = "{\"verifiableCredential\": ...}"), (status = 400, description = "the credential is malformed (VC Data Model) or names an issuer this node does not hold", body = Problem), (status = 422, description = "a `jsonld_too_complex` credential: canonicalizing it is over the `jsonld.*` limits", body = Problem), (status = 401, body = Problem), (status = 503, description = "every JSON-LD slot stayed busy; retry", body = Problem)))]
#[post("/vc-api/credentials/issue")]
pub async fn issue(
    _a: Admin,
    svc: web::Data<IssuerService>,
    body: web::Json<IssueRequest>,
) -> ApiResult<HttpResponse> {
    let IssueRequest {
        credential,
        options,
    } = body.into_inner();
    let format = options["format"].as_str().unwrap_or("ldp");
    let signed = svc.vc_api_issue(credential, format).await?;
    Ok(HttpResponse::Created().json(json!({ "verifiableCredential": signed })))
}
