//! The nonce and credential endpoints: proofs of possession, single-use c_nonces, issuance of one
//! credential per proof.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::error::{internal, IssuerError};
use super::formats::{self, IssueInput, StatusRef};
use super::ks;
use super::model::*;
use super::offers::update_offer;
use super::outcome::Watched;
use super::proofs::proof_jwts;
use super::service::*;
use crate::clock::random_id;
use crate::crypto::{sha256_hex, CryptoError, SigningKey, VerifyingKey};
use crate::error::{unless_unavailable, ErrorCode, OAuthCode::*};
use crate::store::Cas;

/// A credential request that passed its checks: token, offer, configuration and proofs.
struct Request<'a> {
    issuer: &'a Issuer,
    grant: &'a AccessGrant,
    offer: &'a Offer,
    config_id: &'a str,
    config: &'a CredentialConfig,
    holders: &'a [(VerifyingKey, Option<String>)],
    now: i64,
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

/// An access grant updated at `now` keeps its expiry: what is left of it.
fn grant_ttl(now: i64) -> impl Fn(&AccessGrant) -> Option<std::time::Duration> {
    move |g| Some(secs(u64::try_from(g.expires_at - now).unwrap_or(0).max(1)))
}

/// Credential requests one access token may make (an honest wallet makes one per configuration
/// it was offered, a few more on retries; each request may carry 10 proofs).
pub(super) const MAX_CREDENTIAL_REQUESTS_PER_TOKEN: u32 = 32;

impl IssuerService {
    pub async fn nonce(&self, issuer_id: &str) -> Result<String, IssuerError> {
        let issuer = self.get_issuer(issuer_id).await.map_err(|e| {
            unless_unavailable(e, || InvalidRequest.because("unknown issuer").into())
        })?;
        // Nothing is stored: see `nonces`.
        super::nonces::mint(&self.ctx.sealer, &super::nonces::scope(&issuer), self.now())
            .ok_or_else(|| internal("the c_nonce key"))
    }

    // ---- credential endpoint -------------------------------------------------------------------

    pub async fn credential(
        &self,
        issuer_id: &str,
        access_token: Option<&str>,
        req: CredentialRequest,
    ) -> Result<Value, IssuerError> {
        let (token_key, grant) = self.access_grant(issuer_id, access_token).await?;
        let answer = self
            .credential_for(issuer_id, &token_key, &grant, req)
            .await;
        if answer.as_ref().is_err_and(IssuerError::given_back) {
            // our failure, not the wallet's: the request it will retry is not counted
            self.give_back_request(&token_key).await;
        }
        answer
    }

    /// [`credential`](Self::credential) once the token's grant is known (and this request
    /// counted on it).
    async fn credential_for(
        &self,
        issuer_id: &str,
        token_key: &str,
        grant: &AccessGrant,
        req: CredentialRequest,
    ) -> Result<Value, IssuerError> {
        let store = &self.ctx.store;
        let offer: Offer = store
            .get_json(ks::OFFERS, &grant.offer_id)
            .await?
            .ok_or_else(|| InvalidToken.because("the offer behind this token has expired"))?;
        if !names_token(&offer, token_key) {
            return Err(InvalidToken
                .because("the access token is unknown, expired or used up")
                .into());
        }
        let issuer = self
            .get_issuer(issuer_id)
            .await
            .map_err(|e| unless_unavailable(e, || InvalidToken.because("unknown issuer").into()))?;
        let (config_id, config) = self.covered_config(&issuer, grant, &req)?;
        let jwts = proof_jwts(&req)?;
        let now = self.now();
        let proven = self
            .check_proofs(&issuer, grant.client_id.as_deref(), &jwts, now)
            .await?;
        let r = Request {
            issuer: &issuer,
            grant,
            offer: &offer,
            config_id: &config_id,
            config: &config,
            holders: &proven.holders,
            now,
        };
        match self.deliver(&r, token_key).await {
            Ok(credentials) => Ok(json!({"credentials": credentials})),
            Err(e) => {
                if e.is_server_error() {
                    // nothing was issued: the proofs stay good for the retry (also when Busy,
                    // which counts on the token, so an honest wallet's retry still works)
                    self.restore_nonces(&proven.nonces).await;
                }
                Err(e)
            }
        }
    }

