//! One middleware for what every request needs: a request id (`X-Request-Id` in and out) and the
//! root tracing span, panic containment (a panicking handler answers 500 without internals),
//! problem+json for errors raised outside our handlers, and request metrics.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};
use futures_util::FutureExt;
use tracing::Instrument;

use crate::error::{ApiError, Code};
use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id, in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn acceptable_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
    .then(|| s.to_string())
}

fn code_for_status(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::BadRequest,
        401 => Code::Unauthorized,
        403 => Code::Forbidden,
        404 => Code::NotFound,
        409 => Code::Conflict,
        410 => Code::Gone,
        413 => Code::PayloadTooLarge,
        415 => Code::UnsupportedMediaType,
        422 => Code::Validation,
        429 => Code::TooManyRequests,
        503 => Code::Unavailable,
        s if (400..500).contains(&s) => Code::BadRequest,
        _ => Code::Internal,
    }
}

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(acceptable_id)
        .unwrap_or_else(crate::clock::random_id);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = req.method().clone();
    let span =
        tracing::info_span!("request", %method, path = %req.path(), request_id = %request_id);

    let outcome = AssertUnwindSafe(next.call(req).instrument(span.clone()))
        .catch_unwind()
        .await;
    // The request moved into the inner service (actix routing needs it unshared), so a panic is
    // answered by returning the error: the dispatcher renders it with `error_response()`.
    let mut res: ServiceResponse<BoxBody> = match outcome {
        Ok(Ok(res)) => res.map_into_boxed_body(),
        Ok(Err(err)) => return Err(err),
        Err(_) => {
            span.in_scope(|| tracing::error!("handler panicked; answered 500"));
            if let Some(s) = &state {
                s.metrics.panics.inc();
            }
            return Err(ApiError::internal(format!("handler panic (request {request_id})")).into());
        }
    };

    // Errors produced by actix itself or by extractors we did not configure: re-render as problem+json.
    let foreign_error = res.response().error().is_some_and(|e| {
        e.as_error::<ApiError>().is_none()
            && !res
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("json"))
    });
    if foreign_error {
        let status = res.status();
        let detail = res
            .response()
            .error()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let e = ApiError::new(code_for_status(status), detail);
        let mut resp = e.error_response();
        *resp.status_mut() = status;
        res = ServiceResponse::new(res.request().clone(), resp);
    }

    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    if let Some(state) = state {
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        let status = res.status().as_u16().to_string();
        state
            .metrics
            .http_requests
            .with_label_values(&[method.as_str(), &route, &status])
            .inc();
        state
            .metrics
            .http_duration
            .with_label_values(&[method.as_str(), &route])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}
