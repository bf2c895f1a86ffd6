//! Issuer management API (`/api/issuers...`, admin token).

use actix_web::{delete, get, post, put, web, HttpResponse};

use super::model::*;
use super::service::IssuerService;
use crate::error::{ApiResult, Problem};
use crate::http::auth::Admin;

type Svc = web::Data<IssuerService>;

/// Create an issuer tenant (key generated and sealed; DID per `did_method`).
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), request_body = CreateIssuer, responses(
    (status = 201, body = Issuer), (status = 409, body = Problem), (status = 422, body = Problem), (status = 401, body = Problem)))]
#[post("/api/issuers")]
pub async fn create_issuer(
    _a: Admin,
    svc: Svc,
    body: web::Json<CreateIssuer>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Created().json(svc.create_issuer(body.into_inner()).await?))
}

/// List issuers.
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), responses((status = 200, body = Vec<Issuer>), (status = 401, body = Problem)))]
#[get("/api/issuers")]
pub async fn list_issuers(_a: Admin, svc: Svc) -> ApiResult<web::Json<Vec<Issuer>>> {
    Ok(web::Json(svc.list_issuers().await?))
}

/// Get an issuer.
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path)), responses((status = 200, body = Issuer), (status = 404, body = Problem)))]
#[get("/api/issuers/{issuer}")]
pub async fn get_issuer(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<web::Json<Issuer>> {
    Ok(web::Json(svc.get_issuer(&path).await?))
}

/// The key of this issuer's own webhook signature (`X-Idstack-Tenant-Signature`): give it to a
/// receiver that serves this issuer alone.
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path)), responses((status = 200, body = crate::http::webhook::WebhookSecret), (status = 404, body = Problem)))]
#[get("/api/issuers/{issuer}/webhook-secret")]
pub async fn issuer_webhook_secret(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<web::Json<crate::http::webhook::WebhookSecret>> {
    let issuer = svc.get_issuer(&path).await?;
    Ok(web::Json(svc.webhook_secret(&issuer)))
}

/// Update an issuer's display name, credential configurations or webhook (key and DID are fixed).
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path)), request_body = UpdateIssuer, responses((status = 200, body = Issuer), (status = 404, body = Problem), (status = 422, body = Problem)))]
#[put("/api/issuers/{issuer}")]
pub async fn update_issuer(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
    body: web::Json<UpdateIssuer>,
) -> ApiResult<web::Json<Issuer>> {
    Ok(web::Json(
        svc.update_issuer(&path, body.into_inner()).await?,
    ))
}

/// Delete an issuer and its key (credentials it issued can no longer be status-checked).
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path)), responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
#[delete("/api/issuers/{issuer}")]
pub async fn delete_issuer(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    svc.delete_issuer(&path).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Create a credential offer (pre-authorized code, optional tx_code; optionally the authorization code grant).
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path)), request_body = CreateOffer, responses((status = 201, body = OfferCreated), (status = 404, body = Problem), (status = 422, body = Problem)))]
#[post("/api/issuers/{issuer}/offers")]
pub async fn create_offer(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
    body: web::Json<CreateOffer>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Created().json(svc.create_offer(&path, body.into_inner()).await?))
}

