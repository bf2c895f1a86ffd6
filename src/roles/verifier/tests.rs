//! Unit tests of the verifier service.

use std::collections::HashMap;

use serde_json::json;

use super::model::*;
use super::service::*;
use crate::clock::FakeClock;
use crate::config::VerifierConfig;
use crate::error::{Code, ErrorCode};
use crate::http::oauth::OAuthError;
use crate::roles::RoleContext;

#[tokio::test]
async fn expired_sessions_are_410_and_reported_expired() {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = VerifierService::new(
        RoleContext::for_tests(clock.clone()),
        VerifierConfig::default(),
    );
    svc.init().await.unwrap();
    // no issuer role here: the default verifier trusts one named issuer
    svc.update_verifier(
        "default",
        UpdateVerifier {
            display_name: None,
            trusted_issuers: Some(vec!["did:example:issuer".into()]),
        },
    )
    .await
    .unwrap();
    let req = CreateSession {
        dcql_query: Some(json!({"credentials": [{"id": "a", "format": "dc+sd-jwt", "meta": {}}]})),
        presentation_definition: None,
        response_mode: None,
        ttl_seconds: Some(30),
        policies: None,
        require_status: None,
        webhook_url: None,
        success_redirect: None,
    };
    let created = svc.create_session("default", req).await.unwrap();
    assert!(svc
        .request_object("default", &created.id, None)
        .await
        .is_ok());
    clock.advance_ms(31_000);
    let e = svc
        .request_object("default", &created.id, None)
        .await
        .unwrap_err();
    assert_eq!(e.error_code(), Code::Gone);
    let mut form = HashMap::new();
    form.insert("vp_token".to_string(), "{}".to_string());
    form.insert("state".to_string(), "x".to_string());
    let e = OAuthError::from(
        svc.handle_response("default", &created.id, form)
            .await
            .err()
            .unwrap(),
    );
    assert_eq!(e.status.as_u16(), 410);
    assert_eq!(
        svc.session_view("default", &created.id)
            .await
            .unwrap()
            .state,
        SessionState::Expired
    );
}
