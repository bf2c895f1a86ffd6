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
use crate::http::metrics::Metrics;

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

/// The `method` label: the standard methods, anything else (any token a client may send) `other`.
fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The `status` label: a fixed list of codes, others by class (`2xx` … `5xx`, else `other`).
fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100 => "100",
        101 => "101",
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        303 => "303",
        304 => "304",
        307 => "307",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        408 => "408",
        409 => "409",
        410 => "410",
        411 => "411",
        412 => "412",
        413 => "413",
        414 => "414",
        415 => "415",
        416 => "416",
        417 => "417",
        421 => "421",
        422 => "422",
        424 => "424",
        426 => "426",
        428 => "428",
        429 => "429",
        431 => "431",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        505 => "505",
        507 => "507",
        s if (100..200).contains(&s) => "1xx",
        s if (200..300).contains(&s) => "2xx",
        s if (300..400).contains(&s) => "3xx",
        s if (400..500).contains(&s) => "4xx",
        s if (500..600).contains(&s) => "5xx",
        _ => "other",
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
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = req.method().clone();
    // The route pattern, never the path: paths carry capabilities (an offer's id is what fetches
    // its pre-authorized code, a request object's id what fetches the request), and whoever reads
    // the log must not be able to use them. The pattern comes from the app's resource map, known
    // before routing.
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let path = crate::http::routed_path(&req).to_string();
    let span = tracing::info_span!("request", %method, %route, request_id = %request_id);

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
            if let Some(m) = &metrics {
                m.panics.inc();
            }
            let e = ApiError::internal(format!("handler panic (request {request_id})"));
            return Err(crate::http::oauth::middleware_error(&path, e));
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
    if let Some(metrics) = metrics {
        // Labels come from closed sets only (a label per client-chosen value would let anyone grow
        // memory and /metrics without bound): the route is a pattern the app registered, never the
        // path; the method and status are mapped onto fixed lists.
        let method = method_label(&method);
        let status = status_label(res.status());
        metrics
            .http_requests
            .with_label_values(&[method, &route, status])
            .inc();
        metrics
            .http_duration
            .with_label_values(&[method, &route])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::Method;

    #[test]
    fn labels_come_from_closed_sets() {
        assert_eq!(method_label(&Method::GET), "GET");
        for token in ["FOO", "X1", "get", "BREW"] {
            let m = Method::from_bytes(token.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "other", "{token}");
        }
        assert_eq!(status_label(StatusCode::OK), "200");
        assert_eq!(status_label(StatusCode::from_u16(299).unwrap()), "2xx");
        assert_eq!(status_label(StatusCode::from_u16(499).unwrap()), "4xx");
        assert_eq!(status_label(StatusCode::from_u16(999).unwrap()), "other");
        let all: std::collections::HashSet<_> = (100..1000)
            .map(|c| status_label(StatusCode::from_u16(c).unwrap()))
            .collect();
        assert!(all.len() < 60, "{} status labels", all.len());
    }
}
