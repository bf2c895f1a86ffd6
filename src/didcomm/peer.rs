//! The DIDs a DIDComm v1 peer hands us in a handshake, reduced to what the mediator needs: the
//! peer's Ed25519 keys and its DIDComm service. And the mediator's own `did:peer:2`.
//!
//! Accepted: `did:peer:4` long form (credo-ts ≥ 0.5 default), `did:peer:2`, `did:peer:1` / any DID
//! with its document attached (DID exchange `did_doc~attach`, connections 1.0 `DIDDoc`), `did:key`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::crypto::bs58_decode;

/// What we keep of a peer's DID document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub did: String,
    /// Base58 Ed25519 verkeys that may act for the DID (authentication / recipient keys).
    pub verkeys: Vec<String>,
    /// The DIDComm v1 service endpoint messages are posted to: the first http(s) one, else the
    /// first of any scheme (`didcomm:transport/queue` for agents without one, `ws(s)` for agents
    /// that list only sockets), if any ([`pick_service`]).
    pub endpoint: Option<String>,
    /// Routing keys of that service, base58.
    pub routing_keys: Vec<String>,
}

const ED25519_CODEC: [u8; 2] = [0xed, 0x01];
const X25519_CODEC: [u8; 2] = [0xec, 0x01];
/// A did:peer:4 long form's encoded document, decoded: a few keys and services fit in 2 KiB.
const MAX_PEER4_DOCUMENT_BYTES: usize = 2 * 1024;
/// Verification methods read from a document, and keys read from its DIDComm service: each key
/// reference is looked up among the methods, so both are bounded.
const MAX_DOCUMENT_KEYS: usize = 64;

fn err(m: impl Into<String>) -> String {
    m.into()
}

/// The endpoint URI of a DIDComm service (`serviceEndpoint` / did:peer:2 `s`: a string, or an
/// object with `uri`).
fn service_uri(svc: &Value) -> Option<String> {
    match svc.get("s").or_else(|| svc.get("serviceEndpoint")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("uri").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Which of a peer's DIDComm services we use: one whose endpoint is http(s) — what every sender
/// here (the DIDComm client, the mediator's outbound replies) can post to, whatever order the
/// peer lists its services in (a WebSocket first is common) — else any; among those, the lowest
/// `priority` (RFC 0067; absent counts as 0), then the first listed.
fn pick_service<'a>(services: &[&'a Value]) -> Option<&'a Value> {
    let http = |s: &Value| {
        service_uri(s).is_some_and(|u| {
            let u = u.to_ascii_lowercase();
            u.starts_with("http://") || u.starts_with("https://")
        })
    };
    let priority = |s: &Value| s.get("priority").and_then(Value::as_i64).unwrap_or(0);
    // min_by_key keeps the first of equal keys
    services
        .iter()
        .copied()
        .min_by_key(|s| (!http(s), priority(s)))
}

/// Base58 verkey from `z6Mk…` multibase (multicodec Ed25519) or a `did:key`.
pub fn verkey_from_fingerprint(fp: &str) -> Result<String, String> {
    let mb = fp
        .strip_prefix('z')
        .ok_or_else(|| err("fingerprint is not base58btc"))?;
    let bytes = bs58_decode(mb, 34)?;
    if bytes.len() != 34 || bytes[..2] != ED25519_CODEC {
        return Err(err("not an Ed25519 multikey"));
    }
    Ok(bs58::encode(&bytes[2..]).into_string())
}

/// Normalises a key reference as clients send it (`did:key:z6Mk…`, `did:key:z6Mk…#z6Mk…`, or a
/// bare base58 verkey) to the base58 verkey.
pub fn normalize_key(k: &str) -> Result<String, String> {
    if let Some(rest) = k.strip_prefix("did:key:") {
        let fp = rest.split('#').next().unwrap_or(rest);
        return verkey_from_fingerprint(fp);
    }
    let raw = bs58_decode(k, 32).map_err(|_| err("key is neither did:key nor base58"))?;
    if raw.len() != 32 {
        return Err(err("a base58 verkey must be 32 bytes"));
    }
    Ok(k.to_string())
}

/// `did:key` of a base58 verkey.
pub fn did_key_of(verkey_b58: &str) -> Result<String, String> {
    Ok(format!("did:key:{}", fingerprint(verkey_b58)?))
}

