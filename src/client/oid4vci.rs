//! OpenID4VCI client: resolve an offer (by value or reference), discover metadata (both well-known
//! forms), obtain a token (pre-authorized code with tx_code, or authorization code + PKCE against an
//! issuer that consents for the offer's issuer_state), prove possession and fetch credentials.

use std::time::Duration;

use serde_json::{json, Value};

use super::{
    check_url, get_json, ok_body, query_params, send, truncate, ClientError, ClientResult,
};
use crate::crypto::{b64url, jws, sha256, SigningKey};

pub const PRE_AUTH_GRANT: &str = "urn:ietf:params:oauth:grant-type:pre-authorized_code";
/// Most credential configurations one offer may name: each costs a nonce and a credential
/// request, and what they bring is stored.
pub const MAX_OFFERED_CONFIGURATIONS: usize = 10;
/// Most credentials one credential response may carry (one proof is sent, so an honest issuer
/// sends one, or a few for batch issuance).
pub const MAX_CREDENTIALS_PER_RESPONSE: usize = 10;

#[derive(Debug, Clone)]
pub struct ResolvedOffer {
    pub offer: Value,
    pub issuer_metadata: Value,
    pub as_metadata: Value,
}

impl ResolvedOffer {
    pub fn issuer(&self) -> &str {
        self.offer["credential_issuer"].as_str().unwrap_or_default()
    }
    pub fn config_ids(&self) -> Vec<String> {
        self.offer["credential_configuration_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn tx_code(&self) -> Option<&Value> {
        self.offer["grants"][PRE_AUTH_GRANT].get("tx_code")
    }
}

/// One received credential.
#[derive(Debug, Clone)]
pub struct Received {
    pub configuration_id: String,
    pub format: String,
    pub credential: Value,
}

/// The holder's proof key: its signing key and, when it has one, the DID URL to name it by.
pub struct Holder<'a> {
    pub key: &'a SigningKey,
    pub kid: Option<String>,
}

fn split_origin(url: &str) -> (String, String) {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[scheme_end..].find('/') {
        Some(i) => (
            url[..scheme_end + i].to_string(),
            url[scheme_end + i..].trim_end_matches('/').to_string(),
        ),
        None => (url.trim_end_matches('/').to_string(), String::new()),
    }
}

/// Fetches `<origin>/.well-known/<name><path>`, falling back to `<url>/.well-known/<name>`.
async fn well_known(http: &reqwest::Client, url: &str, name: &str) -> ClientResult<Value> {
    let (origin, path) = split_origin(url);
    match get_json(http, &format!("{origin}/.well-known/{name}{path}")).await {
        Ok(v) => Ok(v),
        Err(first) => get_json(
            http,
            &format!("{}/.well-known/{name}", url.trim_end_matches('/')),
        )
        .await
        .map_err(|_| first),
    }
}

/// Largest credential offer fetched by reference.
const MAX_OFFER_BYTES: usize = 64 * 1024;

pub async fn resolve_offer(http: &reqwest::Client, offer: &str) -> ClientResult<ResolvedOffer> {
    let offer = offer.trim();
    let obj: Value = if offer.starts_with('{') {
        serde_json::from_str(offer)
            .map_err(|e| ClientError::Input(format!("credential offer JSON: {e}")))?
    } else {
        let params = query_params(offer);
        if let Some((_, v)) = params.iter().find(|(k, _)| k == "credential_offer") {
            serde_json::from_str(v)
                .map_err(|e| ClientError::Input(format!("credential_offer: {e}")))?
        } else if let Some((_, u)) = params.iter().find(|(k, _)| k == "credential_offer_uri") {
            // an offer is a few hundred bytes: no more than MAX_OFFER_BYTES of one is read
            super::get_json_within(http, u, MAX_OFFER_BYTES).await?
        } else {
            return Err(ClientError::Input(
                "not a credential offer: needs credential_offer or credential_offer_uri".into(),
            ));
        }
    };
    let issuer = obj["credential_issuer"]
        .as_str()
        .ok_or_else(|| ClientError::Remote("credential offer without credential_issuer".into()))?
        .to_string();
    let offered = obj["credential_configuration_ids"]
        .as_array()
        .map_or(0, Vec::len);
    if offered > MAX_OFFERED_CONFIGURATIONS {
        return Err(ClientError::Remote(format!(
            "the offer names {offered} credential configurations; at most {MAX_OFFERED_CONFIGURATIONS} are taken at once"
        )));
    }
    check_url(&issuer)?;
    let issuer_metadata = well_known(http, &issuer, "openid-credential-issuer").await?;
    if issuer_metadata["credential_issuer"].as_str() != Some(issuer.as_str()) {
        return Err(ClientError::Remote(
            "issuer metadata names another credential_issuer".into(),
        ));
    }
    let as_url = issuer_metadata["authorization_servers"][0]
        .as_str()
        .unwrap_or(&issuer)
        .to_string();
    let as_metadata = match well_known(http, &as_url, "oauth-authorization-server").await {
        Ok(m) => m,
        Err(_) => well_known(http, &as_url, "openid-configuration").await?,
    };
    Ok(ResolvedOffer {
        offer: obj,
        issuer_metadata,
        as_metadata,
    })
}

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> ClientResult<Value> {
    check_url(url)?;
    let text =
        ok_body(send(http.post(url).form(form).timeout(Duration::from_secs(15))).await?).await?;
    serde_json::from_str(&text)
        .map_err(|_| ClientError::Remote(format!("POST {}: not JSON", truncate(url))))
}

