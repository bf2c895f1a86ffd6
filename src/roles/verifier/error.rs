//! What the verifier's steps can fail with. Each variant names its stable code ([`ErrorCode`]);
//! the HTTP edge renders it as problem+json, or, at the response endpoint, in the OAuth format
//! wallets parse ([`crate::http::oauth`]), where a [`Refusal`] names its OAuth code.

use crate::error::{Code, ErrorCode, OAuthCode, Refusal};
use crate::roles::tenant_keys::KeyError;
use crate::roles::tenants::TenantError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A session request the verifier will not accept (query, policies, ttl, URLs, trust).
    #[error("{0}")]
    Invalid(String),
    #[error("no session `{0}`")]
    NoSession(String),
    #[error("this verification session has expired")]
    SessionExpired,
    #[error("this verification session is already finished")]
    SessionFinished,
    /// The session's response encryption key cannot be opened: ours, not the client's.
    #[error("session encryption key: {0}")]
    EncryptionKey(String),
    /// A VC-API input that is not a credential or presentation in any form we read.
    #[error("{0}")]
    Malformed(String),
    /// A JSON-LD input over this server's canonicalization limits: not judged.
    #[error(transparent)]
    Limit(crate::crypto::CryptoError),
    /// A wallet's response refused in the protocol's own terms.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Ours, not the client's (a record that does not decode): logged, never sent.
    #[error("{0}")]
    Internal(String),
}

impl ErrorCode for VerifierError {
    fn error_code(&self) -> Code {
        match self {
            VerifierError::Tenant(e) => e.error_code(),
            VerifierError::Store(e) => e.error_code(),
            VerifierError::Key(e) => e.error_code(),
            VerifierError::Invalid(_) => Code::Validation,
            VerifierError::NoSession(_) => Code::NotFound,
            VerifierError::SessionExpired | VerifierError::SessionFinished => Code::Gone,
            VerifierError::Refused(r) => r.error_code(),
            VerifierError::Malformed(_) => Code::BadRequest,
            VerifierError::Limit(e) => e.error_code(),
            VerifierError::EncryptionKey(_) | VerifierError::Internal(_) => Code::Internal,
        }
    }
    fn oauth_code(&self) -> Option<OAuthCode> {
        match self {
            VerifierError::Refused(r) => r.oauth_code(),
            _ => None,
        }
    }
    fn retry_after(&self) -> Option<u64> {
        match self {
            VerifierError::Tenant(e) => e.retry_after(),
            VerifierError::Store(e) => e.retry_after(),
            VerifierError::Key(e) => e.retry_after(),
            VerifierError::Limit(e) => e.retry_after(),
            _ => None,
        }
    }
    fn public_detail(&self) -> String {
        match self {
            VerifierError::Tenant(e) => e.public_detail(),
            VerifierError::Store(e) => e.public_detail(),
            VerifierError::Key(e) => e.public_detail(),
            VerifierError::Limit(e) => e.public_detail(),
            _ => self.to_string(),
        }
    }
}

/// [`VerifierError::Invalid`], for the many checks of a session request.
pub(super) fn invalid(detail: impl Into<String>) -> VerifierError {
    VerifierError::Invalid(detail.into())
}

/// [`VerifierError::EncryptionKey`] from whatever failed on the way to the key.
pub(super) fn encryption_key_broken(e: impl std::fmt::Display) -> VerifierError {
    VerifierError::EncryptionKey(e.to_string())
}
