//! Issuer logic: tenants and keys, offers, the OpenID4VCI grant/nonce/credential transitions, status.
//! Handlers only translate HTTP; everything with a rule lives here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::formats::{self, IssueInput, StatusRef};
use super::ks;
use super::model::*;
use crate::clock::{random_id, random_token};
use crate::crypto::{did, jws, sha256_hex, status::StatusArray, KeyType, SigningKey, VerifyingKey};
use crate::error::{ApiError, ApiResult, Code};
use crate::http::oauth::OAuthError;
use crate::http::urlencode;
use crate::state::AppState;
use crate::store::Cas;

pub const PRE_AUTH_GRANT: &str = "urn:ietf:params:oauth:grant-type:pre-authorized_code";
/// Entries per status list (the W3C minimum for herd privacy).
pub const STATUS_LIST_SIZE: u64 = 131_072;
pub const TOKEN_STATUS_BITS: u8 = 2;
const ACCESS_TOKEN_TTL: u64 = 600;
const NONCE_TTL: u64 = 300;
const MAX_TX_CODE_FAILURES: u32 = 5;
const PROOF_MAX_AGE: i64 = 300;
const PROOF_MAX_SKEW: i64 = 60;
pub const MAX_BATCH: usize = 10;

pub struct IssuerService {
    pub(crate) state: AppState,
    keys: crate::keystore::TenantKeys,
    /// Status-list indices this process has reserved but not yet handed out, per issuer
    /// (`next..end`). See [`STATUS_BLOCK`].
    status_blocks: tokio::sync::Mutex<HashMap<String, std::ops::Range<u64>>>,
}

/// Status-list indices are reserved from the issuer's shared counter in blocks of this many, one
/// compare-and-swap per block instead of one per credential: with every credential taking the
/// next index from one record, concurrent issuance (and, in a cluster, every node) contended on
/// that record. A block's unused indices are skipped when the process restarts — they stay
/// "valid" bits no credential points at. Divides [`STATUS_LIST_SIZE`], so a block never straddles
/// two lists.
const STATUS_BLOCK: u64 = 64;

/// Token endpoint form (pre-authorized code and authorization code grants).
#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    #[serde(rename = "pre-authorized_code")]
    pub pre_authorized_code: Option<String>,
    pub tx_code: Option<String>,
    pub code: Option<String>,
    pub code_verifier: Option<String>,
    pub redirect_uri: Option<String>,
    pub client_id: Option<String>,
    /// RFC 9396 / OID4VCI 1.0 §6.1: `openid_credential` entries narrowing the grant (JSON array).
    pub authorization_details: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    /// OID4VCI 1.0 §6.2: present when the authorization or token request carried
    /// `authorization_details`; one entry per granted configuration with its `credential_identifiers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<Vec<Value>>,
}

/// The `credential_configuration_id`s an `authorization_details` parameter (RFC 9396, OID4VCI 1.0
/// §5.1.1) asks for: a non-empty JSON array of `openid_credential` objects, each naming one.
pub fn requested_configurations(authorization_details: &str) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_str(authorization_details)
        .map_err(|_| "authorization_details is not JSON".to_string())?;
    let entries = v
        .as_array()
        .filter(|a| !a.is_empty() && a.len() <= 32)
        .ok_or("authorization_details must be a non-empty JSON array (at most 32 entries)")?;
    let mut ids = Vec::new();
    for d in entries {
        if d["type"].as_str() != Some("openid_credential") {
            return Err(
                "each authorization_details entry must have type `openid_credential`".into(),
            );
        }
        let id = d["credential_configuration_id"]
            .as_str()
            .ok_or("each authorization_details entry must name a credential_configuration_id")?;
        if !ids.iter().any(|x| x == id) {
            ids.push(id.to_string());
        }
    }
    Ok(ids)
}

/// The token response's `authorization_details`: per granted configuration, the identifiers the
/// wallet then sends as `credential_identifier` (here one per configuration: its id).
fn granted_details(config_ids: &[String]) -> Vec<Value> {
    config_ids
        .iter()
        .map(|id| {
            json!({
                "type": "openid_credential",
                "credential_configuration_id": id,
                "credential_identifiers": [id],
            })
        })
        .collect()
}