fn fingerprint(verkey_b58: &str) -> Result<String, String> {
    let raw = bs58_decode(verkey_b58, 32)?;
    let mut b = ED25519_CODEC.to_vec();
    b.extend_from_slice(&raw);
    Ok(format!("z{}", bs58::encode(b).into_string()))
}

fn x25519_fingerprint(x: &[u8; 32]) -> String {
    let mut b = X25519_CODEC.to_vec();
    b.extend_from_slice(x);
    format!("z{}", bs58::encode(b).into_string())
}

/// A `did:peer:2`: the Ed25519 key (V), the X25519 form (E), one DIDComm v1 service per endpoint
/// (`recipientKeys: ["#key-1"]`, `routingKeys` as `did:key`s: a mediated agent lists its mediator's).
pub fn did_peer_2(
    verkey: &[u8; 32],
    endpoints: &[String],
    routing_keys: &[String],
) -> Result<String, String> {
    let vk = bs58::encode(verkey).into_string();
    let x = super::envelope::ed25519_public_to_x25519(verkey).map_err(|e| e.to_string())?;
    let mut did = format!(
        "did:peer:2.V{}.E{}",
        fingerprint(&vk)?,
        x25519_fingerprint(&x)
    );
    for (i, ep) in endpoints.iter().enumerate() {
        let svc = json!({
            "t": "did-communication",
            "s": ep,
            "priority": i,
            "recipientKeys": ["#key-1"],
            "r": routing_keys
                .iter()
                .map(|k| did_key_of(k).map(|d| format!("{d}#{}", &d["did:key:".len()..])))
                .collect::<Result<Vec<_>, _>>()?,
            "a": ["didcomm/aip1", "didcomm/aip2;env=rfc19"],
        });
        did.push_str(".S");
        did.push_str(&URL_SAFE_NO_PAD.encode(svc.to_string()));
    }
    Ok(did)
}

/// Resolves `did` (with the document attached in the message, if any) to [`PeerInfo`].
pub fn resolve(did: &str, attached_doc: Option<&Value>) -> Result<PeerInfo, String> {
    if let Some(rest) = did.strip_prefix("did:peer:4") {
        return resolve_peer4(did, rest);
    }
    if did.starts_with("did:peer:2") {
        return resolve_peer2(did);
    }
    if did.starts_with("did:key:") {
        let vk = normalize_key(did)?;
        return Ok(PeerInfo {
            did: did.to_string(),
            verkeys: vec![vk],
            endpoint: None,
            routing_keys: Vec::new(),
        });
    }
    match attached_doc {
        Some(doc) => from_document(did, doc),
        None => Err(format!(
            "cannot resolve {did}: only did:peer:1/2/4, did:key or an attached DID document"
        )),
    }
}

fn resolve_peer4(did: &str, rest: &str) -> Result<PeerInfo, String> {
    let (hash, encoded) = rest
        .split_once(':')
        .ok_or_else(|| err("did:peer:4 must be the long form (hash:document)"))?;
    let digest = Sha256::digest(encoded.as_bytes());
    let mut mh = vec![0x12, 0x20];
    mh.extend_from_slice(&digest);
    if hash != format!("z{}", bs58::encode(mh).into_string()) {
        return Err(err("did:peer:4 hash does not match its document"));
    }
    let data = bs58_decode(
        encoded
            .strip_prefix('z')
            .ok_or_else(|| err("did:peer:4 document is not base58btc"))?,
        MAX_PEER4_DOCUMENT_BYTES,
    )?;
    if data.len() < 2 || data[..2] != [0x80, 0x04] {
        return Err(err("did:peer:4 document is not JSON multicodec"));
    }
    let doc: Value =
        serde_json::from_slice(&data[2..]).map_err(|e| format!("did:peer:4 document: {e}"))?;
    from_document(did, &doc)
}

