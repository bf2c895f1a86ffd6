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

/// A verifier service whose default verifier trusts one named issuer (no issuer role here).
async fn verifier(clock: &std::sync::Arc<FakeClock>) -> VerifierService {
    let svc = VerifierService::new(
        RoleContext::for_tests(clock.clone()),
        VerifierConfig::default(),
    );
    svc.init().await.unwrap();
    svc.update_verifier(
        "default",
        UpdateVerifier {
            display_name: None,
            trusted_issuers: Some(vec!["did:example:issuer".into()]),
        },
    )
    .await
    .unwrap();
    svc
}

/// The default verifier's stored session `id`.
async fn stored_session(svc: &VerifierService, id: &str) -> Session {
    svc.ctx
        .store
        .get_json(
            super::ks::SESSIONS,
            &super::service::session_key("default", id),
        )
        .await
        .unwrap()
        .unwrap()
}

/// A session asking for one SD-JWT, living `ttl` seconds.
fn sd_jwt_session(ttl: u64) -> CreateSession {
    CreateSession {
        dcql_query: Some(json!({"credentials": [{"id": "a", "format": "dc+sd-jwt", "meta": {}}]})),
        presentation_definition: None,
        response_mode: None,
        ttl_seconds: Some(ttl),
        policies: None,
        require_status: None,
        webhook_url: None,
        success_redirect: None,
    }
}

#[tokio::test]
async fn expired_sessions_are_410_and_reported_expired() {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = verifier(&clock).await;
    let created = svc
        .create_session("default", sd_jwt_session(30))
        .await
        .unwrap();
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

/// `n` responses with an unverifiable vp_token (and the right state) sent to session `id` at once.
async fn bad_responses_at_once(
    svc: &std::sync::Arc<VerifierService>,
    id: &str,
    n: usize,
) -> Vec<
    Result<
        Result<super::response::ResponseOutcome, super::error::VerifierError>,
        tokio::task::JoinError,
    >,
> {
    let session = stored_session(svc, id).await;
    let answers = (0..n).map(|_| {
        let (svc, id) = (svc.clone(), id.to_string());
        let mut form = HashMap::new();
        form.insert(
            "vp_token".to_string(),
            json!({"a": ["not an sd-jwt"]}).to_string(),
        );
        form.insert("state".to_string(), session.state_param.clone());
        tokio::spawn(async move { svc.handle_response("default", &id, form).await })
    });
    futures_util::future::join_all(answers).await
}

/// The refusal the one answer of `answers` is.
fn refusal(
    mut answers: Vec<
        Result<
            Result<super::response::ResponseOutcome, super::error::VerifierError>,
            tokio::task::JoinError,
        >,
    >,
) -> String {
    answers.remove(0).unwrap().err().unwrap().to_string()
}

/// Responses sent to one session at once are evaluated at most `MAX_FAILED_ATTEMPTS` times: the
/// others are refused before their presentation is evaluated (attacker review: each was
/// evaluated in full, with its own budget of outbound fetches, before any counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn responses_sent_at_once_are_evaluated_at_most_three_times() {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = std::sync::Arc::new(verifier(&clock).await);
    let created = svc
        .create_session("default", sd_jwt_session(300))
        .await
        .unwrap();
    let answers = bad_responses_at_once(&svc, &created.id, 12).await;
    let refused_unevaluated = answers
        .iter()
        .filter_map(|a| a.as_ref().unwrap().as_ref().err())
        .filter(|e| {
            let e = e.to_string();
            e.contains("as many presentations") || e.contains("already been answered")
        })
        .count();
    assert_eq!(refused_unevaluated, 9);
    let stored = stored_session(&svc, &created.id).await;
    assert_eq!(stored.state, SessionState::Failed);
    assert!(stored.evaluating.is_empty(), "{:?}", stored.evaluating);
}

