//! The OpenAPI document: assembled by utoipa from the handlers each enabled role mounts.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub const ADMIN_SCHEME: &str = "admin_token";
/// The cloud wallet's user session (`POST /wallet/auth/login` returns the token).
pub const WALLET_SCHEME: &str = "wallet_session";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "idstack",
        description = "Identity server stack: OpenID4VCI issuer, OpenID4VP verifier, cloud wallet and DIDComm mediator in one binary. Management endpoints (`/api/...`) need `Authorization: Bearer <admin token>`; the cloud wallet's `/wallet/...` endpoints need a wallet session token from `POST /wallet/auth/login`. Any endpoint may answer 503 (`service_unavailable`, with `Retry-After`): retry after it. In cluster mode a 503 whose detail says **the outcome is unknown** means a single-use step (a code, nonce or session result) may have been made anyway, so a retry answered \"already used\" (e.g. `invalid_grant`) may be the client's own first attempt (docs/errors.md).",
        license(name = "Apache-2.0")
    ),
    modifiers(&SecurityAddon),
    tags(
        (name = "system", description = "Health, readiness and metrics"),
        (name = "issuer", description = "OpenID4VCI credential issuer"),
        (name = "verifier", description = "OpenID4VP verifier"),
        (name = "wallet", description = "Cloud wallet"),
        (name = "mediator", description = "DIDComm mediator"),
    )
)]
pub struct ApiDoc;

/// The committed copy of the default build's document, at the repository root.
pub const COMMITTED_FILE: &str = "openapi.json";
/// Set to `1` to make the lib test `committed_openapi_json_is_current` (src/app.rs) write the
/// generated document to [`COMMITTED_FILE`] instead of comparing.
pub const UPDATE_ENV: &str = "IDSTACK_UPDATE_OPENAPI";

/// The document as served at `/openapi.json` and committed as `openapi.json`: pretty JSON with
/// every object's keys sorted (serde_json's map is a `BTreeMap` without `preserve_order`, so the
/// round trip through `Value` sorts them) and a trailing newline, so it diffs cleanly.
pub fn render(doc: &utoipa::openapi::OpenApi) -> serde_json::Result<String> {
    let value = serde_json::to_value(doc)?;
    let mut out = serde_json::to_string_pretty(&value)?;
    out.push('\n');
    Ok(out)
}

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.info.version = env!("CARGO_PKG_VERSION").to_string();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Admin token (admin.tokens; printed on first sandbox start)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            WALLET_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Wallet session token (`POST /wallet/auth/login` answers `{\"token\": ...}`)",
                    ))
                    .build(),
            ),
        );
    }
}