// Over 80 lines: decodes the did:peer:2 elements (purposes, abbreviated services) in the
// method spec's order.
fn resolve_peer2(did: &str) -> Result<PeerInfo, String> {
    let mut verkeys = Vec::new();
    let mut keys_by_index = Vec::new();
    let mut services = Vec::new();
    for entry in did
        .trim_start_matches("did:peer:2")
        .split('.')
        .filter(|e| !e.is_empty())
    {
        // (split_at would panic inside a multi-byte character)
        let Some((purpose, content)) = entry.split_at_checked(1) else {
            return Err(err(
                "did:peer:2 element does not start with a purpose letter",
            ));
        };
        match purpose {
            "S" => {
                let raw = URL_SAFE_NO_PAD
                    .decode(content.trim_end_matches('='))
                    .map_err(|e| format!("did:peer:2 service: {e}"))?;
                let v: Value =
                    serde_json::from_slice(&raw).map_err(|e| format!("did:peer:2 service: {e}"))?;
                match v {
                    Value::Array(a) => services.extend(a),
                    o => services.push(o),
                }
            }
            "V" | "A" | "E" | "I" | "D" => {
                let vk = verkey_from_fingerprint(content).ok();
                keys_by_index.push(vk.clone());
                if let (Some(vk), true) = (vk, purpose == "V") {
                    verkeys.push(vk);
                }
            }
            _ => return Err(format!("did:peer:2 purpose {purpose} is unknown")),
        }
    }
    let mut info = PeerInfo {
        did: did.to_string(),
        verkeys,
        endpoint: None,
        routing_keys: Vec::new(),
    };
    let didcomm: Vec<&Value> = services
        .iter()
        .filter(|s| {
            let t = s
                .get("t")
                .or_else(|| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("");
            t == "did-communication" || t == "dm" || t == "DIDCommMessaging"
        })
        .collect();
    if let Some(svc) = pick_service(&didcomm) {
        info.endpoint = service_uri(svc);
        for r in svc
            .get("r")
            .or_else(|| svc.get("routingKeys"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(k) = r.as_str().and_then(|k| normalize_key(k).ok()) {
                info.routing_keys.push(k);
            }
        }
        // `#key-N` references resolve against the key list in order.
        for rk in svc
            .get("recipientKeys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = rk
                .as_str()
                .and_then(|r| r.rsplit("#key-").next())
                .and_then(|n| n.parse::<usize>().ok())
            {
                if let Some(Some(vk)) = keys_by_index.get(n.wrapping_sub(1)) {
                    if !info.verkeys.contains(vk) {
                        info.verkeys.push(vk.clone());
                    }
                }
            }
        }
    }
    if info.verkeys.is_empty() {
        return Err(err("did:peer:2 carries no Ed25519 key"));
    }
    Ok(info)
}

/// Ed25519 key material of a verification method, as base58.
fn method_verkey(m: &Value) -> Option<String> {
    if let Some(b58) = m.get("publicKeyBase58").and_then(Value::as_str) {
        let t = m.get("type").and_then(Value::as_str).unwrap_or("");
        if t.contains("X25519") {
            return None;
        }
        return normalize_key(b58).ok();
    }
    if let Some(mb) = m.get("publicKeyMultibase").and_then(Value::as_str) {
        return verkey_from_fingerprint(mb).ok();
    }
    if let Some(jwk) = m.get("publicKeyJwk") {
        if jwk.get("crv").and_then(Value::as_str) == Some("Ed25519") {
            let x = URL_SAFE_NO_PAD.decode(jwk.get("x")?.as_str()?).ok()?;
            return (x.len() == 32).then(|| bs58::encode(x).into_string());
        }
    }
    None
}

/// Reads a W3C DID document or a legacy (connections 1.0) `DIDDoc`.
// Over 80 lines: reads both document shapes (W3C DID document, connections 1.0 `DIDDoc`)
// field by field.
pub fn from_document(did: &str, doc: &Value) -> Result<PeerInfo, String> {
    let mut methods: Vec<&Value> = Vec::new();
    for field in [
        "verificationMethod",
        "publicKey",
        "authentication",
        "keyAgreement",
    ] {
        for m in doc
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if m.is_object() {
                methods.push(m);
            }
        }
    }
    if methods.len() > MAX_DOCUMENT_KEYS {
        return Err(err(format!(
            "the DID document has over {MAX_DOCUMENT_KEYS} verification methods"
        )));
    }
    let find = |reference: &str| -> Option<String> {
        let frag = reference.rsplit('#').next().unwrap_or(reference);
        methods
            .iter()
            .find(|m| {
                m.get("id")
                    .and_then(Value::as_str)
                    .map(|id| id == reference || id.rsplit('#').next() == Some(frag))
                    .unwrap_or(false)
            })
            .and_then(|m| method_verkey(m))
    };
    let mut info = PeerInfo {
        did: did.to_string(),
        verkeys: Vec::new(),
        endpoint: None,
        routing_keys: Vec::new(),
    };
    let services = doc
        .get("service")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let didcomm: Vec<&Value> = services
        .iter()
        .filter(|s| {
            matches!(
                s.get("type").and_then(Value::as_str),
                Some("did-communication" | "IndyAgent" | "DIDCommMessaging")
            )
        })
        .collect();
    if let Some(svc) = pick_service(&didcomm) {
        info.endpoint = service_uri(svc);
        let listed = |field: &str| svc.get(field).and_then(Value::as_array).map_or(0, Vec::len);
        if listed("recipientKeys") > MAX_DOCUMENT_KEYS || listed("routingKeys") > MAX_DOCUMENT_KEYS
        {
            return Err(err(format!(
                "the DIDComm service lists over {MAX_DOCUMENT_KEYS} keys"
            )));
        }
        for rk in svc
            .get("recipientKeys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(r) = rk.as_str() else { continue };
            let vk = if r.contains('#') && !r.starts_with("did:key:") {
                find(r)
            } else {
                normalize_key(r).ok()
            };
            if let Some(vk) = vk {
                if !info.verkeys.contains(&vk) {
                    info.verkeys.push(vk);
                }
            }
        }
        for r in svc
            .get("routingKeys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(k) = r.as_str().and_then(|k| normalize_key(k).ok()) {
                info.routing_keys.push(k);
            }
        }
    }
    // An X25519 recipient key maps to the document's Ed25519 key; and agents that list no service
    // still authenticate with their verification methods.
    for m in &methods {
        if let Some(vk) = method_verkey(m) {
            if !info.verkeys.contains(&vk) {
                info.verkeys.push(vk);
            }
        }
    }
    if info.verkeys.is_empty() {
        return Err(format!("the DID document of {did} carries no Ed25519 key"));
    }
    Ok(info)
}

