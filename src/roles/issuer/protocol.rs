//! Public OpenID4VCI endpoints that wallets call: metadata, offers by reference, authorization,
//! token, nonce, credential, status lists, did:web documents, SD-JWT VC type metadata.

use actix_web::http::header;
use actix_web::{get, post, web, HttpRequest, HttpResponse};

use super::authorize::AuthorizeRequest;
use super::grants::TokenRequest;
use super::model::CredentialRequest;
use super::service::IssuerService;
use crate::error::OAuthCode::{InvalidCredentialRequest, InvalidRequest};
use crate::error::{ApiError, ApiResult};
use crate::http::oauth::OAuthError;

type Svc = web::Data<IssuerService>;

fn json_no_store(v: impl serde::Serialize) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(v)
}

/// Credential issuer metadata (OID4VCI 1.0, path-inserted well-known form).
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path)), responses((status = 200, description = "Credential issuer metadata"), (status = 404, body = crate::error::Problem)))]
#[get("/.well-known/openid-credential-issuer/issuers/{issuer}")]
pub async fn issuer_metadata(svc: Svc, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let issuer = svc.get_issuer(&path).await?;
    Ok(HttpResponse::Ok().json(svc.credential_issuer_metadata(&issuer)))
}

/// Credential issuer metadata (suffix form, for pre-1.0 wallets).
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path)), responses((status = 200, description = "Credential issuer metadata"), (status = 404, body = crate::error::Problem)))]
#[get("/issuers/{issuer}/.well-known/openid-credential-issuer")]
pub async fn issuer_metadata_suffix(svc: Svc, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let issuer = svc.get_issuer(&path).await?;
    Ok(HttpResponse::Ok().json(svc.credential_issuer_metadata(&issuer)))
}

/// OAuth 2.0 authorization server metadata (RFC 8414, path-inserted form).
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path)), responses((status = 200, description = "AS metadata"), (status = 404, body = crate::error::Problem)))]
#[get("/.well-known/oauth-authorization-server/issuers/{issuer}")]
pub async fn as_metadata(svc: Svc, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let issuer = svc.get_issuer(&path).await?;
    Ok(HttpResponse::Ok().json(svc.authorization_server_metadata(&issuer)))
}

/// OAuth 2.0 authorization server metadata (suffix form).
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path)), responses((status = 200, description = "AS metadata"), (status = 404, body = crate::error::Problem)))]
#[get("/issuers/{issuer}/.well-known/oauth-authorization-server")]
pub async fn as_metadata_suffix(svc: Svc, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let issuer = svc.get_issuer(&path).await?;
    Ok(HttpResponse::Ok().json(svc.authorization_server_metadata(&issuer)))
}

/// DID document of an issuer that uses did:web.
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path)), responses((status = 200, description = "DID document"), (status = 404, body = crate::error::Problem)))]
#[get("/issuers/{issuer}/did.json")]
pub async fn did_document(svc: Svc, path: web::Path<String>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok()
        .content_type("application/did+json")
        .json(svc.did_document(&path).await?))
}

/// A credential offer by reference (`credential_offer_uri`).
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path), ("id" = String, Path, description = "The last segment of the offer's credential_offer_uri: `<offer id>.<secret>` (the offer id alone fetches nothing)")), responses((status = 200, description = "Credential offer"), (status = 404, body = crate::error::Problem), (status = 410, body = crate::error::Problem)))]
#[get("/issuers/{issuer}/offers/{id}")]
pub async fn offer_by_reference(
    svc: Svc,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (issuer, id) = path.into_inner();
    Ok(json_no_store(svc.offer_by_reference(&issuer, &id).await?))
}

/// Authorization endpoint (authorization code flow with PKCE S256). The offer's `issuer_state`
/// identifies the holder, so consent is immediate and the answer is a redirect carrying the code.
/// A refusal once `client_id`, `redirect_uri` and the `issuer_state` of a live offer are
/// accepted is a redirect too, carrying `error` and `error_description` (RFC 6749 §4.1.2.1);
/// before that, a 400 and no redirect.
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path)), responses((status = 302, description = "Redirect to redirect_uri with code (or error), state and iss"), (status = 400, body = crate::error::Problem)))]
#[get(
    "/issuers/{issuer}/authorize",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::token)"
)]
pub async fn authorize(
    svc: Svc,
    path: web::Path<String>,
    query: web::Query<AuthorizeRequest>,
) -> ApiResult<HttpResponse> {
    let url = svc.authorize(&path, query.into_inner()).await?;
    Ok(HttpResponse::Found()
        .insert_header((header::LOCATION, url))
        .finish())
}

