//! What the mediator engine can fail with, each failure naming its stable code
//! ([`crate::error::ErrorCode`]); the HTTP edge turns it into problem+json with `?`, the WebSocket
//! loop into a text frame with the same problem document.
//!
//! The codes, statuses and details are the ones the mediator has always answered: `didcomm_*`
//! for envelopes and messages it cannot take, `gone` for a spent invitation, `conflict` when a
//! record keeps changing under a compare-and-swap, `mediator_queue_full` (507), and
//! `payload_too_large` / `invalid_query` at its edges.

use std::fmt::Display;

use crate::didcomm::envelope::EnvelopeError;
use crate::error::{Code, ErrorCode};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum MediatorError {
    /// An envelope over `max_message_bytes` (413).
    #[error("DIDComm message too large")]
    TooLarge,
    /// An envelope that is not for us, or does not open (404 / 400).
    #[error(transparent)]
    Unpack(EnvelopeError),
    /// A malformed or unacceptable message (400 `didcomm_bad_message`).
    #[error("{0}")]
    BadMessage(String),
    /// The sender has no connection, or it was removed (403).
    #[error("{0}")]
    NoConnection(&'static str),
    /// A forward to a key no connection registered (404 `didcomm_unknown_recipient`).
    #[error("no mediation registered for the forward's recipient key")]
    NoRoute,
    /// A reusable invitation at `max_connections_per_invitation` (410).
    #[error("this invitation has reached its limit of {0} connections")]
    InvitationFull(u64),
    /// A single-use invitation answered before (410).
    #[error("this single-use invitation was already used")]
    InvitationUsed,
    /// A record kept changing under its compare-and-swap: retry (409).
    #[error("{0}")]
    Contended(&'static str),
    /// The recipient's queue is at its message or byte cap (507).
    #[error("{0}")]
    QueueFull(String),
    /// `handshake=` names a protocol we do not offer (400 `invalid_query`).
    #[error("unknown handshake protocol {0:?} (didexchange, connections)")]
    UnknownHandshake(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node takes no new sessions now: it stops, or a rolling upgrade holds it back (503).
    #[error("{0}")]
    NotServing(&'static str),
    /// Ours (encoding, packing, a record that vanished): logged, never shown over HTTP (500).
    #[error("{0}")]
    Internal(String),
}

pub type MediatorResult<T> = Result<T, MediatorError>;

impl ErrorCode for MediatorError {
    fn error_code(&self) -> Code {
        match self {
            MediatorError::TooLarge => Code::PayloadTooLarge,
            MediatorError::Unpack(EnvelopeError::UnknownRecipient) | MediatorError::NoRoute => {
                Code::DidcommUnknownRecipient
            }
            MediatorError::Unpack(_) => Code::DidcommUnpackFailed,
            MediatorError::BadMessage(_) => Code::DidcommBadMessage,
            MediatorError::NoConnection(_) => Code::DidcommNoConnection,
            MediatorError::InvitationFull(_) | MediatorError::InvitationUsed => Code::Gone,
            MediatorError::Contended(_) => Code::Conflict,
            MediatorError::QueueFull(_) => Code::MediatorQueueFull,
            MediatorError::UnknownHandshake(_) => Code::InvalidQuery,
            MediatorError::Store(e) => e.error_code(),
            MediatorError::NotServing(_) => Code::Unavailable,
            MediatorError::Internal(_) => Code::Internal,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            MediatorError::Store(e) => e.retry_after(),
            MediatorError::NotServing(_) => Some(1),
            _ => None,
        }
    }
    fn public_detail(&self) -> String {
        match self {
            MediatorError::Store(e) => e.public_detail(),
            _ => self.to_string(),
        }
    }
}

/// [`MediatorError::BadMessage`].
pub(super) fn bad_message(detail: impl Into<String>) -> MediatorError {
    MediatorError::BadMessage(detail.into())
}

/// `.or_internal()?` for failures that are ours, not the sender's (500).
pub(super) trait OrInternal<T> {
    fn or_internal(self) -> MediatorResult<T>;
}

impl<T, E: Display> OrInternal<T> for Result<T, E> {
    fn or_internal(self) -> MediatorResult<T> {
        self.map_err(|e| MediatorError::Internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    #[test]
    fn codes_and_details_are_the_ones_the_mediator_answered() {
        let unknown = EnvelopeError::UnknownRecipient.to_string();
        let cases: Vec<(MediatorError, Code, &str)> = vec![
            (
                MediatorError::TooLarge,
                Code::PayloadTooLarge,
                "DIDComm message too large",
            ),
            (
                MediatorError::NoRoute,
                Code::DidcommUnknownRecipient,
                "no mediation registered for the forward's recipient key",
            ),
            (
                MediatorError::InvitationFull(3),
                Code::Gone,
                "this invitation has reached its limit of 3 connections",
            ),
            (
                MediatorError::UnknownHandshake("x\"y".into()),
                Code::InvalidQuery,
                r#"unknown handshake protocol "x\"y" (didexchange, connections)"#,
            ),
            (
                MediatorError::Unpack(EnvelopeError::UnknownRecipient),
                Code::DidcommUnknownRecipient,
                &unknown,
            ),
        ];
        for (e, code, detail) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.code, api.detail.as_str()), (code, detail));
        }
        let api = ApiError::from(MediatorError::Store(StoreError::Unavailable("down".into())));
        assert_eq!((api.code, api.retry_after), (Code::Unavailable, Some(1)));
    }
}
