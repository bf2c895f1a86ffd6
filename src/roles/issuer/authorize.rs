//! The authorization endpoint (authorization code flow with PKCE S256): the offer's `issuer_state`
//! identifies the holder, so consent is immediate and the answer is a redirect carrying a
//! single-use code that the token endpoint (`grants.rs`) redeems.

use serde::Deserialize;

use super::error::*;
use super::grants::requested_configurations;
use super::ks;
use super::model::*;
use super::service::*;
use crate::clock::random_token;
use crate::error::ErrorCode as _;
use crate::http::urlencode;

/// Authorization request query (authorization code flow with PKCE).
#[derive(Debug, Deserialize)]
pub struct AuthorizeRequest {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub issuer_state: Option<String>,
    pub state: Option<String>,
    pub scope: Option<String>,
    pub authorization_details: Option<String>,
}

impl IssuerService {
    /// Authorization code flow: the offer's `issuer_state` pre-identifies the holder, so consent is
    /// immediate. Returns the redirect URL carrying the code.
    ///
    /// An error found before the redirect URI is known to be one this issuer answers to (the
    /// client, the redirect URI itself) is this endpoint's own answer (400), never a redirect:
    /// that would make the issuer an open redirector. Any later error goes back to the client at
    /// its redirect URI (RFC 6749 §4.1.2.1: `error`, `error_description`, `state`, and `iss`,
    /// RFC 9207), so the wallet's user is not left on the issuer's error page.
    pub async fn authorize(
        &self,
        issuer_id: &str,
        req: AuthorizeRequest,
    ) -> Result<String, IssuerError> {
        let issuer = self.get_issuer(issuer_id).await?;
        let client_id = req
            .client_id
            .clone()
            .filter(|c| !c.is_empty())
            .or_bad_authorization("client_id is required")?;
        // Stored with the code: bounded before anything is (attacker review: a 64 KiB client_id
        // of control characters, escaped, was a 128 KiB record per call). RFC 6749 VSCHAR; long
        // enough for a did:jwk.
        if client_id.len() > MAX_CLIENT_ID || !client_id.chars().all(|c| (' '..='~').contains(&c)) {
            return Err(bad_authorization(
                "client_id must be at most 1024 printable ASCII characters",
            ));
        }
        let redirect_uri = req
            .redirect_uri
            .clone()
            .or_bad_authorization("redirect_uri is required")?;
        let parsed = validate_redirect(&redirect_uri)?;
        if !self.redirect_uris().allows(&redirect_uri, &parsed) {
            return Err(bad_authorization(
                "redirect_uri is not one this issuer sends authorization codes to (issuer.redirect_uris)",
            ));
        }
        // The offer its issuer_state names, before anything is sent back: under `*` (any
        // redirect URI) an error redirect for whoever asks would make the issuer's origin an open
        // redirector (RFC 9700 §4.11.2), so until a live offer is named, errors are a 400 here.
        let offer = self.offer_of_state(&issuer, &req).await?;
        let sep = if redirect_uri.contains('?') { '&' } else { '?' };
        let answer = match self
            .grant_code(&issuer, &req, client_id, &redirect_uri, offer)
            .await
        {
            Ok(code) => format!("code={}", urlencode(&code)),
            Err(e) => {
                let error = authorize_error(&e);
                let logged = crate::error::outward_detail(&e.to_string());
                tracing::info!(issuer = issuer_id, error, detail = %logged, "authorization refused");
                // ours (a 500) is logged, not sent; a store outage says only that
                let detail = match error {
                    "server_error" => "internal error".to_string(),
                    _ => description_text(&e.public_detail()),
                };
                format!("error={error}&error_description={}", urlencode(&detail))
            }
        };
        let mut url = format!("{redirect_uri}{sep}{answer}");
        if let Some(s) = &req.state {
            url.push_str(&format!("&state={}", urlencode(s)));
        }
        url.push_str(&format!("&iss={}", urlencode(&self.issuer_url(&issuer.id))));
        Ok(url)
    }

