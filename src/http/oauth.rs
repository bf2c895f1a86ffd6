//! Errors of OAuth 2.0-family protocol endpoints (token, credential, nonce, authorization, OpenID4VP
//! response): the spec's JSON `{"error", "error_description"}` instead of problem+json, because
//! wallets parse these codes.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

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
    pub fn bad(error: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, description)
    }
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::bad("invalid_request", description)
    }
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::bad("invalid_grant", description)
    }
    pub fn invalid_token(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", description)
    }
    pub fn server(description: impl std::fmt::Display) -> Self {
        tracing::error!(detail = %description, "protocol endpoint failure");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error",
        )
    }
    /// An unknown resource of a protocol endpoint (404 with the OAuth body).
    pub fn not_found(error: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error, description)
    }
    /// An expired resource of a protocol endpoint (410 with the OAuth body).
    pub fn gone(error: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, error, description)
    }
    /// `fallback` for a lookup that failed, unless the store was unreachable: that stays a 503.
    /// Takes any layer's error (role, store); they say what they are through their code.
    pub fn unless_unavailable(e: impl crate::error::ErrorCode, fallback: Self) -> Self {
        if e.error_code() == crate::error::Code::Unavailable {
            Self::unavailable(e.to_string())
        } else {
            fallback
        }
    }

    pub fn unavailable(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            description,
        )
    }
}

impl From<crate::store::StoreError> for OAuthError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Unavailable(d) => OAuthError::unavailable(d),
            other => OAuthError::server(other),
        }
    }
}

impl ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        if self.status.is_client_error() {
            tracing::info!(error = self.error, detail = %self.description, "protocol error");
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
            error_description: &self.description,
        })
    }
}
