//! DIDComm v1 plaintext messages as the mediator reads and writes them: type names, threads,
//! return routes, recipient filters and the replies it builds. No state: every function here is
//! about one message.

use serde_json::{json, Value};

use super::error::{MediatorError, MediatorResult};
use super::model::QueuedMessage;
use crate::clock::random_id;
use crate::didcomm::peer;

/// Prefix of every protocol's message types.
pub(super) const DIDCOMM: &str = "https://didcomm.org/";
/// The prefix older agents write instead of [`DIDCOMM`].
const LEGACY_PREFIX: &str = "did:sov:BzCbsNYhMrjHiqZDTUASHg;spec/";

/// `https://didcomm.org/<protocol>/<version>/<name>` with the legacy `did:sov:…;spec/` prefix
/// mapped to the modern one.
pub fn normalize_type(t: &str) -> String {
    match t.strip_prefix(LEGACY_PREFIX) {
        Some(rest) => format!("{DIDCOMM}{rest}"),
        None => t.to_string(),
    }
}

/// The thread a message belongs to: its `~thread.thid`, else its own `@id`.
pub(super) fn thread_id(msg: &Value) -> String {
    msg.pointer("/~thread/thid")
        .and_then(Value::as_str)
        .or_else(|| msg.get("@id").and_then(Value::as_str))
        .unwrap_or_default()
        .to_string()
}

fn return_route(msg: &Value) -> Option<&str> {
    msg.pointer("/~transport/return_route")
        .and_then(Value::as_str)
}

/// The sender wants replies on the transport the message came on (`all` or `thread`).
pub(super) fn wants_return_route(msg: &Value) -> bool {
    matches!(return_route(msg), Some("all" | "thread"))
}

/// Return-route `all`: also what is queued for the sender may come back (implicit pickup).
pub(super) fn wants_return_route_all(msg: &Value) -> bool {
    return_route(msg) == Some("all")
}

/// The 32 bytes of a base58 Ed25519 verkey.
pub(super) fn verkey_bytes(b58: &str) -> MediatorResult<[u8; 32]> {
    crate::crypto::bs58_decode(b58, 32)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| MediatorError::BadMessage("not a base58 Ed25519 verkey".into()))
}

/// A pickup request's `recipient_key` (any key form), as a base58 verkey.
pub(super) fn recipient_filter(msg: &Value) -> Option<String> {
    msg.get("recipient_key")
        .and_then(Value::as_str)
        .and_then(|k| peer::normalize_key(k).ok())
}

/// A reply of type `<DIDCOMM><t>` in thread `thid`: `body` with `@type`, a new `@id` and
/// `~thread` set.
pub(super) fn reply(thid: &str, t: &str, body: Value) -> Value {
    let mut m = body;
    m["@type"] = json!(format!("{DIDCOMM}{t}"));
    m["@id"] = json!(random_id());
    m["~thread"] = json!({"thid": thid});
    m
}

/// A `report-problem/1.0` problem report in thread `thid`.
pub(super) fn problem_report(thid: &str, code: &str, explain: &str) -> Value {
    json!({
        "@type": format!("{DIDCOMM}report-problem/1.0/problem-report"),
        "@id": random_id(),
        "~thread": {"thid": thid},
        "description": {"en": explain, "code": code},
    })
}

/// A pickup 2.0 `delivery` of `batch` (each message attached as its own JSON, with its id and
/// arrival), in thread `thid` when it answers a request, for `recipient` when one was asked for.
pub(super) fn delivery(
    batch: &[QueuedMessage],
    thid: Option<&str>,
    recipient: Option<&str>,
) -> Value {
    let mut m = json!({
        "@type": format!("{DIDCOMM}messagepickup/2.0/delivery"),
        "@id": random_id(),
        "~attach": batch.iter().map(|q| json!({
            "@id": q.id,
            "lastmod_time": crate::crypto::rfc3339(q.received_at_ms / 1000),
            "data": {"json": q.msg},
        })).collect::<Vec<_>>(),
    });
    if let Some(t) = thid {
        m["~thread"] = json!({"thid": t});
    }
    if let Some(r) = recipient.and_then(|r| peer::did_key_of(r).ok()) {
        m["recipient_key"] = json!(r);
    }
    m
}
