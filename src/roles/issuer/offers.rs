//! Credential offers: creation (pre-authorized code, tx_code, issuer_state), views, the offer by
//! reference, and the webhook on every state change.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::error::*;
use super::ks;
use super::model::*;
use super::service::*;
use crate::clock::{random_id, random_token};
use crate::crypto::CryptoError;
use crate::http::urlencode;

/// The longest validity an offer or configuration may give a credential (100 years): beyond
/// it, `exp` would overflow.
pub const MAX_VALIDITY_SECS: u64 = 100 * 365 * 86_400;

impl IssuerService {
    pub async fn create_offer(
        &self,
        issuer_id: &str,
        req: CreateOffer,
    ) -> Result<OfferCreated, IssuerError> {
        let issuer = self.get_issuer(issuer_id).await?;
        check_claims(&issuer, &req)?;
        self.check_mdoc_offer(&issuer, &req).await?;
        self.check_ldp_offer(&issuer, &req).await?;
        if req.tx_code.is_some() && req.authorization_code {
            // The authorization code flow here has no login: its issuer_state alone would
            // redeem the offer, without the transaction code meant to protect it.
            return Err(invalid(
                "tx_code protects the pre-authorized code grant; an offer with one cannot also offer the authorization code grant (its issuer_state would redeem it without the code)",
            ));
        }
        if req
            .credential_validity_seconds
            .is_some_and(|v| v == 0 || v > MAX_VALIDITY_SECS)
        {
            return Err(invalid(format!(
                "credential_validity_seconds must be 1..={MAX_VALIDITY_SECS}"
            )));
        }
        if req.authorization_code && !self.redirect_uris().any_allowed() {
            return Err(invalid(
                "the authorization code grant is off: issuer.redirect_uris lists no redirect URI",
            ));
        }
        let cfg = &self.cfg;
        let ttl = req.ttl_seconds.unwrap_or(cfg.default_offer_ttl_seconds);
        if ttl == 0 || ttl > cfg.max_offer_ttl_seconds {
            return Err(invalid(format!(
                "ttl_seconds must be 1..={}",
                cfg.max_offer_ttl_seconds
            )));
        }
        let now = self.now();
        let id = random_id();
        let place = offer_key(issuer_id, &id);
        let (tx_code, stored_tx) = match &req.tx_code {
            None => (None, None),
            Some(spec) => {
                let (code, stored) = new_tx_code(&self.ctx.sealer, &place, spec)?;
                (Some(code), Some(stored))
            }
        };
        let code = random_token(32);
        let reference = random_token(24);
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
            claims: serde_json::Map::new(),
            sealed_claims: Some(seal_claims(&self.ctx.sealer, &place, &req.claims)?),
            pre_auth_code_hash: hash(&code),
            tx_code: stored_tx,
            tx_code_failures: 0,
            state: OfferState::Offered,
            created_at: now,
            expires_at: now + ttl as i64,
            credential_validity_seconds: req.credential_validity_seconds,
            issued: Vec::new(),
            issued_configs: Vec::new(),
            resent: Vec::new(),
            credential_offer: None,
            sealed_offer: Some(seal_offer(&self.ctx.sealer, &place, &credential_offer)?),
            reference_hash: Some(hash(&reference)),
            token_hash: None,
        };
        let ops = offer_records(&offer, issuer_state.as_deref(), ttl)?;
        self.ctx.store.batch(ops).await?;
        let by_ref = format!("{}/offers/{id}.{reference}", self.issuer_url(issuer_id));
        // Not the id: the admin API shows it, and with the secret half of the reference it
        // fetches the offer, pre-authorized code included. A digest still matches the admin's.
        tracing::info!(issuer = issuer_id, offer_sha256 = %&crate::crypto::sha256_hex(&id)[..16], "offer created");
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

    pub(super) async fn load_offer(&self, issuer_id: &str, id: &str) -> Result<Offer, IssuerError> {
        self.ctx
            .store
            .get_json::<Offer>(ks::OFFERS, &offer_key(issuer_id, id))
            .await?
            .ok_or_else(|| IssuerError::NoOffer(id.to_string()))
    }

    pub async fn offer_view(&self, issuer_id: &str, id: &str) -> Result<OfferView, IssuerError> {
        self.get_issuer(issuer_id).await?;
        Ok(self
            .load_offer(issuer_id, id)
            .await?
            .view(self.ctx.clock.now_ms()))
    }

    pub async fn list_offers(&self, issuer_id: &str) -> Result<Vec<OfferView>, IssuerError> {
        self.get_issuer(issuer_id).await?;
        let now = self.ctx.clock.now_ms();
        Ok(self
            .ctx
            .store
            .scan_json::<Offer>(ks::OFFERS, &format!("{issuer_id}/"), 1000)
            .await?
            .into_iter()
            .map(|(_, o)| o.view(now))
            .collect())
    }

