//! Cloud wallet API (`/wallet/...`, wallet session bearer tokens) and its admin part
//! (`/api/wallet/...`, admin token).

use std::future::Future;
use std::pin::Pin;

use actix_web::{
    delete, dev::Payload, get, post, put, web, FromRequest, HttpRequest, HttpResponse,
};

use super::access::SignedIn;
use super::model::*;
use super::service::WalletService;
use crate::error::{ApiError, ApiResult, Code, Problem};
use crate::http::auth::{bearer_token, Admin};

type Svc = web::Data<WalletService>;

/// The wallet session (bearer token from `/wallet/auth/login`) as the service's [`SignedIn`]
/// proof; wallet-scoped handlers turn it into a [`super::Viewer`] or [`super::Owner`].
impl FromRequest for SignedIn {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let svc = req.app_data::<Svc>().cloned();
        let token = bearer_token(req).map(str::to_string);
        Box::pin(async move {
            let svc = svc.ok_or_else(|| ApiError::internal("wallet service missing"))?;
            let token = token.ok_or_else(|| {
                ApiError::new(
                    Code::Unauthorized,
                    "send Authorization: Bearer <wallet session token>",
                )
            })?;
            Ok(svc.authenticate(&token).await?)
        })
    }
}

/// Create an account.
#[utoipa::path(tag = "wallet", request_body = Credentials, responses((status = 201, body = AccountView), (status = 409, body = Problem), (status = 422, body = Problem)))]
#[post(
    "/wallet/auth/register",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::signup)"
)]
pub async fn register(svc: Svc, body: web::Json<Credentials>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Created().json(svc.register(body.into_inner()).await?))
}

/// Log in: an opaque bearer session token (24 h), and a device token to send with this account's
/// next login from this client. Repeated failures lock the email with back-off; a client that
/// sends its device token is counted on its own, so others' wrong guesses do not lock it out.
#[utoipa::path(tag = "wallet", request_body = LoginRequest, responses((status = 200, body = LoginResponse), (status = 401, body = Problem), (status = 429, body = Problem)))]
#[post(
    "/wallet/auth/login",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::login)"
)]
pub async fn login(svc: Svc, body: web::Json<LoginRequest>) -> ApiResult<web::Json<LoginResponse>> {
    Ok(web::Json(svc.login(body.into_inner()).await?))
}

/// End the session (the token stops working at once).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), responses((status = 204), (status = 401, body = Problem)))]
#[post("/wallet/auth/logout")]
pub async fn logout(svc: Svc, user: SignedIn) -> ApiResult<HttpResponse> {
    svc.logout(&user).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Change the password: every session of the account ends, this one too (log in again). The
/// current password is counted against the email's failed logins (429 when locked); a wrong one
/// is 403.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), request_body = ChangePassword, responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
#[post(
    "/wallet/auth/password",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::login)"
)]
pub async fn change_password(
    svc: Svc,
    user: SignedIn,
    body: web::Json<ChangePassword>,
) -> ApiResult<HttpResponse> {
    svc.change_password(&user, body.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// End every session of the account, this one too (a device lost, a session token leaked).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), responses((status = 204), (status = 401, body = Problem)))]
#[post("/wallet/auth/logout-everywhere")]
pub async fn logout_everywhere(svc: Svc, user: SignedIn) -> ApiResult<HttpResponse> {
    svc.logout_everywhere(&user).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The logged-in account.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), responses((status = 200, body = AccountView), (status = 401, body = Problem)))]
#[get("/wallet/auth/me")]
pub async fn me(user: SignedIn) -> web::Json<AccountView> {
    web::Json(AccountView::from(user.account()))
}

/// Wallets this account is a member of.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), responses((status = 200, body = Vec<WalletView>)))]
#[get("/wallet/wallets")]
pub async fn list_wallets(svc: Svc, user: SignedIn) -> ApiResult<web::Json<Vec<WalletView>>> {
    Ok(web::Json(svc.list_wallets(user.account()).await?))
}

/// Create a wallet (the caller becomes its owner).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), request_body = WalletName, responses((status = 201, body = WalletView), (status = 422, body = Problem)))]
#[post("/wallet/wallets")]
pub async fn create_wallet(
    svc: Svc,
    user: SignedIn,
    body: web::Json<WalletName>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Created().json(svc.create_wallet(user.account(), &body.name).await?))
}

