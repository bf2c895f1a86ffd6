//! The embedded console (web/) and Swagger UI, served from the binary: no CDN, no network.

use actix_web::{get, web, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Assets;

/// The console's Content-Security-Policy: everything from this origin only, no inline script or
/// style, no plugins, never framed (clickjacking), forms and `<base>` pinned.
pub const CONSOLE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
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

#[derive(serde::Deserialize)]
struct QrQuery {
    data: String,
}

/// A QR code (SVG) of `data`, for the console to show offers and requests; no network, no CDN.
#[get("/console/qr.svg")]
async fn qr(q: web::Query<QrQuery>) -> HttpResponse {
    if q.data.len() > 2953 {
        return secured(HttpResponse::PayloadTooLarge()).finish();
    }
    match qrcode::QrCode::new(q.data.as_bytes()) {
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

/// Mounts the console (outside the OpenAPI document: these are pages, not API).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(index).service(qr).service(asset);
    #[cfg(feature = "swagger-ui")]
    {
        cfg.service(
            utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}").config(
                utoipa_swagger_ui::Config::from("/openapi.json").persist_authorization(false),
            ),
        );
        cfg.service(web::redirect("/docs", "/docs/"));
    }
}