    /// The offer by reference (`credential_offer_uri`, `<id>.<secret>`): only while it can still
    /// be redeemed. The id alone, which the store holds in clear, does not fetch an offer made
    /// with a secret (attacker review: a reader of the store — export, backup, a read-only Redis
    /// user — fetched a live offer's pre-authorized code by its record key and redeemed it).
    pub async fn offer_by_reference(
        &self,
        issuer_id: &str,
        reference: &str,
    ) -> Result<Value, IssuerError> {
        let (id, secret) = match reference.split_once('.') {
            Some((id, secret)) => (id, Some(secret)),
            None => (reference, None),
        };
        // the answer (which may be logged) does not repeat the reference
        let unknown = || IssuerError::NoOffer("named by this reference".into());
        let offer = match self.load_offer(issuer_id, id).await {
            Err(IssuerError::NoOffer(_)) => return Err(unknown()),
            other => other?,
        };
        let known = match (&offer.reference_hash, secret) {
            (Some(want), Some(secret)) => {
                use subtle::ConstantTimeEq as _;
                bool::from(hash(secret).as_bytes().ct_eq(want.as_bytes()))
            }
            (Some(_), None) => false,
            (None, _) => true,
        };
        if !known {
            return Err(unknown());
        }
        if offer.state != OfferState::Offered || offer.expires_at <= self.now() {
            return Err(IssuerError::OfferGone);
        }
        self.credential_offer(&offer)
    }

    /// The offer's credential offer object: opened from its sealed form, or as a record written
    /// before sealing holds it. A record that cannot be opened (another master key, tampering)
    /// is the server's fault, not the holder's.
    fn credential_offer(&self, offer: &Offer) -> Result<Value, IssuerError> {
        let Some(sealed) = &offer.sealed_offer else {
            return offer
                .credential_offer
                .clone()
                .ok_or_else(|| internal("the offer record holds no credential offer"));
        };
        self.open_sealed(&offer_aad(&offer_key(&offer.issuer, &offer.id)), sealed)
    }

    /// A JSON value sealed (base64url) to `aad`; one that does not open is the server's fault.
    fn open_sealed<T: serde::de::DeserializeOwned>(
        &self,
        aad: &str,
        sealed: &str,
    ) -> Result<T, IssuerError> {
        let raw = crate::crypto::b64url_decode(sealed).map_err(internal)?;
        let plain = self
            .ctx
            .sealer
            .open(aad.as_bytes(), &raw)
            .map_err(internal)?;
        serde_json::from_slice(&plain).map_err(internal)
    }

    /// The offer's claims: opened from their sealed form, or as a record written before sealing
    /// holds them. A record that cannot be opened is the server's fault.
    pub(super) fn offer_claims_of(
        &self,
        offer: &Offer,
    ) -> Result<serde_json::Map<String, Value>, IssuerError> {
        let Some(sealed) = &offer.sealed_claims else {
            return Ok(offer.claims.clone());
        };
        self.open_sealed(&claims_aad(&offer_key(&offer.issuer, &offer.id)), sealed)
    }

    pub(super) fn offer_changed(&self, issuer_id: &str, offer: &Offer) {
        let ctx = self.ctx.clone();
        let issuer_id = issuer_id.to_string();
        let now = self.now();
        let event = json!({"type": "offer.state", "issuer": issuer_id, "offer_id": offer.id, "state": offer.state, "issued_credentials": offer.issued});
        tokio::spawn(async move {
            let Ok(Some(mut issuer)) = ctx.store.get_json::<Issuer>(ks::TENANTS, &issuer_id).await
            else {
                return;
            };
            crate::roles::tenants::Tenant::open(&mut issuer, &ctx.sealer);
            let Some(url) = issuer.webhook_url.clone() else {
                return;
            };
            let sender = webhook_sender(&issuer);
            crate::http::webhook::deliver(&ctx.http, &ctx.sealer, sender, &url, &event, now).await;
        });
    }

    /// An offer of ldp_vc configurations is one whose credentials can be signed: each is tried
    /// now with the offer's claims (type and claim names the JSON-LD contexts do not map, values
    /// such as an object with `type: 1`), so the admin hears of it, not each wallet at the
    /// credential endpoint.
    async fn check_ldp_offer(&self, issuer: &Issuer, req: &CreateOffer) -> Result<(), IssuerError> {
        let now = self.now();
        for id in &req.credential_configuration_ids {
            let Some(c) = issuer
                .credential_configurations
                .get(id)
                .filter(|c| c.format == Format::LdpVc)
            else {
                continue;
            };
            let claims = super::credential::config_claims(&req.claims, c);
            let credential_type = c.credential_type.clone();
            super::formats::ldp_vc_signable(credential_type, claims, now)
                .await
                .map_err(|e| {
                    let detail = format!(
                        "credential configuration `{id}`: an ldp_vc with these claims cannot be signed: {e}"
                    );
                    match e {
                        CryptoError::Busy(_) => IssuerError::Busy(detail),
                        CryptoError::TooComplex(_) | CryptoError::OutOfTime(_) => {
                                IssuerError::TooComplex(detail)
                            }
                        _ => invalid(detail),
                    }
                })?;
        }
        Ok(())
    }