/// Rename a wallet (owner).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), request_body = WalletName, responses((status = 200, body = Wallet), (status = 404, body = Problem)))]
#[put("/wallet/wallets/{w}")]
pub async fn rename_wallet(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    body: web::Json<WalletName>,
) -> ApiResult<web::Json<Wallet>> {
    Ok(web::Json(
        svc.rename_wallet(&svc.owner(&user, &path).await?, &body.name)
            .await?,
    ))
}

/// Delete a wallet and everything in it (owner).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), responses((status = 204), (status = 404, body = Problem)))]
#[delete("/wallet/wallets/{w}")]
pub async fn delete_wallet(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let owner = svc.owner(&user, &path).await?;
    svc.delete_wallet(&owner).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Share a wallet with the account registered under an email, as owner or viewer (owner): an
/// invitation that account accepts under `/wallet/invitations` (202), or, for a member already,
/// its role changed at once (204). 404 when no account has the email; 409 when the last owner
/// would be made a viewer, or too many invitations are pending (64 per wallet, 100 per account).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), request_body = AddMember, responses((status = 202, body = Invited), (status = 204), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
#[post(
    "/wallet/wallets/{w}/members",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::signup)"
)]
pub async fn add_member(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    body: web::Json<AddMember>,
) -> ApiResult<HttpResponse> {
    let owner = svc.owner(&user, &path).await?;
    Ok(match svc.add_member(&owner, body.into_inner()).await? {
        Some(invited) => HttpResponse::Accepted().json(invited),
        None => HttpResponse::NoContent().finish(),
    })
}

/// The wallet's pending invitations (owner).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), responses((status = 200, body = Vec<InvitationView>), (status = 404, body = Problem)))]
#[get("/wallet/wallets/{w}/invitations")]
pub async fn list_invitations(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
) -> ApiResult<web::Json<Vec<InvitationView>>> {
    let owner = svc.owner(&user, &path).await?;
    Ok(web::Json(svc.list_invitations(&owner).await?))
}