/// Decodes a DIDComm attachment's `data.base64` (standard or URL-safe alphabet, padding optional).
pub fn attachment_bytes(att: &Value) -> Result<Vec<u8>, String> {
    let b64 = att
        .pointer("/data/base64")
        .and_then(Value::as_str)
        .ok_or_else(|| err("attachment has no data.base64"))?;
    let trimmed = b64.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| STANDARD.decode(b64))
        .map_err(|e| format!("attachment base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vk() -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
            .verifying_key()
            .to_bytes()
    }

    /// Attacker review: a did:peer:2 element starting inside a multi-byte character panicked
    /// (a 500, or a WebSocket task gone without closing); every key form is read within bounds.
    #[test]
    fn hostile_peer_dids_and_documents_are_refused_not_panicked_on() {
        assert!(resolve("did:peer:2.\u{e9}x", None).is_err());
        assert!(normalize_key(&"2".repeat(200_000)).is_err());
        assert!(verkey_from_fingerprint(&format!("z{}", "2".repeat(200_000))).is_err());
        let methods: Vec<Value> = (0..=MAX_DOCUMENT_KEYS)
            .map(|i| {
                json!({"id": format!("#k{i}"), "type": "Ed25519VerificationKey2018",
                            "publicKeyBase58": bs58::encode(vk()).into_string()})
            })
            .collect();
        let doc = json!({"verificationMethod": methods, "service": [{"type": "did-communication",
            "serviceEndpoint": "https://a.example", "recipientKeys": ["#k0"]}]});
        let e = from_document("did:peer:1x", &doc).unwrap_err();
        assert!(e.contains("verification methods"), "{e}");
        let doc = json!({"service": [{"type": "did-communication",
            "serviceEndpoint": "https://a.example",
            "recipientKeys": vec![json!("#k0"); MAX_DOCUMENT_KEYS + 1]}]});
        assert!(from_document("did:peer:1x", &doc)
            .unwrap_err()
            .contains("keys"));
    }

    #[test]
    fn did_peer_2_round_trips_keys_and_services() {
        let did = did_peer_2(
            &vk(),
            &["http://m/didcomm".into(), "ws://m/didcomm/ws".into()],
            &[],
        )
        .unwrap();
        let info = resolve(&did, None).unwrap();
        assert_eq!(info.verkeys, vec![bs58::encode(vk()).into_string()]);
        assert_eq!(info.endpoint.as_deref(), Some("http://m/didcomm"));
        assert!(info.routing_keys.is_empty());
        let routed = did_peer_2(
            &vk(),
            &["http://m/didcomm".into()],
            &[bs58::encode([7u8; 32]).into_string()],
        )
        .unwrap();
        let info = resolve(&routed, None).unwrap();
        assert_eq!(
            info.routing_keys,
            vec![bs58::encode([7u8; 32]).into_string()]
        );
    }

    /// The service we post to is an http(s) one even when the peer lists its WebSocket first;
    /// a peer with sockets only keeps its first; `priority` orders services of one kind.
    #[test]
    fn the_http_service_is_chosen_whatever_the_order() {
        let ws_first = did_peer_2(
            &vk(),
            &["wss://m/didcomm/ws".into(), "https://m/didcomm".into()],
            &[],
        )
        .unwrap();
        let info = resolve(&ws_first, None).unwrap();
        assert_eq!(info.endpoint.as_deref(), Some("https://m/didcomm"));
        let ws_only = did_peer_2(&vk(), &["ws://m/ws".into()], &[]).unwrap();
        assert_eq!(
            resolve(&ws_only, None).unwrap().endpoint.as_deref(),
            Some("ws://m/ws")
        );
        let key = bs58::encode(vk()).into_string();
        let doc = json!({
            "@context": "https://w3id.org/did/v1",
            "publicKey": [{"id": "did:sov:x#1", "type": "Ed25519VerificationKey2018", "controller": "did:sov:x", "publicKeyBase58": key}],
            "service": [
                {"id": "did:sov:x;ws", "type": "IndyAgent", "priority": 0, "recipientKeys": [key], "serviceEndpoint": "ws://a/ws"},
                {"id": "did:sov:x;late", "type": "IndyAgent", "priority": 2, "recipientKeys": [key], "serviceEndpoint": "http://a/late"},
                {"id": "did:sov:x;early", "type": "IndyAgent", "priority": 1, "recipientKeys": [key], "routingKeys": [bs58::encode([9u8; 32]).into_string()], "serviceEndpoint": "http://a/early"},
            ],
        });
        let info = from_document("did:sov:x", &doc).unwrap();
        assert_eq!(info.endpoint.as_deref(), Some("http://a/early"));
        // the routing keys are the chosen service's
        assert_eq!(
            info.routing_keys,
            vec![bs58::encode([9u8; 32]).into_string()]
        );
    }

    #[test]
    fn did_peer_4_long_form_is_checked_and_read() {
        let doc = json!({
            "@context": ["https://w3id.org/did/v1"],
            "verificationMethod": [{"id": "#key-1", "type": "Ed25519VerificationKey2018",
                "publicKeyBase58": bs58::encode(vk()).into_string()}],
            "authentication": ["#key-1"],
            "service": [{"id": "#inline-0", "type": "did-communication", "serviceEndpoint": "didcomm:transport/queue",
                "recipientKeys": ["#key-1"], "routingKeys": []}]
        });
        let long_form = |doc: &Value| {
            let mut data = vec![0x80, 0x04];
            data.extend_from_slice(doc.to_string().as_bytes());
            let enc = format!("z{}", bs58::encode(&data).into_string());
            let mut mh = vec![0x12, 0x20];
            mh.extend_from_slice(&Sha256::digest(enc.as_bytes()));
            format!("did:peer:4z{}:{enc}", bs58::encode(mh).into_string())
        };
        let did = long_form(&doc);
        let info = resolve(&did, None).unwrap();
        assert_eq!(info.verkeys, vec![bs58::encode(vk()).into_string()]);
        assert_eq!(info.endpoint.as_deref(), Some("didcomm:transport/queue"));
        // A tampered document no longer matches its hash.
        let bad = did.replace(":z", ":z2");
        assert!(resolve(&bad, None).is_err());
        // A document past 2 KiB is refused before its base58 is decoded (quadratic in its
        // length: 8 KiB cost ~35 ms of CPU per handshake an outsider could send).
        let mut big = doc.clone();
        big["padding"] = json!("x".repeat(MAX_PEER4_DOCUMENT_BYTES));
        let e = resolve(&long_form(&big), None).unwrap_err();
        assert!(e.contains("longer than"), "{e}");
    }

    #[test]
    fn keys_normalise_from_did_key_and_base58() {
        let b58 = bs58::encode(vk()).into_string();
        let dk = did_key_of(&b58).unwrap();
        assert_eq!(normalize_key(&dk).unwrap(), b58);
        assert_eq!(normalize_key(&format!("{dk}#{}", &dk[8..])).unwrap(), b58);
        assert_eq!(normalize_key(&b58).unwrap(), b58);
        assert!(normalize_key("not a key!").is_err());
    }
}