    /// The credentials of a checked request: those already issued under its token, sent again to
    /// the same holder key(s) ([`IssuerService::resend`]), else newly issued ones
    /// ([`IssuerService::issue_for`]). Which of the two is tried first is decided from this
    /// node's copy of the offer, which may lag the key's primary (a cluster node that has not
    /// received an issuance that landed, or its taking back): when the recording meets the
    /// configuration already issued, it goes on with the offer as the primary holds it — a
    /// retry by the same key(s) gets the same credentials, any other key `invalid_token`; the
    /// sending again reads the offer at the primary itself, and when the configuration is not
    /// issued there, the token covers it and the request issues.
    async fn deliver(&self, r: &Request<'_>, token_key: &str) -> Result<Vec<Value>, IssuerError> {
        let used = || -> IssuerError {
            InvalidToken
                .because("this access token was already used for this credential")
                .into()
        };
        let mut fresh: Option<Offer> = None;
        // a configuration taken back, then issued again by another request, can send a round
        // back to the other path; a few rounds settle it
        for _ in 0..3 {
            let offer = fresh.as_ref().unwrap_or(r.offer);
            let r = Request { offer, ..*r };
            if offer.issued_configs.iter().any(|c| c == r.config_id) {
                match self.resend(&r).await? {
                    Resend::Sent(credentials) => return Ok(credentials),
                    Resend::NotTheHolder => return Err(used()),
                    // the recording of an attempt of unknown outcome was taken back meanwhile:
                    // the token covers the configuration again
                    Resend::TakenBack => {}
                }
            }
            match self.issue_for(&r).await? {
                Issued::Sent(credentials) => return Ok(credentials),
                Issued::AlreadyIssued(current) => {
                    if !names_token(&current, token_key) {
                        return Err(InvalidToken
                            .because("the access token is unknown, expired or used up")
                            .into());
                    }
                    fresh = Some(*current);
                }
            }
        }
        Err(crate::store::StoreError::Unavailable(
            "the credential's configuration kept being issued and taken back".into(),
        )
        .into())
    }

    /// Signs, records and hands out the credentials of a checked request (one per holder key);
    /// or, when the configuration turns out to be issued under the token already, the offer as
    /// the recording found it (nothing is sent, the records are dropped).
    async fn issue_for(&self, r: &Request<'_>) -> Result<Issued, IssuerError> {
        let store = &self.ctx.store;
        let (issuer, offer, config, grant) = (r.issuer, r.offer, r.config, r.grant);
        let (issuer_id, config_id, now) = (issuer.id.as_str(), r.config_id, r.now);
        // refusals that cost nothing come before any status index is reserved or anything is
        // signed (a token allows attempts until it is used)
        if config.format == Format::MsoMdoc
            && r.holders
                .iter()
                .any(|(k, _)| !matches!(k, VerifyingKey::P256(_)))
        {
            return Err(InvalidProof
                .because("an mdoc's device key must be P-256: sign the proof with ES256")
                .into());
        }
        let key = self.signing_key(issuer).await.map_err(internal)?;
        let validity = offer
            .credential_validity_seconds
            .or(config.validity_seconds);
        let claims = config_claims(&self.offer_claims_of(offer)?, config);
        let batch = Batch {
            issuer,
            key: &key,
            config_id,
            config,
            claims: &claims,
            offer_id: &offer.id,
            now,
            expires_at: validity.map(|v| now.saturating_add(i64::try_from(v).unwrap_or(i64::MAX))),
        };
        let mut credentials = Vec::new();
        let mut issued_ids = Vec::new();
        for (holder, holder_did) in r.holders {
            match self.issue_one(&batch, holder, holder_did).await {
                Ok((credential, credential_id)) => {
                    credentials.push(json!({"credential": credential}));
                    issued_ids.push(credential_id);
                }
                Err(e) => {
                    // nothing was used up: the token still covers the configuration
                    drop_records(store.as_ref(), issuer_id, &issued_ids).await;
                    return Err(e);
                }
            }
        }
        let o = match self
            .record_issuance(issuer_id, &grant.offer_id, config_id, &issued_ids)
            .await?
        {
            Recording::Recorded(o) => o,
            Recording::AlreadyIssued(current) => {
                return Ok(Issued::AlreadyIssued(Box::new(current)))
            }
        };
        self.offer_changed(issuer_id, &o);
        // The token is not deleted once every configuration is issued: the offer's
        // `issued_configs` already refuses it, it expires, and a configuration whose recording
        // is still being taken back (an unknown outcome) must stay obtainable with it.
        tracing::info!(
            issuer = issuer_id,
            count = credentials.len(),
            format = config.format.as_str(),
            "credentials issued"
        );
        Ok(Issued::Sent(credentials))
    }