/// Token endpoint (form-encoded): pre-authorized code (with tx_code) or authorization code + PKCE.
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path)), request_body(content = String, content_type = "application/x-www-form-urlencoded"), responses((status = 200, description = "Access token"), (status = 400, description = "OAuth error (invalid_grant, invalid_request, unsupported_grant_type)")))]
#[post(
    "/issuers/{issuer}/token",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::token)"
)]
pub async fn token_endpoint(
    svc: Svc,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, OAuthError> {
    let req: TokenRequest = serde_urlencoded::from_bytes(&body)
        .map_err(|e| OAuthError::from(InvalidRequest.because(format!("form body: {e}"))))?;
    Ok(json_no_store(svc.token(&path, req).await?))
}

/// Nonce endpoint: a fresh single-use `c_nonce` for proofs of possession.
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path)), responses((status = 200, description = "{\"c_nonce\": ...}")))]
#[post(
    "/issuers/{issuer}/nonce",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::nonce)"
)]
pub async fn nonce_endpoint(svc: Svc, path: web::Path<String>) -> Result<HttpResponse, OAuthError> {
    let n = svc.nonce(&path).await?;
    Ok(json_no_store(serde_json::json!({ "c_nonce": n })))
}

/// Credential endpoint: validates the JWT proof(s) and issues credential(s) bound to the holder key.
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path)), request_body(content = Object, content_type = "application/json"), responses((status = 200, description = "{\"credentials\": [{\"credential\": ...}]}"), (status = 400, description = "OAuth error (invalid_proof, invalid_nonce, unknown_credential_configuration, ...)"), (status = 401, description = "invalid_token"), (status = 429, description = "OAuth error temporarily_unavailable: too many token and credential requests from this address (Retry-After)")))]
#[post(
    "/issuers/{issuer}/credential",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::token)"
)]
pub async fn credential_endpoint(
    svc: Svc,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, OAuthError> {
    let token = crate::http::auth::bearer_token(&req).map(str::to_string);
    let creq: CredentialRequest = serde_json::from_slice(&body).map_err(|e| {
        OAuthError::from(InvalidCredentialRequest.because(format!("JSON body: {e}")))
    })?;
    Ok(json_no_store(
        svc.credential(&path, token.as_deref(), creq).await?,
    ))
}

/// A status list: `token-N` (IETF Token Status List: `statuslist+jwt`, or `statuslist+cwt` for
/// mdocs when the request's `Accept` asks for it), `revocation-N` / `suspension-N` (W3C
/// Bitstring Status List credential as `vc+jwt`). Revalidate with the ETag.
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path), ("list" = String, Path)), responses((status = 200, description = "Signed status list"), (status = 304, description = "Not modified"), (status = 404, body = crate::error::Problem)))]
#[get("/issuers/{issuer}/status-lists/{list}")]
pub async fn status_list(
    svc: Svc,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> ApiResult<HttpResponse> {
    let (issuer, list) = path.into_inner();
    let cwt = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(crate::crypto::mdoc::status::MEDIA_TYPE));
    let if_none_match = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let (etag, signed) = svc.status_list(&issuer, &list, cwt, if_none_match).await?;
    // the body depends on Accept (JWT or CWT): a shared cache must not hand one form to a
    // client asking for the other
    let Some((content_type, token)) = signed else {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header((header::VARY, "Accept"))
            .finish());
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=0, must-revalidate"))
        .insert_header((header::ETAG, etag))
        .insert_header((header::VARY, "Accept"))
        .body(token))
}

/// SD-JWT VC type metadata for the `vct` values this issuer uses.
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path), ("credential_type" = String, Path)), responses((status = 200, description = "Type metadata"), (status = 404, body = crate::error::Problem)))]
#[get("/issuers/{issuer}/vct/{credential_type}")]
pub async fn vct_metadata(svc: Svc, path: web::Path<(String, String)>) -> ApiResult<HttpResponse> {
    let (issuer_id, ty) = path.into_inner();
    let issuer = svc.get_issuer(&issuer_id).await?;
    let config = issuer
        .credential_configurations
        .values()
        .find(|c| c.credential_type == ty)
        .ok_or_else(|| ApiError::not_found(format!("no credential type `{ty}`")))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "vct": svc.vct(&issuer, config),
        "name": config.display.first().map(|d| d.name.clone()).unwrap_or(ty.clone()),
        "claims": config.claims.iter().map(|c| serde_json::json!({
            "path": [c.name], "sd": if c.selectively_disclosable { "allowed" } else { "never" },
            "display": [{"lang": "en-US", "label": c.display_name.clone().unwrap_or(c.name.clone())}]
        })).collect::<Vec<_>>(),
    })))
}

/// The IACA root certificate (PEM) this sandbox issuer's mdocs chain to: what a verifier or
/// wallet outside this deployment adds to its trust anchors to accept them. Public, as IACA
/// certificates are. 404 in production mode (bring your own chain there).
#[utoipa::path(tag = "issuer", params(("issuer" = String, Path)), responses((status = 200, description = "PEM certificate", content_type = "application/x-pem-file"), (status = 404, body = crate::error::Problem)))]
#[get("/issuers/{issuer}/mdoc-iaca")]
pub async fn mdoc_iaca(svc: Svc, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let pem = svc.mdoc_iaca_pem(&path.into_inner()).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/x-pem-file")
        .body(pem))
}

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(issuer_metadata)
        .service(issuer_metadata_suffix)
        .service(as_metadata)
        .service(as_metadata_suffix)
        .service(did_document)
        .service(offer_by_reference)
        .service(authorize)
        .service(token_endpoint)
        .service(nonce_endpoint)
        .service(credential_endpoint)
        .service(status_list)
        .service(mdoc_iaca)
        .service(vct_metadata);
}