/// Revoke the pending invitation of an email (owner).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path), ("email" = String, Path)), responses((status = 204), (status = 404, body = Problem)))]
#[delete("/wallet/wallets/{w}/invitations/{email}")]
pub async fn revoke_invitation(
    svc: Svc,
    user: SignedIn,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (w, email) = path.into_inner();
    let owner = svc.owner(&user, &w).await?;
    svc.revoke_invitation(&owner, &email).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The invitations pending for this account's email.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), responses((status = 200, body = Vec<ReceivedInvitation>)))]
#[get("/wallet/invitations")]
pub async fn received_invitations(
    svc: Svc,
    user: SignedIn,
) -> ApiResult<web::Json<Vec<ReceivedInvitation>>> {
    Ok(web::Json(svc.received_invitations(&user).await?))
}

/// Accept the invitation to a wallet: this account becomes a member with its role.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), responses((status = 200, body = WalletView), (status = 404, body = Problem), (status = 409, body = Problem)))]
#[post("/wallet/invitations/{w}")]
pub async fn accept_invitation(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
) -> ApiResult<web::Json<WalletView>> {
    Ok(web::Json(svc.accept_invitation(&user, &path).await?))
}

/// Decline the invitation to a wallet.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), responses((status = 204), (status = 404, body = Problem)))]
#[delete("/wallet/invitations/{w}")]
pub async fn decline_invitation(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    svc.decline_invitation(&user, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The wallet's members with their emails and roles (owner).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), responses((status = 200, body = Vec<MemberView>), (status = 404, body = Problem)))]
#[get("/wallet/wallets/{w}/members")]
pub async fn list_members(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
) -> ApiResult<web::Json<Vec<MemberView>>> {
    let owner = svc.owner(&user, &path).await?;
    Ok(web::Json(svc.list_members(&owner).await?))
}

/// Remove a member (owner), or leave the wallet (any member, naming its own account). The last
/// owner cannot be removed or leave (409): make another member owner, or delete the wallet.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path), ("account" = String, Path)), responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
#[delete("/wallet/wallets/{w}/members/{account}")]
pub async fn remove_member(
    svc: Svc,
    user: SignedIn,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (w, account) = path.into_inner();
    if account == user.account().id {
        let member = svc.viewer(&user, &w).await?;
        svc.leave_wallet(&member).await?;
    } else {
        let owner = svc.owner(&user, &w).await?;
        svc.remove_member(&owner, &account).await?;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Keys of a wallet (public parts).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), responses((status = 200, body = Vec<KeyView>), (status = 404, body = Problem)))]
#[get("/wallet/wallets/{w}/keys")]
pub async fn list_keys(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
) -> ApiResult<web::Json<Vec<KeyView>>> {
    let v = svc.open_viewer(&user, &path).await?;
    Ok(web::Json(svc.list_keys(&v).await?))
}

/// Generate a key (Ed25519 by default); the private part is sealed.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), request_body = GenerateKey, responses((status = 201, body = KeyView), (status = 404, body = Problem), (status = 409, body = Problem, description = "The wallet holds its most keys (100)")))]
#[post("/wallet/wallets/{w}/keys")]
pub async fn generate_key(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    body: web::Json<GenerateKey>,
) -> ApiResult<HttpResponse> {
    let o = svc.open_owner(&user, &path).await?;
    Ok(HttpResponse::Created().json(
        svc.generate_key(&o, body.key_type.unwrap_or(crate::crypto::KeyType::Ed25519))
            .await?,
    ))
}

/// Import a private JWK.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), request_body = ImportKey, responses((status = 201, body = KeyView), (status = 409, body = Problem), (status = 422, body = Problem)))]
#[post("/wallet/wallets/{w}/keys/import")]
pub async fn import_key(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    body: web::Json<ImportKey>,
) -> ApiResult<HttpResponse> {
    let o = svc.open_owner(&user, &path).await?;
    Ok(HttpResponse::Created().json(svc.import_key(&o, &body.jwk).await?))
}

/// Export a key's public JWK.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path), ("k" = String, Path)), responses((status = 200, body = KeyView), (status = 404, body = Problem)))]
#[get("/wallet/wallets/{w}/keys/{k}")]
pub async fn get_key(
    svc: Svc,
    user: SignedIn,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<KeyView>> {
    let (w, k) = path.into_inner();
    let v = svc.open_viewer(&user, &w).await?;
    Ok(web::Json(svc.get_key(&v, &k).await?))
}

/// Delete a key no DID uses.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path), ("k" = String, Path)), responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
#[delete("/wallet/wallets/{w}/keys/{k}")]
pub async fn delete_key(
    svc: Svc,
    user: SignedIn,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (w, k) = path.into_inner();
    let o = svc.open_owner(&user, &w).await?;
    svc.delete_key(&o, &k).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// DIDs of a wallet.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), responses((status = 200, body = Vec<DidRecord>), (status = 404, body = Problem)))]
#[get("/wallet/wallets/{w}/dids")]
pub async fn list_dids(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
) -> ApiResult<web::Json<Vec<DidRecord>>> {
    let v = svc.open_viewer(&user, &path).await?;
    Ok(web::Json(svc.list_dids(&v).await?))
}

/// Create a DID (did:key, did:jwk or did:web) on an existing or new key; the first is the default.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), request_body = CreateDid, responses((status = 201, body = DidRecord), (status = 404, body = Problem), (status = 409, body = Problem, description = "The DID exists, or a new key would pass the wallet's 100")))]
#[post("/wallet/wallets/{w}/dids")]
pub async fn create_did(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    body: web::Json<CreateDid>,
) -> ApiResult<HttpResponse> {
    let o = svc.open_owner(&user, &path).await?;
    Ok(HttpResponse::Created().json(svc.create_did(&o, body.into_inner()).await?))
}

/// Make a DID the wallet's default.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), request_body = SetDefaultDid, responses((status = 204), (status = 404, body = Problem)))]
#[post("/wallet/wallets/{w}/dids/default")]
pub async fn default_did(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    body: web::Json<SetDefaultDid>,
) -> ApiResult<HttpResponse> {
    let o = svc.open_owner(&user, &path).await?;
    svc.set_default_did(&o, &body.did).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Delete a DID.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), request_body = SetDefaultDid, responses((status = 204), (status = 404, body = Problem)))]
#[post("/wallet/wallets/{w}/dids/delete")]
pub async fn delete_did(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    body: web::Json<SetDefaultDid>,
) -> ApiResult<HttpResponse> {
    let o = svc.open_owner(&user, &path).await?;
    svc.delete_did(&o, &body.did).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// did:web documents of wallet DIDs.
#[utoipa::path(tag = "wallet", params(("w" = String, Path), ("k" = String, Path)), responses((status = 200, description = "DID document"), (status = 404, body = Problem)))]
#[get("/wallets/{w}/dids/{k}/did.json")]
pub async fn did_document(svc: Svc, path: web::Path<(String, String)>) -> ApiResult<HttpResponse> {
    let (w, k) = path.into_inner();
    Ok(HttpResponse::Ok()
        .content_type("application/did+json")
        .json(svc.did_web_document(&w, &k).await?))
}

/// Credentials, filtered by `type`, `issuer`, `format`.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path), ("type" = Option<String>, Query), ("issuer" = Option<String>, Query), ("format" = Option<String>, Query)), responses((status = 200, body = Vec<CredentialSummary>), (status = 404, body = Problem)))]
#[get("/wallet/wallets/{w}/credentials")]
pub async fn list_credentials(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    q: web::Query<CredentialFilter>,
) -> ApiResult<web::Json<Vec<CredentialSummary>>> {
    let v = svc.open_viewer(&user, &path).await?;
    Ok(web::Json(svc.list_credentials(&v, &q).await?))
}

/// A credential decoded, with its selectively disclosable claims (mso_mdoc: by namespace).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path), ("c" = String, Path)), responses((status = 200, body = CredentialDetail), (status = 404, body = Problem)))]
#[get("/wallet/wallets/{w}/credentials/{c}")]
pub async fn get_credential(
    svc: Svc,
    user: SignedIn,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<CredentialDetail>> {
    let (w, c) = path.into_inner();
    let v = svc.open_viewer(&user, &w).await?;
    Ok(web::Json(svc.credential_detail(&v, &c).await?))
}

/// Delete a credential.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path), ("c" = String, Path)), responses((status = 204), (status = 404, body = Problem)))]
#[delete("/wallet/wallets/{w}/credentials/{c}")]
pub async fn delete_credential(
    svc: Svc,
    user: SignedIn,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (w, c) = path.into_inner();
    let o = svc.open_owner(&user, &w).await?;
    svc.delete_credential(&o, &c).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Check a credential against its issuer's status list (mso_mdoc: the MSO's CWT status list).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path), ("c" = String, Path)), responses((status = 200, description = "{id, status: valid|revoked|suspended|no_status}"), (status = 404, body = Problem), (status = 424, body = Problem)))]