    /// Uses the access token for one configuration, in one store operation with its effect: the
    /// offer's compare-and-swap that records the configuration as issued under its token
    /// together with the ids of the credentials just signed (and stored). Until it, nothing is
    /// used up — a failure before leaves the token covering the configuration, and the retry
    /// issues. A request that loses a race (the configuration was issued meanwhile) or fails
    /// drops the records of its unsent credentials. An outcome the store could not tell (503
    /// after a write that may have been applied) is read back: recorded → issued; otherwise the
    /// client is told to retry and the update, should it land later, is taken back
    /// ([`IssuerService::watch_unknown_outcome`]) — unless the holder's retry came first and
    /// was sent the recorded credentials ([`IssuerService::resend`]). A configuration already
    /// issued under the token: [`Recording::AlreadyIssued`] with the offer as the key's primary
    /// holds it — after a conflict, the value the store reported; when this node's first read
    /// already showed the configuration issued, that copy may lag (the issuance it shows may
    /// have been taken back since, or issued again with other credentials), so the offer is read
    /// again at the primary ([`crate::store::Store::get_settled`]).
    pub(super) async fn record_issuance(
        &self,
        issuer_id: &str,
        offer_key: &str,
        config_id: &str,
        ids: &[String],
    ) -> Result<Recording, IssuerError> {
        let store = &self.ctx.store;
        let mine = |o: &Offer| ids.first().is_some_and(|id| o.issued.contains(id));
        // the offer that showed the configuration issued, and whether it was this node's copy
        // (the update's first read) rather than a value a compare-and-swap reported
        let mut found = None;
        let mut reads = 0u32;
        let recorded = update_offer(store.as_ref(), offer_key, self.now(), None, |mut o| {
            reads += 1;
            if mine(&o) {
                // a retried compare-and-swap meets its own earlier write: already recorded
                return Ok(o);
            }
            if o.issued_configs.iter().any(|c| c == config_id) {
                found = Some((o, reads == 1));
                return Err(InvalidToken
                    .because("this access token was already used for this credential")
                    .into());
            }
            o.issued_configs.push(config_id.to_string());
            o.issued.extend(ids.iter().cloned());
            o.state = OfferState::CredentialIssued;
            Ok(o)
        })
        .await;
        match recorded {
            Ok(Some(o)) => Ok(Recording::Recorded(o)),
            Ok(None) => {
                drop_records(store.as_ref(), issuer_id, ids).await;
                Err(InvalidToken
                    .because("the offer behind this token has expired")
                    .into())
            }
            Err(e) if e.is_server_error() => {
                match store.get_json::<Offer>(ks::OFFERS, offer_key).await {
                    Ok(Some(o)) if mine(&o) => Ok(Recording::Recorded(o)),
                    _ => {
                        self.undo_issuance(offer_key, issuer_id, config_id, ids);
                        Err(e)
                    }
                }
            }
            Err(e) => {
                drop_records(store.as_ref(), issuer_id, ids).await;
                match found {
                    Some((current, false)) => Ok(Recording::AlreadyIssued(current)),
                    Some((_, true)) => match store
                        .get_settled_json::<Offer>(ks::OFFERS, offer_key)
                        .await?
                    {
                        Some(current) => Ok(Recording::AlreadyIssued(current)),
                        None => Err(InvalidToken
                            .because("the offer behind this token has expired")
                            .into()),
                    },
                    None => Err(e),
                }
            }
        }
    }