/// A place taken by a response whose handler never answered (dropped mid-evaluation, or failed
/// after taking it) lapses and counts as a failed attempt: the session neither stays pending and
/// unanswerable, nor gives such responses more evaluations than failed ones (diff reviews).
#[tokio::test]
async fn a_place_a_response_never_gave_back_lapses_as_a_failed_attempt() {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = std::sync::Arc::new(verifier(&clock).await);
    let now = crate::clock::Clock::now_secs(&*clock);
    let stuck = |places: usize| {
        let svc = svc.clone();
        async move {
            let created = svc
                .create_session("default", sd_jwt_session(300))
                .await
                .unwrap();
            let key = super::service::session_key("default", &created.id);
            let mut s = stored_session(&svc, &created.id).await;
            s.evaluating = vec![now + 60; places];
            svc.ctx
                .store
                .put_json(super::ks::SESSIONS, &key, &s, None)
                .await
                .unwrap();
            created.id
        }
    };
    let (one, three) = (stuck(1).await, stuck(3).await);
    let e = refusal(bad_responses_at_once(&svc, &three, 1).await);
    assert!(e.contains("as many presentations"), "{e}");
    clock.advance_ms(61_000);
    // one lapsed place: a failed attempt, and this response is evaluated (and rejected)
    let e = refusal(bad_responses_at_once(&svc, &one, 1).await);
    assert!(e.contains("presentation rejected"), "evaluated: {e}");
    let s = stored_session(&svc, &one).await;
    assert_eq!(s.state, SessionState::Pending);
    assert_eq!(s.failed_attempts.len(), 2, "{:?}", s.failed_attempts);
    assert!(s.failed_attempts[0].contains("never answered"));
    assert!(s.evaluating.is_empty());
    // three lapsed places: the session has failed
    let e = refusal(bad_responses_at_once(&svc, &three, 1).await);
    assert!(e.contains("already been answered"), "{e}");
    assert_eq!(
        stored_session(&svc, &three).await.state,
        SessionState::Failed
    );
}

/// Bad responses sent to one session at once each count: two are rejected as failed attempts and
/// the third fails the session. Before, a failure whose write lost the race was dropped (and a
/// final answer that lost one was refused as "already answered" with the session left pending),
/// so concurrent bad responses were not limited by the attempt count (attacker review).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bad_responses_each_count_as_an_attempt() {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = std::sync::Arc::new(verifier(&clock).await);
    let req = sd_jwt_session(300);
    for round in 0..5 {
        let created = svc.create_session("default", req.clone()).await.unwrap();
        // two are rejected while attempts are left, the last is the final (failed) answer
        let answers = bad_responses_at_once(&svc, &created.id, 3).await;
        let rejected = answers
            .into_iter()
            .filter(|a| a.as_ref().unwrap().is_err())
            .count();
        assert_eq!(rejected, 2, "round {round}");
        let view = svc.session_view("default", &created.id).await.unwrap();
        // the two rejections are the failed attempts; the third failure is the final answer
        assert_eq!(
            (view.state, view.failed_attempts.len()),
            (SessionState::Failed, 2),
            "round {round}: {view:?}"
        );
    }
}

/// A deleted verifier's sessions do not pass to a verifier created later under the same id: the
/// old session is unknown to it (a wallet's answer to it is refused, its admin cannot read it).
/// (Attacker review.)
#[tokio::test]
async fn a_recreated_verifier_does_not_inherit_the_deleted_ones_sessions() {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = verifier(&clock).await;
    let create = || CreateVerifier {
        id: "acme".into(),
        display_name: None,
        signing_key_type: None,
        trusted_issuers: vec!["did:example:issuer".into()],
    };
    svc.create_verifier(create()).await.unwrap();
    let created = svc
        .create_session("acme", sd_jwt_session(300))
        .await
        .unwrap();
    svc.delete_verifier("acme").await.unwrap();
    svc.create_verifier(create()).await.unwrap();
    assert!(svc.list_sessions("acme").await.unwrap().is_empty());
    let e = svc.session_view("acme", &created.id).await.unwrap_err();
    assert_eq!(e.error_code(), Code::NotFound);
    let mut form = HashMap::new();
    form.insert("vp_token".to_string(), "{}".to_string());
    form.insert("state".to_string(), "x".to_string());
    let e = OAuthError::from(
        svc.handle_response("acme", &created.id, form)
            .await
            .err()
            .unwrap(),
    );
    assert!(e.status.is_client_error(), "{e:?}");
}

/// A session's response encryption key is sealed to its verifier and session: copied into
/// another verifier's or session's record it does not open (sealing review: it was sealed to
/// the session id alone). One sealed by an earlier release still opens.
#[tokio::test]
async fn a_sessions_encryption_key_opens_for_that_session_only() {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = verifier(&clock).await;
    let mut req = sd_jwt_session(300);
    req.response_mode = Some(ResponseMode::DirectPostJwt);
    let created = svc.create_session("default", req).await.unwrap();
    let session = stored_session(&svc, &created.id).await;
    let sealed = session.encryption_key.unwrap();
    let key = svc.encryption_key("default", &created.id, &sealed).unwrap();
    assert!(svc.encryption_key("other", &created.id, &sealed).is_err());
    assert!(svc
        .encryption_key("default", "another-id", &sealed)
        .is_err());
    let legacy = svc
        .ctx
        .sealer
        .seal(
            format!("session-enc/{}", created.id).as_bytes(),
            &key.to_bytes(),
        )
        .unwrap();
    let legacy = crate::crypto::b64url(legacy);
    let opened = svc.encryption_key("default", &created.id, &legacy).unwrap();
    assert_eq!(opened.thumbprint(), key.thumbprint());
}

