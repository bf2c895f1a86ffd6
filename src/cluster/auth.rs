//! Authentication of internal RPC: every request carries a timestamp, a random nonce and an
//! HMAC-SHA256 over method, path, timestamp, nonce and the body's SHA-256, under a key derived from
//! the cluster secret. A request older than the window, from the future, or whose nonce was already
//! seen inside the window is refused, so a captured request cannot be replayed.
//!
//! A second HMAC, the head signature, covers the same fields without the body: the RPC server
//! checks it before it reads a single body byte, so a process without the secret cannot make a
//! node buffer (up to 64 MiB per connection) a body it will refuse anyway.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_TS: &str = "x-idstack-cluster-ts";
pub const HEADER_NONCE: &str = "x-idstack-cluster-nonce";
pub const HEADER_SIG: &str = "x-idstack-cluster-sig";
pub const HEADER_NODE: &str = "x-idstack-cluster-node";
/// HMAC over method, path, timestamp and nonce only ([`sign_head`]), checked before the body is
/// read. Sent since data protocol 2 ([`HEAD_SIG_SINCE_PROTOCOL`]).
pub const HEADER_HEAD_SIG: &str = "x-idstack-cluster-head-sig";
/// The first data protocol ([`super::DATA_PROTOCOL`]) whose nodes send [`HEADER_HEAD_SIG`].
pub const HEAD_SIG_SINCE_PROTOCOL: u32 = 2;
/// On responses: HMAC over the request's path and nonce, the status and the body's SHA-256.
pub const HEADER_RESP_SIG: &str = "x-idstack-cluster-resp-sig";

/// How far a request's timestamp may be from this node's clock.
pub const WINDOW_MS: i64 = 30_000;

pub use crate::store::seal::derive_cluster_key as derive_key;