    /// Takes back an issuance of unknown outcome whose credentials were not sent: if the offer
    /// lists them, they and their configuration are removed from it (the token covers it again)
    /// and their records are dropped — unless the store kept failing, or they must stand: sent
    /// to their holder on its retry ([`IssuerService::resend`]), or one of them no longer valid.
    /// An admin who revoked or suspended one acted on it as issued; taking it back would drop
    /// that status with its record and let the token issue a fresh, valid credential instead.
    /// Each look reads the records before the offer ([`acted_on`]); a status changed after that
    /// read is caught when the records are dropped, each by a compare-and-swap of the valid
    /// record read, never a blind delete ([`withdraw_records`]), and the issuance is then
    /// recorded in the offer again ([`restore_issuance`]).
    fn undo_issuance(&self, offer_key: &str, issuer_id: &str, config_id: &str, ids: &[String]) {
        let (ours, config) = (ids.to_vec(), config_id.to_string());
        let (records, issuer) = (Arc::new(ids.to_vec()), issuer_id.to_string());
        let (checked, checked_issuer) = (records.clone(), issuer.clone());
        let (settled_config, restored_config) = (config.clone(), config.clone());
        let key = offer_key.to_string();
        let clock = self.ctx.clock.clone();
        let kept = Arc::new(AtomicBool::new(false));
        let (seen, kept) = (kept.clone(), kept);
        // a take-back was written, maybe applied even if its answer was lost (then the watch ends
        // as `NeverLanded`, not `Undone`): records kept after it must be restored either way
        let took_back = Arc::new(AtomicBool::new(false));
        let (taking, took_back) = (took_back.clone(), took_back);
        self.watch_unknown_outcome(
            offer_key.to_string(),
            move |store| {
                let (ids, issuer) = (checked.clone(), checked_issuer.clone());
                async move { acted_on(store.as_ref(), &issuer, &ids).await }
            },
            move |o, acted| {
                if !ours.first().is_some_and(|id| o.issued.contains(id)) {
                    return false;
                }
                if ours.iter().any(|id| o.resent.contains(id)) {
                    // sent to their holder on its retry: they stand
                    seen.store(true, Ordering::SeqCst);
                    return false;
                }
                if *acted {
                    // revoked or suspended meanwhile: the admin treated them as issued
                    seen.store(true, Ordering::SeqCst);
                    tracing::info!(offer = %o.id, "an issuance of unknown outcome stands: an admin changed a credential's status");
                    return false;
                }
                o.issued.retain(|id| !ours.contains(id));
                o.issued_configs.retain(|c| *c != config);
                if o.issued_configs.is_empty() && o.state == OfferState::CredentialIssued {
                    o.state = OfferState::TokenIssued;
                }
                taking.store(true, Ordering::SeqCst);
                true
            },
            move |o| o.issued_configs.contains(&settled_config),
            move |store, outcome| async move {
                if outcome == Watched::StoreFailing || kept.load(Ordering::SeqCst) {
                    return;
                }
                let left = withdraw_records(store.as_ref(), &issuer, &records).await;
                let attempted = outcome == Watched::Undone || took_back.load(Ordering::SeqCst);
                if attempted && !left.is_empty() {
                    restore_issuance(store.as_ref(), &clock, &key, &restored_config, &left).await;
                }
            },
        );
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
                // named by the parameter the request used
                if req.credential_identifier.is_some() {
                    UnknownCredentialIdentifier
                        .because(format!("unknown credential identifier `{config_id}`"))
                } else {
                    UnknownCredentialConfiguration
                        .because(format!("unknown credential configuration `{config_id}`"))
                }
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
        let unknown = || InvalidToken.because("the access token is unknown, expired or used up");
        // each request is counted on the grant: a token holder may not make the issuer sign
        // batch after batch for the token's whole life
        let now = self.now();
        let grant: AccessGrant = store
            .update_json_with_ttl(
                ks::TOKENS,
                &token_key,
                grant_ttl(now),
                None,
                |mut g: AccessGrant| {
                    if g.expires_at <= now {
                        return Err(unknown().into());
                    }
                    if g.issuer != issuer_id {
                        return Err(InvalidToken
                            .because("the access token belongs to another issuer")
                            .into());
                    }
                    if g.requests >= MAX_CREDENTIAL_REQUESTS_PER_TOKEN {
                        return Err(InvalidToken
                            .because(format!(
                                "this access token has made its {MAX_CREDENTIAL_REQUESTS_PER_TOKEN} credential requests"
                            ))
                            .into());
                    }
                    g.requests += 1;
                    Ok::<_, IssuerError>(g)
                },
            )
            .await?
            .ok_or_else(unknown)?;
        Ok((token_key, grant))
    }

