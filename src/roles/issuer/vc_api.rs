//! W3C VC-API `POST /vc-api/credentials/issue`: sign a caller-supplied credential with the default
//! issuer's key, as a Data Integrity credential (eddsa-rdfc-2022) or as a JWT. Admin token.

use actix_web::{post, web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::service::IssuerService;
use crate::crypto::jws;
use crate::error::{ApiError, ApiResult, Problem};
use crate::http::auth::Admin;

#[derive(Debug, Deserialize, ToSchema)]
pub struct IssueRequest {
    #[schema(value_type = Object)]
    pub credential: Value,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub options: Value,
}

/// Issue a credential (VC-API). `options.format`: `ldp` (default; VCDM 2.0 + eddsa-rdfc-2022) or
/// `jwt` (VCDM 1.1 `vc` claim when the context is v1, else VC-JOSE with the credential as payload).
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), request_body = IssueRequest, responses(
    (status = 201, description = "{\"verifiableCredential\": ...}"), (status = 422, body = Problem), (status = 401, body = Problem)))]
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
    let Value::Object(mut vc) = credential else {
        return Err(ApiError::validation("credential must be a JSON object"));
    };
    if !vc.get("credentialSubject").is_some_and(Value::is_object) {
        return Err(ApiError::validation(
            "credential.credentialSubject must be an object",
        ));
    }
    let issuer = svc.get_issuer("default").await?;
    let key = svc.signing_key(&issuer).await?;
    let now = svc.state.clock.now_secs();
    let format = options["format"].as_str().unwrap_or("ldp");
    let signed = match format {
        "ldp" => {
            let vm = issuer.verification_method.clone();
            let out = tokio::task::spawn_blocking(move || {
                crate::crypto::di::issue_credential(&key, &vm, vc, now)
            })
            .await
            .map_err(ApiError::internal)?;
            out.map_err(|e| ApiError::validation(format!("cannot secure this credential: {e}")))?
        }
        "jwt" => {
            vc.insert("issuer".into(), json!(issuer.did));
            let v1 = vc["@context"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                == Some("https://www.w3.org/2018/credentials/v1");
            let header = json!({"typ": if v1 { "JWT" } else { "vc+jwt" }, "kid": issuer.verification_method});
            let payload = if v1 {
                let mut p = Map::new();
                p.insert("iss".into(), json!(issuer.did));
                p.insert("nbf".into(), json!(now));
                if let Some(sub) = vc["credentialSubject"]["id"].as_str() {
                    p.insert("sub".into(), json!(sub));
                }
                vc.entry("issuanceDate")
                    .or_insert_with(|| json!(crate::crypto::rfc3339(now)));
                p.insert("vc".into(), Value::Object(vc));
                Value::Object(p)
            } else {
                vc.entry("validFrom")
                    .or_insert_with(|| json!(crate::crypto::rfc3339(now)));
                Value::Object(vc)
            };
            Value::String(jws::sign(&key, header, &payload))
        }
        other => {
            return Err(ApiError::validation(format!(
                "options.format `{other}`: ldp or jwt"
            )))
        }
    };
    Ok(HttpResponse::Created().json(json!({ "verifiableCredential": signed })))
}