/// List an issuer's live offers with their state.
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path)), responses((status = 200, body = Vec<OfferView>), (status = 404, body = Problem)))]
#[get("/api/issuers/{issuer}/offers")]
pub async fn list_offers(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<web::Json<Vec<OfferView>>> {
    Ok(web::Json(svc.list_offers(&path).await?))
}

/// An offer's state: offered → token_issued → credential_issued, or expired.
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path), ("id" = String, Path)), responses((status = 200, body = OfferView), (status = 404, body = Problem)))]
#[get("/api/issuers/{issuer}/offers/{id}")]
pub async fn get_offer(
    _a: Admin,
    svc: Svc,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<OfferView>> {
    let (issuer, id) = path.into_inner();
    Ok(web::Json(svc.offer_view(&issuer, &id).await?))
}

/// Credentials an issuer has issued (metadata only, no claims).
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path)), responses((status = 200, body = Vec<IssuedCredential>), (status = 404, body = Problem)))]
#[get("/api/issuers/{issuer}/credentials")]
pub async fn list_credentials(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<web::Json<Vec<IssuedCredential>>> {
    Ok(web::Json(svc.list_credentials(&path).await?))
}

/// Revoke a credential (final): its status list entries change on the next fetch.
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path), ("id" = String, Path)), responses((status = 200, body = IssuedCredential), (status = 404, body = Problem), (status = 409, body = Problem)))]
#[post("/api/issuers/{issuer}/credentials/{id}/revoke")]
pub async fn revoke(
    _a: Admin,
    svc: Svc,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<IssuedCredential>> {
    let (issuer, id) = path.into_inner();
    Ok(web::Json(
        svc.set_status(&issuer, &id, CredentialStatus::Revoked)
            .await?,
    ))
}

/// Suspend a credential (reversible with reinstate). A `jwt_vc_json` credential names a
/// revocation list only (VCDM 1.1 has one `credentialStatus`): 409, revoke it instead.
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path), ("id" = String, Path)), responses((status = 200, body = IssuedCredential), (status = 404, body = Problem), (status = 409, body = Problem)))]
#[post("/api/issuers/{issuer}/credentials/{id}/suspend")]
pub async fn suspend(
    _a: Admin,
    svc: Svc,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<IssuedCredential>> {
    let (issuer, id) = path.into_inner();
    Ok(web::Json(
        svc.set_status(&issuer, &id, CredentialStatus::Suspended)
            .await?,
    ))
}

/// Reinstate a suspended credential.
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path), ("id" = String, Path)), responses((status = 200, body = IssuedCredential), (status = 404, body = Problem), (status = 409, body = Problem)))]
#[post("/api/issuers/{issuer}/credentials/{id}/reinstate")]
pub async fn reinstate(
    _a: Admin,
    svc: Svc,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<IssuedCredential>> {
    let (issuer, id) = path.into_inner();
    Ok(web::Json(
        svc.set_status(&issuer, &id, CredentialStatus::Valid)
            .await?,
    ))
}

/// Import the issuer's mdoc document signer: its P-256 key and its chain up to the IACA (the
/// production way to issue mso_mdoc; replaces the current document signer).
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path)), request_body = super::mdoc::ImportMdocSigner, responses(
    (status = 200, body = crate::roles::mdoc_pki::SignerInfo), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem), (status = 401, body = Problem)))]
#[put("/api/issuers/{issuer}/mdoc-signer")]
pub async fn import_mdoc_signer(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
    body: web::Json<super::mdoc::ImportMdocSigner>,
) -> ApiResult<web::Json<crate::roles::mdoc_pki::SignerInfo>> {
    Ok(web::Json(svc.import_mdoc_signer(&path, &body).await?))
}

/// The issuer's mdoc document signer (certificate facts, never the key).
#[utoipa::path(tag = "issuer", security(("admin_token" = [])), params(("issuer" = String, Path)), responses(
    (status = 200, body = crate::roles::mdoc_pki::SignerInfo), (status = 404, body = Problem), (status = 401, body = Problem)))]
#[get("/api/issuers/{issuer}/mdoc-signer")]
pub async fn mdoc_signer(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<web::Json<crate::roles::mdoc_pki::SignerInfo>> {
    Ok(web::Json(svc.mdoc_signer(&path).await?))
}

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_issuer)
        .service(list_issuers)
        .service(get_issuer)
        .service(issuer_webhook_secret)
        .service(update_issuer)
        .service(delete_issuer)
        .service(create_offer)
        .service(list_offers)
        .service(get_offer)
        .service(list_credentials)
        .service(revoke)
        .service(suspend)
        .service(reinstate)
        .service(import_mdoc_signer)
        .service(mdoc_signer);
}