#[post(
    "/wallet/wallets/{w}/credentials/{c}/status",
    wrap = "actix_web::middleware::from_fn(crate::http::outbound::budgeted)"
)]
pub async fn credential_status(
    svc: Svc,
    user: SignedIn,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<serde_json::Value>> {
    let (w, c) = path.into_inner();
    // no tenant session: it needs no key, and a slow status list must not hold a session slot
    let v = svc.viewer(&user, &w).await?;
    let _place = svc.status_checks.take(&user.account().id).await?;
    Ok(web::Json(svc.credential_status(&v, &c).await?))
}

/// Exchanges of a wallet, newest first.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), responses((status = 200, body = Vec<HistoryEntry>), (status = 404, body = Problem)))]
#[get("/wallet/wallets/{w}/history")]
pub async fn history(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
) -> ApiResult<web::Json<Vec<HistoryEntry>>> {
    let v = svc.open_viewer(&user, &path).await?;
    Ok(web::Json(svc.history(&v).await?))
}

/// Show what an OpenID4VCI offer contains (issuer display, offered credentials, grants).
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), request_body = OfferInput, responses((status = 200, description = "Resolved offer"), (status = 422, body = Problem), (status = 424, body = Problem)))]
#[post(
    "/wallet/wallets/{w}/exchange/resolve-offer",
    wrap = "actix_web::middleware::from_fn(crate::http::outbound::budgeted)"
)]
pub async fn resolve_offer(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    body: web::Json<OfferInput>,
) -> ApiResult<web::Json<serde_json::Value>> {
    // no tenant session: it needs no key, and a slow issuer must not hold a session slot
    let v = svc.viewer(&user, &path).await?;
    let _place = svc.exchanges.take(&user.account().id).await?;
    Ok(web::Json(svc.resolve_offer(&v, &body.offer).await?))
}

/// Accept an offer: run the OpenID4VCI flow with the wallet's DID key (mso_mdoc: a new P-256
/// device key per credential; the IssuerSigned must chain to a trusted IACA) and store the
/// credentials.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), request_body = OfferInput, responses((status = 200, body = Vec<CredentialSummary>), (status = 409, body = Problem, description = "The wallet holds its most credentials (500, or 32 MiB of them)"), (status = 422, body = Problem, description = "Invalid offer, or a credential over 256 KiB"), (status = 424, body = Problem)))]
#[post(
    "/wallet/wallets/{w}/exchange/accept-offer",
    wrap = "actix_web::middleware::from_fn(crate::http::outbound::budgeted)"
)]
pub async fn accept_offer(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    body: web::Json<OfferInput>,
) -> ApiResult<web::Json<Vec<CredentialSummary>>> {
    // no tenant session here: the flow takes one only while it reads the key and signs
    let o = svc.owner(&user, &path).await?;
    let _place = svc.exchanges.take(&user.account().id).await?;
    Ok(web::Json(svc.accept_offer(&o, body.into_inner()).await?))
}

