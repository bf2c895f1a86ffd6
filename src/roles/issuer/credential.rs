//! The nonce and credential endpoints: proofs of possession, single-use c_nonces, issuance of one
//! credential per proof.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{internal, IssuerError};
use super::formats::{self, IssueInput, StatusRef};
use super::ks;
use super::model::*;
use super::service::*;
use super::status::status_list_number;
use crate::clock::{random_id, random_token};
use crate::crypto::{jws, sha256_hex, SigningKey, VerifyingKey};
use crate::error::{unless_unavailable, OAuthCode::*};
use crate::store::Cas;

pub(super) const NONCE_TTL: u64 = 300;
const PROOF_MAX_AGE: i64 = 300;
const PROOF_MAX_SKEW: i64 = 60;

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

/// What every credential of one request shares.
struct Batch<'a> {
    issuer: &'a Issuer,
    key: &'a Arc<SigningKey>,
    config_id: &'a str,
    config: &'a CredentialConfig,
    claims: &'a Map<String, Value>,
    offer_id: &'a str,
    now: i64,
    expires_at: Option<i64>,
}

impl IssuerService {
    pub async fn nonce(&self, issuer_id: &str) -> Result<String, IssuerError> {
        self.get_issuer(issuer_id).await.map_err(|e| {
            unless_unavailable(e, || InvalidRequest.because("unknown issuer").into())
        })?;
        let n = random_token(24);
        self.ctx
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
    ) -> Result<Value, IssuerError> {
        let store = &self.ctx.store;
        let (token_key, grant) = self.access_grant(issuer_id, access_token).await?;
        let offer: Offer = store
            .get_json(ks::OFFERS, &grant.offer_id)
            .await?
            .ok_or_else(|| InvalidToken.because("the offer behind this token has expired"))?;
        // a token is usable once its offer's redemption names it (grant_access); offers redeemed
        // before tokens were named carry no hash and are still `TokenIssued` or later
        let named = match &offer.token_hash {
            Some(h) => *h == token_key,
            None => offer.state != OfferState::Offered,
        };
        if !named {
            return Err(InvalidToken
                .because("the access token is unknown, expired or used up")
                .into());
        }
        let issuer = self
            .get_issuer(issuer_id)
            .await
            .map_err(|e| unless_unavailable(e, || InvalidToken.because("unknown issuer").into()))?;
        let (config_id, config) = self.covered_config(&issuer, &grant, &req)?;
        let jwts = proof_jwts(&req)?;
        let now = self.now();
        let holders = self.check_proofs(issuer_id, &jwts, now).await?;
        self.consume_grant(&token_key, &config_id).await?;
        let key = self.signing_key(&issuer).await.map_err(internal)?;
        let validity = offer
            .credential_validity_seconds
            .or(config.validity_seconds);
        let claims: Map<String, Value> = offer
            .claims
            .iter()
            .filter(|(k, _)| config.claims.iter().any(|c| &c.name == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let batch = Batch {
            issuer: &issuer,
            key: &key,
            config_id: &config_id,
            config: &config,
            claims: &claims,
            offer_id: &offer.id,
            now,
            expires_at: validity.map(|v| now + v as i64),
        };
        let mut credentials = Vec::new();
        let mut issued_ids = Vec::new();
        for (holder, holder_did) in &holders {
            let (credential, credential_id) = self.issue_one(&batch, holder, holder_did).await?;
            credentials.push(json!({"credential": credential}));
            issued_ids.push(credential_id);
        }
        let updated = store
            .update_json::<Offer, IssuerError, _>(ks::OFFERS, &grant.offer_id, None, |mut o| {
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

    /// The configuration a request asks for, which its access token must cover.
    fn covered_config(
        &self,
        issuer: &Issuer,
        grant: &AccessGrant,
        req: &CredentialRequest,
    ) -> Result<(String, CredentialConfig), IssuerError> {
        let config_id = self.requested_config(issuer, grant, req)?;
        let config = issuer
            .credential_configurations
            .get(&config_id)
            .ok_or_else(|| {
                UnknownCredentialConfiguration
                    .because(format!("unknown credential configuration `{config_id}`"))
            })?
            .clone();
        if !grant.credential_configuration_ids.contains(&config_id) {
            let refusal = if req.credential_identifier.is_some() {
                UnknownCredentialIdentifier
            } else {
                UnknownCredentialConfiguration
            };
            return Err(refusal
                .because(format!("`{config_id}` is not covered by this access token"))
                .into());
        }
        Ok((config_id, config))
    }

    /// The grant behind a bearer access token of this issuer, and the token's store key.
    async fn access_grant(
        &self,
        issuer_id: &str,
        access_token: Option<&str>,
    ) -> Result<(String, AccessGrant), IssuerError> {
        let store = &self.ctx.store;
        let token =
            access_token.ok_or_else(|| InvalidToken.because("an access token is required"))?;
        let token_key = hash(token);
        let grant: AccessGrant =
            store
                .get_json(ks::TOKENS, &token_key)
                .await?
                .ok_or_else(|| {
                    InvalidToken.because("the access token is unknown, expired or used up")
                })?;
        if grant.issuer != issuer_id {
            return Err(InvalidToken
                .because("the access token belongs to another issuer")
                .into());
        }
        Ok((token_key, grant))
    }

    /// The access token covers each configuration once: remove this one (CAS), drop the token
    /// when empty.
    async fn consume_grant(&self, token_key: &str, config_id: &str) -> Result<(), IssuerError> {
        let store = &self.ctx.store;
        let consumed = store
            .update_json::<AccessGrant, IssuerError, _>(
                ks::TOKENS,
                token_key,
                Some(secs(ACCESS_TOKEN_TTL)),
                |mut g| {
                    if !g
                        .credential_configuration_ids
                        .iter()
                        .any(|c| c == config_id)
                    {
                        return Err(InvalidToken
                            .because("this access token was already used for this credential")
                            .into());
                    }
                    g.credential_configuration_ids.retain(|c| c != config_id);
                    Ok(g)
                },
            )
            .await?
            .ok_or_else(|| {
                InvalidToken.because("the access token is unknown, expired or used up")
            })?;
        if consumed.credential_configuration_ids.is_empty() {
            store.delete(ks::TOKENS, token_key).await?;
        }
        Ok(())
    }

    /// One credential of a request, for one proven holder key; recorded for status management.
    /// Returns the credential and its id.
    async fn issue_one(
        &self,
        b: &Batch<'_>,
        holder: &VerifyingKey,
        holder_did: &Option<String>,
    ) -> Result<(Value, String), IssuerError> {
        let credential_id = random_id();
        let status = self.allocate_status(b.issuer).await?;
        let input = IssueInput {
            issuer: b.issuer,
            key: b.key,
            config: b.config,
            vct: self.vct(b.issuer, b.config),
            claims: b.claims,
            holder,
            holder_did: holder_did.clone(),
            credential_id: &credential_id,
            now: b.now,
            expires_at: b.expires_at,
            status: &status,
        };
        let credential = match b.config.format {
            Format::MsoMdoc => self.issue_mdoc(b, holder, &status).await?,
            Format::LdpVc => issue_ldp(b, holder, holder_did, &credential_id, &status).await?,
            _ => formats::issue(&input).map_err(|e| UnsupportedCredentialFormat.because(e))?,
        };
        let record = IssuedCredential {
            id: credential_id.clone(),
            issuer: b.issuer.id.clone(),
            credential_configuration_id: b.config_id.to_string(),
            format: b.config.format,
            offer_id: b.offer_id.to_string(),
            subject_hash: sha256_hex(holder.thumbprint()),
            status_list: status_list_number(status.index).to_string(),
            status_index: status.index,
            status: CredentialStatus::Valid,
            issued_at: b.now,
            expires_at: input.expires_at,
        };
        self.ctx
            .store
            .put_json(
                ks::CREDS,
                &format!("{}/{}", b.issuer.id, credential_id),
                &record,
                None,
            )
            .await?;
        Ok((credential, credential_id))
    }

    /// An mso_mdoc for the holder's device key (P-256: ISO 18013-5 device keys are EC2).
    async fn issue_mdoc(
        &self,
        b: &Batch<'_>,
        holder: &VerifyingKey,
        status: &StatusRef,
    ) -> Result<Value, IssuerError> {
        let (doctype, namespace) = b
            .config
            .mdoc_names()
            .ok_or_else(|| internal("mso_mdoc configuration without a doctype"))?;
        if !matches!(holder, VerifyingKey::P256(_)) {
            return Err(InvalidProof
                .because("an mdoc's device key must be P-256: sign the proof with ES256")
                .into());
        }
        let cred = super::mdoc::issue(
            &self.ctx,
            &super::mdoc::MdocIssue {
                issuer_id: &b.issuer.id,
                doctype,
                namespace: &namespace,
                claims: b.claims,
                holder,
                now: b.now,
                expires_at: b.expires_at,
                status: Some((status.index, status.token_list.clone())),
            },
        )
        .await
        .map_err(|e| InvalidCredentialRequest.because(e))?;
        Ok(Value::String(cred))
    }

    /// The configuration a request names (by id or identifier; draft requests by format).
    fn requested_config(
        &self,
        issuer: &Issuer,
        grant: &AccessGrant,
        req: &CredentialRequest,
    ) -> Result<String, IssuerError> {
        Ok(
            match (&req.credential_configuration_id, &req.credential_identifier) {
                (Some(c), None) => c.clone(),
                (None, Some(i)) => i.clone(),
                (Some(_), Some(_)) => {
                    return Err(InvalidCredentialRequest
                        .because(
                            "send credential_configuration_id or credential_identifier, not both",
                        )
                        .into())
                }
                (None, None) => self.legacy_config_id(issuer, grant, req).ok_or_else(|| {
                    InvalidCredentialRequest.because("credential_configuration_id is missing")
                })?,
            },
        )
    }

    /// Verifies each proof and consumes the c_nonces they carry; returns each proof's holder key
    /// (and DID when its header named one).
    async fn check_proofs(
        &self,
        issuer_id: &str,
        jwts: &[String],
        now: i64,
    ) -> Result<Vec<(VerifyingKey, Option<String>)>, IssuerError> {
        let store = &self.ctx.store;
        let aud = self.issuer_url(issuer_id);
        let mut holders = Vec::new();
        let mut nonces = Vec::new();
        for jwt in jwts {
            let (vk, holder_did, nonce) =
                verify_proof(jwt, &aud, now).map_err(|e| InvalidProof.because(e))?;
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
                return Err(InvalidNonce.because("c_nonce is unknown, expired or already used; get a fresh one from the nonce endpoint").into());
            }
        }
        Ok(holders)
    }

    /// Draft-13 requests name a format instead of a configuration: pick the matching covered one.
    pub(super) fn legacy_config_id(
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
}

/// An ldp_vc (Data Integrity): canonicalization is CPU-heavy, so it runs on the blocking pool.
async fn issue_ldp(
    b: &Batch<'_>,
    holder: &VerifyingKey,
    holder_did: &Option<String>,
    credential_id: &str,
    status: &StatusRef,
) -> Result<Value, IssuerError> {
    let args = (
        b.issuer.clone(),
        b.key.clone(),
        b.config.credential_type.clone(),
        b.claims.clone(),
        formats::holder_did_of(holder, holder_did),
        credential_id.to_string(),
        b.expires_at,
        status.clone(),
    );
    let now = b.now;
    tokio::task::spawn_blocking(move || {
        formats::ldp_vc(
            args.0, args.1, args.2, args.3, args.4, args.5, now, args.6, args.7,
        )
    })
    .await
    .map_err(internal)?
    .map_err(internal)
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

/// The proof JWTs of a request (`proofs.jwt`, or the draft `proof`): one to [`MAX_BATCH`].
fn proof_jwts(req: &CredentialRequest) -> Result<Vec<String>, IssuerError> {
    let jwts: Vec<String> = match (&req.proofs, &req.proof) {
        (Some(p), None) => p.jwt.clone(),
        (None, Some(p)) if p.proof_type == "jwt" => p.jwt.clone().into_iter().collect(),
        (None, Some(p)) => {
            return Err(InvalidProof
                .because(format!("proof_type `{}` is not supported", p.proof_type))
                .into())
        }
        (Some(_), Some(_)) => {
            return Err(InvalidCredentialRequest
                .because("send proofs or proof, not both")
                .into())
        }
        (None, None) => Vec::new(),
    };
    if jwts.is_empty() {
        return Err(InvalidProof
            .because("a jwt proof of possession is required")
            .into());
    }
    if jwts.len() > MAX_BATCH {
        return Err(InvalidProof
            .because(format!("at most {MAX_BATCH} proofs per request"))
            .into());
    }
    Ok(jwts)
}