    /// An offer of mso_mdoc configurations needs a document signer (imported, in production
    /// mode) whose country is the offer's `issuing_country`: said now, to the admin, rather than
    /// to the holder at the credential endpoint.
    pub(super) async fn check_mdoc_offer(
        &self,
        issuer: &Issuer,
        req: &CreateOffer,
    ) -> Result<(), IssuerError> {
        let mdoc = req.credential_configuration_ids.iter().any(|id| {
            issuer
                .credential_configurations
                .get(id)
                .is_some_and(|c| c.format == Format::MsoMdoc)
        });
        if !mdoc {
            return Ok(());
        }
        let signer = match self.mdoc_document_signer(&issuer.id).await {
            Err(IssuerError::NoMdocIaca) => {
                return Err(IssuerError::Invalid(crate::roles::mdoc_pki::no_signer(
                    &issuer.id,
                )))
            }
            other => other?,
        };
        let now = self.now();
        if signer
            .validity()
            .is_none_or(|(from, until)| now < from || now >= until)
        {
            return Err(IssuerError::Invalid(super::mdoc::ds_expired()));
        }
        let country = signer.country();
        match req.claims.get("issuing_country") {
            Some(c) if c.as_str() != country.as_deref() => Err(IssuerError::Invalid(
                super::mdoc::wrong_country(country.as_deref()),
            )),
            _ => Ok(()),
        }
    }
}

/// [`crate::store::Store::update_json_with_ttl`] of the offer record at `key`, which keeps its
/// lifetime ([`Offer::record_ttl`] at `now`, unix seconds).
pub(super) async fn update_offer<F>(
    store: &dyn crate::store::Store,
    key: &str,
    now: i64,
    current: Option<Vec<u8>>,
    f: F,
) -> Result<Option<Offer>, IssuerError>
where
    F: FnMut(Offer) -> Result<Offer, IssuerError>,
{
    store
        .update_json_with_ttl(
            ks::OFFERS,
            key,
            |o: &Offer| Some(o.record_ttl(now)),
            current,
            f,
        )
        .await
}

pub(super) fn offer_key(issuer: &str, id: &str) -> String {
    format!("{issuer}/{id}")
}

/// What the sealed credential offer is bound to: its record's place, so a sealed offer copied
/// into another record does not open there.
fn offer_aad(offer_key: &str) -> String {
    format!("{}/{offer_key}/credential_offer", ks::OFFERS)
}

/// What an offer's sealed claims are bound to: its record's place and the field.
fn claims_aad(offer_key: &str) -> String {
    format!("{}/{offer_key}/claims", ks::OFFERS)
}

fn seal_claims(
    sealer: &crate::store::Sealer,
    offer_key: &str,
    claims: &serde_json::Map<String, Value>,
) -> Result<String, IssuerError> {
    let plain = serde_json::to_vec(claims).map_err(internal)?;
    let sealed = sealer
        .seal(claims_aad(offer_key).as_bytes(), &plain)
        .map_err(internal)?;
    Ok(crate::crypto::b64url(sealed))
}

fn seal_offer(
    sealer: &crate::store::Sealer,
    offer_key: &str,
    credential_offer: &Value,
) -> Result<String, IssuerError> {
    let sealed = sealer
        .seal(
            offer_aad(offer_key).as_bytes(),
            credential_offer.to_string().as_bytes(),
        )
        .map_err(internal)?;
    Ok(crate::crypto::b64url(sealed))
}

/// The HMAC of a transaction code: keyed by a subkey of the master key, so a copy of the store
/// cannot test guesses offline (a bare hash of 4–12 digits falls in under a second), and over
/// the offer's place as well as the code, so equal codes of two offers do not show as equal.
fn tx_code_mac(sealer: &crate::store::Sealer, offer_key: &str, code: &str) -> Hmac<Sha256> {
    sealer
        .mac_key(TX_CODE_KEY_LABEL)
        .over(&[offer_key.as_bytes(), code.as_bytes()])
}

const TX_CODE_KEY_LABEL: &[u8] = b"idstack issuer tx_code v1";