    /// Takes back the count of a request that failed on this side (best effort: a lost give-back
    /// costs the token one of its requests).
    async fn give_back_request(&self, token_key: &str) {
        let now = self.now();
        let given = self
            .ctx
            .store
            .update_json_with_ttl(
                ks::TOKENS,
                token_key,
                grant_ttl(now),
                None,
                |mut g: AccessGrant| {
                    g.requests = g.requests.saturating_sub(1);
                    Ok::<_, IssuerError>(g)
                },
            )
            .await;
        if let Err(e) = given {
            tracing::warn!(error = %crate::error::ApiError::from(e), "a failed credential request stays counted on its token");
        }
    }

    /// What an issued credential's record knows its holder key by: an HMAC-SHA256 of the key's
    /// thumbprint under a master-key subkey, over the issuer too. A bare hash let whoever reads
    /// the store link a credential (issuer, offer, time, status) to the wallet holding the key,
    /// on a node that runs both roles (the wallet keeps its public keys in clear).
    fn subject_mac(&self, issuer: &str, holder: &VerifyingKey) -> String {
        use hmac::Mac;
        let mac = self
            .ctx
            .sealer
            .mac_key(b"idstack issuer subject v1")
            .over(&[issuer.as_bytes(), holder.thumbprint().as_bytes()]);
        crate::crypto::hex(&mac.finalize().into_bytes())
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
        let credential = self
            .sign_one(b, holder, holder_did, &credential_id, &status)
            .await?;
        let record = IssuedCredential {
            id: credential_id.clone(),
            issuer: b.issuer.id.clone(),
            credential_configuration_id: b.config_id.to_string(),
            format: b.config.format,
            offer_id: b.offer_id.to_string(),
            subject_hash: self.subject_mac(&b.issuer.id, holder),
            status_list: status.list.to_string(),
            status_index: status.index,
            status: CredentialStatus::Valid,
            issued_at: b.now,
            expires_at: b.expires_at,
        };
        let stored = self
            .ctx
            .store
            .put_json(
                ks::CREDS,
                &format!("{}/{}", b.issuer.id, credential_id),
                &record,
                None,
            )
            .await;
        if let Err(e) = stored {
            // the write may have been applied: this credential is not sent
            drop_records(self.ctx.store.as_ref(), &b.issuer.id, &[credential_id]).await;
            return Err(e.into());
        }
        Ok((credential, credential_id))
    }

    /// The credential itself, in the configuration's format, for one holder key.
    async fn sign_one(
        &self,
        b: &Batch<'_>,
        holder: &VerifyingKey,
        holder_did: &Option<String>,
        credential_id: &str,
        status: &StatusRef,
    ) -> Result<Value, IssuerError> {
        let input = IssueInput {
            issuer: b.issuer,
            key: b.key,
            config: b.config,
            vct: self.vct(b.issuer, b.config),
            claims: b.claims,
            holder,
            holder_did: holder_did.clone(),
            credential_id,
            now: b.now,
            expires_at: b.expires_at,
            status,
        };
        Ok(match b.config.format {
            Format::MsoMdoc => self.issue_mdoc(b, holder, status).await?,
            Format::LdpVc => issue_ldp(b, holder, holder_did, credential_id, status).await?,
            _ => formats::issue(&input).map_err(|e| UnsupportedCredentialFormat.because(e))?,
        })
    }