/// A session's disclosed claims and response code are kept sealed to its verifier and session:
/// the stored record (and what replicates between nodes) holds neither in clear; the view opens
/// them; copied to another session's record they do not open. A record of an earlier release
/// (plain claims) is still shown.
#[tokio::test]
async fn disclosed_claims_are_sealed_in_the_session_record() {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = verifier(&clock).await;
    let a = svc
        .create_session("default", sd_jwt_session(300))
        .await
        .unwrap();
    let b = svc
        .create_session("default", sd_jwt_session(300))
        .await
        .unwrap();
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(json!({"given_name": "Erika-Secret"})).unwrap();
    let presented = vec![PresentedCredential {
        query_id: "a".into(),
        format: "dc+sd-jwt".into(),
        issuer: None,
        issuer_name: None,
        claims,
    }];
    let sealed = svc.seal_credentials("default", &a.id, &presented).unwrap();
    // the response code too: whoever reads the store must not find it
    let code = "response-code-Secret";
    let sealed_code = svc.seal_response_code("default", &a.id, code).unwrap();
    let store = |id: &str| {
        let key = super::service::session_key("default", id);
        (svc.ctx.store.clone(), key)
    };
    for (id, sealed) in [(&a.id, sealed.clone()), (&b.id, sealed)] {
        let (st, key) = store(id);
        let mut s: Session = st
            .get_json(super::ks::SESSIONS, &key)
            .await
            .unwrap()
            .unwrap();
        s.sealed_credentials = Some(sealed);
        s.sealed_response_code = Some(sealed_code.clone());
        st.put_json(super::ks::SESSIONS, &key, &s, None)
            .await
            .unwrap();
        let raw = st.get(super::ks::SESSIONS, &key).await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("Erika-Secret"));
        assert!(!String::from_utf8_lossy(&raw).contains(code));
    }
    let view = svc.session_view("default", &a.id).await.unwrap();
    assert_eq!(view.credentials[0].claims["given_name"], "Erika-Secret");
    assert_eq!(view.response_code.as_deref(), Some(code));
    assert!(svc.session_view("default", &b.id).await.is_err());
    // the list still answers: a shown without a flag, b without its claims and flagged
    let list = svc.list_sessions("default").await.unwrap();
    let listed = |id: &str| list.iter().find(|v| v.id == id).unwrap();
    assert_eq!(
        listed(&a.id).credentials[0].claims["given_name"],
        "Erika-Secret"
    );
    assert!(!listed(&a.id).claims_unavailable);
    assert!(listed(&b.id).credentials.is_empty());
    assert!(listed(&b.id).claims_unavailable);
    // an earlier release's record: claims in clear, shown as they are
    let (st, key) = store(&b.id);
    let mut s: Session = st
        .get_json(super::ks::SESSIONS, &key)
        .await
        .unwrap()
        .unwrap();
    s.sealed_credentials = None;
    s.sealed_response_code = None;
    s.credentials = presented;
    st.put_json(super::ks::SESSIONS, &key, &s, None)
        .await
        .unwrap();
    let view = svc.session_view("default", &b.id).await.unwrap();
    assert_eq!(view.credentials[0].claims["given_name"], "Erika-Secret");
}

/// A session's webhook and success redirect (either can carry its receiver's secret) are kept
/// sealed to its verifier and session: not in the stored record in clear, opened for use, not
/// opened when copied to another session's record. A record of an earlier release (in clear)
/// is still used as it is.
#[tokio::test]
async fn webhook_and_redirect_urls_are_sealed_in_the_session_record() {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = verifier(&clock).await;
    let hook = "https://rp.example/hook?token=hook-Secret";
    let done = "https://rp.example/done/redirect-Secret";
    let mut req = sd_jwt_session(300);
    req.webhook_url = Some(hook.into());
    req.success_redirect = Some(done.into());
    let a = svc.create_session("default", req).await.unwrap();
    let b = svc
        .create_session("default", sd_jwt_session(300))
        .await
        .unwrap();
    let store = svc.ctx.store.clone();
    let key = |id: &str| super::service::session_key("default", id);
    let raw = store.get(super::ks::SESSIONS, &key(&a.id)).await.unwrap();
    let raw = String::from_utf8_lossy(raw.as_deref().unwrap()).to_string();
    assert!(
        !raw.contains("Secret") && !raw.contains("rp.example"),
        "{raw}"
    );
    let stored_a = stored_session(&svc, &a.id).await;
    let targets = svc.targets(&stored_a).unwrap();
    assert_eq!(targets.webhook_url.as_deref(), Some(hook));
    assert_eq!(targets.success_redirect.as_deref(), Some(done));
    // none sealed for a session without either
    let mut stored_b = stored_session(&svc, &b.id).await;
    assert!(stored_b.sealed_targets.is_none());
    assert!(svc.targets(&stored_b).unwrap().webhook_url.is_none());
    // a's sealed targets copied to b's record do not open there: none is used
    stored_b.sealed_targets = stored_a.sealed_targets.clone();
    assert!(svc.targets(&stored_b).is_err());
    let none = svc.targets_or_none(&stored_b);
    assert!(none.webhook_url.is_none() && none.success_redirect.is_none());
    // an earlier release's record: in clear, used as it is
    stored_b.sealed_targets = None;
    stored_b.webhook_url = Some(hook.into());
    assert_eq!(
        svc.targets(&stored_b).unwrap().webhook_url.as_deref(),
        Some(hook)
    );
}

