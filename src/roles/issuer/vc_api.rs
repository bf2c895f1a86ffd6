//! W3C VC-API `POST /vc-api/credentials/issue`: sign a caller-supplied credential with the key of
//! the issuer it names (`credential.issuer`, required), as a Data Integrity credential
//! (eddsa-rdfc-2022) or as a JWT. Admin token.

use actix_web::{post, web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::service::IssuerService;
use super::vc_input;
use crate::crypto::jws;
use crate::error::{ApiError, ApiResult, Problem};
use crate::http::auth::Admin;

const DATA_INTEGRITY_CONTEXT: &str = "https://w3id.org/security/data-integrity/v2";

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
    (status = 201, description = "{\"verifiableCredential\": ...}"), (status = 400, description = "the credential is malformed (VC Data Model) or names an issuer this node does not hold", body = Problem), (status = 422, body = Problem), (status = 401, body = Problem)))]
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
        return Err(ApiError::bad_request("credential must be a JSON object"));
    };
    let model =
        vc_input::check(&vc).map_err(|e| ApiError::bad_request(format!("credential: {e}")))?;
    // The issuer the credential names (an id, or an object with id/name/description) is the
    // tenant that signs. A credential must name one (VCDM `issuer` is required; VC-API).
    let issuer = match vc_input::issuer_id(&vc) {
        None => {
            return Err(ApiError::bad_request(
                "credential: issuer is required (the DID of an issuer this node holds)",
            ))
        }
        Some(id) => svc
            .list_issuers()
            .await?
            .into_iter()
            .find(|i| i.did == id)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "credential.issuer {id} is not an issuer this node holds"
                ))
            })?,
    };
    if model == vc_input::Model::V1 {
        // VCDM 1.1 input is secured with eddsa-rdfc-2022: its terms come from the Data
        // Integrity context, which VCDM 1.1 does not include (the spec allows adding it).
        if let Some(Value::Array(ctx)) = vc.get_mut("@context") {
            if !ctx.iter().any(|c| c == DATA_INTEGRITY_CONTEXT) {
                ctx.push(json!(DATA_INTEGRITY_CONTEXT));
            }
        }
    }
    let key = svc.signing_key(&issuer).await?;
    let now = svc.ctx.clock.now_secs();
    let format = options["format"].as_str().unwrap_or("ldp");
    let signed = match format {
        "ldp" => {
            let vm = issuer.verification_method.clone();
            let out = tokio::task::spawn_blocking(move || {
                crate::crypto::di::issue_credential(&key, &vm, vc, now)
            })
            .await
            .map_err(ApiError::internal)?;
            out.map_err(|e| ApiError::bad_request(format!("cannot secure this credential: {e}")))?
        }
        "jwt" | "enveloped" => {
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
            let jwt = jws::sign(&key, header, &payload);
            if format == "enveloped" {
                if v1 {
                    return Err(ApiError::bad_request(
                        "options.format `enveloped` (VC-JOSE-COSE) secures VC Data Model 2.0 credentials; this one is 1.1",
                    ));
                }
                crate::crypto::envelope::envelop_vc_jwt(&jwt)
            } else {
                Value::String(jwt)
            }
        }
        other => {
            return Err(ApiError::validation(format!(
                "options.format `{other}`: ldp, jwt or enveloped"
            )))
        }
    };
    Ok(HttpResponse::Created().json(json!({ "verifiableCredential": signed })))
}