/// Resolve an OpenID4VP request (verifying a signed request) and list matching credentials.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), request_body = RequestInput, responses((status = 200, description = "Request and matches"), (status = 422, body = Problem), (status = 424, body = Problem)))]
#[post(
    "/wallet/wallets/{w}/exchange/resolve-request",
    wrap = "actix_web::middleware::from_fn(crate::http::outbound::budgeted)"
)]
pub async fn resolve_request(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    body: web::Json<RequestInput>,
) -> ApiResult<web::Json<serde_json::Value>> {
    // no tenant session: it needs no key, and a slow verifier must not hold a session slot
    let v = svc.viewer(&user, &path).await?;
    let _place = svc.exchanges.take(&user.account().id).await?;
    Ok(web::Json(svc.resolve_request(&v, &body.request).await?))
}

/// Present: build the vp_token from the chosen credentials (disclosing only what is chosen) and post it.
#[utoipa::path(tag = "wallet", security(("wallet_session" = [])), params(("w" = String, Path)), request_body = RequestInput, responses((status = 200, description = "Verifier answer"), (status = 422, body = Problem), (status = 424, body = Problem)))]
#[post(
    "/wallet/wallets/{w}/exchange/present",
    wrap = "actix_web::middleware::from_fn(crate::http::outbound::budgeted)"
)]
pub async fn present(
    svc: Svc,
    user: SignedIn,
    path: web::Path<String>,
    body: web::Json<RequestInput>,
) -> ApiResult<web::Json<serde_json::Value>> {
    // no tenant session here: presenting takes one only while it signs
    let o = svc.owner(&user, &path).await?;
    let _place = svc.exchanges.take(&user.account().id).await?;
    Ok(web::Json(svc.present(&o, body.into_inner()).await?))
}

/// All wallet accounts (admin).
#[utoipa::path(tag = "wallet", security(("admin_token" = [])), responses((status = 200, body = Vec<AccountView>), (status = 401, body = Problem)))]
#[get("/api/wallet/accounts")]
pub async fn admin_accounts(_a: Admin, svc: Svc) -> ApiResult<web::Json<Vec<AccountView>>> {
    Ok(web::Json(svc.list_accounts().await?))
}

/// Disable an account (its sessions stop working; it cannot log in).
#[utoipa::path(tag = "wallet", security(("admin_token" = [])), params(("id" = String, Path)), responses((status = 200, body = AccountView), (status = 404, body = Problem)))]
#[post("/api/wallet/accounts/{id}/disable")]
pub async fn admin_disable(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<web::Json<AccountView>> {
    Ok(web::Json(svc.set_disabled(&path, true).await?))
}

/// Enable an account again.
#[utoipa::path(tag = "wallet", security(("admin_token" = [])), params(("id" = String, Path)), responses((status = 200, body = AccountView), (status = 404, body = Problem)))]
#[post("/api/wallet/accounts/{id}/enable")]
pub async fn admin_enable(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<web::Json<AccountView>> {
    Ok(web::Json(svc.set_disabled(&path, false).await?))
}

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(register)
        .service(login)
        .service(logout)
        .service(change_password)
        .service(logout_everywhere)
        .service(me)
        .service(list_wallets)
        .service(create_wallet)
        .service(rename_wallet)
        .service(delete_wallet)
        .service(add_member)
        .service(list_members)
        .service(remove_member)
        .service(list_invitations)
        .service(revoke_invitation)
        .service(received_invitations)
        .service(accept_invitation)
        .service(decline_invitation)
        .service(list_keys)
        .service(generate_key)
        .service(import_key)
        .service(get_key)
        .service(delete_key)
        .service(list_dids)
        .service(create_did)
        .service(default_did)
        .service(delete_did)
        .service(did_document)
        .service(list_credentials)
        .service(get_credential)
        .service(delete_credential)
        .service(credential_status)
        .service(history)
        .service(resolve_offer)
        .service(accept_offer)
        .service(resolve_request)
        .service(present)
        .service(admin_accounts)
        .service(admin_disable)
        .service(admin_enable);
}
