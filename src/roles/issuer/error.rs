//! What the issuer's steps can fail with. Each variant names its stable code ([`ErrorCode`]); the
//! HTTP edge renders it as problem+json, or, at the OAuth endpoints (token, nonce, credential), as
//! the spec's own JSON ([`crate::http::oauth`]), where a [`Refusal`] names its OAuth code.

use crate::crypto::CryptoError;
use crate::error::{Code, ErrorCode, OAuthCode, Refusal};
use crate::roles::tenants::TenantError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A request the issuer will not accept (offers: claims, configurations, ttl, tx_code).
    #[error("{0}")]
    Invalid(String),
    /// A VC-API credential that does not follow the VC Data Model, or names no issuer here.
    #[error("{0}")]
    Malformed(String),
    /// A malformed or unacceptable authorization request.
    #[error("{0}")]
    BadAuthorization(String),
    #[error("issuer `{0}` does not use did:web")]
    NotDidWeb(String),
    #[error("issuer `{0}` has no signing key")]
    NoKey(String),
    #[error("no offer `{0}`")]
    NoOffer(String),
    #[error("this offer was already used or has expired")]
    OfferGone,
    #[error("no credential `{0}`")]
    NoCredential(String),
    #[error("a revoked credential cannot change status")]
    Revoked,
    /// A `jwt_vc_json` credential carries a revocation entry only (VCDM 1.1 allows one
    /// `credentialStatus`): a suspension no verifier could see is refused.
    #[error("a {0} credential has no suspension status: revoke it instead")]
    NoSuspension(&'static str),
    #[error("no such status list")]
    NoStatusList,
    #[error("no mdoc document signer here (production mode: import the issuer's chain with PUT /api/issuers/{{issuer}}/mdoc-signer)")]
    NoMdocIaca,
    #[error("the document signer changed while importing; retry")]
    SignerChanged,
    /// The mdoc PKI could not be created or opened: ours.
    #[error("mdoc document signer: {0}")]
    Mdoc(String),
    /// A status list that cannot be built or changed: ours, not the client's.
    #[error("status list: {0}")]
    StatusList(CryptoError),
    /// A token, nonce or credential request refused in the protocol's own terms.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Every slot for Data Integrity work stayed busy (`jsonld.max_concurrent`): 503, retry.
    #[error("{0}")]
    Busy(String),
    /// A credential to sign whose canonicalization is over the `jsonld.*` limits: 422.
    #[error("{0}")]
    TooComplex(String),
    /// Ours, not the client's (a record that does not decode, a failed signing task): logged,
    /// never sent.
    #[error("{0}")]
    Internal(String),
}

impl ErrorCode for IssuerError {
    fn error_code(&self) -> Code {
        match self {
            IssuerError::Tenant(e) => e.error_code(),
            IssuerError::Store(e) => e.error_code(),
            IssuerError::Invalid(_) => Code::Validation,
            IssuerError::BadAuthorization(_) | IssuerError::Malformed(_) => Code::BadRequest,
            IssuerError::NotDidWeb(_)
            | IssuerError::NoOffer(_)
            | IssuerError::NoCredential(_)
            | IssuerError::NoStatusList
            | IssuerError::NoMdocIaca => Code::NotFound,
            IssuerError::OfferGone => Code::Gone,
            IssuerError::Revoked | IssuerError::NoSuspension(_) | IssuerError::SignerChanged => {
                Code::Conflict
            }
            IssuerError::Refused(r) => r.error_code(),
            IssuerError::Busy(_) => Code::Unavailable,
            IssuerError::TooComplex(_) => Code::JsonLdTooComplex,
            IssuerError::NoKey(_)
            | IssuerError::StatusList(_)
            | IssuerError::Mdoc(_)
            | IssuerError::Internal(_) => Code::Internal,
        }
    }
    fn oauth_code(&self) -> Option<OAuthCode> {
        match self {
            IssuerError::Refused(r) => r.oauth_code(),
            _ => None,
        }
    }
    fn retry_after(&self) -> Option<u64> {
        match self {
            IssuerError::Tenant(e) => e.retry_after(),
            IssuerError::Store(e) => e.retry_after(),
            IssuerError::Busy(_) => Some(1),
            _ => None,
        }
    }
    fn public_detail(&self) -> String {
        match self {
            IssuerError::Tenant(e) => e.public_detail(),
            IssuerError::Store(e) => e.public_detail(),
            _ => self.to_string(),
        }
    }
}

impl IssuerError {
    /// Whether a credential request that failed so is not counted on its token: a failure on the
    /// issuer's side that the caller cannot have brought about. Not [`IssuerError::Busy`]:
    /// overload is what a caller with many requests in flight causes, and given back it made
    /// every request free (attacker review: one token's requests, replayed in parallel until the
    /// JSON-LD slots stayed busy, signed without end). Its proofs' nonces are kept for the retry
    /// on every server error, Busy too: nothing was signed, and an honest wallet retries.
    pub fn given_back(&self) -> bool {
        self.is_server_error() && !matches!(self, IssuerError::Busy(_))
    }
}

/// [`IssuerError::Invalid`], for the many checks of a request.
pub(super) fn invalid(detail: impl Into<String>) -> IssuerError {
    IssuerError::Invalid(detail.into())
}

/// [`IssuerError::Internal`] from whatever failed.
pub(super) fn internal(e: impl std::fmt::Display) -> IssuerError {
    IssuerError::Internal(e.to_string())
}

/// [`IssuerError::BadAuthorization`].
pub(super) fn bad_authorization(detail: impl Into<String>) -> IssuerError {
    IssuerError::BadAuthorization(detail.into())
}

/// `ok_or` for the required parameters of an authorization request.
pub(super) trait Required<T> {
    fn or_bad_authorization(self, detail: &str) -> Result<T, IssuerError>;
}

impl<T> Required<T> for Option<T> {
    fn or_bad_authorization(self, detail: &str) -> Result<T, IssuerError> {
        self.ok_or_else(|| IssuerError::BadAuthorization(detail.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_the_caller_cannot_cause_are_given_back() {
        assert!(IssuerError::Store(StoreError::Unavailable("down".into())).given_back());
        assert!(IssuerError::Internal("a record".into()).given_back());
        assert!(!IssuerError::Busy("every slot".into()).given_back());
        assert!(!IssuerError::Invalid("bad".into()).given_back());
        assert!(!IssuerError::TooComplex("big".into()).given_back());
    }
}