/// Credential endpoint body (OID4VCI 1.0 `proofs`, and the draft `proof` form older wallets send).
#[derive(Debug, Deserialize)]
pub struct CredentialRequest {
    pub credential_configuration_id: Option<String>,
    pub credential_identifier: Option<String>,
    pub proofs: Option<Proofs>,
    pub proof: Option<SingleProof>,
    /// Draft-13 wallets send `format` (+ type info) instead of a configuration id.
    pub format: Option<String>,
    pub vct: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Proofs {
    #[serde(default)]
    pub jwt: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct SingleProof {
    pub proof_type: String,
    pub jwt: Option<String>,
}

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

fn id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn hash(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

fn secs(d: u64) -> Duration {
    Duration::from_secs(d)
}

impl IssuerService {
    pub fn new(state: AppState) -> Self {
        Self {
            keys: crate::keystore::TenantKeys::new(state.clone(), ks::KEYS, "issuer"),
            state,
            status_blocks: Default::default(),
        }
    }

    fn now(&self) -> i64 {
        self.state.clock.now_secs()
    }

    /// The credential issuer identifier of a tenant.
    pub fn issuer_url(&self, id: &str) -> String {
        format!("{}/issuers/{id}", self.state.public_url)
    }

    // ---- tenants and keys ------------------------------------------------------------------

    pub async fn get_issuer(&self, id: &str) -> ApiResult<Issuer> {
        self.state
            .store
            .get_json::<Issuer>(ks::TENANTS, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no issuer `{id}`")))
    }

    pub async fn list_issuers(&self) -> ApiResult<Vec<Issuer>> {
        Ok(self
            .state
            .store
            .scan_json::<Issuer>(ks::TENANTS, "", 10_000)
            .await?
            .into_iter()
            .map(|(_, i)| i)
            .collect())
    }

    fn validate_configs(
        &self,
        key_type: KeyType,
        did_method: DidMethod,
        configs: &BTreeMap<String, CredentialConfig>,
    ) -> ApiResult<()> {
        for (id, c) in configs {
            if !id_ok(&id.to_ascii_lowercase())
                && !id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            {
                return Err(ApiError::validation(format!(
                    "credential configuration id `{id}`: use letters, digits, - and _"
                )));
            }
            if c.format == Format::LdpVc
                && (key_type != KeyType::Ed25519 || did_method == DidMethod::Web)
            {
                return Err(ApiError::validation(format!(
                    "credential configuration `{id}`: ldp_vc (eddsa-rdfc-2022) needs an Ed25519 key with did:key or did:jwk"
                )));
            }
            if c.credential_type.is_empty() || c.claims.is_empty() {
                return Err(ApiError::validation(format!(
                    "credential configuration `{id}` needs credential_type and claims"
                )));
            }
        }
        Ok(())
    }

    pub async fn create_issuer(&self, req: CreateIssuer) -> ApiResult<Issuer> {
        if !id_ok(&req.id) {
            return Err(ApiError::validation(
                "issuer id: 1-64 characters of a-z, 0-9, - and _",
            ));
        }
        let key_type = req.key_type.unwrap_or(KeyType::Ed25519);
        let did_method = req.did_method.unwrap_or(DidMethod::Key);
        self.validate_configs(key_type, did_method, &req.credential_configurations)?;
        if let Some(w) = &req.webhook_url {
            validate_url(w)?;
        }
        if self.state.store.get(ks::TENANTS, &req.id).await?.is_some() {
            return Err(ApiError::conflict(format!("issuer `{}` exists", req.id)));
        }
        // Key first (insert-only), then the tenant. A key already stored under this id (a
        // concurrent creation of the same issuer, or one that crashed before its tenant) is used
        // instead of ours, so whichever tenant record wins names the key that is stored.
        let key = self
            .keys
            .put_new(&req.id, SigningKey::generate(key_type))
            .await?;
        if key.key_type() != key_type {
            return Err(ApiError::conflict(format!(
                "issuer `{}` is being created concurrently with another key type",
                req.id
            )));
        }
        let vk = key.verifying_key();
        let did = match did_method {
            DidMethod::Key => did::did_key(&vk),
            DidMethod::Jwk => did::did_jwk(&vk),
            DidMethod::Web => did::did_web(&self.state.public_url, &format!("issuers/{}", req.id)),
        };
        let issuer = Issuer {
            verification_method: did::verification_method(&did),
            did,
            id: req.id.clone(),
            display_name: req.display_name.unwrap_or_else(|| req.id.clone()),
            key_type,
            did_method,
            key_fingerprint: vk.thumbprint(),
            credential_configurations: req.credential_configurations,
            webhook_url: req.webhook_url,
            created_at: self.now(),
        };
        if !self
            .state
            .store
            .insert_new_json(ks::TENANTS, &issuer.id, &issuer, None)
            .await?
        {
            return Err(ApiError::conflict(format!("issuer `{}` exists", issuer.id)));
        }
        tracing::info!(issuer = %issuer.id, did = %issuer.did, "issuer created");
        Ok(issuer)
    }

    pub async fn update_issuer(&self, id: &str, req: UpdateIssuer) -> ApiResult<Issuer> {
        let current = self.get_issuer(id).await?;
        if let Some(c) = &req.credential_configurations {
            self.validate_configs(current.key_type, current.did_method, c)?;
        }
        if let Some(w) = req.webhook_url.as_deref().filter(|w| !w.is_empty()) {
            validate_url(w)?;
        }
        self.state
            .store
            .update_json::<Issuer, ApiError, _>(ks::TENANTS, id, None, |mut i| {
                if let Some(n) = &req.display_name {
                    i.display_name = n.clone();
                }
                if let Some(c) = &req.credential_configurations {
                    i.credential_configurations = c.clone();
                }
                if let Some(w) = &req.webhook_url {
                    i.webhook_url = (!w.is_empty()).then(|| w.clone());
                }
                Ok(i)
            })
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no issuer `{id}`")))
    }

    pub async fn delete_issuer(&self, id: &str) -> ApiResult<()> {
        if id == "default" {
            return Err(ApiError::conflict("the default issuer cannot be deleted"));
        }
        if !self.state.store.delete(ks::TENANTS, id).await? {
            return Err(ApiError::not_found(format!("no issuer `{id}`")));
        }
        self.keys.remove(id).await
    }

    /// The tenant's signing key, unsealed once and cached; its fingerprint must match the record.
    pub async fn signing_key(&self, issuer: &Issuer) -> ApiResult<Arc<SigningKey>> {
        self.keys
            .get(&issuer.id, &issuer.key_fingerprint)
            .await
            .map_err(ApiError::internal)
    }

    /// Startup: the default issuer exists, and every issuer's key opens and matches its fingerprint.
    pub async fn init(&self) -> anyhow::Result<()> {
        if self
            .state
            .store
            .get(ks::TENANTS, "default")
            .await?
            .is_none()
        {
            match self.create_issuer(default_issuer_request()).await {
                Ok(_)
                | Err(ApiError {
                    code: Code::Conflict,
                    ..
                }) => {}
                Err(e) => anyhow::bail!("creating the default issuer: {e}"),
            }
        }
        for issuer in self
            .list_issuers()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            self.keys.get(&issuer.id, &issuer.key_fingerprint).await?;
        }
        Ok(())
    }

    // ---- metadata ------------------------------------------------------------------------------

    pub fn vct(&self, issuer: &Issuer, config: &CredentialConfig) -> String {
        config.vct.clone().unwrap_or_else(|| {
            format!(
                "{}/vct/{}",
                self.issuer_url(&issuer.id),
                config.credential_type
            )
        })
    }

    pub fn credential_issuer_metadata(&self, issuer: &Issuer) -> Value {
        let base = self.issuer_url(&issuer.id);
        let mut configs = Map::new();
        for (id, c) in &issuer.credential_configurations {
            let claims: Vec<Value> = c
                .claims
                .iter()
                .map(|cl| {
                    let mut v = json!({"path": [cl.name], "mandatory": cl.mandatory});
                    if let Some(n) = &cl.display_name {
                        v["display"] = json!([{"name": n, "locale": "en-US"}]);
                    }
                    v
                })
                .collect();
            let display: Vec<Value> = if c.display.is_empty() {
                vec![json!({"name": c.credential_type, "locale": "en-US"})]
            } else {
                c.display.iter().map(|d| json!(d)).collect()
            };
            let mut entry = json!({
                "format": c.format.as_str(),
                "scope": id,
                "cryptographic_binding_methods_supported": ["jwk", "did:key", "did:jwk"],
                "credential_signing_alg_values_supported": [issuer.key_type.alg()],
                "proof_types_supported": {"jwt": {"proof_signing_alg_values_supported": ["EdDSA", "ES256", "ES256K"]}},
                "credential_metadata": {"display": display, "claims": claims},
                // pre-1.0 wallets read these at the top level
                "display": display,
            });
            match c.format {
                Format::SdJwt => {
                    entry["vct"] = json!(self.vct(issuer, c));
                    entry["cryptographic_binding_methods_supported"] = json!(["jwk"]);
                }
                Format::JwtVcJson => {
                    entry["credential_definition"] =
                        json!({"type": ["VerifiableCredential", c.credential_type]});
                }
                Format::LdpVc => {
                    entry["cryptographic_binding_methods_supported"] =
                        json!(["did:key", "did:jwk"]);
                    entry["credential_definition"] = json!({
                        "@context": crate::crypto::di::credential_contexts(),
                        "type": ["VerifiableCredential", c.credential_type],
                    });
                }
            }
            configs.insert(id.clone(), entry);
        }
        json!({
            "credential_issuer": base,
            "credential_endpoint": format!("{base}/credential"),
            "nonce_endpoint": format!("{base}/nonce"),
            "batch_credential_issuance": {"batch_size": MAX_BATCH},
            "display": [{"name": issuer.display_name, "locale": "en-US"}],
            "credential_configurations_supported": configs,
        })
    }

    pub fn authorization_server_metadata(&self, issuer: &Issuer) -> Value {
        let base = self.issuer_url(&issuer.id);
        json!({
            "issuer": base,
            "token_endpoint": format!("{base}/token"),
            "authorization_endpoint": format!("{base}/authorize"),
            "grant_types_supported": ["authorization_code", PRE_AUTH_GRANT],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "pre-authorized_grant_anonymous_access_supported": true,
            "scopes_supported": issuer.credential_configurations.keys().collect::<Vec<_>>(),
            "authorization_details_types_supported": ["openid_credential"],
        })
    }

    pub async fn did_document(&self, id: &str) -> ApiResult<Value> {
        let issuer = self.get_issuer(id).await?;
        if issuer.did_method != DidMethod::Web {
            return Err(ApiError::not_found(format!(
                "issuer `{id}` does not use did:web"
            )));
        }
        let key = self.signing_key(&issuer).await?;
        Ok(did::did_web_document(&issuer.did, &key.verifying_key()))
    }

    // ---- offers --------------------------------------------------------------------------------

    pub async fn create_offer(&self, issuer_id: &str, req: CreateOffer) -> ApiResult<OfferCreated> {
        let issuer = self.get_issuer(issuer_id).await?;
        if req.credential_configuration_ids.is_empty() {
            return Err(ApiError::validation(
                "credential_configuration_ids is empty",
            ));
        }
        let mut known_claims = Vec::new();
        for id in &req.credential_configuration_ids {
            let c = issuer.credential_configurations.get(id).ok_or_else(|| {
                ApiError::validation(format!(
                    "issuer `{issuer_id}` has no credential configuration `{id}`"
                ))
            })?;
            for cl in &c.claims {
                if cl.mandatory && !req.claims.contains_key(&cl.name) {
                    return Err(ApiError::validation(format!(
                        "claim `{}` is mandatory for `{id}`",
                        cl.name
                    )));
                }
                known_claims.push(cl.name.as_str());
            }
        }
        if let Some(unknown) = req
            .claims
            .keys()
            .find(|k| !known_claims.contains(&k.as_str()))
        {
            return Err(ApiError::validation(format!(
                "claim `{unknown}` is not part of the offered configurations"
            )));
        }
        let cfg = &self.state.settings.raw.issuer;
        let ttl = req.ttl_seconds.unwrap_or(cfg.default_offer_ttl_seconds);
        if ttl == 0 || ttl > cfg.max_offer_ttl_seconds {
            return Err(ApiError::validation(format!(
                "ttl_seconds must be 1..={}",
                cfg.max_offer_ttl_seconds
            )));
        }
        let (tx_code, stored_tx) = match &req.tx_code {
            None => (None, None),
            Some(spec) => {
                if !(4..=12).contains(&spec.length) {
                    return Err(ApiError::validation("tx_code.length must be 4..=12"));
                }
                let code = match spec.input_mode.as_str() {
                    "numeric" => random_digits(spec.length),
                    "text" => random_token(16)
                        .chars()
                        .filter(char::is_ascii_alphanumeric)
                        .take(spec.length as usize)
                        .collect(),
                    other => {
                        return Err(ApiError::validation(format!(
                            "tx_code.input_mode `{other}`: numeric or text"
                        )))
                    }
                };
                let stored = StoredTxCode {
                    hash: hash(&code),
                    input_mode: spec.input_mode.clone(),
                    length: spec.length,
                    description: spec.description.clone(),
                };
                (Some(code), Some(stored))
            }
        };
        let now = self.now();
        let id = random_id();
        let code = random_token(32);
        let issuer_state = req.authorization_code.then(|| random_token(24));
        let mut pre_auth = json!({"pre-authorized_code": code});
        if let Some(t) = &stored_tx {
            pre_auth["tx_code"] = json!({"input_mode": t.input_mode, "length": t.length});
            if let Some(d) = &t.description {
                pre_auth["tx_code"]["description"] = json!(d);
            }
        }
        let mut grants = json!({ PRE_AUTH_GRANT: pre_auth });
        if let Some(s) = &issuer_state {
            grants["authorization_code"] = json!({"issuer_state": s});
        }
        let credential_offer = json!({
            "credential_issuer": self.issuer_url(issuer_id),
            "credential_configuration_ids": req.credential_configuration_ids,
            "grants": grants,
        });
        let offer = Offer {
            id: id.clone(),
            issuer: issuer_id.to_string(),
            credential_configuration_ids: req.credential_configuration_ids.clone(),
            claims: req.claims,
            pre_auth_code_hash: hash(&code),
            issuer_state: issuer_state.clone(),
            tx_code: stored_tx,
            tx_code_failures: 0,
            state: OfferState::Offered,
            created_at: now,
            expires_at: now + ttl as i64,
            credential_validity_seconds: req.credential_validity_seconds,
            issued: Vec::new(),
            credential_offer: credential_offer.clone(),
        };
        // The offer record outlives the offer by a day so its final state stays visible.
        let record_ttl = secs(ttl + 86_400);
        let mut ops = vec![
            crate::store::BatchOp::Put {
                keyspace: ks::OFFERS,
                key: offer_key(issuer_id, &id),
                value: crate::store::to_json(&offer)?,
                ttl: Some(record_ttl),
            },
            crate::store::BatchOp::Put {
                keyspace: ks::CODES,
                key: format!("pre/{}", offer.pre_auth_code_hash),
                value: offer_key(issuer_id, &id).into_bytes(),
                ttl: Some(secs(ttl)),
            },
        ];
        if let Some(s) = &issuer_state {
            ops.push(crate::store::BatchOp::Put {
                keyspace: ks::CODES,
                key: format!("state/{}", hash(s)),
                value: offer_key(issuer_id, &id).into_bytes(),
                ttl: Some(secs(ttl)),
            });
        }
        self.state.store.batch(ops).await?;
        let by_ref = format!("{}/offers/{id}", self.issuer_url(issuer_id));
        tracing::info!(issuer = issuer_id, offer = %id, "offer created");
        Ok(OfferCreated {
            id,
            offer_uri: format!(
                "openid-credential-offer://?credential_offer_uri={}",
                urlencode(&by_ref)
            ),
            offer_uri_by_value: format!(
                "openid-credential-offer://?credential_offer={}",
                urlencode(&credential_offer.to_string())
            ),
            credential_offer,
            tx_code,
            expires_at: offer.expires_at,
        })
    }

    async fn load_offer(&self, issuer_id: &str, id: &str) -> ApiResult<Offer> {
        self.state
            .store
            .get_json::<Offer>(ks::OFFERS, &offer_key(issuer_id, id))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no offer `{id}`")))
    }

    pub async fn offer_view(&self, issuer_id: &str, id: &str) -> ApiResult<OfferView> {
        self.get_issuer(issuer_id).await?;
        Ok(self
            .load_offer(issuer_id, id)
            .await?
            .view(self.state.clock.now_ms()))
    }

    pub async fn list_offers(&self, issuer_id: &str) -> ApiResult<Vec<OfferView>> {
        self.get_issuer(issuer_id).await?;
        let now = self.state.clock.now_ms();
        Ok(self
            .state
            .store
            .scan_json::<Offer>(ks::OFFERS, &format!("{issuer_id}/"), 1000)
            .await?
            .into_iter()
            .map(|(_, o)| o.view(now))
            .collect())
    }

    /// The offer by reference (`credential_offer_uri`): only while it can still be redeemed.
    pub async fn offer_by_reference(&self, issuer_id: &str, id: &str) -> ApiResult<Value> {
        let offer = self.load_offer(issuer_id, id).await?;
        if offer.state != OfferState::Offered || offer.expires_at <= self.now() {
            return Err(ApiError::new(
                Code::Gone,
                "this offer was already used or has expired",
            ));
        }
        Ok(offer.credential_offer)
    }

    fn offer_changed(&self, issuer_id: &str, offer: &Offer) {
        let state = self.state.clone();
        let issuer_id = issuer_id.to_string();
        let event = json!({"type": "offer.state", "issuer": issuer_id, "offer_id": offer.id, "state": offer.state, "issued_credentials": offer.issued});
        tokio::spawn(async move {
            let Ok(Some(issuer)) = state
                .store
                .get_json::<Issuer>(ks::TENANTS, &issuer_id)
                .await
            else {
                return;
            };
            let Some(url) = issuer.webhook_url else {
                return;
            };
            crate::http::webhook::deliver(&state, &url, &event).await;
        });
    }

    // ---- token endpoint ------------------------------------------------------------------------

    pub async fn token(
        &self,
        issuer_id: &str,
        req: TokenRequest,
    ) -> Result<TokenResponse, OAuthError> {
        self.get_issuer(issuer_id).await.map_err(|e| {
            OAuthError::unless_unavailable(e, OAuthError::invalid_request("unknown issuer"))
        })?;
        match req.grant_type.as_deref() {
            Some(PRE_AUTH_GRANT) => self.token_pre_authorized(issuer_id, req).await,
            Some("authorization_code") => self.token_authorization_code(issuer_id, req).await,
            Some(other) => Err(OAuthError::bad(
                "unsupported_grant_type",
                format!("grant_type `{other}` is not supported"),
            )),
            None => Err(OAuthError::invalid_request("grant_type is missing")),
        }
    }

    async fn token_pre_authorized(
        &self,
        issuer_id: &str,
        req: TokenRequest,
    ) -> Result<TokenResponse, OAuthError> {
        let code = req
            .pre_authorized_code
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 256)
            .ok_or_else(|| OAuthError::invalid_request("pre-authorized_code is missing"))?;
        let code_key = format!("pre/{}", hash(code));
        let store = &self.state.store;
        let Some(okey) = store.get(ks::CODES, &code_key).await? else {
            return Err(OAuthError::invalid_grant(
                "the pre-authorized code is unknown, expired or already used",
            ));
        };
        let offer_key_s = String::from_utf8_lossy(&okey).into_owned();
        if !offer_key_s.starts_with(&format!("{issuer_id}/")) {
            return Err(OAuthError::invalid_grant(
                "the pre-authorized code belongs to another issuer",
            ));
        }
        let offer: Offer = store
            .get_json(ks::OFFERS, &offer_key_s)
            .await?
            .ok_or_else(|| OAuthError::invalid_grant("the offer has expired"))?;
        if offer.expires_at <= self.now() || offer.state != OfferState::Offered {
            return Err(OAuthError::invalid_grant(
                "the offer has expired or was already redeemed",
            ));
        }
        // authorization_details may narrow the grant to some of the offered configurations.
        let (granted, details) = match &req.authorization_details {
            Some(ad) => {
                let ids = requested_configurations(ad)
                    .map_err(|e| OAuthError::bad("invalid_authorization_details", e))?;
                if let Some(bad) = ids
                    .iter()
                    .find(|id| !offer.credential_configuration_ids.contains(id))
                {
                    return Err(OAuthError::bad(
                        "invalid_authorization_details",
                        format!("`{bad}` was not offered"),
                    ));
                }
                (ids, true)
            }
            None => (offer.credential_configuration_ids.clone(), false),
        };
        if let Some(tx) = &offer.tx_code {
            let given = req.tx_code.as_deref().unwrap_or("");
            let ok = !given.is_empty()
                && bool::from(subtle::ConstantTimeEq::ct_eq(
                    hash(given).as_bytes(),
                    tx.hash.as_bytes(),
                ));
            if !ok {
                let updated = store
                    .update_json::<Offer, OAuthError, _>(ks::OFFERS, &offer_key_s, None, |mut o| {
                        o.tx_code_failures += 1;
                        Ok(o)
                    })
                    .await?;
                if updated.is_some_and(|o| o.tx_code_failures >= MAX_TX_CODE_FAILURES) {
                    // locked: the code is burnt
                    store.delete(ks::CODES, &code_key).await?;
                    return Err(OAuthError::invalid_grant(
                        "too many wrong transaction codes; the offer is locked",
                    ));
                }
                return Err(OAuthError::invalid_grant(if given.is_empty() {
                    "tx_code is required"
                } else {
                    "wrong tx_code"
                }));
            }
        }
        // Single use: exactly one redeemer removes the code. A store failure here may still
        // have applied the removal (Redis killed between executing the command and answering,
        // a cluster primary that did not answer in time): the code is put back if absent, so it
        // is never burnt without a token. That cannot redeem an offer twice: the offer's own
        // transition to `TokenIssued` (grant_access) admits one redeemer.
        let consumed = match store
            .compare_and_swap(ks::CODES, &code_key, Some(okey.clone()), None)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // (the offer is not touched: the code may have been consumed by another redeemer)
                self.restore_code(code_key, okey, None, offer.expires_at)
                    .await;
                return Err(e.into());
            }
        };
        if consumed != Cas::Swapped {
            return Err(OAuthError::invalid_grant(
                "the pre-authorized code was already used",
            ));
        }
        match self
            .grant_access(issuer_id, &offer_key_s, granted, details)
            .await
        {
            // The code is consumed but no token was handed out (the store failed on the way, or
            // the offer was not found where it was updated — a primary that had not caught up
            // yet): the redemption is rolled back (grant_access reverted the offer), so the
            // code is redeemable again instead of burnt. Harmless when the offer was redeemed
            // by someone else: its state admits no second token.
            Err(e) => {
                // A store failure: grant_access reverted the offer, unless that failed too —
                // retried with the code. Any other failure (the offer already redeemed or not
                // found) leaves the offer alone: its `TokenIssued` may be another redeemer's
                // (a code put back after an unknown outcome can be consumed twice; the offer
                // admits one token), found by tests/it/faults.rs.
                let revert = e.status.is_server_error().then_some(offer_key_s);
                self.restore_code(code_key, okey, revert, offer.expires_at)
                    .await;
                Err(e)
            }
            other => other,
        }
    }