/// An access token and, when the token response carried `authorization_details` (OID4VCI 1.0
/// §6.2), the credential identifier to request per configuration.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: String,
    identifiers: Vec<(String, String)>,
}

impl AccessToken {
    fn read(resp: &Value) -> ClientResult<Self> {
        let token = resp["access_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Remote("token response without access_token".into()))?;
        let identifiers = resp["authorization_details"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                let config = d["credential_configuration_id"].as_str()?;
                let id = d["credential_identifiers"].get(0)?.as_str()?;
                Some((config.to_string(), id.to_string()))
            })
            .collect();
        Ok(Self { token, identifiers })
    }

    /// What the credential request names: the granted `credential_identifier` when the issuer
    /// gave one for this configuration (then it must be used), else `credential_configuration_id`.
    fn request_for(&self, config_id: &str) -> Value {
        match self.identifiers.iter().find(|(c, _)| c == config_id) {
            Some((_, id)) => json!({"credential_identifier": id}),
            None => json!({"credential_configuration_id": config_id}),
        }
    }
}

/// Gets an access token for the offer.
pub async fn token(
    http: &reqwest::Client,
    r: &ResolvedOffer,
    tx_code: Option<&str>,
) -> ClientResult<AccessToken> {
    let token_endpoint = r.as_metadata["token_endpoint"]
        .as_str()
        .ok_or_else(|| ClientError::Remote("no token_endpoint".into()))?;
    let grants = &r.offer["grants"];
    let resp = if let Some(code) = grants[PRE_AUTH_GRANT]["pre-authorized_code"].as_str() {
        if grants[PRE_AUTH_GRANT].get("tx_code").is_some() && tx_code.is_none() {
            return Err(ClientError::Input("this offer needs a tx_code".into()));
        }
        let mut form = vec![
            ("grant_type", PRE_AUTH_GRANT),
            ("pre-authorized_code", code),
        ];
        if let Some(t) = tx_code {
            form.push(("tx_code", t));
        }
        post_form(http, token_endpoint, &form).await?
    } else if let Some(state) = grants["authorization_code"]["issuer_state"].as_str() {
        authorization_code(http, r, token_endpoint, state).await?
    } else {
        return Err(ClientError::Input(
            "the offer carries no grant this wallet can use".into(),
        ));
    };
    AccessToken::read(&resp)
}

/// Authorization code + PKCE where the issuer consents for the pre-identified holder (issuer_state):
/// the redirect is followed without a browser. Issuers that need an interactive login are out of scope.
async fn authorization_code(
    http: &reqwest::Client,
    r: &ResolvedOffer,
    token_endpoint: &str,
    issuer_state: &str,
) -> ClientResult<Value> {
    let authz = r.as_metadata["authorization_endpoint"]
        .as_str()
        .ok_or_else(|| ClientError::Remote("no authorization_endpoint".into()))?;
    check_url(authz)?;
    let verifier = crate::clock::random_token(32);
    let challenge = b64url(sha256(verifier.as_bytes()));
    let redirect = "https://wallet.idstack.invalid/callback";
    let details = json!(r
        .config_ids()
        .iter()
        .map(|c| json!({"type": "openid_credential", "credential_configuration_id": c}))
        .collect::<Vec<_>>())
    .to_string();
    // The answer is a redirect to our (never resolvable) callback: read Location, do not follow.
    let no_redirect = crate::http::outbound::no_redirect_client();
    let req = no_redirect
        .get(authz)
        .query(&[
            ("response_type", "code"),
            ("client_id", "idstack-wallet"),
            ("redirect_uri", redirect),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("issuer_state", issuer_state),
            ("authorization_details", details.as_str()),
        ])
        .timeout(Duration::from_secs(15));
    let resp = send(req).await?;
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(location) = location.filter(|l| l.starts_with(redirect)) else {
        return Err(ClientError::Remote(format!(
            "the issuer wants interactive authorization (HTTP {})",
            resp.status().as_u16()
        )));
    };
    let params = query_params(&location);
    let code = params
        .iter()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ClientError::Remote("authorization response without code".into()))?;
    post_form(
        http,
        token_endpoint,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", &verifier),
            ("redirect_uri", redirect),
            ("client_id", "idstack-wallet"),
        ],
    )
    .await
}

