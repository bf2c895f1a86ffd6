//! Authentication of internal RPC: every request carries a timestamp, a random nonce and an
//! HMAC-SHA256 over the target node's id, method, path, timestamp, nonce and the body's SHA-256,
//! under a key derived from the cluster secret. A request older than the window, from the future,
//! signed for another node, or whose nonce was already seen inside the window is refused, so a
//! captured request can be replayed neither to its node nor to any other.
//!
//! A second HMAC, the head signature, covers the same fields without the body: the RPC server
//! checks it before it reads a single body byte, so a process without the secret cannot make a
//! node buffer (up to 64 MiB per connection) a body it will refuse anyway. The head check reserves
//! the nonce ([`Verifier::verify_head`] returns a [`Reservation`]), so a captured head admits one
//! body at one node, not one per connection until the original request completes.
//!
//! Nodes of data protocol 1 sign the whole request without the target ([`sign_legacy`]) and no
//! head; a node takes that form only from them ([`Admission::Legacy`]) and sends it only to them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_TS: &str = "x-idstack-cluster-ts";
pub const HEADER_NONCE: &str = "x-idstack-cluster-nonce";
/// HMAC over the whole request: [`sign`] (bound to the target node), or [`sign_legacy`] between
/// a node and one of data protocol 1.
pub const HEADER_SIG: &str = "x-idstack-cluster-sig";
pub const HEADER_NODE: &str = "x-idstack-cluster-node";
/// HMAC over target node, method, path, timestamp and nonce only ([`sign_head`]), checked before
/// the body is read. Sent since data protocol 2 ([`HEAD_SIG_SINCE_PROTOCOL`]).
pub const HEADER_HEAD_SIG: &str = "x-idstack-cluster-head-sig";
/// The first data protocol ([`super::DATA_PROTOCOL`]) whose nodes send [`HEADER_HEAD_SIG`] and
/// sign requests for their target ([`sign`]).
pub const HEAD_SIG_SINCE_PROTOCOL: u32 = 2;
/// On responses: HMAC over the request's path and nonce, the status and the body's SHA-256.
pub const HEADER_RESP_SIG: &str = "x-idstack-cluster-resp-sig";

/// How far a request's timestamp may be from this node's clock.
pub const WINDOW_MS: i64 = 30_000;

pub use crate::store::seal::derive_cluster_key as derive_key;