/// A presentation definition asks only for what the verifier enforces: a constraint other than
/// `fields` and `limit_disclosure` (`same_subject`: two holders' credentials, each bound to its
/// own holder, answered it) or a `format` restriction it does not check is refused at session
/// creation rather than ignored (attacker review). Algorithm restrictions are checked per
/// credential (`query::tests::algorithm_restrictions_are_checked_per_credential`), so what ISO
/// 18013-7, the EUDI verifier and walt.id send is accepted.
#[tokio::test]
async fn a_definition_asks_only_for_what_is_enforced() {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = verifier(&clock).await;
    let create = |pd: serde_json::Value| {
        let mut req = sd_jwt_session(300);
        req.dcql_query = None;
        req.presentation_definition = Some(pd);
        let svc = &svc;
        async move { svc.create_session("default", req).await }
    };
    let descriptor = |extra: serde_json::Value| {
        let mut d = json!({"id": "id", "constraints": {"fields": [{"path": ["$.given_name"]}]}});
        for (k, v) in extra.as_object().unwrap() {
            match k.as_str() {
                "constraints" => d["constraints"]
                    .as_object_mut()
                    .unwrap()
                    .extend(v.as_object().unwrap().clone()),
                _ => d[k] = v.clone(),
            }
        }
        json!({"id": "pd", "input_descriptors": [d]})
    };
    for extra in [
        json!({"constraints": {"same_subject": [{"field_id": ["a", "b"], "directive": "required"}]}}),
        json!({"constraints": {"is_holder": [{"field_id": ["a"], "directive": "required"}]}}),
        json!({"constraints": {"statuses": {"active": {"directive": "required"}}}}),
        json!({"format": {"jwt_vc_json": {"made_up": ["x"]}}}),
        json!({"format": {"mso_mdoc": {"proof_type": ["DataIntegrityProof"]}}}),
        json!({"format": {"jwt_vc_json": {"alg": []}}}),
        json!({"format": {"jwt_vc_json": {"alg": "ES256"}}}),
        json!({"format": {"jwt_vc_json": ["ES256"]}}),
        // met by no credential this verifier accepts
        json!({"format": {"mso_mdoc": {"alg": ["ES384"]}}}),
        json!({"format": {"ldp_vc": {"proof_type": ["Ed25519Signature2018"]}}}),
        json!({"format": {"jwt_vc": {"alg": ["RS256"]}, "jwt_vc_json": {"alg": ["PS256"]}}}),
    ] {
        let e = create(descriptor(extra.clone())).await.unwrap_err();
        assert_eq!(e.error_code(), Code::Validation, "{extra}: {e}");
    }
    let mut pd = descriptor(json!({}));
    pd["format"] = json!({"jwt_vc_json": {"made_up": ["x"]}});
    let e = create(pd).await.unwrap_err();
    assert_eq!(e.error_code(), Code::Validation, "{e}");
    for extra in [
        json!({}),
        json!({"constraints": {"limit_disclosure": "required"}}),
        json!({"format": {"mso_mdoc": {"alg": ["ES256"]}}}),
        json!({"format": {"jwt_vc_json": {"alg": ["EdDSA"]}, "jwt_vp_json": {"alg": ["ES256"]}}}),
        json!({"format": {"vc+sd-jwt": {"sd-jwt_alg_values": ["ES256", "ES384", "ES512"], "kb-jwt_alg_values": ["ES256"]}}}),
        json!({"format": {"ldp_vc": {"proof_type": ["Ed25519Signature2018", "DataIntegrityProof"]}}}),
        // one alternative that can be met is enough
        json!({"format": {"jwt_vc": {"alg": ["RS256"]}, "jwt_vc_json": {"alg": ["ES256"]}}}),
    ] {
        create(descriptor(extra.clone()))
            .await
            .unwrap_or_else(|e| panic!("{extra}: {e}"));
    }
}