    /// The redeemable offer (its key and record) of this issuer that the request's
    /// `issuer_state` names.
    async fn offer_of_state(
        &self,
        issuer: &Issuer,
        req: &AuthorizeRequest,
    ) -> Result<(String, Offer), IssuerError> {
        let issuer_state = req.issuer_state.as_deref().or_bad_authorization(
            "issuer_state from the credential offer is required (no interactive login is configured)",
        )?;
        let Some(okey) = self
            .ctx
            .store
            .get(ks::CODES, &format!("state/{}", hash(issuer_state)))
            .await?
        else {
            return Err(bad_authorization("issuer_state is unknown or expired"));
        };
        let offer_key_s = String::from_utf8_lossy(&okey).into_owned();
        let offer: Offer = self
            .ctx
            .store
            .get_json(ks::OFFERS, &offer_key_s)
            .await?
            .or_bad_authorization("the offer has expired")?;
        if offer.issuer != issuer.id
            || offer.state != OfferState::Offered
            || offer.expires_at <= self.now()
        {
            return Err(bad_authorization("the offer is not redeemable"));
        }
        Ok((offer_key_s, offer))
    }

    /// The checks after the offer is known, and the code they earn (stored for the token
    /// endpoint).
    async fn grant_code(
        &self,
        issuer: &Issuer,
        req: &AuthorizeRequest,
        client_id: String,
        redirect_uri: &str,
        (offer_key_s, offer): (String, Offer),
    ) -> Result<String, IssuerError> {
        if req.response_type.as_deref() != Some("code") {
            return Err(bad_authorization("response_type must be `code`"));
        }
        let challenge = req
            .code_challenge
            .clone()
            .filter(|c| (43..=128).contains(&c.len()))
            .or_bad_authorization("code_challenge (S256) is required")?;
        if req.code_challenge_method.as_deref() != Some("S256") {
            return Err(bad_authorization("code_challenge_method must be S256"));
        }
        // A transaction code protects the offer against whoever intercepts it, and this flow has
        // no login to stand in for it: the issuer_state alone would redeem the offer without the
        // code, even after wrong codes locked it. Offers are no longer created with both; this
        // refuses those created before.
        if offer.tx_code.is_some() {
            return Err(bad_authorization(
                "this offer is protected by a transaction code: redeem it with the pre-authorized code grant",
            ));
        }
        let requested = requested_in(issuer, &offer, req)?;
        let code = random_token(32);
        let grant = AuthCodeGrant {
            offer_id: offer_key_s,
            issuer: issuer.id.clone(),
            client_id,
            redirect_uri: redirect_uri.to_string(),
            code_challenge: challenge,
            credential_configuration_ids: requested,
            authorization_details: req.authorization_details.is_some(),
        };
        self.ctx
            .store
            .put_json(
                ks::CODES,
                &format!("authz/{}", hash(&code)),
                &grant,
                Some(secs(120)),
            )
            .await?;
        Ok(code)
    }
}

/// An `error_description` as RFC 6749 §4.1.2.1 allows it: printable ASCII without `"` and `\`
/// (anything else a space), at most 200 characters.
fn description_text(detail: &str) -> String {
    detail
        .chars()
        .take(crate::crypto::mdoc::MAX_QUOTED)
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => ' ',
        })
        .collect()
}

/// The OAuth `error` an authorization refusal is sent back with (RFC 6749 §4.1.2.1, RFC 9396).
fn authorize_error(e: &IssuerError) -> &'static str {
    use crate::error::Code;
    match e {
        IssuerError::BadAuthorization(why) if why.starts_with("response_type") => {
            "unsupported_response_type"
        }
        IssuerError::BadAuthorization(why) if why.contains("not offered") => "invalid_scope",
        _ => match e.oauth_code() {
            Some(c) => c.as_str(),
            None => match e.error_code() {
                Code::Unavailable => "temporarily_unavailable",
                c if c.status().is_server_error() => "server_error",
                _ => "invalid_request",
            },
        },
    }
}

/// Longest `client_id` the authorization endpoint takes.
const MAX_CLIENT_ID: usize = 1024;