/// The fields every request MAC covers, after its domain prefix. The target is length-prefixed:
/// a node id is configuration and could hold a newline, the other fields cannot (an HTTP method
/// and path, digits, a header value), so no two field lists give the same input.
fn push_fields(m: &mut Vec<u8>, target: &str, method: &str, path: &str, ts: i64, nonce: &str) {
    m.extend_from_slice(target.len().to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(target.as_bytes());
    m.push(b'\n');
    push_request(m, method, path, ts, nonce);
}

/// Method, path, timestamp and nonce, one per line: what every request input covers.
fn push_request(m: &mut Vec<u8>, method: &str, path: &str, ts: i64, nonce: &str) {
    m.extend_from_slice(method.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(path.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(ts.to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(nonce.as_bytes());
}

/// Input of the whole-request signature of data protocol 1: no target (so only ever checked for
/// a request from a protocol-1 node, see [`Admission::Legacy`]). Starts with the method, an HTTP
/// token: never a space, unlike every other input here.
fn legacy_mac_input(method: &str, path: &str, ts: i64, nonce: &str, body: &[u8]) -> Vec<u8> {
    let body_hash = Sha256::digest(body);
    let mut m = Vec::with_capacity(128);
    push_request(&mut m, method, path, ts, nonce);
    m.push(b'\n');
    m.extend_from_slice(&body_hash);
    m
}

/// Input of the whole-request signature: bound to the target node, so a captured request is
/// refused by every other node (each keeps its own nonce cache). Domain-separated from the head
/// input (`...request head\n`), the legacy one (no space) and responses (`RESPONSE\n`).
fn mac_input(target: &str, method: &str, path: &str, ts: i64, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(160);
    m.extend_from_slice(b"idstack cluster request\n");
    push_fields(&mut m, target, method, path, ts, nonce);
    m.push(b'\n');
    m.extend_from_slice(&Sha256::digest(body));
    m
}

/// Input of the head signature: bound to the target node like [`mac_input`], and domain-separated
/// from it, from the legacy request input (which starts with the method, an HTTP token: it never
/// contains a space) and from the response input (which starts with `RESPONSE\n`), so no
/// signature of one kind verifies as another.
fn head_mac_input(target: &str, method: &str, path: &str, ts: i64, nonce: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(b"idstack cluster request head\n");
    push_fields(&mut m, target, method, path, ts, nonce);
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac_hex(key: &[u8; 32], input: &[u8]) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return String::new();
    };
    mac.update(input);
    hex(&mac.finalize().into_bytes())
}

/// Hex head signature of a request to node `target` (no body: see [`HEADER_HEAD_SIG`]).
pub fn sign_head(
    key: &[u8; 32],
    target: &str,
    method: &str,
    path: &str,
    ts: i64,
    nonce: &str,
) -> String {
    mac_hex(key, &head_mac_input(target, method, path, ts, nonce))
}

/// Hex signature of a request to node `target`.
pub fn sign(
    key: &[u8; 32],
    target: &str,
    method: &str,
    path: &str,
    ts: i64,
    nonce: &str,
    body: &[u8],
) -> String {
    mac_hex(key, &mac_input(target, method, path, ts, nonce, body))
}

/// Hex signature of a request in the form of data protocol 1 (no target): only for a target node
/// of that protocol, which knows no other.
pub fn sign_legacy(
    key: &[u8; 32],
    method: &str,
    path: &str,
    ts: i64,
    nonce: &str,
    body: &[u8],
) -> String {
    mac_hex(key, &legacy_mac_input(method, path, ts, nonce, body))
}

fn response_mac(
    key: &[u8; 32],
    path: &str,
    nonce: &str,
    status: u16,
    body: &[u8],
) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    // domain-separated from requests (whose inputs start with the method or "idstack"), and bound
    // to the request's random nonce, so a response cannot be replayed for another call or be taken
    // for a request. Not bound to the responder: a caller sends each fresh nonce to one node only,
    // signed for that node, so no other node accepts it and answers it with success; the signed
    // refusal another node gives a diverted copy only says "failed", which whoever can divert the
    // request can cause anyway (by dropping or altering it). During a rolling upgrade a request to
    // a protocol-1 node carries the legacy, unbound signature, so that guarantee holds only between
    // nodes of protocol 2 (the answers of protocol-1 nodes could not carry a responder anyway).
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
        .map(|m| hex(&m.finalize().into_bytes()))
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

/// What the replay cache knows of a nonce seen inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NonceUse {
    /// Reserved by the head check of one request ([`Reservation::id`]), whose body was not (yet)
    /// verified.
    Reserved(u64),
    /// A whole request with this nonce verified.
    Used,
}

/// Nonces seen inside the window (when first seen, and how), and the order they expire in.
type Seen = (HashMap<String, (i64, NonceUse)>, VecDeque<(i64, String)>);

/// A nonce reserved by [`Verifier::verify_head`] for one request: only [`Verifier::verify`] of
/// that request, handed this value, may turn it into a used nonce. Not `Clone`: the RPC server
/// keeps it in the request's extensions and takes it out for the one full check.
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    nonce: String,
    id: u64,
}

/// How a request was let in before its body was read, which decides how [`Verifier::verify`]
/// checks it.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Its head signature verified and reserved its nonce: the whole request must carry the
    /// signature bound to this node ([`sign`]) and that nonce.
    Head(Reservation),
    /// From a live node of data protocol 1 (no head signature): the whole request carries the
    /// legacy signature ([`sign_legacy`]) and its nonce must be new, as before protocol 2.
    Legacy,
}