/// Whether `given` is the offer's transaction code, in constant time: against its MAC, or the
/// bare SHA-256 of a record written before the MAC (read until such offers expire). A record
/// with neither matches nothing.
pub(super) fn tx_code_matches(
    sealer: &crate::store::Sealer,
    offer_key: &str,
    stored: &StoredTxCode,
    given: &str,
) -> bool {
    #[cfg(test)]
    TX_CODES_COMPARED.with(|n| n.set(n.get() + 1));
    if let Some(expected) = &stored.mac {
        let Ok(expected) = crate::crypto::b64url_decode(expected) else {
            return false;
        };
        return tx_code_mac(sealer, offer_key, given)
            .verify_slice(&expected)
            .is_ok();
    }
    stored.hash.as_deref().is_some_and(|h| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            hash(given).as_bytes(),
            h.as_bytes(),
        ))
    })
}

#[cfg(test)]
thread_local! {
    /// Transaction codes compared on this thread (a test's runtime runs its tasks on its own).
    pub(super) static TX_CODES_COMPARED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn random_digits(n: u32) -> String {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// The offered configurations exist, and the claims cover their mandatory claims and nothing else.
fn check_claims(issuer: &Issuer, req: &CreateOffer) -> Result<(), IssuerError> {
    let issuer_id = &issuer.id;
    if req.credential_configuration_ids.is_empty() {
        return Err(invalid("credential_configuration_ids is empty"));
    }
    let mut known_claims = Vec::new();
    for id in &req.credential_configuration_ids {
        let c = issuer.credential_configurations.get(id).ok_or_else(|| {
            IssuerError::Invalid(format!(
                "issuer `{issuer_id}` has no credential configuration `{id}`"
            ))
        })?;
        for cl in &c.claims {
            if cl.mandatory && !req.claims.contains_key(&cl.name) {
                return Err(invalid(format!(
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
        return Err(invalid(format!(
            "claim `{unknown}` is not part of the offered configurations"
        )));
    }
    Ok(())
}

/// A transaction code for the holder (sent out of band) and what the offer keeps of it.
fn new_tx_code(
    sealer: &crate::store::Sealer,
    offer_key: &str,
    spec: &TxCodeSpec,
) -> Result<(String, StoredTxCode), IssuerError> {
    if !(4..=12).contains(&spec.length) {
        return Err(invalid("tx_code.length must be 4..=12"));
    }
    let code = match spec.input_mode.as_str() {
        "numeric" => random_digits(spec.length),
        "text" => random_token(16)
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(spec.length as usize)
            .collect(),
        other => {
            return Err(invalid(format!(
                "tx_code.input_mode `{other}`: numeric or text"
            )))
        }
    };
    let stored = StoredTxCode {
        hash: None,
        mac: Some(crate::crypto::b64url(
            tx_code_mac(sealer, offer_key, &code)
                .finalize()
                .into_bytes(),
        )),
        input_mode: spec.input_mode.clone(),
        length: spec.length,
        description: spec.description.clone(),
    };
    Ok((code, stored))
}

/// The offer record and the codes that lead to it (pre-authorized code, issuer_state), written
/// in one batch.
fn offer_records(
    offer: &Offer,
    issuer_state: Option<&str>,
    ttl: u64,
) -> Result<Vec<crate::store::BatchOp>, IssuerError> {
    let (issuer_id, id) = (offer.issuer.as_str(), offer.id.as_str());
    let record_ttl = secs(ttl + OFFER_RECORD_GRACE_SECS as u64);
    let mut ops = vec![
        crate::store::BatchOp::Put {
            keyspace: ks::OFFERS,
            key: offer_key(issuer_id, id),
            value: crate::store::to_json(offer)?,
            ttl: Some(record_ttl),
        },
        crate::store::BatchOp::Put {
            keyspace: ks::CODES,
            key: format!("pre/{}", offer.pre_auth_code_hash),
            value: offer_key(issuer_id, id).into_bytes(),
            ttl: Some(secs(ttl)),
        },
    ];
    if let Some(s) = issuer_state {
        ops.push(crate::store::BatchOp::Put {
            keyspace: ks::CODES,
            key: format!("state/{}", hash(s)),
            value: offer_key(issuer_id, id).into_bytes(),
            ttl: Some(secs(ttl)),
        });
    }
    Ok(ops)
}

/// Who signs `issuer`'s webhooks ([`crate::http::webhook::Sender`]).
fn webhook_sender(issuer: &Issuer) -> crate::http::webhook::Sender<'_> {
    crate::http::webhook::Sender {
        role: "issuer",
        tenant: &issuer.id,
        created_at: issuer.created_at,
    }
}

impl IssuerService {
    /// The key of `issuer`'s own webhook signature.
    pub fn webhook_secret(&self, issuer: &Issuer) -> crate::http::webhook::WebhookSecret {
        crate::http::webhook::WebhookSecret::tenant(&self.ctx.sealer, webhook_sender(issuer))
    }
}
