//! The embedded console (web/) and Swagger UI, served from the binary: no CDN, no network.

use actix_web::{get, post, web, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Assets;

/// The console's Content-Security-Policy: everything from this origin only, no inline script or
/// style, no plugins, never framed (clickjacking), forms and `<base>` pinned.
pub const CONSOLE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// Security headers on every console response (pages, assets, QR codes).
fn secured(mut b: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    b.insert_header(("Content-Security-Policy", CONSOLE_CSP))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"));
    b
}

fn serve(path: &str) -> HttpResponse {
    match Assets::get(path) {
        Some(file) => secured(HttpResponse::Ok())
            .content_type(file.metadata.mimetype())
            .insert_header(("Cache-Control", "no-cache"))
            .body(file.data.into_owned()),
        None => HttpResponse::NotFound()
            .content_type("application/problem+json")
            .body(r#"{"type":"tag:idstack.dev,2026:problem:not_found","title":"Not found","status":404,"code":"not_found"}"#),
    }
}

#[get("/")]
async fn index() -> HttpResponse {
    serve("index.html")
}

/// A QR code (SVG) of the posted text, for the console to show offers, requests and invitations;
/// no network, no CDN. POSTed, not in a URL: an offer URI carries its pre-authorized code, and a
/// query string ends up in proxy access logs (attacker review of `GET /console/qr.svg?data=`).
#[post("/console/qr.svg")]
async fn qr(data: web::Bytes) -> HttpResponse {
    if data.len() > 2953 {
        return secured(HttpResponse::PayloadTooLarge()).finish();
    }
    match qrcode::QrCode::new(&data) {
        Ok(code) => secured(HttpResponse::Ok())
            .content_type("image/svg+xml")
            .insert_header(("Cache-Control", "no-store"))
            .body(
                code.render::<qrcode::render::svg::Color<'_>>()
                    .min_dimensions(240, 240)
                    .build(),
            ),
        Err(_) => secured(HttpResponse::UnprocessableEntity()).finish(),
    }
}

#[get("/console/{file:.*}")]
async fn asset(path: web::Path<String>) -> HttpResponse {
    serve(&path.into_inner())
}

/// Swagger UI's policy: never framed, no plugins, `<base>` pinned, images and requests to this
/// origin only (its stylesheet's `data:` images aside: no third party learns when an admin has
/// the page open, or the node's address); its own scripts and styles are left alone: the
/// console's `script-src 'self'`-only policy would break them.
pub const DOCS_CSP: &str = "frame-ancestors 'none'; object-src 'none'; base-uri 'none'; img-src 'self' data:; connect-src 'self'";

/// Response headers by path. Swagger UI, where admins paste the admin token, is never framed or
/// sniffed, like the console; an API answer without a cache rule of its own is `no-store` (login
/// sessions, the webhook secret, wallet contents: nothing a shared cache should keep; attacker
/// review).
pub async fn response_headers(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use actix_web::http::header::{self, HeaderName, HeaderValue};
    let path = crate::http::routed_path(&req);
    let docs = path == "/docs" || path.starts_with("/docs/");
    let api = path.starts_with("/api/") || path.starts_with("/wallet/");
    let mut res = next.call(req).await?;
    let h = res.headers_mut();
    if docs {
        for (name, value) in [
            ("content-security-policy", DOCS_CSP),
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ] {
            let name = HeaderName::from_static(name);
            if !h.contains_key(&name) {
                h.insert(name, HeaderValue::from_static(value));
            }
        }
    } else if api && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(res)
}

/// Mounts the console (outside the OpenAPI document: these are pages, not API).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(index).service(qr).service(asset);
    #[cfg(feature = "swagger-ui")]
    {
        cfg.service(
            utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}").config(
                // no "online validator" badge: it loaded validator.swagger.io with this node's
                // address in the query (console review)
                utoipa_swagger_ui::Config::from("/openapi.json")
                    .persist_authorization(false)
                    .validator_url("none"),
            ),
        );
        cfg.service(web::redirect("/docs", "/docs/"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, App};

    #[actix_web::test]
    async fn swagger_is_never_framed_and_api_answers_are_not_cached() {
        let app = test::init_service(
            App::new()
                .route("/docs/index.html", web::get().to(HttpResponse::Ok))
                .route(
                    "/api/system/webhook-secret",
                    web::get().to(HttpResponse::Ok),
                )
                .route(
                    "/api/cached",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .insert_header(("Cache-Control", "max-age=60"))
                            .finish()
                    }),
                )
                .route("/.well-known/x", web::get().to(HttpResponse::Ok))
                .wrap(actix_web::middleware::from_fn(response_headers)),
        )
        .await;
        let get = |p: &'static str| test::TestRequest::get().uri(p).to_request();
        let docs = test::call_service(&app, get("/docs/index.html")).await;
        let h = docs.headers();
        assert_eq!(h.get("x-frame-options").unwrap(), "DENY");
        assert_eq!(h.get("content-security-policy").unwrap(), DOCS_CSP);
        assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
        let secret = test::call_service(&app, get("/api/system/webhook-secret")).await;
        assert_eq!(secret.headers().get("cache-control").unwrap(), "no-store");
        // a percent-encoded spelling routes to the same page, and gets the same headers
        // (attacker review: `/%64ocs/` was Swagger UI without them)
        let encoded = test::call_service(&app, get("/%64ocs/index.html")).await;
        assert_eq!(encoded.status(), 200);
        assert_eq!(encoded.headers().get("x-frame-options").unwrap(), "DENY");
        let encoded = test::call_service(&app, get("/%61pi/system/webhook-secret")).await;
        assert_eq!(encoded.status(), 200);
        assert_eq!(encoded.headers().get("cache-control").unwrap(), "no-store");
        let own = test::call_service(&app, get("/api/cached")).await;
        assert_eq!(own.headers().get("cache-control").unwrap(), "max-age=60");
        let public = test::call_service(&app, get("/.well-known/x")).await;
        assert!(public.headers().get("cache-control").is_none());
        assert!(
            DOCS_CSP.contains("img-src 'self' data:") && DOCS_CSP.contains("connect-src 'self'")
        );
    }

    /// Swagger UI as served draws no "online validator" badge, which loaded validator.swagger.io
    /// with this node's address in the query whenever an admin opened the page.
    #[cfg(feature = "swagger-ui")]
    #[actix_web::test]
    async fn swagger_ui_calls_no_validator() {
        let app = test::init_service(App::new().configure(configure)).await;
        let req = test::TestRequest::get()
            .uri("/docs/swagger-initializer.js")
            .to_request();
        let body = test::call_and_read_body(&app, req).await;
        let js = String::from_utf8_lossy(&body);
        assert!(js.contains("\"validatorUrl\": \"none\""), "{js}");
    }
}