    /// Puts a consumed pre-authorized code back (compensating a failed redemption) for the rest
    /// of its lifetime — after putting its offer back to `Offered` when `revert` names it (the
    /// offer first: while it is still `TokenIssued` the code cannot be redeemed) — retried in the background while
    /// the store is still failing (found by tests/it/faults.rs: a Redis restart failed the
    /// offer's revert, which was not retried, and left the offer `TokenIssued` without a token).
    async fn restore_code(
        &self,
        code_key: String,
        offer_key: Vec<u8>,
        revert: Option<String>,
        expires_at: i64,
    ) {
        let left = expires_at - self.now();
        if left <= 0 {
            return;
        }
        let store = self.state.store.clone();
        let attempt = move || {
            let store = store.clone();
            let (code_key, offer_key, revert) =
                (code_key.clone(), offer_key.clone(), revert.clone());
            async move {
                if let Some(o) = &revert {
                    store
                        .update_json::<Offer, OAuthError, _>(ks::OFFERS, o, None, |mut o| {
                            if o.state == OfferState::TokenIssued {
                                o.state = OfferState::Offered;
                            }
                            Ok(o)
                        })
                        .await
                        .map_err(|e| e.description)?;
                }
                store
                    .compare_and_swap(
                        ks::CODES,
                        &code_key,
                        None,
                        Some((offer_key, Some(secs(left as u64)))),
                    )
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        match attempt().await {
            Ok(_) => tracing::info!(
                "failed redemption rolled back: the pre-authorized code is usable again"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "rolling back a failed redemption; retrying in the background");
                tokio::spawn(async move {
                    for i in 0..10u32 {
                        tokio::time::sleep(Duration::from_millis(200 << i.min(5))).await;
                        if attempt().await.is_ok() {
                            return;
                        }
                    }
                    tracing::error!("could not roll back a failed redemption: the pre-authorized code stays consumed");
                });
            }
        }
    }

    async fn token_authorization_code(
        &self,
        issuer_id: &str,
        req: TokenRequest,
    ) -> Result<TokenResponse, OAuthError> {
        let code = req
            .code
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 256)
            .ok_or_else(|| OAuthError::invalid_request("code is missing"))?;
        let verifier = req.code_verifier.as_deref().ok_or_else(|| {
            OAuthError::invalid_request("code_verifier is missing (PKCE is required)")
        })?;
        let key = format!("authz/{}", hash(code));
        let store = &self.state.store;
        let Some(raw) = store.get(ks::CODES, &key).await? else {
            return Err(OAuthError::invalid_grant(
                "the authorization code is unknown, expired or already used",
            ));
        };
        let grant: AuthCodeGrant = serde_json::from_slice(&raw).map_err(OAuthError::server)?;
        // consume first: a wrong verifier also burns the code (RFC 6749 §10.5 single use)
        if store
            .compare_and_swap(ks::CODES, &key, Some(raw), None)
            .await?
            != Cas::Swapped
        {
            return Err(OAuthError::invalid_grant(
                "the authorization code was already used",
            ));
        }
        if grant.issuer != issuer_id {
            return Err(OAuthError::invalid_grant(
                "the code belongs to another issuer",
            ));
        }
        let challenge = crate::crypto::b64url(crate::crypto::sha256(verifier.as_bytes()));
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            challenge.as_bytes(),
            grant.code_challenge.as_bytes(),
        )) {
            return Err(OAuthError::invalid_grant(
                "code_verifier does not match the code_challenge",
            ));
        }
        if req.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
            return Err(OAuthError::invalid_grant(
                "redirect_uri does not match the authorization request",
            ));
        }
        if req
            .client_id
            .as_deref()
            .is_some_and(|c| c != grant.client_id)
        {
            return Err(OAuthError::invalid_grant(
                "client_id does not match the authorization request",
            ));
        }
        self.grant_access(
            issuer_id,
            &grant.offer_id,
            grant.credential_configuration_ids,
            grant.authorization_details,
        )
        .await
    }

    async fn grant_access(
        &self,
        issuer_id: &str,
        offer_key_s: &str,
        config_ids: Vec<String>,
        with_details: bool,
    ) -> Result<TokenResponse, OAuthError> {
        let updated = match self
            .state
            .store
            .update_json::<Offer, OAuthError, _>(ks::OFFERS, offer_key_s, None, |mut o| {
                if o.state != OfferState::Offered {
                    return Err(OAuthError::invalid_grant("the offer was already redeemed"));
                }
                o.state = OfferState::TokenIssued;
                Ok(o)
            })
            .await
        {
            Ok(u) => u.ok_or_else(|| OAuthError::invalid_grant("the offer has expired"))?,
            Err(e) => {
                // a store failure may still have applied the update (a write not acknowledged in
                // time): undo it so the rolled-back code finds its offer redeemable
                if e.status.is_server_error() {
                    self.revert_offer(offer_key_s).await;
                }
                return Err(e);
            }
        };
        let token = random_token(32);
        let details = with_details.then(|| granted_details(&config_ids));
        let grant = AccessGrant {
            offer_id: offer_key_s.to_string(),
            issuer: issuer_id.to_string(),
            credential_configuration_ids: config_ids,
            expires_at: self.now() + ACCESS_TOKEN_TTL as i64,
        };
        if let Err(e) = self
            .state
            .store
            .put_json(
                ks::TOKENS,
                &hash(&token),
                &grant,
                Some(secs(ACCESS_TOKEN_TTL)),
            )
            .await
        {
            // nobody has this token; make sure it is gone, and the offer redeemable again
            let _ = self.state.store.delete(ks::TOKENS, &hash(&token)).await;
            self.revert_offer(offer_key_s).await;
            return Err(e.into());
        }
        self.offer_changed(issuer_id, &updated);
        Ok(TokenResponse {
            access_token: token,
            token_type: "Bearer",
            expires_in: ACCESS_TOKEN_TTL,
            authorization_details: details,
        })
    }

    /// Compensation of a redemption that failed after the offer was marked redeemed: back to
    /// `Offered` (only from `TokenIssued`; nothing else is touched).
    async fn revert_offer(&self, offer_key_s: &str) {
        let r = self
            .state
            .store
            .update_json::<Offer, OAuthError, _>(ks::OFFERS, offer_key_s, None, |mut o| {
                if o.state == OfferState::TokenIssued {
                    o.state = OfferState::Offered;
                }
                Ok(o)
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e.description, "could not revert the offer of a failed redemption");
        }
    }

    // ---- authorization endpoint ------------------------------------------------------------------

    /// Authorization code flow: the offer's `issuer_state` pre-identifies the holder, so consent is
    /// immediate. Returns the redirect URL carrying the code.
    pub async fn authorize(&self, issuer_id: &str, req: AuthorizeRequest) -> ApiResult<String> {
        let issuer = self.get_issuer(issuer_id).await?;
        if req.response_type.as_deref() != Some("code") {
            return Err(ApiError::bad_request("response_type must be `code`"));
        }
        let client_id = req
            .client_id
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ApiError::bad_request("client_id is required"))?;
        let redirect_uri = req
            .redirect_uri
            .clone()
            .ok_or_else(|| ApiError::bad_request("redirect_uri is required"))?;
        validate_redirect(&redirect_uri)?;
        let challenge = req
            .code_challenge
            .clone()
            .filter(|c| (43..=128).contains(&c.len()))
            .ok_or_else(|| ApiError::bad_request("code_challenge (S256) is required"))?;
        if req.code_challenge_method.as_deref() != Some("S256") {
            return Err(ApiError::bad_request("code_challenge_method must be S256"));
        }
        let issuer_state = req.issuer_state.as_deref().ok_or_else(|| ApiError::bad_request("issuer_state from the credential offer is required (no interactive login is configured)"))?;
        let Some(okey) = self
            .state
            .store
            .get(ks::CODES, &format!("state/{}", hash(issuer_state)))
            .await?
        else {
            return Err(ApiError::bad_request("issuer_state is unknown or expired"));
        };
        let offer_key_s = String::from_utf8_lossy(&okey).into_owned();
        let offer: Offer = self
            .state
            .store
            .get_json(ks::OFFERS, &offer_key_s)
            .await?
            .ok_or_else(|| ApiError::bad_request("the offer has expired"))?;
        if offer.issuer != issuer.id || offer.state != OfferState::Offered {
            return Err(ApiError::bad_request("the offer is not redeemable"));
        }
        // What was asked for: authorization_details (openid_credential) or scope; default all offered.
        let mut requested: Vec<String> = match &req.authorization_details {
            Some(ad) => requested_configurations(ad).map_err(ApiError::bad_request)?,
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
            return Err(ApiError::bad_request(format!("`{bad}` was not offered")));
        }
        let code = random_token(32);
        let grant = AuthCodeGrant {
            offer_id: offer_key_s,
            issuer: issuer.id.clone(),
            client_id,
            redirect_uri: redirect_uri.clone(),
            code_challenge: challenge,
            credential_configuration_ids: requested,
            authorization_details: req.authorization_details.is_some(),
        };
        self.state
            .store
            .put_json(
                ks::CODES,
                &format!("authz/{}", hash(&code)),
                &grant,
                Some(secs(120)),
            )
            .await?;
        let sep = if redirect_uri.contains('?') { '&' } else { '?' };
        let mut url = format!("{redirect_uri}{sep}code={}", urlencode(&code));
        if let Some(s) = &req.state {
            url.push_str(&format!("&state={}", urlencode(s)));
        }
        url.push_str(&format!("&iss={}", urlencode(&self.issuer_url(&issuer.id))));
        Ok(url)
    }

    // ---- nonce endpoint ------------------------------------------------------------------------

    pub async fn nonce(&self, issuer_id: &str) -> Result<String, OAuthError> {
        self.get_issuer(issuer_id).await.map_err(|e| {
            OAuthError::unless_unavailable(e, OAuthError::invalid_request("unknown issuer"))
        })?;
        let n = random_token(24);
        self.state
            .store
            .put(
                ks::NONCES,
                &format!("{issuer_id}/{n}"),
                b"1".to_vec(),
                Some(secs(NONCE_TTL)),
            )
            .await?;
        Ok(n)
    }

    // ---- credential endpoint -------------------------------------------------------------------

    pub async fn credential(
        &self,
        issuer_id: &str,
        access_token: Option<&str>,
        req: CredentialRequest,
    ) -> Result<Value, OAuthError> {
        let store = &self.state.store;
        let token =
            access_token.ok_or_else(|| OAuthError::invalid_token("an access token is required"))?;
        let token_key = hash(token);
        let grant: AccessGrant =
            store
                .get_json(ks::TOKENS, &token_key)
                .await?
                .ok_or_else(|| {
                    OAuthError::invalid_token("the access token is unknown, expired or used up")
                })?;
        if grant.issuer != issuer_id {
            return Err(OAuthError::invalid_token(
                "the access token belongs to another issuer",
            ));
        }
        let issuer = self.get_issuer(issuer_id).await.map_err(|e| {
            OAuthError::unless_unavailable(e, OAuthError::invalid_token("unknown issuer"))
        })?;
        let config_id = match (&req.credential_configuration_id, &req.credential_identifier) {
            (Some(c), None) => c.clone(),
            (None, Some(i)) => i.clone(),
            (Some(_), Some(_)) => {
                return Err(OAuthError::bad(
                    "invalid_credential_request",
                    "send credential_configuration_id or credential_identifier, not both",
                ))
            }
            (None, None) => self
                .legacy_config_id(&issuer, &grant, &req)
                .ok_or_else(|| {
                    OAuthError::bad(
                        "invalid_credential_request",
                        "credential_configuration_id is missing",
                    )
                })?,
        };
        let config = issuer
            .credential_configurations
            .get(&config_id)
            .ok_or_else(|| {
                OAuthError::bad(
                    "unknown_credential_configuration",
                    format!("unknown credential configuration `{config_id}`"),
                )
            })?
            .clone();
        if !grant.credential_configuration_ids.contains(&config_id) {
            return Err(OAuthError::bad(
                if req.credential_identifier.is_some() {
                    "unknown_credential_identifier"
                } else {
                    "unknown_credential_configuration"
                },
                format!("`{config_id}` is not covered by this access token"),
            ));
        }
        let jwts: Vec<String> = match (&req.proofs, &req.proof) {
            (Some(p), None) => p.jwt.clone(),
            (None, Some(p)) if p.proof_type == "jwt" => p.jwt.clone().into_iter().collect(),
            (None, Some(p)) => {
                return Err(OAuthError::bad(
                    "invalid_proof",
                    format!("proof_type `{}` is not supported", p.proof_type),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(OAuthError::bad(
                    "invalid_credential_request",
                    "send proofs or proof, not both",
                ))
            }
            (None, None) => Vec::new(),
        };
        if jwts.is_empty() {
            return Err(OAuthError::bad(
                "invalid_proof",
                "a jwt proof of possession is required",
            ));
        }
        if jwts.len() > MAX_BATCH {
            return Err(OAuthError::bad(
                "invalid_proof",
                format!("at most {MAX_BATCH} proofs per request"),
            ));
        }
        let aud = self.issuer_url(issuer_id);
        let now = self.now();
        let mut holders = Vec::new();
        let mut nonces = Vec::new();
        for jwt in &jwts {
            let (vk, holder_did, nonce) =
                verify_proof(jwt, &aud, now).map_err(|e| OAuthError::bad("invalid_proof", e))?;
            if !nonces.contains(&nonce) {
                nonces.push(nonce);
            }
            holders.push((vk, holder_did));
        }
        // Each c_nonce is single-use: consume it (compare-and-swap) before issuing anything.
        for n in &nonces {
            let key = format!("{issuer_id}/{n}");
            if store
                .compare_and_swap(ks::NONCES, &key, Some(b"1".to_vec()), None)
                .await?
                != Cas::Swapped
            {
                return Err(OAuthError::bad("invalid_nonce", "c_nonce is unknown, expired or already used; get a fresh one from the nonce endpoint"));
            }
        }
        // The access token covers each configuration once: remove this one (CAS), drop the token when empty.
        let consumed = store
            .update_json::<AccessGrant, OAuthError, _>(
                ks::TOKENS,
                &token_key,
                Some(secs(ACCESS_TOKEN_TTL)),
                |mut g| {
                    if !g.credential_configuration_ids.contains(&config_id) {
                        return Err(OAuthError::invalid_token(
                            "this access token was already used for this credential",
                        ));
                    }
                    g.credential_configuration_ids.retain(|c| c != &config_id);
                    Ok(g)
                },
            )
            .await?
            .ok_or_else(|| {
                OAuthError::invalid_token("the access token is unknown, expired or used up")
            })?;
        if consumed.credential_configuration_ids.is_empty() {
            store.delete(ks::TOKENS, &token_key).await?;
        }
        let offer: Offer = store
            .get_json(ks::OFFERS, &grant.offer_id)
            .await?
            .ok_or_else(|| OAuthError::invalid_token("the offer behind this token has expired"))?;
        let key = self
            .signing_key(&issuer)
            .await
            .map_err(OAuthError::server)?;
        let validity = offer
            .credential_validity_seconds
            .or(config.validity_seconds);
        let claims: Map<String, Value> = offer
            .claims
            .iter()
            .filter(|(k, _)| config.claims.iter().any(|c| &c.name == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut credentials = Vec::new();
        let mut issued_ids = Vec::new();
        for (holder, holder_did) in &holders {
            let credential_id = random_id();
            let status = self.allocate_status(&issuer).await?;
            let input = IssueInput {
                issuer: &issuer,
                key: &key,
                config: &config,
                vct: self.vct(&issuer, &config),
                claims: &claims,
                holder,
                holder_did: holder_did.clone(),
                credential_id: &credential_id,
                now,
                expires_at: validity.map(|v| now + v as i64),
                status: &status,
            };
            let credential = if config.format == Format::LdpVc {
                let args = (
                    issuer.clone(),
                    key.clone(),
                    config.credential_type.clone(),
                    claims.clone(),
                    formats::holder_did_of(holder, holder_did),
                    credential_id.clone(),
                    input.expires_at,
                    status.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    formats::ldp_vc(
                        args.0, args.1, args.2, args.3, args.4, args.5, now, args.6, args.7,
                    )
                })
                .await
                .map_err(OAuthError::server)?
                .map_err(OAuthError::server)?
            } else {
                formats::issue(&input)
                    .map_err(|e| OAuthError::bad("unsupported_credential_format", e))?
            };
            let record = IssuedCredential {
                id: credential_id.clone(),
                issuer: issuer.id.clone(),
                credential_configuration_id: config_id.clone(),
                format: config.format,
                offer_id: offer.id.clone(),
                subject_hash: sha256_hex(holder.thumbprint()),
                status_list: status_list_number(status.index).to_string(),
                status_index: status.index,
                status: CredentialStatus::Valid,
                issued_at: now,
                expires_at: input.expires_at,
            };
            store
                .put_json(
                    ks::CREDS,
                    &format!("{}/{}", issuer.id, credential_id),
                    &record,
                    None,
                )
                .await?;
            credentials.push(json!({"credential": credential}));
            issued_ids.push(credential_id);
        }
        let updated = store
            .update_json::<Offer, OAuthError, _>(ks::OFFERS, &grant.offer_id, None, |mut o| {
                o.state = OfferState::CredentialIssued;
                o.issued.extend(issued_ids.iter().cloned());
                Ok(o)
            })
            .await?;
        if let Some(o) = updated {
            self.offer_changed(issuer_id, &o);
        }
        tracing::info!(
            issuer = issuer_id,
            count = credentials.len(),
            format = config.format.as_str(),
            "credentials issued"
        );
        Ok(json!({"credentials": credentials}))
    }

    /// Draft-13 requests name a format instead of a configuration: pick the matching covered one.
    fn legacy_config_id(
        &self,
        issuer: &Issuer,
        grant: &AccessGrant,
        req: &CredentialRequest,
    ) -> Option<String> {
        let format = req.format.as_deref()?;
        grant
            .credential_configuration_ids
            .iter()
            .find(|id| {
                issuer.credential_configurations.get(*id).is_some_and(|c| {
                    c.format.as_str() == format
                        && req.vct.as_ref().is_none_or(|v| *v == self.vct(issuer, c))
                })
            })
            .cloned()
    }

    // ---- status --------------------------------------------------------------------------------

    async fn allocate_status(&self, issuer: &Issuer) -> Result<StatusRef, OAuthError> {
        let n = {
            let mut blocks = self.status_blocks.lock().await;
            let block = blocks.entry(issuer.id.clone()).or_insert(0..0);
            if block.is_empty() {
                let start = self.reserve_status_block(&issuer.id).await?;
                *block = start..start + STATUS_BLOCK;
            }
            let n = block.start;
            block.start += 1;
            n
        };
        let list = status_list_number(n);
        let base = format!("{}/status-lists", self.issuer_url(&issuer.id));
        Ok(StatusRef {
            index: n % STATUS_LIST_SIZE,
            token_list: format!("{base}/token-{list}"),
            revocation_list: format!("{base}/revocation-{list}"),
            suspension_list: format!("{base}/suspension-{list}"),
        })
    }

    /// Reserves the next [`STATUS_BLOCK`] indices of an issuer's status lists; returns the first.
    async fn reserve_status_block(&self, issuer_id: &str) -> Result<u64, OAuthError> {
        let key = format!("{issuer_id}/status");
        loop {
            let end = self
                .state
                .store
                .update_json::<u64, OAuthError, _>(ks::COUNTERS, &key, None, |n| {
                    Ok(n + STATUS_BLOCK)
                })
                .await?;
            if let Some(end) = end {
                return Ok(end - STATUS_BLOCK);
            }
            // first credential of this issuer
            if self
                .state
                .store
                .insert_new_json(ks::COUNTERS, &key, &STATUS_BLOCK, None)
                .await?
            {
                return Ok(0);
            }
        }
    }

    pub async fn list_credentials(&self, issuer_id: &str) -> ApiResult<Vec<IssuedCredential>> {
        self.get_issuer(issuer_id).await?;
        Ok(self
            .state
            .store
            .scan_json::<IssuedCredential>(ks::CREDS, &format!("{issuer_id}/"), 10_000)
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// revoke | suspend | reinstate. Revocation is final.
    pub async fn set_status(
        &self,
        issuer_id: &str,
        credential_id: &str,
        to: CredentialStatus,
    ) -> ApiResult<IssuedCredential> {
        self.get_issuer(issuer_id).await?;
        let key = format!("{issuer_id}/{credential_id}");
        let updated = self
            .state
            .store
            .update_json::<IssuedCredential, ApiError, _>(ks::CREDS, &key, None, |mut c| {
                match (c.status, to) {
                    (CredentialStatus::Revoked, CredentialStatus::Revoked) => {}
                    (CredentialStatus::Revoked, _) => {
                        return Err(ApiError::conflict(
                            "a revoked credential cannot change status",
                        ))
                    }
                    (CredentialStatus::Valid, CredentialStatus::Valid) => {}
                    _ => {}
                }
                c.status = to;
                Ok(c)
            })
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no credential `{credential_id}`")))?;
        let list = status_list_number_from(&updated);
        let token_value: u8 = match to {
            CredentialStatus::Valid => 0,
            CredentialStatus::Revoked => 1,
            CredentialStatus::Suspended => 2,
        };
        let idx = updated.status_index;
        self.update_list(
            issuer_id,
            &format!("token-{list}"),
            TOKEN_STATUS_BITS,
            |a| a.set_lsb(idx, token_value),
        )
        .await?;
        self.update_list(issuer_id, &format!("revocation-{list}"), 1, |a| {
            a.set_msb(idx, to == CredentialStatus::Revoked)
        })
        .await?;
        self.update_list(issuer_id, &format!("suspension-{list}"), 1, |a| {
            a.set_msb(idx, to == CredentialStatus::Suspended)
        })
        .await?;
        tracing::info!(issuer = issuer_id, credential = credential_id, status = ?to, "credential status changed");
        Ok(updated)
    }

    async fn update_list(
        &self,
        issuer_id: &str,
        list: &str,
        bits: u8,
        f: impl Fn(&mut StatusArray) -> Result<(), crate::crypto::CryptoError>,
    ) -> ApiResult<()> {
        let key = format!("{issuer_id}/{list}");
        let store = &self.state.store;
        loop {
            let current = store.get(ks::STATUS, &key).await?;
            let mut arr = match &current {
                Some(raw) => StatusArray {
                    bits,
                    bytes: raw.clone(),
                },
                None => StatusArray::new(bits, STATUS_LIST_SIZE).map_err(ApiError::internal)?,
            };
            f(&mut arr).map_err(ApiError::internal)?;
            if store
                .compare_and_swap(ks::STATUS, &key, current, Some((arr.bytes, None)))
                .await?
                == Cas::Swapped
            {
                return Ok(());
            }
        }
    }

    /// A status list as served: (content type, signed token).
    pub async fn status_list(
        &self,
        issuer_id: &str,
        list: &str,
    ) -> ApiResult<(&'static str, String, String)> {
        let issuer = self.get_issuer(issuer_id).await?;
        let (kind, number) = list
            .rsplit_once('-')
            .ok_or_else(|| ApiError::not_found("no such status list"))?;
        let number: u64 = number
            .parse()
            .map_err(|_| ApiError::not_found("no such status list"))?;
        let allocated = self
            .state
            .store
            .get_json::<u64>(ks::COUNTERS, &format!("{issuer_id}/status"))
            .await?
            .unwrap_or(0);
        if number == 0 || (number - 1) * STATUS_LIST_SIZE >= allocated.max(1) {
            return Err(ApiError::not_found("no such status list"));
        }
        let bits = if kind == "token" {
            TOKEN_STATUS_BITS
        } else {
            1
        };
        let arr = match self
            .state
            .store
            .get(ks::STATUS, &format!("{issuer_id}/{list}"))
            .await?
        {
            Some(bytes) => StatusArray { bits, bytes },
            None => StatusArray::new(bits, STATUS_LIST_SIZE).map_err(ApiError::internal)?,
        };
        let key = self.signing_key(&issuer).await?;
        let uri = format!("{}/status-lists/{list}", self.issuer_url(issuer_id));
        let now = self.now();
        // The ETag names the list content (and key), not the signing time: unchanged → 304.
        let etag = format!(
            "\"{}\"",
            &sha256_hex(
                [
                    list.as_bytes(),
                    &arr.bytes,
                    issuer.key_fingerprint.as_bytes()
                ]
                .concat()
            )[..32]
        );
        match kind {
            "token" => Ok((
                "application/statuslist+jwt",
                formats::token_status_list(&issuer, &key, &uri, bits, arr.to_token_lst(), now, 60),
                etag,
            )),
            "revocation" | "suspension" => Ok((
                "application/vc+jwt",
                formats::bitstring_status_credential(
                    &issuer,
                    &key,
                    &uri,
                    kind,
                    arr.to_encoded_list(),
                    now,
                ),
                etag,
            )),
            _ => Err(ApiError::not_found("no such status list")),
        }
    }
}

/// Checks one proof JWT; returns (holder key, holder DID when named by kid, nonce).
fn verify_proof(
    jwt: &str,
    aud: &str,
    now: i64,
) -> Result<(VerifyingKey, Option<String>, String), String> {
    let (header, _, _, _) = jws::decode_unverified(jwt).map_err(|e| e.to_string())?;
    if header["typ"] != "openid4vci-proof+jwt" {
        return Err("proof typ must be openid4vci-proof+jwt".into());
    }
    let (vk, kid) = jws::header_key(&header).map_err(|e| format!("proof key: {e}"))?;
    let (_, claims) = jws::verify(jwt, &vk).map_err(|e| format!("proof signature: {e}"))?;
    let aud_ok = match &claims["aud"] {
        Value::String(s) => s == aud,
        Value::Array(a) => a.iter().any(|x| x == aud),
        _ => false,
    };
    if !aud_ok {
        return Err(format!("proof aud must be {aud}"));
    }
    let iat = claims["iat"].as_i64().ok_or("proof iat is missing")?;
    if iat < now - PROOF_MAX_AGE || iat > now + PROOF_MAX_SKEW {
        return Err("proof iat is outside the accepted window".into());
    }
    let nonce = claims["nonce"]
        .as_str()
        .ok_or("proof nonce is missing (get a c_nonce from the nonce endpoint)")?;
    let holder_did = kid.map(|k| k.split('#').next().unwrap_or(&k).to_string());
    Ok((vk, holder_did, nonce.to_string()))
}

fn status_list_number(n: u64) -> u64 {
    n / STATUS_LIST_SIZE + 1
}

fn status_list_number_from(c: &IssuedCredential) -> String {
    c.status_list.clone()
}

fn offer_key(issuer: &str, id: &str) -> String {
    format!("{issuer}/{id}")
}

fn random_digits(n: u32) -> String {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

fn validate_url(u: &str) -> ApiResult<()> {
    if (u.starts_with("https://") || u.starts_with("http://")) && u.len() <= 2048 {
        Ok(())
    } else {
        Err(ApiError::validation(
            "URLs must be http(s) and at most 2048 characters",
        ))
    }
}

fn validate_redirect(u: &str) -> ApiResult<()> {
    if u.len() > 2048 || u.contains('#') || !u.contains(':') {
        return Err(ApiError::bad_request(
            "redirect_uri must be an absolute URI without fragment",
        ));
    }
    Ok(())
}

/// The sandbox's default issuer: Ed25519, did:key, an IdentityCredential in each available format.
pub fn default_issuer_request() -> CreateIssuer {
    let claims = |sd: bool| {
        ["given_name", "family_name", "birthdate", "email"]
            .iter()
            .map(|n| ClaimSpec {
                name: (*n).to_string(),
                mandatory: false,
                selectively_disclosable: sd,
                display_name: Some(n.replace('_', " ")),
            })
            .collect::<Vec<_>>()
    };
    let display = vec![Display {
        name: "Identity Credential".into(),
        locale: Some("en-US".into()),
        description: None,
    }];
    let mut configs = BTreeMap::new();
    configs.insert(
        "IdentityCredential_jwt_vc_json".to_string(),
        CredentialConfig {
            format: Format::JwtVcJson,
            credential_type: "IdentityCredential".into(),
            vct: None,
            claims: claims(false),
            display: display.clone(),
            validity_seconds: Some(365 * 86_400),
        },
    );
    configs.insert(
        "IdentityCredential_ldp_vc".to_string(),
        CredentialConfig {
            format: Format::LdpVc,
            credential_type: "IdentityCredential".into(),
            vct: None,
            claims: claims(false),
            display: display.clone(),
            validity_seconds: Some(365 * 86_400),
        },
    );
    configs.insert(
        "IdentityCredential_dc_sd_jwt".to_string(),
        CredentialConfig {
            format: Format::SdJwt,
            credential_type: "IdentityCredential".into(),
            vct: None,
            claims: claims(true),
            display,
            validity_seconds: Some(365 * 86_400),
        },
    );
    CreateIssuer {
        id: "default".into(),
        display_name: Some("idstack sandbox issuer".into()),
        key_type: Some(KeyType::Ed25519),
        did_method: Some(DidMethod::Key),
        credential_configurations: configs,
        webhook_url: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};

    fn offer_req(ttl: Option<u64>) -> CreateOffer {
        CreateOffer {
            credential_configuration_ids: vec!["IdentityCredential_dc_sd_jwt".into()],
            claims: serde_json::from_value(json!({"given_name": "A"})).unwrap(),
            tx_code: None,
            ttl_seconds: ttl,
            credential_validity_seconds: None,
            authorization_code: false,
        }
    }

    fn token_req(code: &str) -> TokenRequest {
        TokenRequest {
            grant_type: Some(PRE_AUTH_GRANT.into()),
            pre_authorized_code: Some(code.into()),
            tx_code: None,
            code: None,
            code_verifier: None,
            redirect_uri: None,
            client_id: None,
            authorization_details: None,
        }
    }

    /// A store that fails the next `fail` writes (put / compare-and-swap / batch) to one keyspace
    /// with 503 "kept conflicting" — after applying them when `applied` (a write that took effect
    /// but was not acknowledged in time).
    struct Faulty {
        inner: Arc<dyn crate::store::Store>,
        keyspace: &'static str,
        applied: bool,
        fail: std::sync::atomic::AtomicU32,
    }

    impl Faulty {
        fn trip(&self, ks: &str) -> bool {
            use std::sync::atomic::Ordering;
            ks == self.keyspace
                && self
                    .fail
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
        }
        fn error(&self) -> crate::store::StoreError {
            crate::store::StoreError::Unavailable(format!(
                "update of {} kept conflicting",
                self.keyspace
            ))
        }
    }

    #[async_trait::async_trait]
    impl crate::store::Store for Faulty {
        async fn get(
            &self,
            ks: &'static str,
            key: &str,
        ) -> crate::store::StoreResult<Option<Vec<u8>>> {
            self.inner.get(ks, key).await
        }
        async fn put(
            &self,
            ks: &'static str,
            key: &str,
            value: Vec<u8>,
            ttl: Option<Duration>,
        ) -> crate::store::StoreResult<()> {
            if self.trip(ks) {
                if self.applied {
                    self.inner.put(ks, key, value, ttl).await?;
                }
                return Err(self.error());
            }
            self.inner.put(ks, key, value, ttl).await
        }
        async fn delete(&self, ks: &'static str, key: &str) -> crate::store::StoreResult<bool> {
            self.inner.delete(ks, key).await
        }
        async fn compare_and_swap(
            &self,
            ks: &'static str,
            key: &str,
            expected: Option<Vec<u8>>,
            new: Option<(Vec<u8>, Option<Duration>)>,
        ) -> crate::store::StoreResult<Cas> {
            if self.trip(ks) {
                if self.applied {
                    self.inner.compare_and_swap(ks, key, expected, new).await?;
                }
                return Err(self.error());
            }
            self.inner.compare_and_swap(ks, key, expected, new).await
        }
        async fn scan_prefix(
            &self,
            ks: &'static str,
            prefix: &str,
            limit: usize,
        ) -> crate::store::StoreResult<Vec<(String, Vec<u8>)>> {
            self.inner.scan_prefix(ks, prefix, limit).await
        }
        async fn batch(&self, ops: Vec<crate::store::BatchOp>) -> crate::store::StoreResult<()> {
            self.inner.batch(ops).await
        }
        async fn sweep_expired(&self) -> crate::store::StoreResult<u64> {
            self.inner.sweep_expired().await
        }
        async fn probe(&self) -> crate::store::StoreResult<()> {
            self.inner.probe().await
        }
        async fn flush(&self) -> crate::store::StoreResult<()> {
            self.inner.flush().await
        }
        async fn stats(&self) -> crate::store::StoreResult<crate::store::StoreStats> {
            self.inner.stats().await
        }
        async fn export_all(&self) -> crate::store::StoreResult<Vec<crate::store::ExportRecord>> {
            self.inner.export_all().await
        }
        async fn import(
            &self,
            records: Vec<crate::store::ExportRecord>,
        ) -> crate::store::StoreResult<u64> {
            self.inner.import(records).await
        }
    }

    /// A redemption whose offer update or token write fails with 503 (the store "kept
    /// conflicting"; a write applied but not acknowledged) leaves the code redeemable: the retry
    /// gets the token, and the code is single-use after that.
    #[tokio::test]
    async fn a_store_failure_during_redemption_leaves_the_code_redeemable() {
        for (keyspace, applied) in [
            (ks::OFFERS, false),
            (ks::OFFERS, true),
            (ks::TOKENS, false),
            (ks::TOKENS, true),
        ] {
            let clock = FakeClock::new(1_800_000_000_000);
            let mut state = AppState::for_tests(clock.clone());
            let faulty = Arc::new(Faulty {
                inner: state.store.clone(),
                keyspace,
                applied,
                fail: std::sync::atomic::AtomicU32::new(0),
            });
            state.store = faulty.clone();
            let svc = IssuerService::new(state);
            svc.init().await.unwrap();
            let o = svc
                .create_offer("default", offer_req(Some(600)))
                .await
                .unwrap();
            let code = o.credential_offer["grants"][PRE_AUTH_GRANT]["pre-authorized_code"]
                .as_str()
                .unwrap()
                .to_string();
            faulty.fail.store(1, std::sync::atomic::Ordering::SeqCst);
            let e = svc.token("default", token_req(&code)).await.unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.error),
                (503, "temporarily_unavailable"),
                "{keyspace} applied={applied}"
            );
            assert_eq!(
                svc.offer_view("default", &o.id).await.unwrap().state,
                OfferState::Offered,
                "{keyspace} applied={applied}"
            );
            let t = svc
                .token("default", token_req(&code))
                .await
                .unwrap_or_else(|e| panic!("{keyspace} applied={applied}: {e:?}"));
            assert!(!t.access_token.is_empty());
            let again = svc.token("default", token_req(&code)).await.unwrap_err();
            assert_eq!(again.error, "invalid_grant");
        }
    }

    #[tokio::test]
    async fn expired_offers_and_nonces_are_refused() {
        let clock = FakeClock::new(1_800_000_000_000);
        let svc = IssuerService::new(AppState::for_tests(clock.clone()));
        svc.init().await.unwrap();
        let o = svc
            .create_offer("default", offer_req(Some(60)))
            .await
            .unwrap();
        let code = o.credential_offer["grants"][PRE_AUTH_GRANT]["pre-authorized_code"]
            .as_str()
            .unwrap()
            .to_string();
        clock.advance_ms(61_000);
        let e = svc.token("default", token_req(&code)).await.unwrap_err();
        assert_eq!(e.error, "invalid_grant");
        assert_eq!(
            svc.offer_view("default", &o.id).await.unwrap().state,
            OfferState::Expired
        );
        let e = svc.offer_by_reference("default", &o.id).await.unwrap_err();
        assert_eq!(e.code, Code::Gone);

        // a nonce older than its TTL is gone
        let o = svc.create_offer("default", offer_req(None)).await.unwrap();
        let code = o.credential_offer["grants"][PRE_AUTH_GRANT]["pre-authorized_code"]
            .as_str()
            .unwrap()
            .to_string();
        let t = svc.token("default", token_req(&code)).await.unwrap();
        let n = svc.nonce("default").await.unwrap();
        clock.advance_ms((NONCE_TTL as i64 + 1) * 1000);
        let holder = SigningKey::generate(KeyType::Ed25519);
        let aud = svc.issuer_url("default");
        let proof = jws::sign(
            &holder,
            json!({"typ": "openid4vci-proof+jwt", "jwk": holder.verifying_key().to_jwk()}),
            &json!({"aud": aud, "iat": clock.now_secs(), "nonce": n}),
        );
        let req = CredentialRequest {
            credential_configuration_id: Some("IdentityCredential_dc_sd_jwt".into()),
            credential_identifier: None,
            proofs: Some(Proofs { jwt: vec![proof] }),
            proof: None,
            format: None,
            vct: None,
        };
        let e = svc
            .credential("default", Some(&t.access_token), req)
            .await
            .unwrap_err();
        assert_eq!(e.error, "invalid_nonce");
    }

    #[tokio::test]
    async fn nodes_creating_the_same_issuer_at_once_agree_on_its_key() {
        // the default issuer when stateless nodes start together on one empty Redis
        let state = AppState::for_tests(FakeClock::new(1_800_000_000_000));
        let nodes: Vec<_> = (0..4).map(|_| IssuerService::new(state.clone())).collect();
        let results = futures_util::future::join_all(nodes.iter().map(|n| n.init())).await;
        for r in results {
            r.unwrap();
        }
        let issuer = nodes[0].get_issuer("default").await.unwrap();
        for n in &nodes {
            n.keys
                .get("default", &issuer.key_fingerprint)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn status_indices_stay_unique_across_processes_sharing_a_store() {
        // two services on one store stand for two cluster nodes (or two restarts)
        let state = AppState::for_tests(FakeClock::new(1_800_000_000_000));
        let a = std::sync::Arc::new(IssuerService::new(state.clone()));
        a.init().await.unwrap();
        let b = std::sync::Arc::new(IssuerService::new(state.clone()));
        let issuer = a.get_issuer("default").await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..300 {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            let issuer = issuer.clone();
            tasks.push(tokio::spawn(async move {
                svc.allocate_status(&issuer).await.unwrap().index
            }));
        }
        let mut seen = std::collections::HashSet::new();
        for t in tasks {
            assert!(
                seen.insert(t.await.unwrap()),
                "an index was handed out twice"
            );
        }
        // a restarted process continues after every block reserved before it
        let c = IssuerService::new(state);
        let next = c.allocate_status(&issuer).await.unwrap().index;
        assert!(
            seen.iter().all(|i| *i < next),
            "{next} reuses a reserved block"
        );
    }

    #[tokio::test]
    async fn a_changed_signing_key_is_refused() {
        let clock = FakeClock::new(1_800_000_000_000);
        let state = AppState::for_tests(clock);
        let svc = IssuerService::new(state.clone());
        svc.init().await.unwrap();
        // someone swaps the sealed key behind the issuer's back
        let other = SigningKey::generate(KeyType::Ed25519);
        let sealed = state
            .sealer
            .seal(
                format!("{}/default", ks::KEYS).as_bytes(),
                other.to_private_jwk().as_bytes(),
            )
            .unwrap();
        state
            .store
            .put(ks::KEYS, "default", sealed, None)
            .await
            .unwrap();
        let fresh = IssuerService::new(state);
        let e = fresh.init().await.unwrap_err().to_string();
        assert!(e.contains("not the one recorded"), "{e}");
    }
}
