//! Errors of OAuth 2.0-family protocol endpoints (token, credential, nonce, authorization, OpenID4VP
//! response): the spec's JSON `{"error", "error_description"}` instead of problem+json, because
//! wallets parse these codes.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::error::{Code, ErrorCode};

#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl OAuthError {
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }
}

/// The one mapping from a role's error to the protocol's JSON: the error's own OAuth code when it
/// has one ([`ErrorCode::oauth_code`]), else `temporarily_unavailable` for an unreachable store,
/// `server_error` for anything else on our side (the detail is logged, not sent), and
/// `invalid_request` for the remaining client errors. The status is the error's code's.
impl<E: ErrorCode> From<E> for OAuthError {
    fn from(e: E) -> Self {
        let code = e.error_code();
        let status = code.status();
        let error = match (e.oauth_code(), code) {
            (Some(o), _) => o.as_str(),
            (None, Code::Unavailable) => "temporarily_unavailable",
            (None, _) if status.is_server_error() => {
                tracing::error!(detail = %e, "protocol endpoint failure");
                return Self::new(status, "server_error", "internal error");
            }
            (None, _) => "invalid_request",
        };
        Self::new(status, error, e.public_detail())
    }
}

impl ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let description = crate::error::outward_detail(&self.description);
        if self.status.is_client_error() {
            tracing::info!(error = self.error, detail = %description, "protocol error");
        }
        let mut b = HttpResponse::build(self.status);
        b.insert_header((header::CACHE_CONTROL, "no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            b.insert_header((
                header::WWW_AUTHENTICATE,
                format!("Bearer error=\"{}\"", self.error),
            ));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            b.insert_header((header::RETRY_AFTER, "1"));
        }
        b.json(Body {
            error: self.error,
            error_description: &description,
        })
    }
}