/// Checks signatures for this node and remembers nonces for the window.
pub struct Verifier {
    key: [u8; 32],
    /// This node's id: the target every request to it must be signed for.
    me: String,
    seen: Mutex<Seen>,
    /// Source of [`Reservation::id`]: distinct for every reservation this verifier makes.
    reservations: AtomicU64,
}

impl Verifier {
    pub fn new(key: [u8; 32], me: &str) -> Self {
        Self {
            key,
            me: me.to_string(),
            seen: Mutex::default(),
            reservations: AtomicU64::new(0),
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

    /// The replay cache, entries older than twice the window dropped: by then a request with
    /// their nonce is stale (its timestamp was within the window of when the entry was made).
    fn seen(&self, now_ms: i64) -> Result<std::sync::MutexGuard<'_, Seen>, AuthError> {
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
        Ok(guard)
    }

    /// Checks a request's head before its body is read: well-formed headers, timestamp inside the
    /// window, head signature for this node (constant-time), and a nonce never seen; then
    /// reserves the nonce for this request. A second head with the same nonce is a replay from
    /// then on, whether the first request is still in flight, completed, or failed its full
    /// check: a captured head makes this node read at most one body, once.
    pub fn verify_head(
        &self,
        now_ms: i64,
        method: &str,
        path: &str,
        ts: Option<&str>,
        nonce: Option<&str>,
        head_sig: Option<&str>,
    ) -> Result<Reservation, AuthError> {
        let nonce = self.signed(now_ms, ts, nonce, head_sig, |ts, nonce| {
            head_mac_input(&self.me, method, path, ts, nonce)
        })?;
        let mut guard = self.seen(now_ms)?;
        let (set, order) = &mut *guard;
        if set.contains_key(nonce) {
            return Err(AuthError::Replay);
        }
        let id = self.reservations.fetch_add(1, Ordering::Relaxed);
        set.insert(nonce.to_string(), (now_ms, NonceUse::Reserved(id)));
        order.push_back((now_ms, nonce.to_string()));
        Ok(Reservation {
            nonce: nonce.to_string(),
            id,
        })
    }

    /// Checks a whole request let in as `admission` says: its signature (bound to this node
    /// unless [`Admission::Legacy`]) and its nonce, which must be the one its head reserved (still
    /// reserved for it) or, for a legacy request, never seen. The nonce is then used.
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &self,
        now_ms: i64,
        admission: Admission,
        method: &str,
        path: &str,
        ts: Option<&str>,
        nonce: Option<&str>,
        sig: Option<&str>,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let nonce = match &admission {
            Admission::Head(_) => self.signed(now_ms, ts, nonce, sig, |ts, nonce| {
                mac_input(&self.me, method, path, ts, nonce, body)
            })?,
            Admission::Legacy => self.signed(now_ms, ts, nonce, sig, |ts, nonce| {
                legacy_mac_input(method, path, ts, nonce, body)
            })?,
        };
        // a reservation is for its own nonce only (the header cannot change within one request,
        // but nothing else may be turned into a use by it)
        let reserved = match &admission {
            Admission::Head(r) if r.nonce != nonce => return Err(AuthError::Replay),
            Admission::Head(r) => Some(r.id),
            Admission::Legacy => None,
        };
        let mut guard = self.seen(now_ms)?;
        let (set, order) = &mut *guard;
        match (reserved, set.get(nonce).copied()) {
            // the one request whose head reserved this nonce: its reservation becomes the use
            (Some(mine), Some((at, NonceUse::Reserved(id)))) if mine == id => {
                set.insert(nonce.to_string(), (at, NonceUse::Used));
                Ok(())
            }
            // never seen: a legacy request, or one whose reservation aged out of the cache (only
            // at the very edge of the window, whose timestamp check just passed)
            (_, None) => {
                set.insert(nonce.to_string(), (now_ms, NonceUse::Used));
                order.push_back((now_ms, nonce.to_string()));
                Ok(())
            }
            // used, or reserved by another request's head
            (_, Some(_)) => Err(AuthError::Replay),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> [u8; 32] {
        derive_key(b"a cluster secret of some length", "idstack", "rpc")
    }

    /// A whole request's check as the RPC server makes it: the head first, then the body under
    /// the head's reservation.
    fn head_then_body(
        v: &Verifier,
        at: i64,
        path: &str,
        ts: &str,
        nonce: &str,
        (head, sig): (&str, &str),
        body: &[u8],
    ) -> Result<(), AuthError> {
        let r = v.verify_head(at, "POST", path, Some(ts), Some(nonce), Some(head))?;
        v.verify(
            at,
            Admission::Head(r),
            "POST",
            path,
            Some(ts),
            Some(nonce),
            Some(sig),
            body,
        )
    }

    #[test]
    fn signed_requests_pass_once_and_tampering_stale_or_replay_fail() {
        let key = key();
        let v = Verifier::new(key, "a");
        let now = 1_700_000_000_000;
        let body = br#"{"records":[]}"#;
        let p = "/cluster/v1/apply";
        let sig = sign(&key, "a", "POST", p, now, "n1", body);
        let ts = now.to_string();
        // the full check alone (as if its reservation had aged out) and the legacy form
        let check = |path: &str, ts: &str, nonce: &str, sig: &str, body: &[u8], at: i64| {
            v.verify(
                at,
                Admission::Legacy,
                "POST",
                path,
                Some(ts),
                Some(nonce),
                Some(sig),
                body,
            )
        };
        let head = sign_head(&key, "a", "POST", p, now, "n1");
        assert_eq!(
            head_then_body(&v, now, p, &ts, "n1", (&head, &sig), body),
            Ok(())
        );
        // the same request again is a replay, at its head or (legacy form) whole
        assert_eq!(
            head_then_body(&v, now + 5, p, &ts, "n1", (&head, &sig), body),
            Err(AuthError::Replay)
        );
        let legacy = sign_legacy(&key, "POST", p, now, "n1", body);
        assert_eq!(
            check(p, &ts, "n1", &legacy, body, now),
            Err(AuthError::Replay)
        );
        // another body, path or nonce under the same signature
        let l = |n: &str, b: &[u8]| sign_legacy(&key, "POST", p, now, n, b);
        assert_eq!(
            check(p, &ts, "n2", &l("n1", body), body, now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check("/cluster/v1/cas", &ts, "n2", &l("n2", body), body, now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check(p, &ts, "n2", &l("n2", body), b"{}", now),
            Err(AuthError::BadSignature)
        );
        // a legacy request verifies (once) only as one
        assert_eq!(check(p, &ts, "n2", &l("n2", body), body, now), Ok(()));
        // too old / from the future
        let old = sign_legacy(&key, "POST", "/p", now - WINDOW_MS - 1, "n3", body);
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
        let forged = sign_legacy(&other, "POST", "/p", now, "n4", body);
        assert_eq!(
            check("/p", &ts, "n4", &forged, body, now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(
                now,
                Admission::Legacy,
                "POST",
                "/p",
                None,
                Some("n"),
                Some("00"),
                body
            ),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            check("/p", &ts, "n5", "zz", body, now),
            Err(AuthError::Malformed)
        );
        // the bound and the legacy forms are not each other
        let bound = sign(&key, "a", "POST", "/p", now, "n6", body);
        assert_eq!(
            check("/p", &ts, "n6", &bound, body, now),
            Err(AuthError::BadSignature)
        );
        let head6 = sign_head(&key, "a", "POST", "/p", now, "n6");
        let legacy6 = sign_legacy(&key, "POST", "/p", now, "n6", body);
        assert_eq!(
            head_then_body(&v, now, "/p", &ts, "n6", (&head6, &legacy6), body),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn responses_are_bound_to_key_request_status_and_body() {
        let key = key();
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
        // a request signature (either form) is not a response signature
        let body = b"{\"swapped\":true}";
        for req_sig in [
            sign(&key, "a", "POST", p, 200, "nonce-1", body),
            sign_legacy(&key, "POST", p, 200, "nonce-1", body),
        ] {
            assert!(!ok(p, "nonce-1", 200, body, Some(&req_sig)));
        }
    }

    #[test]
    fn head_signatures_cover_the_head_and_are_no_other_signature() {
        let key = key();
        let v = Verifier::new(key, "a");
        let now = 1_700_000_000_000;
        let (p, ts) = ("/cluster/v1/apply", now.to_string());
        let head = |nonce: &str| sign_head(&key, "a", "POST", p, now, nonce);
        let check = |path: &str, nonce: &str, sig: &str, at: i64| {
            v.verify_head(at, "POST", path, Some(&ts), Some(nonce), Some(sig))
                .map(|_| ())
        };
        assert_eq!(
            check("/cluster/v1/cas", "n1", &head("n1"), now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check(p, "n2", &head("n1"), now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check(p, "n1", &head("n1"), now + WINDOW_MS + 1),
            Err(AuthError::Stale)
        );
        assert_eq!(check(p, "n1", "zz", now), Err(AuthError::Malformed));
        assert_eq!(
            check(p, "n1", &"00".repeat(32), now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify_head(now, "POST", p, Some(&ts), Some("n1"), None)
                .map(|_| ()),
            Err(AuthError::Malformed)
        );
        // a request or response signature is not a head signature, nor the other way round
        let body = b"";
        for other in [
            sign(&key, "a", "POST", p, now, "n1", body),
            sign_legacy(&key, "POST", p, now, "n1", body),
            sign_response(&key, p, "n1", 200, body),
        ] {
            assert_eq!(check(p, "n1", &other, now), Err(AuthError::BadSignature));
        }
        assert!(!verify_response(
            &key,
            p,
            "n1",
            200,
            body,
            Some(&head("n1"))
        ));
        for admission in [
            Admission::Legacy,
            Admission::Head(Reservation {
                nonce: "n1".into(),
                id: u64::MAX,
            }),
        ] {
            assert_eq!(
                v.verify(
                    now,
                    admission,
                    "POST",
                    p,
                    Some(&ts),
                    Some("n1"),
                    Some(&head("n1")),
                    body
                ),
                Err(AuthError::BadSignature)
            );
        }
        // refused heads reserved nothing: the request still passes once
        let req = sign(&key, "a", "POST", p, now, "n1", body);
        assert_eq!(
            head_then_body(&v, now, p, &ts, "n1", (&head("n1"), &req), body),
            Ok(())
        );
        assert_eq!(check(p, "n1", &head("n1"), now + 1), Err(AuthError::Replay));
    }

    /// Attack: a head captured on its way to node a, replayed to node b of the same cluster
    /// (same key), or the whole request; before, neither MAC named the target, so b took both.
    #[test]
    fn a_request_signed_for_one_node_is_refused_by_every_other() {
        let key = key();
        let (a, b) = (Verifier::new(key, "a"), Verifier::new(key, "b"));
        let now = 1_700_000_000_000;
        let (p, ts, body) = ("/cluster/v1/apply", now.to_string(), b"{\"records\":[]}");
        let head = sign_head(&key, "a", "POST", p, now, "n1");
        let sig = sign(&key, "a", "POST", p, now, "n1", body);
        assert_eq!(
            b.verify_head(now, "POST", p, Some(&ts), Some("n1"), Some(&head))
                .map(|_| ()),
            Err(AuthError::BadSignature)
        );
        // the whole request, even with a head b accepted (signed for b, same nonce)
        let head_b = sign_head(&key, "b", "POST", p, now, "n1");
        assert_eq!(
            head_then_body(&b, now, p, &ts, "n1", (&head_b, &sig), body),
            Err(AuthError::BadSignature)
        );
        // a, the target, takes it (its nonce cache is its own)
        assert_eq!(
            head_then_body(&a, now, p, &ts, "n1", (&head, &sig), body),
            Ok(())
        );
        // the target is length-prefixed: no other split of the same bytes verifies
        let odd = Verifier::new(key, "a\nPOST");
        let h = sign_head(&key, "a", "POST\nPOST", p, now, "n2");
        assert_eq!(
            odd.verify_head(now, "POST", p, Some(&ts), Some("n2"), Some(&h))
                .map(|_| ()),
            Err(AuthError::BadSignature)
        );
    }

    /// Attack: one captured head sent on many connections at once (each would have the node
    /// buffer a body until the deadline) or again after its body failed the full check; before,
    /// the head check only read the replay cache and a failed body recorded nothing.
    #[test]
    fn a_head_reserves_its_nonce_for_its_own_request_only() {
        let key = key();
        let v = Verifier::new(key, "a");
        let now = 1_700_000_000_000;
        let (p, ts, body) = ("/cluster/v1/apply", now.to_string(), b"{\"records\":[]}");
        let head = |n: &str| sign_head(&key, "a", "POST", p, now, n);
        let sig = |n: &str, b: &[u8]| sign(&key, "a", "POST", p, now, n, b);
        let verify_head =
            |n: &str, at: i64| v.verify_head(at, "POST", p, Some(&ts), Some(n), Some(&head(n)));
        let verify = |r: Admission, n: &str, s: &str, b: &[u8]| {
            v.verify(now, r, "POST", p, Some(&ts), Some(n), Some(s), b)
        };

        // in flight: the first head holds the nonce, a copy is refused before its body
        let first = verify_head("n1", now).unwrap();
        assert_eq!(
            verify_head("n1", now + 1).map(|_| ()),
            Err(AuthError::Replay)
        );
        // the first request's body fails (a junk body under the captured head): still refused
        assert_eq!(
            verify(Admission::Head(first), "n1", &sig("n1", body), b"junk"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify_head("n1", now + 2).map(|_| ()),
            Err(AuthError::Replay)
        );

        // a reservation is good for its own request: not another's nonce, nor a second time
        let r2 = verify_head("n2", now).unwrap();
        let r3 = verify_head("n3", now).unwrap();
        assert_eq!(
            verify(Admission::Head(r3), "n2", &sig("n2", body), body),
            Err(AuthError::Replay)
        );
        // a request that reserved nothing (or legacy) cannot use a nonce another head reserved
        assert_eq!(
            verify(
                Admission::Legacy,
                "n2",
                &sign_legacy(&key, "POST", p, now, "n2", body),
                body
            ),
            Err(AuthError::Replay)
        );
        assert_eq!(
            verify(Admission::Head(r2), "n2", &sig("n2", body), body),
            Ok(())
        );
        let again = Reservation {
            nonce: "n2".into(),
            id: 1,
        };
        assert_eq!(
            verify(Admission::Head(again), "n2", &sig("n2", body), body),
            Err(AuthError::Replay)
        );
        assert_eq!(
            verify_head("n2", now + 3).map(|_| ()),
            Err(AuthError::Replay)
        );

        // a normal request: head, then body, once
        let r4 = verify_head("n4", now).unwrap();
        assert_eq!(
            verify(Admission::Head(r4), "n4", &sig("n4", body), body),
            Ok(())
        );
        // reservations age out with the window like used nonces (the head is stale by then)
        assert_eq!(
            verify_head("n1", now + 2 * WINDOW_MS + 1).map(|_| ()),
            Err(AuthError::Stale)
        );
    }
}
