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
    /// Seconds for `Retry-After` (429, 503); a 503 without one says a second.
    pub retry_after: Option<u64>,
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
            retry_after: None,
        }
    }

    /// An error raised before the endpoint's handler (a rate limit, a body over the limit or
    /// late, a panic), in the protocol's JSON by the one mapping below.
    pub fn from_api(e: crate::error::ApiError) -> Self {
        Self::from(Raised(e))
    }
}

/// An [`ApiError`](crate::error::ApiError) as a role error, so middleware refusals take the same
/// mapping to OAuth JSON as the handlers' errors.
struct Raised(crate::error::ApiError);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.detail)
    }
}

impl ErrorCode for Raised {
    fn error_code(&self) -> Code {
        self.0.code
    }
    fn retry_after(&self) -> Option<u64> {
        self.0.retry_after
    }
}

/// Whether `path` is a protocol endpoint whose errors wallets parse as OAuth JSON (the token,
/// nonce and credential endpoints of an issuer, a verifier's response endpoint) rather than
/// problem+json: errors raised by middleware before its handler are answered in that format too.
pub fn is_protocol_endpoint(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    matches!(
        segments.as_slice(),
        ["", "issuers", issuer, "token" | "nonce" | "credential"] if !issuer.is_empty()
    ) || matches!(
        segments.as_slice(),
        ["", "verifiers", verifier, "responses", session]
            if !verifier.is_empty() && !session.is_empty()
    )
}

/// `e`, raised by middleware for a request to `path`, as that endpoint answers errors: OAuth JSON
/// at a protocol endpoint ([`is_protocol_endpoint`]), else problem+json.
pub fn middleware_error(path: &str, e: crate::error::ApiError) -> actix_web::Error {
    if is_protocol_endpoint(path) {
        OAuthError::from_api(e).into()
    } else {
        e.into()
    }
}

/// The one mapping from a role's error to the protocol's JSON: the error's own OAuth code when it
/// has one ([`ErrorCode::oauth_code`]), else `temporarily_unavailable` for an unreachable store or a rate limit,
/// `server_error` for anything else on our side (the detail is logged, not sent), and
/// `invalid_request` for the remaining client errors. The status is the error's code's.
impl<E: ErrorCode> From<E> for OAuthError {
    fn from(e: E) -> Self {
        let code = e.error_code();
        let status = code.status();
        let error = match (e.oauth_code(), code) {
            (Some(o), _) => o.as_str(),
            // RFC 6749 §4.1.2.1: "temporary overloading"
            (None, Code::Unavailable | Code::RateLimited | Code::TooManyRequests) => {
                "temporarily_unavailable"
            }
            (None, _) if status.is_server_error() => {
                tracing::error!(detail = %e, "protocol endpoint failure");
                return Self::new(status, "server_error", "internal error");
            }
            (None, _) => "invalid_request",
        };
        Self {
            retry_after: e.retry_after(),
            ..Self::new(status, error, e.public_detail())
        }
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
        match self.retry_after {
            Some(secs) => {
                b.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            None if self.status == StatusCode::SERVICE_UNAVAILABLE => {
                b.insert_header((header::RETRY_AFTER, "1"));
            }
            None => {}
        }
        b.json(Body {
            error: self.error,
            error_description: &description,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_endpoints_are_recognised_by_path() {
        for p in [
            "/issuers/default/token",
            "/issuers/x/nonce",
            "/issuers/x/credential",
            "/verifiers/default/responses/abc",
        ] {
            assert!(is_protocol_endpoint(p), "{p}");
        }
        for p in [
            "/issuers//token",
            "/issuers/x/token/more",
            "/issuers/x/offers/y",
            "/api/issuers/x/token",
            "/verifiers/x/responses/",
            "/verifiers/x/requests/abc",
            "/wallet/auth/login",
        ] {
            assert!(!is_protocol_endpoint(p), "{p}");
        }
    }

    #[test]
    fn middleware_errors_keep_status_and_retry_after() {
        let e = OAuthError::from_api(crate::error::ApiError {
            retry_after: Some(7),
            ..crate::error::ApiError::new(Code::RateLimited, "slow down")
        });
        assert_eq!(
            (e.status.as_u16(), e.error, e.retry_after),
            (429, "temporarily_unavailable", Some(7))
        );
        let r = e.error_response();
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "7");
        let e = OAuthError::from_api(crate::error::ApiError::new(Code::PayloadTooLarge, "big"));
        assert_eq!((e.status.as_u16(), e.error), (413, "invalid_request"));
        let e = OAuthError::from_api(crate::error::ApiError::internal("disk on fire"));
        assert_eq!(
            (e.error, e.description.as_str()),
            ("server_error", "internal error")
        );
    }
}
