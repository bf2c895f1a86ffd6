//! Authentication of internal RPC: every request carries a timestamp, a random nonce and an
//! HMAC-SHA256 over the target node's id, method, path, timestamp, nonce and the body's SHA-256,
//! under a key derived from the cluster secret. A request older than the window, from the future,
//! signed for another node, or whose nonce was already seen inside the window is refused, so a
//! captured request can be replayed neither to its node nor to any other (nor, being bound to
//! the target's incarnation as below, to its node after a restart).
//!
//! A second HMAC, the head signature, covers the same fields without the body: the RPC server
//! checks it before it reads a single body byte, so a process without the secret cannot make a
//! node buffer (up to 64 MiB per connection) a body it will refuse anyway. The head check reserves
//! the nonce ([`Verifier::verify_head`] returns a [`Reservation`]), so a captured head admits one
//! body at one node, not one per connection until the original request completes.
//!
//! Both MACs also name the target's **incarnation**, its chitchat generation (a new one on every
//! start, gossiped with its id): the replay cache lives in memory and node ids are stable, so
//! without it a request captured just before a node restarts could be replayed to the restarted
//! node inside the window. The caller signs for the generation gossip told it and sends it in
//! [`HEADER_GENERATION`]; a node refuses a head signed for another generation with
//! [`AuthError::OtherIncarnation`], which the RPC server answers (401, signed over the caller's
//! nonce like every answer) with its current generation, so a caller whose view is stale (the
//! target restarted, gossip has not told it yet) retries once, signed for that generation. The
//! answer is given only to a head whose MAC verifies for this node (so only to a holder of the
//! key), tells nothing gossip does not, and executes nothing; the retry is a new request with a
//! new nonce.
//!
//! Older forms, each taken only from a live member that gossips the older data protocol and sent
//! only to one: nodes of data protocol 2 sign both MACs for the target node without its
//! incarnation ([`Target::Node`], [`Form::Node`]); nodes of data protocol 1 sign the whole
//! request without the target ([`sign_legacy`]) and no head ([`Admission::Legacy`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_TS: &str = "x-idstack-cluster-ts";
pub const HEADER_NONCE: &str = "x-idstack-cluster-nonce";
/// HMAC over the whole request: [`sign`] (bound to the target node and, since data protocol 3, its
/// incarnation), or [`sign_legacy`] between a node and one of data protocol 1.
pub const HEADER_SIG: &str = "x-idstack-cluster-sig";
pub const HEADER_NODE: &str = "x-idstack-cluster-node";
/// HMAC over target node (and its generation since data protocol 3), method, path, timestamp and
/// nonce only ([`sign_head`]), checked before the body is read. Sent since data protocol 2
/// ([`HEAD_SIG_SINCE_PROTOCOL`]).
pub const HEADER_HEAD_SIG: &str = "x-idstack-cluster-head-sig";
/// The first data protocol ([`super::DATA_PROTOCOL`]) whose nodes send [`HEADER_HEAD_SIG`] and
/// sign requests for their target ([`sign`]).
pub const HEAD_SIG_SINCE_PROTOCOL: u32 = 2;
/// The target's generation (its incarnation) the request MACs were signed for
/// ([`Target::Incarnation`]). Sent since data protocol 3 ([`GENERATION_SINCE_PROTOCOL`]).
pub const HEADER_GENERATION: &str = "x-idstack-cluster-generation";
/// The first data protocol ([`super::DATA_PROTOCOL`]) whose nodes sign requests for their
/// target's incarnation ([`Target::Incarnation`]) and take no other form from one another.
pub const GENERATION_SINCE_PROTOCOL: u32 = 3;
/// `code` of the problem a node answers a head signed for another of its incarnations with; its
/// `generation` member is the node's current one ([`other_incarnation`]).
pub const OTHER_INCARNATION_CODE: &str = "cluster_rpc_generation";
/// On responses: HMAC over the request's path and nonce, the status and the body's SHA-256.
pub const HEADER_RESP_SIG: &str = "x-idstack-cluster-resp-sig";
/// On responses since data protocol 7 ([`RESP_LEN_SINCE_PROTOCOL`]): `<body length>:<HMAC over
/// the request's path and nonce, the status and that length>` ([`sign_response_len`]). The
/// caller checks it before it reads the body and reads no more than it says, so an answer that
/// is not a member's costs it its head, not whatever body an address on the path sends.
pub const HEADER_RESP_LEN: &str = "x-idstack-cluster-resp-len";
/// The first data protocol ([`super::DATA_PROTOCOL`]) whose nodes send [`HEADER_RESP_LEN`]; an
/// answer from one of them without it is read to a small bound only (a signed refusal fits),
/// then its body signature decides.
pub const RESP_LEN_SINCE_PROTOCOL: u32 = 7;

/// How far a request's timestamp may be from this node's clock.
pub const WINDOW_MS: i64 = 30_000;

