//! Cryptography for the roles: keys (Ed25519, P-256, secp256k1), JWK, did:key / did:jwk / did:web,
//! compact JWS, SD-JWT with key binding, and the two status-list encodings.
//!
//! Built directly on RustCrypto primitives (ed25519-dalek, p256, k256, sha2) rather than the `ssi`
//! crate: see docs/ARCHITECTURE.md ("Crypto") for the reasons and the plan for Data Integrity.

pub mod binding;
pub mod di;
pub mod did;
pub mod envelope;
pub mod jwe;
pub mod jws;
pub mod keys;
pub mod mdoc;
pub mod sdjwt;
pub mod status;
pub mod x509;

pub use keys::{KeyType, SigningKey, VerifyingKey};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("unresolvable DID: {0}")]
    Did(String),
    /// Fetching a DID document was refused by the outbound guard, or failed upstream.
    #[error("unresolvable DID: {0}")]
    Outbound(crate::http::outbound::OutboundError),
    /// A JSON-LD document over a canonicalization limit (size, blank nodes, work, time): see
    /// `jsonld.*` in config.toml.
    #[error("JSON-LD too complex: {0}")]
    TooComplex(String),
    /// JSON-LD work that ran out of its time budget (`jsonld.time_budget_ms`) or whose caller
    /// went away: unlike [`CryptoError::TooComplex`], the same document may pass on a less busy
    /// node. Answered like `TooComplex` (422 `jsonld_too_complex`) unless the caller knows the
    /// document already passed (the issuer's credential endpoint answers 503).
    #[error("JSON-LD too complex: {0}")]
    OutOfTime(String),
    /// Every JSON-LD verification slot stayed busy for `jsonld.queue_timeout_ms`.
    #[error("busy: {0}")]
    Busy(String),
}

pub type CryptoResult<T> = Result<T, CryptoError>;

use base64::Engine;

pub fn b64url(data: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

pub fn b64url_decode(s: &str) -> CryptoResult<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| CryptoError::Malformed(format!("base64url: {e}")))
}

/// Base58 (bitcoin alphabet) of at most `max_bytes` decoded bytes. Decoding costs the square of
/// the input's length, so a longer input is refused before any work: every base58 an outsider
/// sends (did:key, verkeys, sealed senders, did:peer:4 documents) goes through here.
pub fn bs58_decode(s: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
    // each output byte takes at most log(256)/log(58) < 1.366 characters, a leading zero one
    if s.len() > max_bytes * 1366 / 1000 + 2 {
        return Err(format!(
            "base58 of {} characters is longer than {max_bytes} bytes can be",
            s.len()
        ));
    }
    let bytes = bs58::decode(s).into_vec().map_err(|e| e.to_string())?;
    if bytes.len() > max_bytes {
        return Err(format!("base58 decodes to more than {max_bytes} bytes"));
    }
    Ok(bytes)
}

pub fn sha256(data: impl AsRef<[u8]>) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data.as_ref()).into()
}

pub fn sha256_hex(data: impl AsRef<[u8]>) -> String {
    hex(&sha256(data))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unix seconds → RFC 3339 UTC (`2026-01-01T00:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Crypto failures as client errors: a JSON-LD limit → 422 `jsonld_too_complex`, no free
/// verification slot → 503 `service_unavailable` (Retry-After: 1), anything else → 422
/// `validation_failed` with the reason.
impl crate::error::ErrorCode for CryptoError {
    fn error_code(&self) -> crate::error::Code {
        use crate::error::Code;
        match self {
            CryptoError::TooComplex(_) | CryptoError::OutOfTime(_) => Code::JsonLdTooComplex,
            CryptoError::Busy(_) => Code::Unavailable,
            _ => Code::Validation,
        }
    }
    fn retry_after(&self) -> Option<u64> {
        matches!(self, CryptoError::Busy(_)).then_some(1)
    }
}
