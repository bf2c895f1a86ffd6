//! What can go wrong in the wallet engine, each failure naming its stable code
//! ([`crate::error::ErrorCode`]); the HTTP edge turns it into problem+json with `?`.
//!
//! The codes and statuses are the ones the wallet API has always answered: `validation_failed`
//! (422) for bad input, `not_found` (404, also for wallets the caller is not a member of),
//! `forbidden` (403), `conflict` (409), `unauthorized` (401), `too_many_requests` (429 +
//! Retry-After) while a login is locked, `service_unavailable` (503 + Retry-After) when busy,
//! `remote_party_failed` (424) and `outbound_refused` (422) for the other party of an exchange.

use std::fmt::Display;

use crate::client::ClientError;
use crate::crypto::binding::BindingError;
use crate::error::{Code, ErrorCode};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The request is well-formed but not acceptable (422 `validation_failed`).
    #[error("{0}")]
    Invalid(String),
    /// No such thing, or a wallet the caller is not a member of (404, so ids cannot be probed).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// No live session token, or wrong email/password (401).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A disabled account, or a viewer asking for an owner's operation (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The email is locked after failed logins, for `retry_after` more seconds (429).
    #[error("too many failed logins; try again later")]
    LoginLocked { retry_after: u64 },
    /// Too much in progress (password hashing, login races, tenant sessions): 503, retry soon.
    #[error("{detail}")]
    Busy {
        detail: &'static str,
        retry_after: u64,
    },
    /// The issuer or verifier failed, was unreachable or answered badly (424).
    #[error("{0}")]
    Remote(String),
    /// The issuer's credential failed its signature or issuer-key check (424).
    #[error("the issuer's credential does not verify: {0}")]
    CredentialRejected(String),
    /// The outbound guard will not fetch from that address (422 `outbound_refused`).
    #[error("{0}")]
    OutboundRefused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Ours (unsealing, key decoding, a task that died): logged, never shown (500).
    #[error("{0}")]
    Internal(String),
}

pub type WalletResult<T> = Result<T, WalletError>;

impl WalletError {
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::NotFound(detail.into())
    }
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::Invalid(detail.into())
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::Conflict(detail.into())
    }
}

impl ErrorCode for WalletError {
    fn error_code(&self) -> Code {
        match self {
            WalletError::Invalid(_) => Code::Validation,
            WalletError::NotFound(_) => Code::NotFound,
            WalletError::Conflict(_) => Code::Conflict,
            WalletError::Unauthorized(_) => Code::Unauthorized,
            WalletError::Forbidden(_) => Code::Forbidden,
            WalletError::LoginLocked { .. } => Code::TooManyRequests,
            WalletError::Busy { .. } => Code::Unavailable,
            WalletError::Remote(_) | WalletError::CredentialRejected(_) => Code::RemoteFailed,
            WalletError::OutboundRefused(_) => Code::OutboundRefused,
            WalletError::Store(e) => e.error_code(),
            WalletError::Internal(_) => Code::Internal,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            WalletError::LoginLocked { retry_after } | WalletError::Busy { retry_after, .. } => {
                Some(*retry_after)
            }
            WalletError::Store(e) => e.retry_after(),
            _ => None,
        }
    }
    fn public_detail(&self) -> String {
        match self {
            WalletError::Store(e) => e.public_detail(),
            _ => self.to_string(),
        }
    }
}

/// The holder-side OpenID4VCI / OpenID4VP clients: bad input is the caller's (422), a refusal by
/// the outbound guard keeps its code, anything else is the other party's failure (424).
impl From<ClientError> for WalletError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Input(m) => WalletError::Invalid(m),
            ClientError::Outbound(o) if o.is_refused() => {
                WalletError::OutboundRefused(o.to_string())
            }
            other => WalletError::Remote(other.to_string()),
        }
    }
}

/// An issuer-key binding failure (refusals by the outbound guard keep their code).
impl From<BindingError> for WalletError {
    fn from(e: BindingError) -> Self {
        match e {
            BindingError::Refused(d) => WalletError::OutboundRefused(d),
            other => WalletError::CredentialRejected(other.to_string()),
        }
    }
}

/// `.or_internal()?` for failures that are ours, not the client's (500, detail only logged).
pub trait OrInternal<T> {
    fn or_internal(self) -> WalletResult<T>;
}

impl<T, E: Display> OrInternal<T> for Result<T, E> {
    fn or_internal(self) -> WalletResult<T> {
        self.map_err(|e| WalletError::Internal(e.to_string()))
    }
}

/// `.or_remote()?` / `.or_rejected()?` for the other party's failures (424).
pub trait OrRemote<T> {
    /// The other party answered something unusable.
    fn or_remote(self) -> WalletResult<T>;
    /// The issuer's credential does not verify.
    fn or_rejected(self) -> WalletResult<T>;
}

impl<T, E: Display> OrRemote<T> for Result<T, E> {
    fn or_remote(self) -> WalletResult<T> {
        self.map_err(|e| WalletError::Remote(e.to_string()))
    }
    fn or_rejected(self) -> WalletResult<T> {
        self.map_err(|e| WalletError::CredentialRejected(e.to_string()))
    }
}

/// `.or_not_found("no such DID")?` for a record that is absent.
pub trait OrNotFound<T> {
    fn or_not_found(self, detail: impl Into<String>) -> WalletResult<T>;
}

impl<T> OrNotFound<T> for Option<T> {
    fn or_not_found(self, detail: impl Into<String>) -> WalletResult<T> {
        self.ok_or_else(|| WalletError::NotFound(detail.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    #[test]
    fn codes_and_retry_after_are_the_ones_the_api_answered() {
        let cases: Vec<(WalletError, Code, Option<u64>)> = vec![
            (WalletError::invalid("x"), Code::Validation, None),
            (WalletError::not_found("x"), Code::NotFound, None),
            (WalletError::Forbidden("x"), Code::Forbidden, None),
            (
                WalletError::LoginLocked { retry_after: 30 },
                Code::TooManyRequests,
                Some(30),
            ),
            (
                WalletError::Busy {
                    detail: "x",
                    retry_after: 2,
                },
                Code::Unavailable,
                Some(2),
            ),
            (
                WalletError::Store(StoreError::Unavailable("down".into())),
                Code::Unavailable,
                Some(1),
            ),
            (
                WalletError::from(BindingError::Refused("no".into())),
                Code::OutboundRefused,
                None,
            ),
            (
                WalletError::from(ClientError::Input("bad".into())),
                Code::Validation,
                None,
            ),
        ];
        for (e, code, retry) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.code, api.retry_after), (code, retry));
        }
    }

    #[test]
    fn a_client_input_error_keeps_its_bare_detail() {
        let api = ApiError::from(WalletError::from(ClientError::Input("no offer".into())));
        assert_eq!(api.detail, "no offer");
    }
}
