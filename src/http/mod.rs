//! Shared HTTP pieces: extractor error mapping, the fallback route, auth, observability, OpenAPI,
//! health and the embedded console.

pub mod auth;
pub mod body_deadline;
pub mod connection;
pub mod metrics;
pub mod oauth;
pub mod observe;
pub mod openapi;
pub mod outbound;
pub mod ratelimit;
pub mod web;
pub mod webhook;

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

/// Percent-encodes everything but RFC 3986 unreserved characters (for query values in URIs we build).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The answer for every path no route matches.
pub async fn route_not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(
        Code::RouteNotFound,
        format!("no endpoint for {} {}", req.method(), req.path()),
    ))
}

/// The path a request is routed by: percent-decoded as the router decodes it (all but `%`, `/`
/// and `+`), so a rule chosen by path holds for every spelling of it (attacker review:
/// `/%64ocs/` reached Swagger UI without its headers, since `req.path()` is the raw path).
pub fn routed_path(req: &actix_web::dev::ServiceRequest) -> &str {
    req.match_info().as_str()
}

#[cfg(test)]
mod tests {
    use actix_web::{middleware::from_fn, test, web, App, HttpResponse};

    use super::*;

    #[derive(serde::Deserialize)]
    struct Body {
        #[allow(dead_code)]
        name: String,
    }

    async fn echo(_b: web::Json<Body>) -> HttpResponse {
        HttpResponse::Ok().finish()
    }

    async fn boom() -> HttpResponse {
        panic!("handler bug")
    }

    async fn call(req: test::TestRequest) -> (u16, serde_json::Value, Option<String>) {
        let (json, form, path, query, payload) = extractor_configs(1024);
        let app = test::init_service(
            App::new()
                .app_data(json)
                .app_data(form)
                .app_data(path)
                .app_data(query)
                .app_data(payload)
                .route("/echo", web::post().to(echo))
                .route("/boom", web::get().to(boom))
                .default_service(web::to(route_not_found))
                .wrap(from_fn(observe::observe)),
        )
        .await;
        let resp = match test::try_call_service(&app, req.to_request()).await {
            Ok(r) => r.into_parts().1,
            Err(e) => e.error_response(),
        };
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let body = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, v, ct)
    }

    #[actix_web::test]
    async fn bad_bodies_are_problem_json_4xx() {
        let (s, v, ct) = call(
            test::TestRequest::post()
                .uri("/echo")
                .insert_header(("content-type", "application/json"))
                .set_payload("{not json"),
        )
        .await;
        assert_eq!((s, v["code"].as_str()), (400, Some("invalid_json")));
        assert_eq!(ct.as_deref(), Some("application/problem+json"));
        let big = format!("{{\"name\":\"{}\"}}", "x".repeat(4096));
        let (s, v, _) = call(
            test::TestRequest::post()
                .uri("/echo")
                .insert_header(("content-type", "application/json"))
                .set_payload(big),
        )
        .await;
        assert_eq!((s, v["code"].as_str()), (413, Some("payload_too_large")));
        let (s, v, _) = call(
            test::TestRequest::post()
                .uri("/echo")
                .insert_header(("content-type", "text/plain"))
                .set_payload("{}"),
        )
        .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (415, Some("unsupported_media_type"))
        );
        let (s, v, _) = call(
            test::TestRequest::post()
                .uri("/echo")
                .insert_header(("content-type", "application/json"))
                .set_payload("{\"nom\":1}"),
        )
        .await;
        assert_eq!((s, v["code"].as_str()), (400, Some("invalid_json")));
    }

    #[actix_web::test]
    async fn a_panicking_handler_answers_500_without_internals() {
        let (s, v, ct) = call(test::TestRequest::get().uri("/boom")).await;
        assert_eq!(s, 500);
        assert_eq!(v["code"], "internal_error");
        assert!(!v.to_string().contains("handler bug"));
        assert_eq!(ct.as_deref(), Some("application/problem+json"));
        // and the app keeps serving
        let (s, v, _) = call(test::TestRequest::get().uri("/nope")).await;
        assert_eq!((s, v["code"].as_str()), (404, Some("route_not_found")));
    }
}