async fn nonce(http: &reqwest::Client, r: &ResolvedOffer) -> ClientResult<Option<String>> {
    let Some(url) = r.issuer_metadata["nonce_endpoint"].as_str() else {
        return Ok(None);
    };
    check_url(url)?;
    let text = ok_body(send(http.post(url).timeout(Duration::from_secs(10))).await?).await?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|_| ClientError::Remote("nonce response: not JSON".into()))?;
    Ok(v["c_nonce"].as_str().map(str::to_string))
}

pub fn proof_jwt(holder: &Holder<'_>, aud: &str, nonce: Option<&str>, now: i64) -> String {
    let header = match &holder.kid {
        Some(kid) => json!({"typ": "openid4vci-proof+jwt", "kid": kid}),
        None => json!({"typ": "openid4vci-proof+jwt", "jwk": holder.key.verifying_key().to_jwk()}),
    };
    let mut claims = json!({"aud": aud, "iat": now});
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    jws::sign(holder.key, header, &claims)
}

/// Fetches one configuration's credential(s) with a fresh nonce and a proof by `holder`.
pub async fn credential(
    http: &reqwest::Client,
    r: &ResolvedOffer,
    access_token: &AccessToken,
    config_id: &str,
    holder: &Holder<'_>,
    now: i64,
) -> ClientResult<Vec<Received>> {
    let endpoint = r.issuer_metadata["credential_endpoint"]
        .as_str()
        .ok_or_else(|| ClientError::Remote("no credential_endpoint".into()))?;
    check_url(endpoint)?;
    let format = r.issuer_metadata["credential_configurations_supported"][config_id]["format"]
        .as_str()
        .ok_or_else(|| ClientError::Remote(format!("issuer does not describe `{config_id}`")))?
        .to_string();
    let n = nonce(http, r).await?;
    let proof = proof_jwt(holder, r.issuer(), n.as_deref(), now);
    let mut body = access_token.request_for(config_id);
    body["proofs"] = json!({"jwt": [proof]});
    let req = http
        .post(endpoint)
        .bearer_auth(&access_token.token)
        .json(&body)
        .timeout(Duration::from_secs(15));
    let text = ok_body(send(req).await?).await?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|_| ClientError::Remote("credential response: not JSON".into()))?;
    received_from(&v, config_id, &format)
}

/// The credentials of a credential response, at most [`MAX_CREDENTIALS_PER_RESPONSE`].
fn received_from(v: &Value, config_id: &str, format: &str) -> ClientResult<Vec<Received>> {
    let creds = v["credentials"].as_array().cloned().ok_or_else(|| {
        ClientError::Remote(
            "credential response without credentials (deferred issuance is not supported)".into(),
        )
    })?;
    if creds.len() > MAX_CREDENTIALS_PER_RESPONSE {
        return Err(ClientError::Remote(format!(
            "the credential response carries {} credentials; at most {MAX_CREDENTIALS_PER_RESPONSE} are taken",
            creds.len()
        )));
    }
    Ok(creds
        .into_iter()
        .filter_map(|c| c.get("credential").cloned())
        .map(|credential| Received {
            configuration_id: config_id.to_string(),
            format: format.to_string(),
            credential,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_credential_response_carries_at_most_the_cap() {
        let response = |n: usize| json!({"credentials": (0..n).map(|i| json!({"credential": format!("c{i}")})).collect::<Vec<_>>()});
        let ok = received_from(&response(MAX_CREDENTIALS_PER_RESPONSE), "c", "f").unwrap();
        assert_eq!(ok.len(), MAX_CREDENTIALS_PER_RESPONSE);
        let e = received_from(&response(MAX_CREDENTIALS_PER_RESPONSE + 1), "c", "f").unwrap_err();
        assert!(matches!(e, ClientError::Remote(_)), "{e:?}");
        assert!(received_from(&json!({"transaction_id": "x"}), "c", "f").is_err());
    }

    #[tokio::test]
    async fn an_offer_naming_too_many_configurations_is_refused_before_any_fetch() {
        let ids: Vec<String> = (0..=MAX_OFFERED_CONFIGURATIONS)
            .map(|i| format!("c{i}"))
            .collect();
        // The issuer is unreachable: the offer is refused before anything is fetched.
        let offer = json!({"credential_issuer": "https://issuer.invalid", "credential_configuration_ids": ids});
        let e = resolve_offer(&reqwest::Client::new(), &offer.to_string())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }
}
