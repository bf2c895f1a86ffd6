//! c_nonces (OID4VCI 1.0 §7): made without storing anything, used once.
//!
//! The nonce endpoint is open to anyone, so a nonce that is a stored record lets anyone fill the
//! store (one record per request, kept for [`NONCE_TTL`], bounded only by the per-IP limit —
//! and addresses are cheap). A nonce is instead its issuer's MAC over when it expires and a
//! random part, under a key derived from the master key (every node checks it alike); the store
//! only learns of it when a credential request, which needs a valid access token, uses it: an
//! insert-only marker that lives until the nonce would have expired, so it is used once.
//! Nonces of the previous form (random, stored as `<issuer>/<nonce>` → "1") are used up as
//! before until they expire.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ks;
use super::model::Issuer;
use super::service::*;
use crate::crypto::{b64url, b64url_decode, sha256_hex};
use crate::store::{Cas, Sealer};

/// How long a c_nonce is good for.
pub(super) const NONCE_TTL: u64 = 300;

/// Seconds a used-nonce marker outlives its nonce (clock skew between nodes).
const MARKER_SLACK: u64 = 3600;
const VERSION: &str = "n1";
/// Longer strings are not parsed.
const MAX_NONCE_LEN: usize = 128;

/// A c_nonce a credential request used: what undoes the use if nothing was issued with it.
#[derive(Debug, Clone)]
pub(super) enum UsedNonce {
    /// The marker of a MAC'd nonce (`<issuer>/used/<digest>`).
    Marker(String),
    /// A stored nonce of the previous form (`<issuer>/<nonce>`), deleted by its use.
    Stored(String),
}

/// Whose nonces a MAC makes: the issuer's id and its key's fingerprint, so a nonce of a deleted
/// tenant does not pass at one created later under the same id (whose purge took the old
/// nonces' use markers with it).
pub(super) fn scope(issuer: &Issuer) -> String {
    format!("{}\0{}", issuer.id, issuer.key_fingerprint)
}

fn mac(sealer: &Sealer, scope: &str, body: &str) -> Hmac<Sha256> {
    sealer
        .mac_key(b"idstack issuer c_nonce v1")
        .over(&[scope.as_bytes(), body.as_bytes()])
}

/// A new c_nonce of the issuer `scope` names, good until `now` + [`NONCE_TTL`].
pub(super) fn mint(sealer: &Sealer, scope: &str, now: i64) -> Option<String> {
    let random: [u8; 16] = rand::random();
    let body = format!("{VERSION}.{}.{}", now + NONCE_TTL as i64, b64url(random));
    let tag = mac(sealer, scope, &body).finalize().into_bytes();
    Some(format!("{body}.{}", b64url(tag)))
}

/// When a MAC'd nonce of the issuer `scope` names expires, and its MAC'd body (what names it: the tag's
/// spelling can vary, `=` padding), if it is one and has not expired at `now`.
fn expiry<'n>(sealer: &Sealer, scope: &str, nonce: &'n str, now: i64) -> Option<(i64, &'n str)> {
    if nonce.len() > MAX_NONCE_LEN {
        return None;
    }
    let (body, tag) = nonce.rsplit_once('.')?;
    let mut parts = body.split('.');
    let (version, exp, _random, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next())
    else {
        return None;
    };
    mac(sealer, scope, body)
        .verify_slice(&b64url_decode(tag).ok()?)
        .ok()?;
    let exp: i64 = exp.parse().ok()?;
    (version == VERSION && exp > now).then_some((exp, body))
}

impl IssuerService {
    /// Uses `nonce` of `issuer_id` once: `Some` with what undoes the use, `None` when it is
    /// unknown, expired or used already.
    pub(super) async fn use_nonce(
        &self,
        issuer: &Issuer,
        nonce: &str,
        now: i64,
    ) -> Result<Option<UsedNonce>, crate::store::StoreError> {
        let store = &self.ctx.store;
        let issuer_id = &issuer.id;
        if let Some((exp, body)) = expiry(&self.ctx.sealer, &scope(issuer), nonce, now) {
            // Named by its MAC'd body (which holds its random part): one marker per nonce,
            // however its tag is spelt.
            let marker = format!("{issuer_id}/used/{}", sha256_hex(body));
            // An hour past the nonce's expiry: a node whose clock runs behind this one's still
            // sees the marker for as long as it takes the nonce for unexpired. Cluster nodes
            // refuse each other past 30 s of skew; Redis nodes share no such bound, and a minute
            // let a node 60 s behind take a nonce again (cluster review). Markers are one per
            // credential request, which needs an access token.
            let ttl = secs(u64::try_from(exp - now).unwrap_or(1).max(1) + MARKER_SLACK);
            let fresh = store
                .compare_and_swap(ks::NONCES, &marker, None, Some((b"1".to_vec(), Some(ttl))))
                .await?;
            return Ok((fresh == Cas::Swapped).then_some(UsedNonce::Marker(marker)));
        }
        if nonce.contains('/') || nonce.len() > MAX_NONCE_LEN {
            return Ok(None);
        }
        let stored = format!("{issuer_id}/{nonce}");
        let used = store
            .compare_and_swap(ks::NONCES, &stored, Some(b"1".to_vec()), None)
            .await?;
        Ok((used == Cas::Swapped).then_some(UsedNonce::Stored(stored)))
    }

    /// Puts back c_nonces a request used and then issued nothing with (a store failure, a
    /// refused later proof): the compensating half of "a nonce is used by one issuance". Each
    /// proof's own `iat` window still bounds how long it is accepted.
    pub(super) async fn restore_nonces(&self, used: &[UsedNonce]) {
        for u in used {
            let undone = match u {
                UsedNonce::Marker(marker) => {
                    self.ctx.store.delete(ks::NONCES, marker).await.map(|_| ())
                }
                UsedNonce::Stored(key) => {
                    self.ctx
                        .store
                        .put(ks::NONCES, key, b"1".to_vec(), Some(secs(NONCE_TTL)))
                        .await
                }
            };
            if let Err(e) = undone {
                tracing::debug!(error = %e, "c_nonce not restored (the wallet gets a fresh one)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_its_issuers_and_expires() {
        let (sealer, now) = (Sealer::new(&[3u8; 32]), 1_800_000_000);
        let n = mint(&sealer, "default", now).unwrap();
        let (body, tag) = n.rsplit_once('.').unwrap();
        assert_eq!(
            expiry(&sealer, "default", &n, now),
            Some((now + NONCE_TTL as i64, body))
        );
        // padding the tag names the same nonce
        let padded = format!("{n}==");
        assert!(expiry(&sealer, "default", &padded, now).is_none_or(|(_, b)| b == body));
        assert_eq!(expiry(&sealer, "other", &n, now), None, "another issuer's");
        assert_eq!(expiry(&Sealer::new(&[4u8; 32]), "default", &n, now), None);
        assert_eq!(expiry(&sealer, "default", &n, now + NONCE_TTL as i64), None);
        // its expiry moved, its tag altered, garbage
        let later = body.replacen(
            &(now + NONCE_TTL as i64).to_string(),
            &(now + 9_999).to_string(),
            1,
        );
        assert_eq!(
            expiry(&sealer, "default", &format!("{later}.{tag}"), now),
            None
        );
        for bad in [
            "",
            "n1",
            "n1.1.2.3",
            &format!("{body}.x.{tag}"),
            &"a".repeat(200),
        ] {
            assert_eq!(expiry(&sealer, "default", bad, now), None, "{bad:.30}");
        }
    }
}
