//! The grants that end in an access token: the token endpoint (pre-authorized code with tx_code,
//! authorization code with PKCE). The authorization endpoint that issues the codes is
//! `authorize.rs`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::*;
use super::ks;
use super::model::*;
use super::offers::update_offer;
use super::service::*;
use crate::clock::random_token;
use crate::error::{unless_unavailable, ErrorCode, OAuthCode::*};
use crate::store::Cas;

pub(super) const MAX_TX_CODE_FAILURES: u32 = 5;

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

impl IssuerService {
    pub async fn token(
        &self,
        issuer_id: &str,
        req: TokenRequest,
    ) -> Result<TokenResponse, IssuerError> {
        self.get_issuer(issuer_id).await.map_err(|e| {
            unless_unavailable(e, || InvalidRequest.because("unknown issuer").into())
        })?;
        match req.grant_type.as_deref() {
            Some(PRE_AUTH_GRANT) => self.token_pre_authorized(issuer_id, req).await,
            Some("authorization_code") => self.token_authorization_code(issuer_id, req).await,
            Some(other) => Err(UnsupportedGrantType
                .because(format!("grant_type `{other}` is not supported"))
                .into()),
            None => Err(InvalidRequest.because("grant_type is missing").into()),
        }
    }

    /// The pre-authorized code grant: the code is single use, the offer admits one token, and a
    /// failure after the code was consumed puts it back (compensation, read top to bottom here).
    async fn token_pre_authorized(
        &self,
        issuer_id: &str,
        req: TokenRequest,
    ) -> Result<TokenResponse, IssuerError> {
        let code = req
            .pre_authorized_code
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 256)
            .ok_or_else(|| InvalidRequest.because("pre-authorized_code is missing"))?;
        let code_key = format!("pre/{}", hash(code));
        let store = &self.ctx.store;
        let (okey, offer) = self.offer_of_code(issuer_id, &code_key).await?;
        let offer_key_s = String::from_utf8_lossy(&okey).into_owned();
        // authorization_details may narrow the grant to some of the offered configurations.
        let (granted, details) = narrowed(&offer, req.authorization_details.as_deref())?;
        if let Some(tx) = &offer.tx_code {
            self.check_tx_code(tx, req.tx_code.as_deref(), &offer_key_s, &code_key)
                .await?;
        }
        // Single use, in one store operation: the offer's transition to `TokenIssued` naming the
        // token is the redemption (grant_access). The code is not consumed on the way, so no
        // failure can burn it: until that transition the offer is `Offered` and the code
        // redeemable; after it, the offer admits no second token.
        let granted = match self
            .grant_access(
                issuer_id,
                &offer_key_s,
                granted,
                details,
                req.client_id.clone(),
            )
            .await
        {
            Ok(granted) => granted,
            Err(e) => {
                if offer.tx_code.is_some() {
                    // The right code took an attempt; a redemption that failed after it (a 503 the
                    // holder retries) must not cost one too, or five such failures lock the offer.
                    self.give_back_tx_code_attempt(&offer_key_s).await;
                }
                return Err(e);
            }
        };
        // the code has served (best effort: a left-over code finds its offer redeemed)
        if let Err(e) = store.delete(ks::CODES, &code_key).await {
            tracing::debug!(error = %e, "redeemed pre-authorized code not deleted");
        }
        Ok(granted)
    }

    /// The redeemable offer a pre-authorized code (`code_key`) of this issuer stands for, and the
    /// code record's value (the offer's key).
    async fn offer_of_code(
        &self,
        issuer_id: &str,
        code_key: &str,
    ) -> Result<(Vec<u8>, Offer), IssuerError> {
        let store = &self.ctx.store;
        let Some(okey) = store.get(ks::CODES, code_key).await? else {
            return Err(InvalidGrant
                .because("the pre-authorized code is unknown, expired or already used")
                .into());
        };
        let offer_key_s = String::from_utf8_lossy(&okey);
        if !offer_key_s.starts_with(&format!("{issuer_id}/")) {
            return Err(InvalidGrant
                .because("the pre-authorized code belongs to another issuer")
                .into());
        }
        let offer: Offer = store
            .get_json(ks::OFFERS, &offer_key_s)
            .await?
            .ok_or_else(|| InvalidGrant.because("the offer has expired"))?;
        if offer.expires_at <= self.now() || offer.state != OfferState::Offered {
            return Err(InvalidGrant
                .because("the offer has expired or was already redeemed")
                .into());
        }
        Ok((okey, offer))
    }

    /// The offer's transaction code against the one `given`. The attempt is taken from the
    /// offer before the code is compared, in one compare-and-swap (as logins are): parallel
    /// guesses each take one of the [`MAX_TX_CODE_FAILURES`] attempts, and once they are used
    /// nothing more is compared. Before, guesses were compared first and counted after, so a
    /// burst of concurrent ones was checked in full before the lock took. The attempt that uses
    /// the last one, if wrong, burns the pre-authorized code (`code_key`).
    async fn check_tx_code(
        &self,
        expected: &StoredTxCode,
        given: Option<&str>,
        offer_key_s: &str,
        code_key: &str,
    ) -> Result<(), IssuerError> {
        let store = &self.ctx.store;
        let locked = || -> IssuerError {
            InvalidGrant
                .because("too many wrong transaction codes; the offer is locked")
                .into()
        };
        let taken = update_offer(store.as_ref(), offer_key_s, self.now(), None, |mut o| {
            if o.tx_code_failures >= MAX_TX_CODE_FAILURES {
                return Err(locked());
            }
            o.tx_code_failures += 1;
            Ok(o)
        })
        .await?
        .ok_or_else(|| InvalidGrant.because("the offer has expired"))?;
        let given = given.unwrap_or("");
        let ok = !given.is_empty()
            && super::offers::tx_code_matches(&self.ctx.sealer, offer_key_s, expected, given);
        if ok {
            // (the attempt stays counted: the offer is redeemed next and admits no other; a
            // redemption that fails gives it back)
            return Ok(());
        }
        if taken.tx_code_failures >= MAX_TX_CODE_FAILURES {
            // the last attempt was wrong: the code is burnt
            store.delete(ks::CODES, code_key).await?;
            return Err(locked());
        }
        Err(InvalidGrant
            .because(if given.is_empty() {
                "tx_code is required"
            } else {
                "wrong tx_code"
            })
            .into())
    }

    /// Returns the attempt a right transaction code took ([`Self::check_tx_code`]) when the
    /// redemption after it failed. Best effort: if this fails too, the attempt stays used.
    async fn give_back_tx_code_attempt(&self, offer_key_s: &str) {
        let given_back = update_offer(
            self.ctx.store.as_ref(),
            offer_key_s,
            self.now(),
            None,
            |mut o| {
                o.tx_code_failures = o.tx_code_failures.saturating_sub(1);
                Ok(o)
            },
        )
        .await;
        if let Err(e) = given_back {
            tracing::debug!(error = %e, "tx_code attempt of a failed redemption not given back");
        }
    }

    async fn token_authorization_code(
        &self,
        issuer_id: &str,
        req: TokenRequest,
    ) -> Result<TokenResponse, IssuerError> {
        let code = req
            .code
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 256)
            .ok_or_else(|| InvalidRequest.because("code is missing"))?;
        let verifier = req
            .code_verifier
            .as_deref()
            .ok_or_else(|| InvalidRequest.because("code_verifier is missing (PKCE is required)"))?;
        // RFC 7636 §4.1: 43-128 unreserved characters (a short one is guessable).
        if !(43..=128).contains(&verifier.len())
            || !verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            return Err(InvalidRequest
                .because("code_verifier must be 43-128 unreserved characters (RFC 7636)")
                .into());
        }
        let key = format!("authz/{}", hash(code));
        let store = &self.ctx.store;
        let Some(raw) = store.get(ks::CODES, &key).await? else {
            return Err(InvalidGrant
                .because("the authorization code is unknown, expired or already used")
                .into());
        };
        if let Ok(used) = serde_json::from_slice::<UsedCode>(&raw) {
            return Err(self.code_reused(&key, raw, used, verifier).await);
        }
        let grant: AuthCodeGrant = serde_json::from_slice(&raw).map_err(internal)?;
        // consume first: a wrong verifier also burns the code (RFC 6749 §10.5 single use); what
        // stays is the mark of its use, so that a second use revokes the token the first got
        let used = UsedCode {
            used: true,
            token_hash: None,
            code_challenge: Some(grant.code_challenge.clone()),
            replayed: false,
        };
        let consumed = to_json(&used)?;
        let mark = Some((consumed.clone(), Some(secs(ACCESS_TOKEN_TTL))));
        if let Cas::Conflict(now) = store
            .compare_and_swap(ks::CODES, &key, Some(raw), mark)
            .await?
        {
            // Another use marked it between the read and the swap: a replay all the same, which
            // revokes what that use got (attacker review: answered without revoking it).
            if let Some((now, used)) =
                now.and_then(|n| Some((n.clone(), serde_json::from_slice::<UsedCode>(&n).ok()?)))
            {
                return Err(self.code_reused(&key, now, used, verifier).await);
            }
            return Err(InvalidGrant
                .because("the authorization code was already used")
                .into());
        }
        if grant.issuer != issuer_id {
            return Err(InvalidGrant
                .because("the code belongs to another issuer")
                .into());
        }
        let challenge = crate::crypto::b64url(crate::crypto::sha256(verifier.as_bytes()));
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            challenge.as_bytes(),
            grant.code_challenge.as_bytes(),
        )) {
            return Err(InvalidGrant
                .because("code_verifier does not match the code_challenge")
                .into());
        }
        if req.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
            return Err(InvalidGrant
                .because("redirect_uri does not match the authorization request")
                .into());
        }
        // RFC 6749 §4.1.3 wants a public client to name itself here, but wallets in use do not
        // (Animo's @openid4vc/oauth2 sends no client_id): PKCE binds the code to its client.
        if req
            .client_id
            .as_deref()
            .is_some_and(|c| c != grant.client_id)
        {
            return Err(InvalidGrant
                .because("client_id does not match the authorization request")
                .into());
        }
        let granted = self
            .grant_access(
                issuer_id,
                &grant.offer_id,
                grant.credential_configuration_ids,
                grant.authorization_details,
                Some(grant.client_id.clone()),
            )
            .await?;
        // The token's hash goes into the mark only if no replay came in meanwhile: a replay that
        // found no hash yet marked the code replayed, and this token is then revoked here
        // (attacker review: a replay in that window revoked nothing).
        let token_hash = hash(&granted.access_token);
        let used = UsedCode {
            token_hash: Some(token_hash.clone()),
            ..used
        };
        let marked = store
            .compare_and_swap(
                ks::CODES,
                &key,
                Some(consumed),
                Some((to_json(&used)?, Some(secs(ACCESS_TOKEN_TTL)))),
            )
            .await;
        match marked {
            Ok(Cas::Swapped) => {}
            Ok(_) => {
                self.drop_grant(&token_hash).await;
                tracing::warn!("authorization code reused while its first use was granted: the token is revoked");
                return Err(InvalidGrant
                    .because("the authorization code was already used")
                    .into());
            }
            Err(e) => {
                tracing::warn!(error = %e, "the token of a used authorization code is not recorded")
            }
        }
        Ok(granted)
    }

    /// An authorization code used a second time (RFC 6749 §4.1.2: refused, and the token the
    /// first use got is revoked — whoever replays a code with its verifier may have taken both
    /// from the client that redeemed it). A replay without the right verifier proves nothing and
    /// revokes nothing (attacker review: anyone who saw the code, not the verifier, could take
    /// the holder's token and, the offer being redeemed, its credential). One that comes while the
    /// first use is still being granted marks the code, and that grant is revoked as it ends.
    async fn code_reused(
        &self,
        key: &str,
        raw: Vec<u8>,
        used: UsedCode,
        verifier: &str,
    ) -> IssuerError {
        let refused = || {
            InvalidGrant
                .because("the authorization code was already used")
                .into()
        };
        let proven = match &used.code_challenge {
            Some(c) => {
                let challenge = crate::crypto::b64url(crate::crypto::sha256(verifier.as_bytes()));
                bool::from(subtle::ConstantTimeEq::ct_eq(
                    challenge.as_bytes(),
                    c.as_bytes(),
                ))
            }
            None => true, // marked before the challenge was kept
        };
        if !proven {
            return refused();
        }
        // The mark changes under this replay only once (the first use records its token): a
        // failed compare-and-swap reads it again, so that token is revoked (diff review).
        let (mut raw, mut used) = (raw, used);
        for _ in 0..4 {
            match &used.token_hash {
                Some(token_hash) => {
                    self.drop_grant(token_hash).await;
                    tracing::warn!(
                        "authorization code reused: the token from its first use is revoked"
                    );
                    break;
                }
                None if used.replayed => break,
                None => {
                    let replayed = UsedCode {
                        replayed: true,
                        ..used
                    };
                    let Ok(bytes) = to_json(&replayed) else { break };
                    let swapped = self
                        .ctx
                        .store
                        .compare_and_swap(
                            ks::CODES,
                            key,
                            Some(raw),
                            Some((bytes, Some(secs(ACCESS_TOKEN_TTL)))),
                        )
                        .await;
                    let Ok(Cas::Conflict(Some(current))) = swapped else {
                        break;
                    };
                    let Ok(next) = serde_json::from_slice::<UsedCode>(&current) else {
                        break;
                    };
                    (raw, used) = (current, next);
                }
            }
        }
        refused()
    }

    /// Redeems offer `offer_key_s` for an access token covering `config_ids`, in one store
    /// operation: the token's grant is stored first (unusable: the credential endpoint accepts a
    /// token only when its offer names it), then the offer goes `Offered` → `TokenIssued` naming
    /// the token's hash. A failed or lost race leaves the offer as it was (redeemable, or
    /// another redeemer's) and a grant nobody holds, deleted here or expiring with its TTL. When
    /// the offer update's outcome is unknown (a store failure after it may have been applied),
    /// the offer is read back: naming this token, the redemption happened and the token is
    /// returned.
    async fn grant_access(
        &self,
        issuer_id: &str,
        offer_key_s: &str,
        config_ids: Vec<String>,
        with_details: bool,
        client_id: Option<String>,
    ) -> Result<TokenResponse, IssuerError> {
        let store = &self.ctx.store;
        let token = random_token(32);
        let token_hash = hash(&token);
        let details = with_details.then(|| granted_details(&config_ids));
        let grant = AccessGrant {
            offer_id: offer_key_s.to_string(),
            issuer: issuer_id.to_string(),
            credential_configuration_ids: config_ids,
            expires_at: self.now() + ACCESS_TOKEN_TTL as i64,
            requests: 0,
            client_id,
            authorization_details: with_details,
        };
        store
            .put_json(
                ks::TOKENS,
                &token_hash,
                &grant,
                Some(secs(ACCESS_TOKEN_TTL)),
            )
            .await?;
        // Set when the offer turns out redeemed by this very attempt: a retried compare-and-swap
        // (the first one applied, its answer lost) meets its own write as the "conflict".
        let ours = std::sync::atomic::AtomicBool::new(false);
        let now = self.now();
        let redeemed = update_offer(store.as_ref(), offer_key_s, now, None, |mut o| {
            // an authorization code outlives the check at /authorize by up to its lifetime, and
            // the offer record its expiry by a day: an expired offer is not redeemed
            if o.state == OfferState::Offered && o.expires_at <= now {
                return Err(InvalidGrant.because("the offer has expired").into());
            }
            if o.state != OfferState::Offered {
                if o.token_hash.as_deref() == Some(token_hash.as_str()) {
                    ours.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                return Err(InvalidGrant
                    .because("the offer was already redeemed")
                    .into());
            }
            o.state = OfferState::TokenIssued;
            o.token_hash = Some(token_hash.clone());
            Ok(o)
        })
        .await;
        let updated = match redeemed {
            Ok(Some(o)) => Some(o),
            Ok(None) => {
                self.drop_grant(&token_hash).await;
                return Err(InvalidGrant.because("the offer has expired").into());
            }
            Err(_) if ours.load(std::sync::atomic::Ordering::SeqCst) => store
                .get_json::<Offer>(ks::OFFERS, offer_key_s)
                .await
                .ok()
                .flatten(),
            Err(e) if e.is_server_error() => {
                match store.get_json::<Offer>(ks::OFFERS, offer_key_s).await {
                    Ok(Some(o)) if o.token_hash.as_deref() == Some(token_hash.as_str()) => Some(o),
                    _ => {
                        // Unknown whether the offer names this token (this read may lag the
                        // transition: a cut-off node, a commit still in flight), and the holder
                        // is told to retry: take the redemption back if it turns out to be ours.
                        self.undo_redemption(offer_key_s.to_string(), token_hash);
                        return Err(e);
                    }
                }
            }
            Err(e) => {
                self.drop_grant(&token_hash).await;
                return Err(e);
            }
        };
        if let Some(o) = &updated {
            self.offer_changed(issuer_id, o);
        }
        Ok(TokenResponse {
            access_token: token,
            token_type: "Bearer",
            expires_in: ACCESS_TOKEN_TTL,
            authorization_details: details,
        })
    }

    /// Takes back a redemption whose outcome is unknown and whose token was not handed out
    /// ([`IssuerService::watch_unknown_outcome`]): the offer goes back to `Offered` if it names
    /// this token (nobody holds it, and a token is usable only while named); the watch ends when
    /// the offer is another redemption's. The token's grant is deleted in the end. Safe against a
    /// second token: it changes only an offer this attempt redeemed.
    fn undo_redemption(&self, offer_key: String, token_hash: String) {
        let ours = token_hash.clone();
        self.watch_unknown_outcome(
            offer_key,
            |_| async { Ok(()) },
            move |o, _| {
                if o.state != OfferState::TokenIssued
                    || o.token_hash.as_deref() != Some(ours.as_str())
                {
                    return false;
                }
                o.state = OfferState::Offered;
                o.token_hash = None;
                true
            },
            |o| o.state != OfferState::Offered,
            move |store, _| async move {
                let _ = store.delete(ks::TOKENS, &token_hash).await;
            },
        );
    }

    /// Deletes the grant of a token no redemption handed out (best effort: it expires anyway,
    /// and no offer names it).
    async fn drop_grant(&self, token_hash: &str) {
        if let Err(e) = self.ctx.store.delete(ks::TOKENS, token_hash).await {
            tracing::debug!(error = %e, "grant of an unreturned token not deleted");
        }
    }
}

