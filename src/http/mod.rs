//! Shared HTTP pieces: extractor error mapping, the fallback route, auth, observability, OpenAPI,
//! health and the embedded console.

pub mod auth;
pub mod health;
pub mod metrics;
pub mod observe;
pub mod openapi;
pub mod web;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError, UrlencodedError};
use actix_web::{web as aw, HttpRequest};

use crate::error::{ApiError, Code};

/// Extractor configs that route every parse failure through [`ApiError`].
pub fn extractor_configs(
    body_limit: usize,
) -> (
    aw::JsonConfig,
    aw::FormConfig,
    aw::PathConfig,
    aw::QueryConfig,
    aw::PayloadConfig,
) {
    let json = aw::JsonConfig::default()
        .limit(body_limit)
        .error_handler(|err, _req| json_error(err).into());
    let form = aw::FormConfig::default()
        .limit(body_limit)
        .error_handler(|err, _req| form_error(err).into());
    let path = aw::PathConfig::default().error_handler(|err: PathError, _req| {
        ApiError::new(Code::InvalidPath, err.to_string()).into()
    });
    let query = aw::QueryConfig::default().error_handler(|err: QueryPayloadError, _req| {
        ApiError::new(Code::InvalidQuery, err.to_string()).into()
    });
    let payload = aw::PayloadConfig::new(body_limit);
    (json, form, path, query, payload)
}

fn json_error(err: JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::new(Code::PayloadTooLarge, err.to_string())
        }
        JsonPayloadError::ContentType => ApiError::new(
            Code::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ),
        other => ApiError::new(Code::InvalidJson, other.to_string()),
    }
}

fn form_error(err: UrlencodedError) -> ApiError {
    match err {
        UrlencodedError::Overflow { .. } => ApiError::new(Code::PayloadTooLarge, err.to_string()),
        UrlencodedError::ContentType => ApiError::new(
            Code::UnsupportedMediaType,
            "expected Content-Type: application/x-www-form-urlencoded",
        ),
        other => ApiError::new(Code::InvalidForm, other.to_string()),
    }
}

/// The answer for every path no route matches.
pub async fn route_not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(
        Code::RouteNotFound,
        format!("no endpoint for {} {}", req.method(), req.path()),
    ))
}