    /// A configuration already issued under this token, asked for again by the holder of the
    /// same key(s) — a retry after an answer that said "retry" (503: the outcome was unknown and
    /// the recording had in fact landed) or that never arrived: the same credentials (same ids,
    /// status entries, issuance and expiry times, claims; signed afresh) are sent again, so the
    /// retry a 503 asks for is never refused as "already used". Nothing new is issued: a holder
    /// proving the same keys gets what it already holds. The request's copy of the offer may
    /// lag (a cluster node that has not received a taking back, or a later issuance): the offer
    /// is read at the key's primary ([`crate::store::Store::get_settled`]) and the credentials
    /// are those it lists. It then records them as resent, in one compare-and-swap made on that
    /// value, so the taking back of an unknown outcome ([`IssuerService::undo_issuance`])
    /// leaves them alone from then on; if it took them back first, the token covers the
    /// configuration again ([`Resend::TakenBack`]). Other keys, or a credential no longer
    /// valid: [`Resend::NotTheHolder`].
    async fn resend(&self, r: &Request<'_>) -> Result<Resend, IssuerError> {
        let store = &self.ctx.store;
        let issuer_id = r.issuer.id.as_str();
        let expired = || -> IssuerError {
            InvalidToken
                .because("the offer behind this token has expired")
                .into()
        };
        let raw = store
            .get_settled(ks::OFFERS, &r.grant.offer_id)
            .await?
            .ok_or_else(expired)?;
        let offer: Offer =
            serde_json::from_slice(&raw).map_err(|e| crate::store::StoreError::Corrupt {
                keyspace: ks::OFFERS.to_string(),
                key: r.grant.offer_id.clone(),
                reason: e.to_string(),
            })?;
        if !offer.issued_configs.iter().any(|c| c == r.config_id) {
            return Ok(Resend::TakenBack);
        }
        let mut records = Vec::new();
        for id in &offer.issued {
            // at the primary too: a revocation made on another node is seen here at once
            let rec: Option<IssuedCredential> = store
                .get_settled_json(ks::CREDS, &format!("{issuer_id}/{id}"))
                .await?;
            if let Some(rec) = rec.filter(|c| c.credential_configuration_id == r.config_id) {
                records.push(rec);
            }
        }
        // each proven key is the subject of one of them, and each of them has its key
        let mut pairs = Vec::new();
        for (holder, holder_did) in r.holders {
            let subject = self.subject_mac(issuer_id, holder);
            // records of earlier releases: a bare SHA-256 of the thumbprint
            let legacy = sha256_hex(holder.thumbprint());
            let Some(i) = records
                .iter()
                .position(|c| c.subject_hash == subject || c.subject_hash == legacy)
            else {
                return Ok(Resend::NotTheHolder);
            };
            pairs.push((holder, holder_did, records.swap_remove(i)));
        }
        if !records.is_empty()
            || pairs
                .iter()
                .any(|(_, _, c)| c.status != CredentialStatus::Valid)
        {
            return Ok(Resend::NotTheHolder);
        }
        let ids: Vec<String> = pairs.iter().map(|(_, _, c)| c.id.clone()).collect();
        // made on the primary's value; a conflict goes on from the value it reports (the
        // primary's too)
        let marked = update_offer(
            store.as_ref(),
            &r.grant.offer_id,
            self.now(),
            Some(raw),
            |mut o| {
                if !ids.iter().all(|id| o.issued.contains(id)) {
                    return Err(InvalidToken.because("taken back").into());
                }
                for id in &ids {
                    if !o.resent.contains(id) {
                        o.resent.push(id.clone());
                    }
                }
                Ok(o)
            },
        )
        .await;
        match marked {
            Ok(Some(_)) => {}
            Ok(None) => return Err(expired()),
            Err(e) if e.is_server_error() => return Err(e),
            Err(_) => return Ok(Resend::TakenBack),
        }
        let key = self.signing_key(r.issuer).await.map_err(internal)?;
        let claims = config_claims(&self.offer_claims_of(&offer)?, r.config);
        let (issued_at, expires_at) = (pairs[0].2.issued_at, pairs[0].2.expires_at);
        let batch = Batch {
            issuer: r.issuer,
            key: &key,
            config_id: r.config_id,
            config: r.config,
            claims: &claims,
            offer_id: &offer.id,
            now: issued_at,
            expires_at,
        };
        let mut credentials = Vec::new();
        for (holder, holder_did, rec) in &pairs {
            let list = rec
                .status_list
                .parse::<u64>()
                .map_err(|e| internal(format!("credential record's status list: {e}")))?;
            let status = self.status_ref(issuer_id, list, rec.status_index);
            let credential = self
                .sign_one(&batch, holder, holder_did, &rec.id, &status)
                .await?;
            credentials.push(json!({"credential": credential}));
        }
        tracing::info!(
            issuer = issuer_id,
            count = credentials.len(),
            "credentials sent again to their holder"
        );
        Ok(Resend::Sent(credentials))
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
        .map_err(|e| match e {
            super::mdoc::MdocIssueError::Refused(why) => {
                InvalidCredentialRequest.because(why).into()
            }
            super::mdoc::MdocIssueError::Store(e) => IssuerError::Store(e),
            super::mdoc::MdocIssueError::Signer(why) => IssuerError::Mdoc(why),
        })?;
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
                // an identifier is what the token response's authorization_details gave out
                (None, Some(_)) if !grant.authorization_details => {
                    return Err(InvalidCredentialRequest
                        .because(
                            "credential_identifier is only for a token whose response carried authorization_details: send credential_configuration_id",
                        )
                        .into())
                }
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

/// An ldp_vc (Data Integrity), within the `jsonld.*` bounds. Its claims were signed within them
/// when the offer was made ([`formats::ldp_vc_signable`]), so running out of slots or time here
/// is the node's load: 503, retry. A document over a limit (the configuration named more claims
/// since) is not retried: 422.
async fn issue_ldp(
    b: &Batch<'_>,
    holder: &VerifyingKey,
    holder_did: &Option<String>,
    credential_id: &str,
    status: &StatusRef,
) -> Result<Value, IssuerError> {
    formats::ldp_vc(
        b.issuer,
        b.key.clone(),
        b.config.credential_type.clone(),
        b.claims.clone(),
        formats::holder_did_of(holder, holder_did),
        credential_id,
        b.now,
        b.expires_at,
        status,
    )
    .await
    .map_err(|e| match e {
        CryptoError::OutOfTime(_) => IssuerError::Busy(e.to_string()),
        CryptoError::Busy(d) => IssuerError::Busy(d),
        CryptoError::TooComplex(d) => IssuerError::TooComplex(d),
        other => internal(other),
    })
}

/// Whether a request's access token is usable: its offer's redemption names it (grant_access).
/// (Offers redeemed before tokens were named carried no hash; their tokens lived 10 minutes, so
/// none is left, and an offer without the hash accepts no token.)
fn names_token(offer: &Offer, token_key: &str) -> bool {
    offer.token_hash.as_deref() == Some(token_key)
}

/// What [`IssuerService::issue_for`] did.
enum Issued {
    Sent(Vec<Value>),
    /// The configuration was issued under the token already: the offer as the recording found
    /// it.
    AlreadyIssued(Box<Offer>),
}

/// What [`IssuerService::record_issuance`] found.
#[derive(Debug)]
pub(super) enum Recording {
    Recorded(Offer),
    AlreadyIssued(Offer),
}

/// What [`IssuerService::resend`] did.
enum Resend {
    Sent(Vec<Value>),
    NotTheHolder,
    TakenBack,
}

/// The claims of `claims` a configuration carries.
pub(super) fn config_claims(
    claims: &Map<String, Value>,
    config: &CredentialConfig,
) -> Map<String, Value> {
    claims
        .iter()
        .filter(|(k, _)| config.claims.iter().any(|c| &c.name == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether an admin changed the status of one of these credentials (revoked or suspended it).
async fn acted_on(
    store: &dyn crate::store::Store,
    issuer_id: &str,
    ids: &[String],
) -> Result<bool, crate::store::StoreError> {
    for id in ids {
        let rec: Option<IssuedCredential> = store
            .get_json(ks::CREDS, &format!("{issuer_id}/{id}"))
            .await?;
        if rec.is_some_and(|c| c.status != CredentialStatus::Valid) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Drops the records of an issuance taken back (or that never landed) — only records still
/// valid, each by a compare-and-swap of the value read, so a status an admin set meanwhile is
/// never deleted. Returns the ids whose records stay: if any record is no longer valid (or
/// cannot be read or deleted), the issuance is treated as standing — nothing more is dropped
/// once that is known, and the records left are returned for [`restore_issuance`].
async fn withdraw_records(
    store: &dyn crate::store::Store,
    issuer_id: &str,
    ids: &[String],
) -> Vec<String> {
    // every record is looked at before any is dropped: they stand or go together
    let mut read = Vec::new();
    for id in ids {
        let key = format!("{issuer_id}/{id}");
        match store.get(ks::CREDS, &key).await {
            Ok(Some(raw)) if still_valid(&raw) => read.push((id, key, raw)),
            Ok(None) => {}
            Ok(Some(_)) => return ids.to_vec(),
            Err(e) => {
                tracing::warn!(error = %e, "records of an issuance taken back kept: unreadable");
                return ids.to_vec();
            }
        }
    }
    let mut left = Vec::new();
    for (n, (_, key, raw)) in read.iter().enumerate() {
        let mut expected = raw.clone();
        let mut deleted = false;
        for _ in 0..8 {
            match store
                .compare_and_swap(ks::CREDS, key, Some(expected.clone()), None)
                .await
            {
                Ok(Cas::Swapped) | Ok(Cas::Conflict(None)) => {
                    deleted = true;
                    break;
                }
                // rewritten meanwhile, still valid: compare with what is there now
                Ok(Cas::Conflict(Some(now))) if still_valid(&now) => expected = now,
                Ok(Cas::Conflict(Some(_))) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "record of an issuance taken back kept");
                    break;
                }
            }
        }
        if !deleted {
            // an admin changed its status meanwhile (or it could not be deleted): the issuance
            // stands, with the records not yet dropped
            left.extend(read[n..].iter().map(|(id, _, _)| (*id).clone()));
            return left;
        }
    }
    left
}

/// Whether a stored credential record is (well-formed and) valid.
fn still_valid(raw: &[u8]) -> bool {
    serde_json::from_slice::<IssuedCredential>(raw)
        .is_ok_and(|c| c.status == CredentialStatus::Valid)
}

/// Records in the offer again an issuance that was taken back but whose records stay: an admin
/// changed the status of one of its credentials, or the store failed while they were withdrawn.
/// `ids` issued, the configuration used (the token no longer covers it). Retried while the store
/// fails, for up to about a minute.
async fn restore_issuance(
    store: &dyn crate::store::Store,
    clock: &crate::clock::SharedClock,
    offer_key: &str,
    config_id: &str,
    ids: &[String],
) {
    let mut wait = Duration::from_millis(100);
    for _ in 0..16 {
        let restored = update_offer(store, offer_key, clock.now_secs(), None, |mut o| {
            if !o.issued_configs.iter().any(|c| c == config_id) {
                o.issued_configs.push(config_id.to_string());
            }
            for id in ids {
                if !o.issued.contains(id) {
                    o.issued.push(id.clone());
                }
            }
            if o.state == OfferState::TokenIssued {
                o.state = OfferState::CredentialIssued;
            }
            Ok(o)
        })
        .await;
        match restored {
            Ok(_) => {
                tracing::warn!(
                    offer = offer_key,
                    "an issuance taken back is recorded again: its records stay (status changed, or not withdrawn)"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, offer = offer_key, "an issuance taken back not recorded again yet")
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    tracing::error!(
        offer = offer_key,
        "an issuance taken back whose records stay could not be recorded again: its token covers the configuration"
    );
}

/// Deletes the records of credentials that were signed but never sent (best effort: a left-over
/// record names a credential nobody holds).
async fn drop_records(store: &dyn crate::store::Store, issuer_id: &str, ids: &[String]) {
    for id in ids {
        if let Err(e) = store.delete(ks::CREDS, &format!("{issuer_id}/{id}")).await {
            tracing::debug!(error = %e, "record of an unsent credential not deleted");
        }
    }
}