/// Whether a replay-cache entry made at `at_ms` by the wall clock and at `since` by the
/// monotonic one may go, at `now_ms`: both say it is older than twice the window. By the wall
/// clock alone, a clock stepped forward and back emptied the cache while captured requests fell
/// inside the window again (cluster review).
pub(crate) fn expired(at_ms: i64, since: std::time::Instant, now_ms: i64) -> bool {
    let twice = 2 * WINDOW_MS;
    at_ms < now_ms - twice && since.elapsed().as_millis() > twice as u128
}

pub use crate::store::seal::derive_cluster_key as derive_key;

/// Whom a request's MACs are signed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// One incarnation of a node: its id and chitchat generation (since data protocol 3).
    Incarnation(&'a str, u64),
    /// A node, whichever incarnation: the form of data protocol 2, only to and from its nodes.
    Node(&'a str),
}

/// The fields every request MAC covers, after its domain prefix. The node id is length-prefixed:
/// it is configuration and could hold a newline, the other fields cannot (digits, an HTTP method
/// and path, a header value), so no two field lists give the same input. The generation follows
/// it only in the incarnation form, whose domain prefixes differ from the node form's.
fn push_fields(m: &mut Vec<u8>, target: Target, method: &str, path: &str, ts: i64, nonce: &str) {
    let (Target::Incarnation(id, _) | Target::Node(id)) = target;
    m.extend_from_slice(id.len().to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(id.as_bytes());
    m.push(b'\n');
    if let Target::Incarnation(_, generation) = target {
        m.extend_from_slice(generation.to_string().as_bytes());
        m.push(b'\n');
    }
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
/// refused by every other node (each keeps its own nonce cache), and in the incarnation form to
/// its incarnation, so it is refused after the target restarted too (its cache is then empty).
/// Domain-separated from the head inputs (`...request head...`), the other target form, the
/// legacy one (no space) and responses (`RESPONSE\n`).
fn mac_input(
    target: Target,
    method: &str,
    path: &str,
    ts: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(160);
    m.extend_from_slice(match target {
        Target::Incarnation(..) => b"idstack cluster request to incarnation\n".as_slice(),
        Target::Node(_) => b"idstack cluster request\n",
    });
    push_fields(&mut m, target, method, path, ts, nonce);
    m.push(b'\n');
    m.extend_from_slice(&Sha256::digest(body));
    m
}

/// Input of the head signature: bound to the target like [`mac_input`], and domain-separated
/// from it, from the other target form, from the legacy request input (which starts with the
/// method, an HTTP token: it never contains a space) and from the response input (which starts
/// with `RESPONSE\n`), so no signature of one kind verifies as another.
fn head_mac_input(target: Target, method: &str, path: &str, ts: i64, nonce: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(match target {
        Target::Incarnation(..) => b"idstack cluster request head to incarnation\n".as_slice(),
        Target::Node(_) => b"idstack cluster request head\n",
    });
    push_fields(&mut m, target, method, path, ts, nonce);
    m
}

use crate::crypto::hex;

pub(crate) fn mac_hex(key: &[u8; 32], input: &[u8]) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return String::new();
    };
    mac.update(input);
    hex(&mac.finalize().into_bytes())
}

/// Hex head signature of a request to `target` (no body: see [`HEADER_HEAD_SIG`]).
pub fn sign_head(
    key: &[u8; 32],
    target: Target,
    method: &str,
    path: &str,
    ts: i64,
    nonce: &str,
) -> String {
    mac_hex(key, &head_mac_input(target, method, path, ts, nonce))
}

/// Hex signature of a request to `target`.
pub fn sign(
    key: &[u8; 32],
    target: Target,
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

/// The MAC of the answer to the request with `nonce` on `path`, with `status`: over `last`, the
/// body's SHA-256 ("RESPONSE\n", [`HEADER_RESP_SIG`]) or its declared length ("RESPONSE
/// LENGTH\n", [`HEADER_RESP_LEN`]).
fn answer_mac(
    key: &[u8; 32],
    domain: &[u8],
    (path, nonce, status): (&str, &str, u16),
    last: &[u8],
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
    // Nor to the responder's incarnation: a request signed for one incarnation is answered with
    // success by that incarnation only (any other refuses it, see `AuthError::OtherIncarnation`).
    // The two domains differ at their ninth byte ("\n" against " ").
    mac.update(domain);
    mac.update(path.as_bytes());
    mac.update(b"\n");
    mac.update(status.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(nonce.as_bytes());
    mac.update(b"\n");
    mac.update(last);
    Some(mac)
}

fn response_mac(
    key: &[u8; 32],
    path: &str,
    nonce: &str,
    status: u16,
    body: &[u8],
) -> Option<HmacSha256> {
    answer_mac(
        key,
        b"RESPONSE\n",
        (path, nonce, status),
        &Sha256::digest(body),
    )
}

fn response_len_mac(
    key: &[u8; 32],
    path: &str,
    nonce: &str,
    status: u16,
    len: u64,
) -> Option<HmacSha256> {
    let len = len.to_string();
    answer_mac(
        key,
        b"RESPONSE LENGTH\n",
        (path, nonce, status),
        len.as_bytes(),
    )
}

/// [`HEADER_RESP_LEN`] of a response of `len` bytes to the request with `nonce` on `path`.
pub fn sign_response_len(key: &[u8; 32], path: &str, nonce: &str, status: u16, len: u64) -> String {
    let mac = response_len_mac(key, path, nonce, status, len)
        .map(|m| hex(&m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("{len}:{mac}")
}

/// The body length a response head declares in [`HEADER_RESP_LEN`], if its MAC verifies for
/// this request and status (constant-time comparison).
pub fn verify_response_len(
    key: &[u8; 32],
    path: &str,
    nonce: &str,
    status: u16,
    header: Option<&str>,
) -> Option<u64> {
    let (len, sig) = header?.split_once(':')?;
    // the one way `sign_response_len` writes a number: digits, no sign, no leading zero
    if len.is_empty()
        || len.len() > 20
        || (len.len() > 1 && len.starts_with('0'))
        || !len.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let len: u64 = len.parse().ok()?;
    let sig = hex_decode(sig)?;
    response_len_mac(key, path, nonce, status, len)?
        .verify_slice(&sig)
        .ok()
        .map(|()| len)
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

/// The generation in a node's answer that a request was signed for another of its incarnations
/// (see [`OTHER_INCARNATION_CODE`]); `None` for any other answer. Believe it only from an answer
/// whose signature verified ([`verify_response`]) for the request's nonce.
pub fn other_incarnation(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Refusal {
        code: String,
        generation: u64,
    }
    serde_json::from_slice::<Refusal>(body)
        .ok()
        .filter(|r| r.code == OTHER_INCARNATION_CODE)
        .map(|r| r.generation)
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
    /// In a form that names no incarnation, and signed before this incarnation started.
    #[error("request in an older form signed before this node (re)started")]
    BeforeIncarnation,
    /// The head's MAC verified for this node but another of its incarnations (the caller's view
    /// is stale, or the request was captured before this node restarted).
    #[error("request signed for another incarnation of this node (now generation {current})")]
    OtherIncarnation { current: u64 },
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
type Seen = (
    HashMap<String, (i64, NonceUse)>,
    VecDeque<(i64, std::time::Instant, String)>,
);

/// A nonce reserved by [`Verifier::verify_head`] for one request: only [`Verifier::verify`] of
/// that request, handed this value, may turn it into a used nonce. Not `Clone`: the RPC server
/// keeps it in the request's extensions and takes it out for the one full check.
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    nonce: String,
    id: u64,
    /// The form the head verified in: the whole request must be signed in the same.
    form: Form,
}

/// Which request MACs a caller sends, chosen by the RPC server from the caller's gossiped data
/// protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Signed for this node's incarnation ([`Target::Incarnation`]): every caller of data protocol
    /// 3 or newer, and anyone not known as an older live member.
    Incarnation,
    /// Signed for this node only ([`Target::Node`]): taken only from a live member of data
    /// protocol 2.
    Node,
}

/// How a request was let in before its body was read, which decides how [`Verifier::verify`]
/// checks it.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Its head signature verified and reserved its nonce: the whole request must carry the
    /// signature bound to this node ([`sign`], in the head's [`Form`]) and that nonce.
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
    /// This incarnation's chitchat generation: the one requests must be signed for (in the
    /// incarnation form).
    generation: u64,
    seen: Mutex<Seen>,
    /// Timestamps at or below this are refused: a request whose nonce left the replay cache
    /// carried one (it was within the window of when the entry was made), so a wall clock
    /// stepped back cannot bring it inside the window again (review).
    forgotten_until: std::sync::atomic::AtomicI64,
    /// Source of [`Reservation::id`]: distinct for every reservation this verifier makes.
    reservations: AtomicU64,
}

impl Verifier {
    /// The verifier of node `me` in its incarnation `generation`.
    pub fn new(key: [u8; 32], me: &str, generation: u64) -> Self {
        Self {
            key,
            me: me.to_string(),
            generation,
            seen: Mutex::default(),
            forgotten_until: std::sync::atomic::AtomicI64::new(i64::MIN),
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
        // (no subtraction of an outsider's number: i64::MIN overflowed it, or wrapped into the window)
        if now_ms.abs_diff(ts) > WINDOW_MS.unsigned_abs() {
            return Err(AuthError::Stale);
        }
        let floor = self.forgotten_until.load(Ordering::SeqCst);
        if ts <= floor {
            // said once: after a wall clock corrected backwards by D, every peer's requests are
            // refused for about D (review)
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    request_ms = ts,
                    refused_until_ms = floor,
                    "cluster: a request older than what the replay cache has forgotten was refused; if this node's clock was stepped back, requests are refused until it passes that time again (a restart clears it)"
                );
            }
            return Err(AuthError::Replay);
        }
        let sig_bytes = hex_decode(sig).ok_or(AuthError::Malformed)?;
        let mut mac = HmacSha256::new_from_slice(&self.key).map_err(|_| AuthError::Malformed)?;
        mac.update(&input(ts, nonce));
        mac.verify_slice(&sig_bytes)
            .map_err(|_| AuthError::BadSignature)?;
        Ok(nonce)
    }

    /// The older forms ([`Form::Node`], legacy) name no incarnation, so this incarnation's replay
    /// cache is all that stops a replay: one signed before it started (its generation is its
    /// start, Unix ms) was made for an earlier incarnation, whose cache is gone — refused. (A
    /// caller whose clock runs behind this node's is refused for at most the difference.)
    fn signed_since_start(&self, ts: Option<&str>) -> Result<(), AuthError> {
        let ts: i64 = ts
            .ok_or(AuthError::Malformed)?
            .parse()
            .map_err(|_| AuthError::Malformed)?;
        if i64::try_from(self.generation).is_ok_and(|started| ts < started) {
            return Err(AuthError::BeforeIncarnation);
        }
        Ok(())
    }

    /// The replay cache, entries older than twice the window dropped: by then a request with
    /// their nonce is stale (its timestamp was within the window of when the entry was made).
    /// Old by the wall clock and by the monotonic one ([`expired`]).
    fn seen(&self, now_ms: i64) -> Result<std::sync::MutexGuard<'_, Seen>, AuthError> {
        let Ok(mut guard) = self.seen.lock() else {
            return Err(AuthError::Replay);
        };
        let (set, order) = &mut *guard;
        while let Some((t, since, _)) = order.front() {
            if expired(*t, *since, now_ms) {
                self.forgotten_until
                    .fetch_max(t.saturating_add(WINDOW_MS), Ordering::SeqCst);
                if let Some((_, _, n)) = order.pop_front() {
                    set.remove(&n);
                }
            } else {
                break;
            }
        }
        Ok(guard)
    }

    /// Checks a request's head before its body is read: well-formed headers, timestamp inside the
    /// window, head signature for this node (constant-time) in `form` — in the incarnation form,
    /// for the generation the caller names in `generation` ([`HEADER_GENERATION`]), which must be
    /// this incarnation's ([`AuthError::OtherIncarnation`] after the MAC verified) — and a nonce
    /// never seen; then reserves the nonce for this request. A second head with the same nonce is
    /// a replay from then on, whether the first request is still in flight, completed, or failed
    /// its full check: a captured head makes this node read at most one body, once.
    #[allow(clippy::too_many_arguments)]
    pub fn verify_head(
        &self,
        now_ms: i64,
        form: Form,
        method: &str,
        path: &str,
        ts: Option<&str>,
        nonce: Option<&str>,
        generation: Option<&str>,
        head_sig: Option<&str>,
    ) -> Result<Reservation, AuthError> {
        let nonce = match form {
            Form::Incarnation => {
                let claimed: u64 = generation
                    .ok_or(AuthError::Malformed)?
                    .parse()
                    .map_err(|_| AuthError::Malformed)?;
                let nonce = self.signed(now_ms, ts, nonce, head_sig, |ts, nonce| {
                    head_mac_input(
                        Target::Incarnation(&self.me, claimed),
                        method,
                        path,
                        ts,
                        nonce,
                    )
                })?;
                // signed by a key holder for this node, but another incarnation: refused, and
                // nothing reserved (nothing of it ever runs here)
                if claimed != self.generation {
                    return Err(AuthError::OtherIncarnation {
                        current: self.generation,
                    });
                }
                nonce
            }
            Form::Node => {
                let nonce = self.signed(now_ms, ts, nonce, head_sig, |ts, nonce| {
                    head_mac_input(Target::Node(&self.me), method, path, ts, nonce)
                })?;
                self.signed_since_start(ts)?;
                nonce
            }
        };
        let mut guard = self.seen(now_ms)?;
        let (set, order) = &mut *guard;
        if set.contains_key(nonce) {
            return Err(AuthError::Replay);
        }
        let id = self.reservations.fetch_add(1, Ordering::Relaxed);
        set.insert(nonce.to_string(), (now_ms, NonceUse::Reserved(id)));
        order.push_back((now_ms, std::time::Instant::now(), nonce.to_string()));
        Ok(Reservation {
            nonce: nonce.to_string(),
            id,
            form,
        })
    }

    /// Checks a whole request let in as `admission` says: its signature (bound to this node, and
    /// to this incarnation in [`Form::Incarnation`], unless [`Admission::Legacy`]) and its nonce, which must be the one its head reserved (still
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
            Admission::Head(r) => {
                let target = match r.form {
                    Form::Incarnation => Target::Incarnation(&self.me, self.generation),
                    Form::Node => Target::Node(&self.me),
                };
                self.signed(now_ms, ts, nonce, sig, |ts, nonce| {
                    mac_input(target, method, path, ts, nonce, body)
                })?
            }
            Admission::Legacy => {
                let nonce = self.signed(now_ms, ts, nonce, sig, |ts, nonce| {
                    legacy_mac_input(method, path, ts, nonce, body)
                })?;
                self.signed_since_start(ts)?;
                nonce
            }
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
                order.push_back((now_ms, std::time::Instant::now(), nonce.to_string()));
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

    /// The generation of the verifiers' incarnation in most tests.
    const GEN: u64 = 1_699_999_000_000;

    /// Node `id` in incarnation [`GEN`].
    fn at(id: &str) -> Target<'_> {
        Target::Incarnation(id, GEN)
    }

    impl Verifier {
        /// [`Verifier::verify_head`] of a head in the current form, signed for [`GEN`].
        fn head(
            &self,
            now_ms: i64,
            method: &str,
            path: &str,
            ts: Option<&str>,
            nonce: Option<&str>,
            head_sig: Option<&str>,
        ) -> Result<Reservation, AuthError> {
            let generation = GEN.to_string();
            self.verify_head(
                now_ms,
                Form::Incarnation,
                method,
                path,
                ts,
                nonce,
                Some(&generation),
                head_sig,
            )
        }
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
        let r = v.head(at, "POST", path, Some(ts), Some(nonce), Some(head))?;
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
    fn replay_entries_expire_by_both_clocks() {
        let now = 1_700_000_000_000;
        let made = std::time::Instant::now();
        // the wall clock jumped far ahead: the entry stays (it was made a moment ago)
        assert!(!expired(now, made, now + 10 * WINDOW_MS));
        // old by both clocks: it goes
        let long_ago = made - std::time::Duration::from_millis(3 * WINDOW_MS as u64);
        assert!(expired(now, long_ago, now + 3 * WINDOW_MS));
        // old by the monotonic clock only (the wall clock stepped back): it stays
        assert!(!expired(now, long_ago, now + WINDOW_MS));
    }

    /// A request whose nonce has left the replay cache stays refused when the wall clock steps
    /// back far enough to bring its timestamp inside the window again.
    #[test]
    fn a_forgotten_nonce_stays_refused_after_the_clock_steps_back() {
        let key = key();
        let v = Verifier::new(key, "a", GEN);
        let now = 1_700_000_000_000;
        let body = br#"{"records":[]}"#;
        let p = "/cluster/v1/apply";
        let ts = now.to_string();
        let head = sign_head(&key, at("a"), "POST", p, now, "n1");
        let sig = sign(&key, at("a"), "POST", p, now, "n1", body);
        assert_eq!(
            head_then_body(&v, now, p, &ts, "n1", (&head, &sig), body),
            Ok(())
        );
        // its entry is old by both clocks (as if made three windows ago) and goes
        if let Ok(mut g) = v.seen.lock() {
            let (_, order) = &mut *g;
            for e in order.iter_mut() {
                e.1 -= std::time::Duration::from_millis(3 * WINDOW_MS as u64);
            }
        }
        let later = now + 3 * WINDOW_MS;
        let other = sign_head(&key, at("a"), "POST", p, later, "n2");
        let other_sig = sign(&key, at("a"), "POST", p, later, "n2", body);
        assert_eq!(
            head_then_body(
                &v,
                later,
                p,
                &later.to_string(),
                "n2",
                (&other, &other_sig),
                body
            ),
            Ok(())
        );
        assert!(!v.seen.lock().unwrap().0.contains_key("n1"), "n1 forgotten");
        // the clock steps back to when n1 was sent: it is still refused
        assert_eq!(
            head_then_body(&v, now + 1, p, &ts, "n1", (&head, &sig), body),
            Err(AuthError::Replay)
        );
    }

    #[test]
    fn signed_requests_pass_once_and_tampering_stale_or_replay_fail() {
        let key = key();
        let v = Verifier::new(key, "a", GEN);
        let now = 1_700_000_000_000;
        let body = br#"{"records":[]}"#;
        let p = "/cluster/v1/apply";
        let sig = sign(&key, at("a"), "POST", p, now, "n1", body);
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
        let head = sign_head(&key, at("a"), "POST", p, now, "n1");
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
        let bound = sign(&key, at("a"), "POST", "/p", now, "n6", body);
        assert_eq!(
            check("/p", &ts, "n6", &bound, body, now),
            Err(AuthError::BadSignature)
        );
        let head6 = sign_head(&key, at("a"), "POST", "/p", now, "n6");
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
            sign(&key, at("a"), "POST", p, 200, "nonce-1", body),
            sign_legacy(&key, "POST", p, 200, "nonce-1", body),
        ] {
            assert!(!ok(p, "nonce-1", 200, body, Some(&req_sig)));
        }
    }

    /// The length a response head declares is believed only under the cluster key, for that
    /// request, path and status, written in digits alone; no other signature passes for it.
    #[test]
    fn a_response_length_is_bound_to_key_request_and_status() {
        let key = key();
        let p = "/cluster/v1/versions";
        let head = sign_response_len(&key, p, "nonce-1", 200, 1234);
        assert!(head.starts_with("1234:"), "{head}");
        let len = |path: &str, nonce: &str, status: u16, h: Option<&str>| {
            verify_response_len(&key, path, nonce, status, h)
        };
        assert_eq!(len(p, "nonce-1", 200, Some(&head)), Some(1234));
        assert_eq!(len(p, "nonce-2", 200, Some(&head)), None);
        assert_eq!(len(p, "nonce-1", 503, Some(&head)), None);
        assert_eq!(len("/cluster/v1/get", "nonce-1", 200, Some(&head)), None);
        let mac = head.split_once(':').unwrap().1;
        // another length with this MAC; the same number written otherwise
        for other in ["99999999", "+1234", "01234", " 1234", ""] {
            assert_eq!(
                len(p, "nonce-1", 200, Some(&format!("{other}:{mac}"))),
                None,
                "{other}"
            );
        }
        assert_eq!(len(p, "nonce-1", 200, None), None);
        assert_eq!(len(p, "nonce-1", 200, Some(mac)), None);
        let other = derive_key(b"another secret of some length!!", "idstack", "rpc");
        let forged = sign_response_len(&other, p, "nonce-1", 200, 1234);
        assert_eq!(len(p, "nonce-1", 200, Some(&forged)), None);
        // a body's response signature is not a length signature, nor the other way round
        let body_sig = sign_response(&key, p, "nonce-1", 200, b"1234");
        assert_eq!(
            len(p, "nonce-1", 200, Some(&format!("1234:{body_sig}"))),
            None
        );
        assert!(!verify_response(&key, p, "nonce-1", 200, b"", Some(mac)));
    }

    #[test]
    fn head_signatures_cover_the_head_and_are_no_other_signature() {
        let key = key();
        let v = Verifier::new(key, "a", GEN);
        let now = 1_700_000_000_000;
        let (p, ts) = ("/cluster/v1/apply", now.to_string());
        let head = |nonce: &str| sign_head(&key, at("a"), "POST", p, now, nonce);
        let check = |path: &str, nonce: &str, sig: &str, at: i64| {
            v.head(at, "POST", path, Some(&ts), Some(nonce), Some(sig))
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
            v.head(now, "POST", p, Some(&ts), Some("n1"), None)
                .map(|_| ()),
            Err(AuthError::Malformed)
        );
        // a request or response signature is not a head signature, nor the other way round
        let body = b"";
        for other in [
            sign(&key, at("a"), "POST", p, now, "n1", body),
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
                form: Form::Incarnation,
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
        let req = sign(&key, at("a"), "POST", p, now, "n1", body);
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
        let (a, b) = (Verifier::new(key, "a", GEN), Verifier::new(key, "b", GEN));
        let now = 1_700_000_000_000;
        let (p, ts, body) = ("/cluster/v1/apply", now.to_string(), b"{\"records\":[]}");
        let head = sign_head(&key, at("a"), "POST", p, now, "n1");
        let sig = sign(&key, at("a"), "POST", p, now, "n1", body);
        assert_eq!(
            b.head(now, "POST", p, Some(&ts), Some("n1"), Some(&head))
                .map(|_| ()),
            Err(AuthError::BadSignature)
        );
        // the whole request, even with a head b accepted (signed for b, same nonce)
        let head_b = sign_head(&key, at("b"), "POST", p, now, "n1");
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
        let odd = Verifier::new(key, "a\nPOST", GEN);
        let h = sign_head(&key, at("a"), "POST\nPOST", p, now, "n2");
        assert_eq!(
            odd.head(now, "POST", p, Some(&ts), Some("n2"), Some(&h))
                .map(|_| ()),
            Err(AuthError::BadSignature)
        );
    }

    /// Attack: a request captured on its way to node a just before a restarts, replayed to the
    /// restarted a inside the window. The replay cache lived in memory and node ids are stable,
    /// so the new incarnation (empty cache) took it; now both MACs name a's generation and the
    /// new incarnation refuses the copy, whether its head or its body.
    #[test]
    fn a_request_captured_before_a_restart_is_refused_after_it() {
        let key = key();
        let now = 1_700_000_000_000;
        let (p, ts, body) = ("/cluster/v1/apply", now.to_string(), b"{\"records\":[]}");
        let (old, new) = (GEN, GEN + 4_000);
        let head = sign_head(&key, at("a"), "POST", p, now, "n1");
        let sig = sign(&key, at("a"), "POST", p, now, "n1", body);
        let before = Verifier::new(key, "a", old);
        assert_eq!(
            head_then_body(&before, now, p, &ts, "n1", (&head, &sig), body),
            Ok(())
        );
        // a restarts (same id, new generation, empty replay cache) and gets the copy 5 s later
        let after = Verifier::new(key, "a", new);
        let later = now + 5_000;
        assert_eq!(
            head_then_body(&after, later, p, &ts, "n1", (&head, &sig), body),
            Err(AuthError::OtherIncarnation { current: new })
        );
        // naming the new generation in the header breaks the head's MAC
        assert_eq!(
            after
                .verify_head(
                    later,
                    Form::Incarnation,
                    "POST",
                    p,
                    Some(&ts),
                    Some("n1"),
                    Some(&new.to_string()),
                    Some(&head)
                )
                .map(|_| ()),
            Err(AuthError::BadSignature)
        );
        // the captured body under a head the new incarnation takes (signed for it, same nonce)
        let head_new = sign_head(&key, Target::Incarnation("a", new), "POST", p, now, "n1");
        let r = after
            .verify_head(
                later,
                Form::Incarnation,
                "POST",
                p,
                Some(&ts),
                Some("n1"),
                Some(&new.to_string()),
                Some(&head_new),
            )
            .unwrap();
        assert_eq!(
            after.verify(
                later,
                Admission::Head(r),
                "POST",
                p,
                Some(&ts),
                Some("n1"),
                Some(&sig),
                body
            ),
            Err(AuthError::BadSignature)
        );
        // nor does the copy pass as one of the older forms (a caller header naming a live node
        // of protocol 2 or 1 makes the server expect those)
        let as_node = after.verify_head(
            later,
            Form::Node,
            "POST",
            p,
            Some(&ts),
            Some("n2"),
            None,
            Some(&sign_head(&key, at("a"), "POST", p, now, "n2")),
        );
        assert_eq!(as_node.map(|_| ()), Err(AuthError::BadSignature));
        let legacy = after.verify(
            later,
            Admission::Legacy,
            "POST",
            p,
            Some(&ts),
            Some("n2"),
            Some(&sign(&key, at("a"), "POST", p, now, "n2", body)),
            body,
        );
        assert_eq!(legacy, Err(AuthError::BadSignature));
    }

    /// A caller whose view of the target's generation is stale (the target restarted, gossip has
    /// not told it yet): refused with the current generation, nothing reserved; its retry, a new
    /// request signed for that generation, passes. Only a head whose MAC verifies gets told.
    #[test]
    fn a_stale_generation_is_refused_with_the_current_one_and_the_retry_passes() {
        let key = key();
        let now = 1_700_000_000_000;
        let (p, ts, body) = ("/cluster/v1/apply", now.to_string(), b"{\"records\":[]}");
        let current = GEN + 1;
        let v = Verifier::new(key, "a", current);
        let head =
            |n: &str, g: u64| sign_head(&key, Target::Incarnation("a", g), "POST", p, now, n);
        let check = |n: &str, claimed: Option<&str>, sig: &str| {
            v.verify_head(
                now,
                Form::Incarnation,
                "POST",
                p,
                Some(&ts),
                Some(n),
                claimed,
                Some(sig),
            )
            .map(|_| ())
        };
        let stale = GEN.to_string();
        assert_eq!(
            check("n1", Some(&stale), &head("n1", GEN)),
            Err(AuthError::OtherIncarnation { current })
        );
        // nothing reserved: the same head is told again, not taken for a replay
        assert_eq!(
            check("n1", Some(&stale), &head("n1", GEN)),
            Err(AuthError::OtherIncarnation { current })
        );
        // without the key, or with the header altered, no generation is told
        assert_eq!(
            check("n2", Some(&stale), &"00".repeat(32)),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check("n2", Some(&(GEN + 7).to_string()), &head("n2", GEN)),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            check("n2", None, &head("n2", GEN)),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            check("n2", Some("not a number"), &head("n2", GEN)),
            Err(AuthError::Malformed)
        );
        // the retry: a new nonce, both MACs for the current generation
        let now_gen = current.to_string();
        let r = v
            .verify_head(
                now,
                Form::Incarnation,
                "POST",
                p,
                Some(&ts),
                Some("n3"),
                Some(&now_gen),
                Some(&head("n3", current)),
            )
            .unwrap();
        let sig = sign(
            &key,
            Target::Incarnation("a", current),
            "POST",
            p,
            now,
            "n3",
            body,
        );
        assert_eq!(
            v.verify(
                now,
                Admission::Head(r),
                "POST",
                p,
                Some(&ts),
                Some("n3"),
                Some(&sig),
                body
            ),
            Ok(())
        );
    }

    /// The form of data protocol 2 (target node, no generation), taken only under [`Form::Node`]
    /// (the RPC server chooses it for a live member of protocol 2), and not the current form's.
    #[test]
    fn the_node_form_of_protocol_2_verifies_only_as_such() {
        let key = key();
        let v = Verifier::new(key, "a", GEN);
        let now = 1_700_000_000_000;
        let (p, ts, body) = ("/cluster/v1/apply", now.to_string(), b"{\"records\":[]}");
        let gen = GEN.to_string();
        let node_head = |n: &str| sign_head(&key, Target::Node("a"), "POST", p, now, n);
        let head = |form: Form, n: &str, sig: &str| {
            v.verify_head(
                now,
                form,
                "POST",
                p,
                Some(&ts),
                Some(n),
                Some(&gen),
                Some(sig),
            )
        };
        // each head form only as itself
        assert_eq!(
            head(Form::Incarnation, "n1", &node_head("n1")).map(|_| ()),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            head(
                Form::Node,
                "n1",
                &sign_head(&key, at("a"), "POST", p, now, "n1")
            )
            .map(|_| ()),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            head(
                Form::Node,
                "n1",
                &sign_head(&key, Target::Node("b"), "POST", p, now, "n1")
            )
            .map(|_| ()),
            Err(AuthError::BadSignature)
        );
        // a node-form head wants a node-form body
        let r = head(Form::Node, "n2", &node_head("n2")).unwrap();
        let wrong = sign(&key, at("a"), "POST", p, now, "n2", body);
        assert_eq!(
            v.verify(
                now,
                Admission::Head(r),
                "POST",
                p,
                Some(&ts),
                Some("n2"),
                Some(&wrong),
                body
            ),
            Err(AuthError::BadSignature)
        );
        let r = head(Form::Node, "n3", &node_head("n3")).unwrap();
        let right = sign(&key, Target::Node("a"), "POST", p, now, "n3", body);
        assert_eq!(
            v.verify(
                now,
                Admission::Head(r),
                "POST",
                p,
                Some(&ts),
                Some("n3"),
                Some(&right),
                body
            ),
            Ok(())
        );
        // and the same bytes never make both forms' inputs
        assert_ne!(
            mac_input(Target::Node("a"), "POST", p, now, "n", body),
            mac_input(at("a"), "POST", p, now, "n", body)
        );
        assert_ne!(
            head_mac_input(Target::Node("a"), "POST", p, now, "n"),
            head_mac_input(at("a"), "POST", p, now, "n")
        );
    }

    /// The older forms name no incarnation: one signed before this incarnation started (its
    /// generation is its start, Unix ms) was made for an earlier one, whose replay cache is gone
    /// — refused, head and legacy alike; one signed since passes. (Attacker review: a request
    /// captured before a rolling upgrade's restart was replayed to the new incarnation under a
    /// spoofed caller header naming a live protocol-2 member, and ran.)
    #[test]
    fn older_forms_signed_before_this_incarnation_started_are_refused() {
        let key = key();
        let v = Verifier::new(key, "a", GEN);
        let now = i64::try_from(GEN).unwrap() + 10_000;
        let (p, body) = ("/cluster/v1/apply", b"{}");
        for (ts, want) in [
            (now - 10_001, Err(AuthError::BeforeIncarnation)),
            (now - 10_000, Ok(())),
        ] {
            let n = format!("n{ts}");
            let head = sign_head(&key, Target::Node("a"), "POST", p, ts, &n);
            let got = v.verify_head(
                now,
                Form::Node,
                "POST",
                p,
                Some(&ts.to_string()),
                Some(&n),
                None,
                Some(&head),
            );
            assert_eq!(got.map(|_| ()), want, "node form at {ts}");
            let n = format!("l{ts}");
            let legacy = sign_legacy(&key, "POST", p, ts, &n, body);
            let got = v.verify(
                now,
                Admission::Legacy,
                "POST",
                p,
                Some(&ts.to_string()),
                Some(&n),
                Some(&legacy),
                body,
            );
            assert_eq!(got, want, "legacy form at {ts}");
        }
    }

    /// A timestamp an outsider sends is compared without arithmetic that overflows (i64::MIN
    /// panicked in a build with overflow checks) or wraps into the window (in release).
    #[test]
    fn an_extreme_timestamp_is_stale_and_panics_nothing() {
        let v = Verifier::new(key(), "a", GEN);
        let now: i64 = 1_700_000_000_000;
        for ts in [i64::MIN, now.wrapping_add(i64::MIN), i64::MAX] {
            let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                v.verify_head(
                    now,
                    Form::Incarnation,
                    "POST",
                    "/cluster/v1/apply",
                    Some(&ts.to_string()),
                    Some("n"),
                    Some(&GEN.to_string()),
                    Some(&"00".repeat(32)),
                )
                .map(|_| ())
            }));
            assert!(matches!(got, Ok(Err(AuthError::Stale))), "ts {ts}: {got:?}");
        }
    }

    #[test]
    fn only_the_other_incarnation_refusal_names_a_generation() {
        let body = format!(r#"{{"code":"{OTHER_INCARNATION_CODE}","generation":42,"status":401}}"#);
        assert_eq!(other_incarnation(body.as_bytes()), Some(42));
        assert_eq!(
            other_incarnation(br#"{"code":"cluster_rpc","generation":42}"#),
            None
        );
        assert_eq!(other_incarnation(b"not json"), None);
    }

    /// Attack: one captured head sent on many connections at once (each would have the node
    /// buffer a body until the deadline) or again after its body failed the full check; before,
    /// the head check only read the replay cache and a failed body recorded nothing.
    #[test]
    fn a_head_reserves_its_nonce_for_its_own_request_only() {
        let key = key();
        let v = Verifier::new(key, "a", GEN);
        let now = 1_700_000_000_000;
        let (p, ts, body) = ("/cluster/v1/apply", now.to_string(), b"{\"records\":[]}");
        let head = |n: &str| sign_head(&key, at("a"), "POST", p, now, n);
        let sig = |n: &str, b: &[u8]| sign(&key, at("a"), "POST", p, now, n, b);
        let verify_head =
            |n: &str, at: i64| v.head(at, "POST", p, Some(&ts), Some(n), Some(&head(n)));
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
            form: Form::Incarnation,
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