/// A redirect URI the answer can be sent to: an absolute URI (wallets use their own schemes as
/// well as `https`) without fragment, whitespace or control characters — those would break the
/// `Location` header (a 500, after the code was stored) or smuggle a header in — and not a
/// `javascript:`, `data:` or `vbscript:` one.
fn validate_redirect(u: &str) -> Result<reqwest::Url, IssuerError> {
    let refused = || {
        bad_authorization(
            "redirect_uri must be an absolute URI without fragment, whitespace or control characters",
        )
    };
    if u.len() > 2048 || u.contains('#') || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refused());
    }
    let parsed = reqwest::Url::parse(u).map_err(|_| refused())?;
    if matches!(parsed.scheme(), "javascript" | "data" | "vbscript") {
        return Err(refused());
    }
    Ok(parsed)
}

/// The redirect URIs the authorization endpoint answers to (`issuer.redirect_uris`). There is
/// no client registration, so this list stands in for one: a request naming another URI gets an
/// error, never a redirect (RFC 9700 §4.11).
pub(super) enum RedirectUris {
    /// `*`: any absolute URI without user-info, `http` only to loopback (`localhost` too).
    Any,
    /// Exactly these (empty: the authorization code grant is off).
    Listed(Vec<String>),
}

impl RedirectUris {
    pub(super) fn new(configured: Option<&[String]>, mode: crate::config::Mode) -> Self {
        match configured {
            None if mode == crate::config::Mode::Sandbox => Self::Any,
            None => Self::Listed(Vec::new()),
            Some(l) if l.iter().any(|u| u == "*") => Self::Any,
            Some(l) => Self::Listed(l.to_vec()),
        }
    }

    /// Whether the authorization code grant can be used at all.
    pub(super) fn any_allowed(&self) -> bool {
        !matches!(self, Self::Listed(l) if l.is_empty())
    }

    /// Whether `raw` (already checked by [`validate_redirect`], parsed as `parsed`) is allowed.
    fn allows(&self, raw: &str, parsed: &reqwest::Url) -> bool {
        match self {
            Self::Any => {
                parsed.username().is_empty()
                    && parsed.password().is_none()
                    && (parsed.scheme() != "http"
                        || loopback(parsed)
                        || parsed.host_str() == Some("localhost"))
            }
            Self::Listed(listed) => listed.iter().any(|l| {
                l == raw
                    // a native app's loopback redirect: any port (RFC 8252 §7.3)
                    || reqwest::Url::parse(l).is_ok_and(|l| {
                        l.scheme() == "http" && loopback(&l) && {
                            let mut p = parsed.clone();
                            p.set_port(l.port()).is_ok() && p == l
                        }
                    })
            }),
        }
    }
}

fn loopback(u: &reqwest::Url) -> bool {
    u.host_str()
        .and_then(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .ok()
        })
        .is_some_and(|ip| ip.is_loopback())
}

impl IssuerService {
    pub(super) fn redirect_uris(&self) -> RedirectUris {
        RedirectUris::new(self.cfg.redirect_uris.as_deref(), self.ctx.mode)
    }
}

/// What an authorization request asks for: its authorization_details (openid_credential) or
/// scope; by default all offered. Only what the offer holds.
fn requested_in(
    issuer: &Issuer,
    offer: &Offer,
    req: &AuthorizeRequest,
) -> Result<Vec<String>, IssuerError> {
    // What was asked for: authorization_details (openid_credential) or scope; default all offered.
    let mut requested: Vec<String> = match &req.authorization_details {
        Some(ad) => requested_configurations(ad).map_err(IssuerError::BadAuthorization)?,
        None => Vec::new(),
    };
    if let Some(scope) = &req.scope {
        requested.extend(
            scope
                .split(' ')
                .filter(|s| issuer.credential_configurations.contains_key(*s))
                .map(str::to_string),
        );
    }
    if requested.is_empty() {
        requested = offer.credential_configuration_ids.clone();
    }
    if let Some(bad) = requested
        .iter()
        .find(|r| !offer.credential_configuration_ids.contains(r))
    {
        return Err(bad_authorization(format!(
            "`{}` was not offered",
            crate::crypto::mdoc::clip(bad)
        )));
    }
    // each once: `scope=a a a …` (or the same detail repeated) is one configuration, not a
    // list the code, the token and the token response carry as often as it was written
    let mut seen = std::collections::HashSet::<String>::new();
    requested.retain(|r| seen.insert(r.clone()));
    Ok(requested)
}