fn mac_input(method: &str, path: &str, ts: i64, nonce: &str, body: &[u8]) -> Vec<u8> {
    let body_hash = Sha256::digest(body);
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(method.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(path.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(ts.to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(nonce.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(&body_hash);
    m
}

/// Input of the head signature. Domain-separated from the request input (which starts with the
/// method, an HTTP token: it never contains a space) and from the response input (which starts
/// with `RESPONSE\n`), so no signature of one kind verifies as another.
fn head_mac_input(method: &str, path: &str, ts: i64, nonce: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(b"idstack cluster request head\n");
    m.extend_from_slice(method.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(path.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(ts.to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(nonce.as_bytes());
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex head signature of a request (no body: see [`HEADER_HEAD_SIG`]).
pub fn sign_head(key: &[u8; 32], method: &str, path: &str, ts: i64, nonce: &str) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return String::new();
    };
    mac.update(&head_mac_input(method, path, ts, nonce));
    hex(&mac.finalize().into_bytes())
}

/// Hex signature of a request.
pub fn sign(key: &[u8; 32], method: &str, path: &str, ts: i64, nonce: &str, body: &[u8]) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return String::new();
    };
    mac.update(&mac_input(method, path, ts, nonce, body));
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn response_mac(
    key: &[u8; 32],
    path: &str,
    nonce: &str,
    status: u16,
    body: &[u8],
) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    // domain-separated from requests (whose input starts with the method), and bound to the
    // request's random nonce, so a response cannot be replayed for another call or be taken for a request
    mac.update(b"RESPONSE\n");
    mac.update(path.as_bytes());
    mac.update(b"\n");
    mac.update(status.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(nonce.as_bytes());
    mac.update(b"\n");
    mac.update(&Sha256::digest(body));
    Some(mac)
}

/// Hex signature of a response to the request with `nonce` on `path`.
pub fn sign_response(key: &[u8; 32], path: &str, nonce: &str, status: u16, body: &[u8]) -> String {
    response_mac(key, path, nonce, status, body)
        .map(|m| {
            m.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `sig` is the signature of this response (constant-time comparison).
pub fn verify_response(
    key: &[u8; 32],
    path: &str,
    nonce: &str,
    status: u16,
    body: &[u8],
    sig: Option<&str>,
) -> bool {
    let Some(sig) = sig.and_then(hex_decode) else {
        return false;
    };
    response_mac(key, path, nonce, status, body).is_some_and(|m| m.verify_slice(&sig).is_ok())
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| {
            s.get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed cluster authentication headers")]
    Malformed,
    #[error("request timestamp outside the accepted window")]
    Stale,
    #[error("bad signature")]
    BadSignature,
    #[error("replayed request")]
    Replay,
}

/// Nonces seen inside the window, and the order they expire in.
type Seen = (HashMap<String, i64>, VecDeque<(i64, String)>);

/// Checks signatures and remembers nonces for the window.
pub struct Verifier {
    key: [u8; 32],
    seen: Mutex<Seen>,
}

impl Verifier {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key,
            seen: Mutex::default(),
        }
    }

    /// The checks a head and a whole request share: headers present and well-formed, the
    /// timestamp inside the window, and `sig` the MAC of what `input` makes of them (constant
    /// time). Returns the nonce.
    fn signed<'n>(
        &self,
        now_ms: i64,
        ts: Option<&str>,
        nonce: Option<&'n str>,
        sig: Option<&str>,
        input: impl FnOnce(i64, &str) -> Vec<u8>,
    ) -> Result<&'n str, AuthError> {
        let (Some(ts), Some(nonce), Some(sig)) = (ts, nonce, sig) else {
            return Err(AuthError::Malformed);
        };
        let ts: i64 = ts.parse().map_err(|_| AuthError::Malformed)?;
        if nonce.is_empty() || nonce.len() > 64 {
            return Err(AuthError::Malformed);
        }
        if (now_ms - ts).abs() > WINDOW_MS {
            return Err(AuthError::Stale);
        }
        let sig_bytes = hex_decode(sig).ok_or(AuthError::Malformed)?;
        let mut mac = HmacSha256::new_from_slice(&self.key).map_err(|_| AuthError::Malformed)?;
        mac.update(&input(ts, nonce));
        mac.verify_slice(&sig_bytes)
            .map_err(|_| AuthError::BadSignature)?;
        Ok(nonce)
    }

    /// Checks a request's head before its body is read: well-formed headers, timestamp inside the
    /// window, head signature (constant-time), and a nonce not already used (a replayed head of
    /// a completed request is refused here; the nonce is only recorded by [`Verifier::verify`]
    /// once the whole request verified).
    pub fn verify_head(
        &self,
        now_ms: i64,
        method: &str,
        path: &str,
        ts: Option<&str>,
        nonce: Option<&str>,
        head_sig: Option<&str>,
    ) -> Result<(), AuthError> {
        let nonce = self.signed(now_ms, ts, nonce, head_sig, |ts, nonce| {
            head_mac_input(method, path, ts, nonce)
        })?;
        let Ok(guard) = self.seen.lock() else {
            return Err(AuthError::Replay);
        };
        if guard.0.contains_key(nonce) {
            return Err(AuthError::Replay);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &self,
        now_ms: i64,
        method: &str,
        path: &str,
        ts: Option<&str>,
        nonce: Option<&str>,
        sig: Option<&str>,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let nonce = self.signed(now_ms, ts, nonce, sig, |ts, nonce| {
            mac_input(method, path, ts, nonce, body)
        })?;
        let Ok(mut guard) = self.seen.lock() else {
            return Err(AuthError::Replay);
        };
        let (set, order) = &mut *guard;
        while let Some((t, _)) = order.front() {
            if *t < now_ms - 2 * WINDOW_MS {
                if let Some((_, n)) = order.pop_front() {
                    set.remove(&n);
                }
            } else {
                break;
            }
        }
        if set.insert(nonce.to_string(), now_ms).is_some() {
            return Err(AuthError::Replay);
        }
        order.push_back((now_ms, nonce.to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_requests_pass_once_and_tampering_stale_or_replay_fail() {
        let key = derive_key(b"a cluster secret of some length", "idstack", "rpc");
        let v = Verifier::new(key);
        let now = 1_700_000_000_000;
        let body = br#"{"records":[]}"#;
        let sig = sign(&key, "POST", "/cluster/v1/apply", now, "n1", body);
        let ts = now.to_string();
        let check = |path: &str, ts: &str, nonce: &str, sig: &str, body: &[u8], at: i64| {
            v.verify(at, "POST", path, Some(ts), Some(nonce), Some(sig), body)
        };
        assert_eq!(
            check("/cluster/v1/apply", &ts, "n1", &sig, body, now),
            Ok(())
        );
        // the same request again is a replay
        assert_eq!(
            check("/cluster/v1/apply", &ts, "n1", &sig, body, now + 5),
            Err(AuthError::Replay)
        );
        // another body, path or nonce under the same signature
        assert_eq!(
            check("/cluster/v1/apply", &ts, "n2", &sig, body, now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check("/cluster/v1/cas", &ts, "n1", &sig, body, now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check("/cluster/v1/apply", &ts, "n1", &sig, b"{}", now),
            Err(AuthError::BadSignature)
        );
        // too old / from the future
        let old = sign(&key, "POST", "/p", now - WINDOW_MS - 1, "n3", body);
        assert_eq!(
            check(
                "/p",
                &(now - WINDOW_MS - 1).to_string(),
                "n3",
                &old,
                body,
                now
            ),
            Err(AuthError::Stale)
        );
        // a key from another secret or another cluster id
        let other = derive_key(b"a cluster secret of some length", "other", "rpc");
        assert_ne!(other, key);
        let forged = sign(&other, "POST", "/p", now, "n4", body);
        assert_eq!(
            check("/p", &ts, "n4", &forged, body, now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(now, "POST", "/p", None, Some("n"), Some("00"), body),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            check("/p", &ts, "n5", "zz", body, now),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn responses_are_bound_to_key_request_status_and_body() {
        let key = derive_key(b"a cluster secret of some length", "idstack", "rpc");
        let p = "/cluster/v1/cas";
        let sig = sign_response(&key, p, "nonce-1", 200, b"{\"swapped\":true}");
        let ok = |path: &str, nonce: &str, status: u16, body: &[u8], sig: Option<&str>| {
            verify_response(&key, path, nonce, status, body, sig)
        };
        assert!(ok(p, "nonce-1", 200, b"{\"swapped\":true}", Some(&sig)));
        // a forged body, another status, the answer to another request, another path
        assert!(!ok(p, "nonce-1", 200, b"{\"swapped\":false}", Some(&sig)));
        assert!(!ok(p, "nonce-1", 503, b"{\"swapped\":true}", Some(&sig)));
        assert!(!ok(p, "nonce-2", 200, b"{\"swapped\":true}", Some(&sig)));
        assert!(!ok(
            "/cluster/v1/get",
            "nonce-1",
            200,
            b"{\"swapped\":true}",
            Some(&sig)
        ));
        // unsigned, malformed, or signed under another secret
        assert!(!ok(p, "nonce-1", 200, b"{\"swapped\":true}", None));
        assert!(!ok(p, "nonce-1", 200, b"{\"swapped\":true}", Some("zz")));
        let other = derive_key(b"another secret of some length!!", "idstack", "rpc");
        let forged = sign_response(&other, p, "nonce-1", 200, b"{\"swapped\":true}");
        assert!(!ok(p, "nonce-1", 200, b"{\"swapped\":true}", Some(&forged)));
        // a request signature is not a response signature
        let req_sig = sign(&key, "POST", p, 200, "nonce-1", b"{\"swapped\":true}");
        assert!(!ok(
            p,
            "nonce-1",
            200,
            b"{\"swapped\":true}",
            Some(&req_sig)
        ));
    }

    #[test]
    fn head_signatures_cover_the_head_and_are_no_other_signature() {
        let key = derive_key(b"a cluster secret of some length", "idstack", "rpc");
        let v = Verifier::new(key);
        let now = 1_700_000_000_000;
        let (p, ts) = ("/cluster/v1/apply", now.to_string());
        let head = sign_head(&key, "POST", p, now, "n1");
        let check = |path: &str, nonce: &str, sig: &str, at: i64| {
            v.verify_head(at, "POST", path, Some(&ts), Some(nonce), Some(sig))
        };
        assert_eq!(check(p, "n1", &head, now), Ok(()));
        // checking a head records nothing: the full request can still be verified once
        assert_eq!(check(p, "n1", &head, now), Ok(()));
        assert_eq!(
            check("/cluster/v1/cas", "n1", &head, now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(check(p, "n2", &head, now), Err(AuthError::BadSignature));
        assert_eq!(
            check(p, "n1", &head, now + WINDOW_MS + 1),
            Err(AuthError::Stale)
        );
        assert_eq!(check(p, "n1", "zz", now), Err(AuthError::Malformed));
        assert_eq!(
            v.verify_head(now, "POST", p, Some(&ts), Some("n1"), None),
            Err(AuthError::Malformed)
        );
        // a request or response signature is not a head signature, nor the other way round
        let body = b"";
        let req = sign(&key, "POST", p, now, "n1", body);
        assert_eq!(check(p, "n1", &req, now), Err(AuthError::BadSignature));
        let resp = sign_response(&key, p, "n1", 200, body);
        assert_eq!(check(p, "n1", &resp, now), Err(AuthError::BadSignature));
        assert!(!verify_response(&key, p, "n1", 200, body, Some(&head)));
        assert_eq!(
            v.verify(now, "POST", p, Some(&ts), Some("n1"), Some(&head), body),
            Err(AuthError::BadSignature)
        );
        // once the whole request verified, its head is a replay
        assert_eq!(
            v.verify(now, "POST", p, Some(&ts), Some("n1"), Some(&req), body),
            Ok(())
        );
        assert_eq!(check(p, "n1", &head, now + 1), Err(AuthError::Replay));
    }
}
