//! Device tokens: a client that signed in before keeps its own login-failure count, so an
//! attacker who locks an email with wrong passwords does not lock its owner out (OWASP's
//! "device cookies").
//!
//! A successful login returns a `device_token`; a login that sends it back for the same account
//! takes its attempt from that token's own counter instead of the email's. The token is
//! stateless — an HMAC under a key derived from the master key, so every node of a deployment
//! checks it alike and nothing is stored per login — and names the account and when it was made.
//! It grants no access by itself: the password is still checked, and a device that guesses
//! wrong is locked like an email is (`wallet.login_lock_*`). Only a correct password makes one,
//! so an attacker without the password has only the email's attempts.

use hmac::Mac;

use crate::crypto::{b64url, b64url_decode, sha256_hex};
use crate::store::{MacKey, Sealer};

/// How long a device token is honoured after it was made.
pub const DEVICE_TOKEN_TTL_SECS: i64 = 90 * 24 * 3600;
/// A login with a token older than this gets a fresh one back.
const RENEW_AFTER_SECS: i64 = 30 * 24 * 3600;
/// Longer strings are not parsed.
const MAX_TOKEN_LEN: usize = 512;
const VERSION: &str = "d1";

/// The HMAC key device tokens are made and checked with.
#[derive(Clone)]
pub struct DeviceKey(MacKey);

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

/// A device token that checked out for an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDevice {
    /// Where its failure count is kept (a digest: the token itself is never stored).
    pub counter_key: String,
    issued_at: i64,
}

impl KnownDevice {
    /// Whether a login with it should hand out a fresh token.
    pub fn due_for_renewal(&self, now: i64) -> bool {
        now.saturating_sub(self.issued_at) >= RENEW_AFTER_SECS
    }
}

impl DeviceKey {
    pub fn new(sealer: &Sealer) -> Self {
        Self(sealer.mac_key(b"idstack wallet device token v1"))
    }

    /// A new token for `account`, made at `now` (seconds).
    pub fn mint(&self, account: &str, now: i64) -> String {
        let nonce: [u8; 16] = rand::random();
        let body = format!("{VERSION}.{}.{now}.{}", b64url(account), b64url(nonce));
        let mac = self.0.over(&[body.as_bytes()]);
        format!("{body}.{}", b64url(mac.finalize().into_bytes()))
    }

    /// The device `token` names, if it was made by this deployment for `account` and has not
    /// expired. Anything else — another account's token, a forged or altered one, garbage — is
    /// `None`, and the login counts against the email like any other client.
    pub fn check(&self, token: &str, account: &str, now: i64) -> Option<KnownDevice> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (body, tag) = token.rsplit_once('.')?;
        let mac = self.0.over(&[body.as_bytes()]);
        mac.verify_slice(&b64url_decode(tag).ok()?).ok()?;
        let mut parts = body.split('.');
        let (version, acc, issued_at) = (parts.next()?, parts.next()?, parts.next()?);
        let (_nonce, None) = (parts.next()?, parts.next()) else {
            return None;
        };
        let issued_at: i64 = issued_at.parse().ok()?;
        let for_account = b64url_decode(acc).ok()? == account.as_bytes();
        let age = now.saturating_sub(issued_at);
        (version == VERSION && for_account && (0..DEVICE_TOKEN_TTL_SECS).contains(&age)).then(
            || KnownDevice {
                // The MACed body, not the token: the tag's encoding can vary (`=` padding) and
                // must not make a counter per spelling.
                counter_key: sha256_hex(body),
                issued_at,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> DeviceKey {
        DeviceKey::new(&Sealer::new(&[byte; 32]))
    }

    #[test]
    fn a_token_is_honoured_only_for_its_account_key_and_lifetime() {
        let (k, now) = (key(1), 1_700_000_000);
        let t = k.mint("acc-1", now);
        let d = k.check(&t, "acc-1", now + 5).expect("its own token");
        assert!(!d.due_for_renewal(now + 5));
        assert!(d.due_for_renewal(now + RENEW_AFTER_SECS));
        assert!(k.check(&t, "acc-2", now).is_none(), "another account's");
        assert!(
            key(2).check(&t, "acc-1", now).is_none(),
            "another deployment's"
        );
        assert!(k.check(&t, "acc-1", now + DEVICE_TOKEN_TTL_SECS).is_none());
        assert!(
            k.check(&t, "acc-1", now - 10).is_none(),
            "made in the future"
        );
        // Padding the tag spells the same token: the same counter, not a fresh one.
        let padded = k
            .check(&format!("{t}=="), "acc-1", now)
            .map(|p| p.counter_key);
        assert!(padded.is_none() || padded == Some(d.counter_key.clone()));
        // Two tokens of one account keep two counters.
        let t2 = k.mint("acc-1", now);
        assert_ne!(
            k.check(&t2, "acc-1", now).unwrap().counter_key,
            d.counter_key
        );
    }

    #[test]
    fn altered_or_malformed_tokens_are_refused() {
        let (k, now) = (key(1), 1_700_000_000);
        let t = k.mint("acc-1", now);
        let (body, tag) = t.rsplit_once('.').unwrap();
        let parts: Vec<&str> = body.split('.').collect();
        // The account swapped for another's, the time moved, the version changed: the MAC fails.
        let swapped = format!(
            "{}.{}.{}.{}.{tag}",
            parts[0],
            b64url("acc-2"),
            parts[2],
            parts[3]
        );
        assert!(k.check(&swapped, "acc-2", now).is_none());
        let later = format!("{}.{}.{}.{}.{tag}", parts[0], parts[1], now + 1, parts[3]);
        assert!(k.check(&later, "acc-1", now + 1).is_none());
        for bad in [
            "",
            ".",
            "d1",
            "d1.x.y.z",
            &format!("{body}.{body}"),
            &format!("{body}.extra.{tag}"),
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(k.check(bad, "acc-1", now).is_none(), "{bad:.40}");
        }
        // A correctly MACed body of the wrong shape (five fields) is refused too.
        let odd = format!("d1.{}.{now}.n.extra", b64url("acc-1"));
        let mac = k.0.over(&[odd.as_bytes()]);
        let forged = format!("{odd}.{}", b64url(mac.finalize().into_bytes()));
        assert!(k.check(&forged, "acc-1", now).is_none());
    }
}