/// What stays of an authorization code once used (as long as a token from it lives).
#[derive(serde::Serialize, serde::Deserialize)]
struct UsedCode {
    /// Always true: a grant has no such field, so a grant never reads as this.
    used: bool,
    /// The token its use got, once granted.
    token_hash: Option<String>,
    /// The code's PKCE challenge: a replay revokes the token only with the right verifier.
    #[serde(default)]
    code_challenge: Option<String>,
    /// A replay with the right verifier came before the token was recorded.
    #[serde(default)]
    replayed: bool,
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, IssuerError> {
    serde_json::to_vec(v).map_err(internal)
}

/// The configurations a pre-authorized grant covers: all the offer's, or those its
/// `authorization_details` narrow it to (the second value: the token response then lists them).
fn narrowed(offer: &Offer, details: Option<&str>) -> Result<(Vec<String>, bool), IssuerError> {
    let Some(ad) = details else {
        return Ok((offer.credential_configuration_ids.clone(), false));
    };
    let ids = requested_configurations(ad).map_err(|e| InvalidAuthorizationDetails.because(e))?;
    if let Some(bad) = ids
        .iter()
        .find(|id| !offer.credential_configuration_ids.contains(id))
    {
        return Err(InvalidAuthorizationDetails
            .because(format!("`{bad}` was not offered"))
            .into());
    }
    Ok((ids, true))
}
