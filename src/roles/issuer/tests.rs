//! Unit tests of the issuer service across its steps (fault injection, expiry, concurrency).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::credential::*;
use super::grants::*;
use super::ks;
use super::model::*;
use super::nonces::NONCE_TTL;
use super::service::*;
use super::tenants::default_issuer_request;
use crate::clock::{Clock, FakeClock};
use crate::config::IssuerConfig;
use crate::crypto::{jws, KeyType, SigningKey};
use crate::error::{Code, ErrorCode};
use crate::http::oauth::OAuthError;
use crate::roles::RoleContext;
use crate::store::test_wrapper::store_wrapper;
use crate::store::Cas;

fn offer_req(ttl: Option<u64>) -> CreateOffer {
    CreateOffer {
        credential_configuration_ids: vec!["IdentityCredential_dc_sd_jwt".into()],
        claims: serde_json::from_value(json!({"given_name": "A"})).unwrap(),
        tx_code: None,
        ttl_seconds: ttl,
        credential_validity_seconds: None,
        authorization_code: false,
    }
}

/// A numeric transaction code of `length` digits.
fn numeric_tx_code(length: u32) -> TxCodeSpec {
    TxCodeSpec {
        input_mode: "numeric".into(),
        length,
        description: None,
    }
}

fn pre_auth_code(o: &OfferCreated) -> String {
    o.credential_offer["grants"][PRE_AUTH_GRANT]["pre-authorized_code"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The last path segment of an offer's `credential_offer_uri` (`<id>.<secret>`).
fn reference(o: &OfferCreated) -> String {
    let uri = o
        .offer_uri
        .split_once("credential_offer_uri=")
        .map(|(_, u)| u)
        .unwrap();
    let uri: String = serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("u={uri}"))
        .unwrap()
        .remove(0)
        .1;
    uri.rsplit('/').next().unwrap().to_string()
}

fn token_req(code: &str) -> TokenRequest {
    TokenRequest {
        grant_type: Some(PRE_AUTH_GRANT.into()),
        pre_authorized_code: Some(code.into()),
        tx_code: None,
        code: None,
        code_verifier: None,
        redirect_uri: None,
        client_id: None,
        authorization_details: None,
    }
}

/// A store that fails the next `fail` writes (put / compare-and-swap / batch) to one keyspace
/// with 503 "kept conflicting" — after applying them when `applied` (a write that took effect
/// but was not acknowledged in time).
struct Faulty {
    inner: Arc<dyn crate::store::Store>,
    keyspace: &'static str,
    applied: bool,
    fail: std::sync::atomic::AtomicU32,
    /// After a failed write, the next read of the keyspace fails too (a read-back that cannot
    /// tell whether the write landed).
    blind: std::sync::atomic::AtomicBool,
    fail_next_get: std::sync::atomic::AtomicBool,
}

impl Faulty {
    fn trip(&self, ks: &str) -> bool {
        use std::sync::atomic::Ordering;
        let tripped = ks == self.keyspace
            && self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if tripped && self.blind.load(Ordering::SeqCst) {
            self.fail_next_get.store(true, Ordering::SeqCst);
        }
        tripped
    }
    fn error(&self) -> crate::store::StoreError {
        crate::store::StoreError::Unavailable(format!(
            "update of {} kept conflicting",
            self.keyspace
        ))
    }
}

store_wrapper!(Faulty {
    async fn get(&self, ks: &'static str, key: &str) -> crate::store::StoreResult<Option<Vec<u8>>> {
        if ks == self.keyspace
            && self
                .fail_next_get
                .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(self.error());
        }
        self.inner.get(ks, key).await
    }
    async fn put(
        &self,
        ks: &'static str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> crate::store::StoreResult<()> {
        if self.trip(ks) {
            if self.applied {
                self.inner.put(ks, key, value, ttl).await?;
            }
            return Err(self.error());
        }
        self.inner.put(ks, key, value, ttl).await
    }
    async fn compare_and_swap(
        &self,
        ks: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> crate::store::StoreResult<Cas> {
        if self.trip(ks) {
            if self.applied {
                self.inner.compare_and_swap(ks, key, expected, new).await?;
            }
            return Err(self.error());
        }
        self.inner.compare_and_swap(ks, key, expected, new).await
    }
});

/// An issuer (default tenant initialised) on an in-memory store and a fake clock.
async fn issuer() -> (IssuerService, Arc<FakeClock>) {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = IssuerService::new(
        RoleContext::for_tests(clock.clone()),
        IssuerConfig::default(),
    );
    svc.init().await.unwrap();
    (svc, clock)
}

/// An issuer (default tenant initialised) on a [`Faulty`] store, armed with 0 failures.
async fn faulty_issuer(
    keyspace: &'static str,
    applied: bool,
) -> (IssuerService, Arc<Faulty>, Arc<FakeClock>) {
    let clock = FakeClock::new(1_800_000_000_000);
    let mut state = RoleContext::for_tests(clock.clone());
    let faulty = Arc::new(Faulty {
        inner: state.store.clone(),
        keyspace,
        applied,
        fail: std::sync::atomic::AtomicU32::new(0),
        blind: Default::default(),
        fail_next_get: Default::default(),
    });
    state.store = faulty.clone();
    let svc = IssuerService::new(state, IssuerConfig::default());
    svc.init().await.unwrap();
    (svc, faulty, clock)
}

/// A redemption whose offer update or token write fails with 503 (the store "kept
/// conflicting"; a write applied but not acknowledged) leaves the code redeemable: the retry
/// gets the token, and the code is single-use after that. An offer update that was applied
/// but not acknowledged is read back: the redemption happened, and its token is handed out.
#[tokio::test]
async fn a_store_failure_during_redemption_leaves_the_code_redeemable() {
    for (keyspace, applied) in [
        (ks::OFFERS, false),
        (ks::OFFERS, true),
        (ks::TOKENS, false),
        (ks::TOKENS, true),
    ] {
        let (svc, faulty, _) = faulty_issuer(keyspace, applied).await;
        let o = svc
            .create_offer("default", offer_req(Some(600)))
            .await
            .unwrap();
        let code = pre_auth_code(&o);
        faulty.fail.store(1, std::sync::atomic::Ordering::SeqCst);
        if (keyspace, applied) == (ks::OFFERS, true) {
            // the redemption took effect but its acknowledgement failed: read back, it names
            // this token, so the token is handed out — once
            let t = svc.token("default", token_req(&code)).await.unwrap();
            assert!(!t.access_token.is_empty());
            let again = OAuthError::from(svc.token("default", token_req(&code)).await.unwrap_err());
            assert_eq!(again.error, "invalid_grant");
            continue;
        }
        let e = OAuthError::from(svc.token("default", token_req(&code)).await.unwrap_err());
        assert_eq!(
            (e.status.as_u16(), e.error),
            (503, "temporarily_unavailable"),
            "{keyspace} applied={applied}"
        );
        assert_eq!(
            svc.offer_view("default", &o.id).await.unwrap().state,
            OfferState::Offered,
            "{keyspace} applied={applied}"
        );
        let t = svc
            .token("default", token_req(&code))
            .await
            .unwrap_or_else(|e| panic!("{keyspace} applied={applied}: {e:?}"));
        assert!(!t.access_token.is_empty());
        let again = OAuthError::from(svc.token("default", token_req(&code)).await.unwrap_err());
        assert_eq!(again.error, "invalid_grant");
    }
}

/// A request for the SD-JWT configuration with one proof.
fn proof_req(proof: String) -> CredentialRequest {
    CredentialRequest {
        credential_configuration_id: Some("IdentityCredential_dc_sd_jwt".into()),
        credential_identifier: None,
        proofs: Some(Proofs { jwt: vec![proof] }),
        proof: None,
        format: None,
        vct: None,
    }
}

/// A credential request with a fresh c_nonce and an Ed25519 proof.
async fn credential_req(svc: &IssuerService, clock: &FakeClock) -> CredentialRequest {
    credential_req_by(svc, clock, &SigningKey::generate(KeyType::Ed25519)).await
}

/// A credential request with a fresh c_nonce and a proof by `holder`.
async fn credential_req_by(
    svc: &IssuerService,
    clock: &FakeClock,
    holder: &SigningKey,
) -> CredentialRequest {
    let n = svc.nonce("default").await.unwrap();
    let proof = jws::sign(
        holder,
        json!({"typ": "openid4vci-proof+jwt", "jwk": holder.verifying_key().to_jwk()}),
        &json!({"aud": svc.issuer_url("default"), "iat": clock.now_secs(), "nonce": n}),
    );
    proof_req(proof)
}

/// The default issuer's credential endpoint, called with `token` and a proof by `key`.
async fn credential_by(
    svc: &IssuerService,
    clock: &FakeClock,
    token: &str,
    key: &SigningKey,
) -> Result<serde_json::Value, super::error::IssuerError> {
    svc.credential(
        "default",
        Some(token),
        credential_req_by(svc, clock, key).await,
    )
    .await
}

/// The access token's use and its effect are one store operation: a store failure while the
/// credential is recorded (the offer's update, applied or not; the credential's record) leaves
/// the token and the c_nonce usable — the same request again gets the credential — and the token is
/// single-use per configuration after that. An offer update applied but not acknowledged is
/// read back: the credential was issued, and it is sent. Unsent credentials leave no record.
#[tokio::test]
async fn a_store_failure_while_issuing_leaves_the_token_usable() {
    for (keyspace, applied) in [
        (ks::OFFERS, false),
        (ks::OFFERS, true),
        (ks::CREDS, false),
        (ks::CREDS, true),
        (ks::COUNTERS, false),
    ] {
        let (svc, faulty, clock) = faulty_issuer(keyspace, applied).await;
        let o = svc.create_offer("default", offer_req(None)).await.unwrap();
        let t = svc
            .token("default", token_req(&pre_auth_code(&o)))
            .await
            .unwrap();
        let case = format!("{keyspace} applied={applied}");
        faulty.fail.store(1, std::sync::atomic::Ordering::SeqCst);
        let req = credential_req(&svc, &clock).await;
        let first = svc
            .credential("default", Some(&t.access_token), req.clone())
            .await;
        if (keyspace, applied) == (ks::OFFERS, true) {
            // recorded, though unacknowledged: read back and sent
            assert!(
                first.unwrap()["credentials"][0]["credential"].is_string(),
                "{case}"
            );
        } else {
            let e = OAuthError::from(first.unwrap_err());
            assert_eq!(e.status.as_u16(), 503, "{case}: {e:?}");
            let view = svc.offer_view("default", &o.id).await.unwrap();
            assert!(view.issued_credentials.is_empty(), "{case}");
            assert_eq!(view.state, OfferState::TokenIssued, "{case}");
            // the same request again: neither the token nor the c_nonce was used up
            let got = svc
                .credential("default", Some(&t.access_token), req)
                .await
                .unwrap_or_else(|e| panic!("{case}: the token or nonce was burnt: {e:?}"));
            assert!(got["credentials"][0]["credential"].is_string(), "{case}");
        }
        let view = svc.offer_view("default", &o.id).await.unwrap();
        assert_eq!(view.issued_credentials.len(), 1, "{case}");
        assert_eq!(view.state, OfferState::CredentialIssued, "{case}");
        let again = OAuthError::from(
            svc.credential(
                "default",
                Some(&t.access_token),
                credential_req(&svc, &clock).await,
            )
            .await
            .unwrap_err(),
        );
        assert_eq!(again.error, "invalid_token", "{case}");
        // the sent credential's record only (an outcome the store could not tell is watched,
        // and its records dropped once the retry's issuance settles it)
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let n = svc
                .ctx
                .store
                .count_prefix(ks::CREDS, "default/", 10)
                .await
                .unwrap();
            if n == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "{case}: {n} credential records"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A refused mdoc attempt (an Ed25519 device key) reserves no status index: a token allows
/// attempts until it is used, so refusals that cost nothing come first. (Attacker review.)
#[tokio::test]
async fn refused_mdoc_attempts_reserve_no_status_index() {
    let (svc, clock) = issuer().await;
    let (mdl, sd) = ("org.iso.18013.5.1.mDL", "IdentityCredential_dc_sd_jwt");
    let mut req = offer_req(None);
    req.credential_configuration_ids = vec![mdl.into(), sd.into()];
    req.claims = serde_json::from_value(json!({"family_name": "A", "given_name": "B",
        "birth_date": "1990-01-01", "issue_date": "2024-01-01", "expiry_date": "2030-01-01",
        "issuing_country": "UT", "issuing_authority": "X", "document_number": "1",
        "driving_privileges": [], "un_distinguishing_sign": "D"}))
    .unwrap();
    let o = svc.create_offer("default", req).await.unwrap();
    let t = svc
        .token("default", token_req(&pre_auth_code(&o)))
        .await
        .unwrap();
    for _ in 0..20 {
        let mut r = credential_req(&svc, &clock).await;
        r.credential_configuration_id = Some(mdl.into());
        let e = svc
            .credential("default", Some(&t.access_token), r)
            .await
            .unwrap_err();
        assert_eq!(OAuthError::from(e).error, "invalid_proof");
    }
    svc.credential(
        "default",
        Some(&t.access_token),
        credential_req(&svc, &clock).await,
    )
    .await
    .unwrap();
    let recs = svc
        .ctx
        .store
        .scan_prefix(ks::CREDS, "default/", 10)
        .await
        .unwrap();
    let rec: IssuedCredential = serde_json::from_slice(&recs[0].1).unwrap();
    // among the first 20 indices the issuer hands out (in its order), not the 21st or later
    let order = svc.index_order("default").await.unwrap();
    let first: Vec<u64> = (0..20).map(|n| order.index(n)).collect();
    assert!(
        first.contains(&rec.status_index),
        "status index {}",
        rec.status_index
    );
}

/// A token its offer does not name — stored by a redemption that then lost the race or failed —
/// is refused at the credential endpoint before any proof or nonce is looked at.
#[tokio::test]
async fn a_token_its_offer_does_not_name_is_refused() {
    let clock = FakeClock::new(1_800_000_000_000);
    let svc = IssuerService::new(RoleContext::for_tests(clock), IssuerConfig::default());
    svc.init().await.unwrap();
    let o = svc
        .create_offer("default", offer_req(Some(600)))
        .await
        .unwrap();
    let grant = AccessGrant {
        offer_id: format!("default/{}", o.id),
        issuer: "default".into(),
        credential_configuration_ids: vec!["IdentityCredential_dc_sd_jwt".into()],
        expires_at: 1_800_000_600,
        requests: 0,
        client_id: None,
        authorization_details: false,
    };
    let store = svc.ctx.store.clone();
    let orphan = |t: &'static str| {
        let (store, grant) = (store.clone(), grant.clone());
        async move {
            store
                .put_json(ks::TOKENS, &super::service::hash(t), &grant, None)
                .await
                .unwrap();
        }
    };
    let req = || -> CredentialRequest {
        serde_json::from_value(
            serde_json::json!({"credential_configuration_id": "IdentityCredential_dc_sd_jwt"}),
        )
        .unwrap()
    };
    // the offer is not redeemed yet
    orphan("orphan-before").await;
    let e = svc
        .credential("default", Some("orphan-before"), req())
        .await
        .unwrap_err();
    assert_eq!(OAuthError::from(e).error, "invalid_token");
    // the offer was redeemed with another token
    let t = svc
        .token("default", token_req(&pre_auth_code(&o)))
        .await
        .unwrap();
    orphan("orphan-after").await;
    let e = svc
        .credential("default", Some("orphan-after"), req())
        .await
        .unwrap_err();
    assert_eq!(OAuthError::from(e).error, "invalid_token");
    // the named token gets past this check (to the proof)
    let e = svc
        .credential("default", Some(&t.access_token), req())
        .await
        .unwrap_err();
    assert_ne!(OAuthError::from(e).error, "invalid_token");
}

#[tokio::test]
async fn expired_offers_and_nonces_are_refused() {
    let (svc, clock) = issuer().await;
    let o = svc
        .create_offer("default", offer_req(Some(60)))
        .await
        .unwrap();
    let code = pre_auth_code(&o);
    clock.advance_ms(61_000);
    let e = OAuthError::from(svc.token("default", token_req(&code)).await.unwrap_err());
    assert_eq!(e.error, "invalid_grant");
    assert_eq!(
        svc.offer_view("default", &o.id).await.unwrap().state,
        OfferState::Expired
    );
    let e = svc
        .offer_by_reference("default", &reference(&o))
        .await
        .unwrap_err();
    assert_eq!(e.error_code(), Code::Gone);

    // a nonce older than its TTL is gone
    let o = svc.create_offer("default", offer_req(None)).await.unwrap();
    let code = pre_auth_code(&o);
    let t = svc.token("default", token_req(&code)).await.unwrap();
    let n = svc.nonce("default").await.unwrap();
    clock.advance_ms((NONCE_TTL as i64 + 1) * 1000);
    let holder = SigningKey::generate(KeyType::Ed25519);
    let aud = svc.issuer_url("default");
    let proof = jws::sign(
        &holder,
        json!({"typ": "openid4vci-proof+jwt", "jwk": holder.verifying_key().to_jwk()}),
        &json!({"aud": aud, "iat": clock.now_secs(), "nonce": n}),
    );
    let req = proof_req(proof);
    let e = OAuthError::from(
        svc.credential("default", Some(&t.access_token), req)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.error, "invalid_nonce");
}

#[tokio::test]
async fn nodes_creating_the_same_issuer_at_once_agree_on_its_key() {
    // the default issuer when stateless nodes start together on one empty Redis
    let state = RoleContext::for_tests(FakeClock::new(1_800_000_000_000));
    let nodes: Vec<_> = (0..4)
        .map(|_| IssuerService::new(state.clone(), IssuerConfig::default()))
        .collect();
    let results = futures_util::future::join_all(nodes.iter().map(|n| n.init())).await;
    for r in results {
        r.unwrap();
    }
    let issuer = nodes[0].get_issuer("default").await.unwrap();
    for n in &nodes {
        n.signing_key(&issuer).await.unwrap();
    }
}

#[tokio::test]
async fn status_indices_stay_unique_across_processes_sharing_a_store() {
    // two services on one store stand for two cluster nodes (or two restarts)
    let state = RoleContext::for_tests(FakeClock::new(1_800_000_000_000));
    let a = std::sync::Arc::new(IssuerService::new(state.clone(), IssuerConfig::default()));
    a.init().await.unwrap();
    let b = std::sync::Arc::new(IssuerService::new(state.clone(), IssuerConfig::default()));
    let issuer = a.get_issuer("default").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
        let issuer = issuer.clone();
        tasks.push(tokio::spawn(async move {
            svc.allocate_status(&issuer).await.unwrap().index
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        assert!(
            seen.insert(t.await.unwrap()),
            "an index was handed out twice"
        );
    }
    // a restarted process continues after every block reserved before it
    let c = IssuerService::new(state, IssuerConfig::default());
    let next = c.allocate_status(&issuer).await.unwrap().index;
    assert!(!seen.contains(&next), "{next} reuses a reserved block");
    // and indices are not handed out in the order of issuance (Bitstring Status List privacy):
    // 300 in a row are not 0..300
    assert!(seen.iter().any(|i| *i >= 300), "indices in issuance order");
}

#[tokio::test]
async fn a_changed_signing_key_is_refused() {
    let clock = FakeClock::new(1_800_000_000_000);
    let state = RoleContext::for_tests(clock);
    let svc = IssuerService::new(state.clone(), IssuerConfig::default());
    svc.init().await.unwrap();
    // someone swaps the sealed key behind the issuer's back, in its record
    let fp = svc.get_issuer("default").await.unwrap().key_fingerprint;
    let place = format!("default/{fp}");
    let other = SigningKey::generate(KeyType::Ed25519);
    let sealed = state
        .sealer
        .seal(
            format!("{}/{place}", ks::KEYS).as_bytes(),
            other.to_private_jwk().as_bytes(),
        )
        .unwrap();
    state
        .store
        .put(ks::KEYS, &place, sealed, None)
        .await
        .unwrap();
    let fresh = IssuerService::new(state, IssuerConfig::default());
    let e = fresh.init().await.unwrap_err().to_string();
    assert!(e.contains("not the one recorded"), "{e}");
}

/// An issuer's index order lives in its counter record (review: a separate record, read apart
/// from the counter and cached, let two processes hold different orders): a counter of an
/// earlier release (a bare number) keeps issuance order as blocks are reserved and never gains a
/// key; a new counter is created with one, and the order used is the record's.
#[tokio::test]
async fn the_index_order_lives_in_the_counter_record() {
    let (svc, _) = issuer().await;
    let issuer = svc.get_issuer("default").await.unwrap();
    let counter = || async {
        svc.ctx
            .store
            .get_json::<serde_json::Value>(ks::COUNTERS, "default/status")
            .await
            .unwrap()
            .unwrap()
    };
    let block = super::status::STATUS_BLOCK;
    svc.ctx
        .store
        .put_json(ks::COUNTERS, "default/status", &(10 * block), None)
        .await
        .unwrap();
    assert_eq!(
        svc.allocate_status(&issuer).await.unwrap().index,
        10 * block
    );
    assert_eq!(counter().await, json!(11 * block));
    svc.ctx
        .store
        .delete(ks::COUNTERS, "default/status")
        .await
        .unwrap();
    svc.status_blocks.lock().await.clear();
    let first = svc.allocate_status(&issuer).await.unwrap().index;
    let c = counter().await;
    assert_eq!(c["next"], json!(block), "{c}");
    assert!(c["order"].is_string(), "{c}");
    assert_eq!(first, svc.index_order("default").await.unwrap().index(0));
}

/// A credential of the second status list (index ≥ one list's size) records that list: revoking
/// it sets its own bit in its own list — before, every record named list 1, so revoking the
/// 131,073rd credential revoked the first one instead and left itself valid.
#[tokio::test]
async fn a_credential_of_a_later_status_list_is_revoked_in_that_list() {
    let (svc, clock) = issuer().await;
    let mut ids = Vec::new();
    for counter in [0, super::status::STATUS_LIST_SIZE] {
        // the next block starts at `counter`
        svc.ctx
            .store
            .put_json(ks::COUNTERS, "default/status", &counter, None)
            .await
            .unwrap();
        svc.status_blocks.lock().await.clear();
        let o = svc.create_offer("default", offer_req(None)).await.unwrap();
        let c = issued_from(&svc, &clock, &o).await;
        let sd_jwt = c["credentials"][0]["credential"].as_str().unwrap();
        let payload = crate::crypto::jws::decode_unverified(sd_jwt.split('~').next().unwrap())
            .unwrap()
            .1;
        ids.push((payload["status"]["status_list"].clone(), o.id));
    }
    let creds = svc.list_credentials("default").await.unwrap();
    let second = creds.iter().find(|c| c.offer_id == ids[1].1).unwrap();
    let first = creds.iter().find(|c| c.offer_id == ids[0].1).unwrap();
    assert_eq!(first.status_list, "1");
    assert_eq!(second.status_list, "2", "{:?}", ids[1].0);
    assert!(ids[1].0["uri"].as_str().unwrap().ends_with("/token-2"));
    assert_eq!(first.status_index, second.status_index);
    svc.set_status("default", &second.id, CredentialStatus::Revoked)
        .await
        .unwrap();
    let list = |n: u64| stored_list(&svc, format!("revocation-{n}"));
    let bit = |raw: Option<Vec<u8>>, i: u64| raw.is_some_and(|b| revocation_bit(&b, i));
    assert!(
        bit(list(2).await, second.status_index),
        "list 2's bit is not set"
    );
    assert!(
        !bit(list(1).await, first.status_index),
        "the first credential was revoked instead"
    );
}

/// A status list is compressed and signed at most once a minute: the same ETag within the token's
/// ttl is the same bytes, without If-None-Match (attacker review: every anonymous GET compressed
/// at level 9 and signed again); later it is signed again, with a fresh iat; a revocation is a
/// new list at once.
#[tokio::test]
async fn a_status_list_is_signed_once_per_version() {
    let (svc, clock) = issuer().await;
    let o = svc.create_offer("default", offer_req(None)).await.unwrap();
    issued_from(&svc, &clock, &o).await;
    let served = |list: &'static str| {
        let svc = &svc;
        async move {
            let (etag, signed) = svc.status_list("default", list, false, None).await.unwrap();
            (etag, signed.unwrap().1)
        }
    };
    for list in ["token-1", "revocation-1"] {
        let first = served(list).await;
        clock.advance_ms(30_000);
        assert_eq!(served(list).await, first, "{list}: signed again");
        // past the token's ttl, signed again with a fresh iat (a verifier with a maximum age
        // must get a younger list), same ETag
        clock.advance_ms(31_000);
        let again = served(list).await;
        assert_eq!(again.0, first.0);
        assert_ne!(again.1, first.1, "{list}: reused past its ttl");
    }
    let before = served("revocation-1").await;
    let cred = svc.list_credentials("default").await.unwrap().remove(0);
    svc.set_status("default", &cred.id, CredentialStatus::Revoked)
        .await
        .unwrap();
    let after = served("revocation-1").await;
    assert_ne!(after.0, before.0);
    assert_ne!(after.1, before.1);
}

/// A store on which another admin's status change lands between this change's record write and
/// its list writes: at the first status-list write armed, the credential record `record` is
/// changed to revoked (the other change; its own list writes happened before, overwritten).
struct RacingStatus {
    inner: Arc<dyn crate::store::Store>,
    record: std::sync::Mutex<Option<String>>,
}

store_wrapper!(RacingStatus, only compare_and_swap {
    async fn compare_and_swap(
        &self,
        ks: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> crate::store::StoreResult<Cas> {
        let armed = (ks == ks::STATUS)
            .then(|| self.record.lock().unwrap().take())
            .flatten();
        if let Some(record) = armed {
            let raw = self.inner.get(ks::CREDS, &record).await?.unwrap();
            let mut c: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            c["status"] = json!("revoked");
            self.inner
                .put(ks::CREDS, &record, c.to_string().into_bytes(), None)
                .await?;
        }
        self.inner.compare_and_swap(ks, key, expected, new).await
    }
});

/// Two admins change one credential at once: a reinstate writes its record, a revocation writes
/// its record and lists, then the reinstate writes its lists. The lists end as the record says
/// (revoked): the reinstate reads the record again after its writes and writes them again.
/// Before, the lists said valid while the API had confirmed the revocation.
#[tokio::test]
async fn racing_status_changes_leave_the_lists_as_the_record_says() {
    let clock = FakeClock::new(1_800_000_000_000);
    let mut ctx = RoleContext::for_tests(clock.clone());
    let racing = Arc::new(RacingStatus {
        inner: ctx.store.clone(),
        record: Default::default(),
    });
    ctx.store = racing.clone();
    let svc = IssuerService::new(ctx, IssuerConfig::default());
    svc.init().await.unwrap();
    let t = redeemed_token(&svc).await;
    let holder = SigningKey::generate(KeyType::Ed25519);
    credential_by(&svc, &clock, &t.access_token, &holder)
        .await
        .unwrap();
    let c = svc.list_credentials("default").await.unwrap().remove(0);
    *racing.record.lock().unwrap() = Some(format!("default/{}", c.id));
    svc.set_status("default", &c.id, CredentialStatus::Valid)
        .await
        .unwrap();
    let now = svc.list_credentials("default").await.unwrap().remove(0);
    assert_eq!(now.status, CredentialStatus::Revoked);
    let list = |name: &str| stored_list(&svc, format!("{name}-{}", c.status_list));
    let (token, i) = (list("token").await.unwrap(), c.status_index as usize);
    assert_eq!(
        (token[i / 4] >> ((i % 4) * 2)) & 0b11,
        1,
        "token list says valid"
    );
    let revocation = list("revocation").await.unwrap();
    assert!(
        revocation_bit(&revocation, c.status_index),
        "revocation list says valid"
    );
}

/// The stored bits of the default issuer's status list `name` (`revocation-1`, …).
async fn stored_list(svc: &IssuerService, name: String) -> Option<Vec<u8>> {
    svc.ctx
        .store
        .get(ks::STATUS, &format!("default/{name}"))
        .await
        .unwrap()
}

/// Bit `i` of a Bitstring Status List (most significant bit first).
fn revocation_bit(bits: &[u8], i: u64) -> bool {
    bits[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
}

/// A `jwt_vc_json` credential names its revocation list only: suspending it would change a
/// list no verifier reads (a 200 and a record saying "suspended" for a credential that stays
/// valid everywhere). It is refused (409); revoking it works.
#[tokio::test]
async fn a_credential_without_a_suspension_list_cannot_be_suspended() {
    let (svc, clock) = issuer().await;
    let mut req = offer_req(None);
    req.credential_configuration_ids = vec!["IdentityCredential_jwt_vc_json".into()];
    let o = svc.create_offer("default", req).await.unwrap();
    let t = svc
        .token("default", token_req(&pre_auth_code(&o)))
        .await
        .unwrap();
    let mut creq = credential_req(&svc, &clock).await;
    creq.credential_configuration_id = Some("IdentityCredential_jwt_vc_json".into());
    svc.credential("default", Some(&t.access_token), creq)
        .await
        .unwrap();
    let c = svc.list_credentials("default").await.unwrap().remove(0);
    let e = svc
        .set_status("default", &c.id, CredentialStatus::Suspended)
        .await
        .unwrap_err();
    assert_eq!(crate::error::ErrorCode::error_code(&e), Code::Conflict);
    assert_eq!(
        svc.list_credentials("default").await.unwrap()[0].status,
        CredentialStatus::Valid
    );
    svc.set_status("default", &c.id, CredentialStatus::Revoked)
        .await
        .unwrap();
    // one name per list: an alias of list 1 is no list
    for alias in ["token-01", "token-+1", "revocation-001"] {
        assert!(
            matches!(
                svc.status_list("default", alias, false, None).await,
                Err(super::error::IssuerError::NoStatusList)
            ),
            "{alias}"
        );
    }
    svc.status_list("default", "token-1", false, None)
        .await
        .unwrap();
}

/// The credential response to redeeming `offer` (its pre-authorized code) and asking with a
/// fresh proof.
async fn issued_from(
    svc: &IssuerService,
    clock: &FakeClock,
    offer: &OfferCreated,
) -> serde_json::Value {
    let t = svc
        .token("default", token_req(&pre_auth_code(offer)))
        .await
        .unwrap();
    svc.credential(
        "default",
        Some(&t.access_token),
        credential_req(svc, clock).await,
    )
    .await
    .unwrap()
}

/// The status entry of an SD-JWT VC: (list URI, index).
fn sd_jwt_status(c: &serde_json::Value) -> (String, u64) {
    let sd_jwt = c["credentials"][0]["credential"].as_str().unwrap();
    let payload = jws::decode_unverified(sd_jwt.split('~').next().unwrap())
        .unwrap()
        .1;
    let s = &payload["status"]["status_list"];
    (
        s["uri"].as_str().unwrap().to_string(),
        s["idx"].as_u64().unwrap(),
    )
}

/// The offer update recording an issuance lands but is answered 503, and the read-back fails
/// too: the client is told to retry. Its immediate retry (the same request: the c_nonce was put
/// back) gets the credential that was recorded — not 401 "already used" while the outcome is
/// being settled (attacker review) — and it stays recorded: the taking back of the unknown
/// outcome leaves a credential sent on a retry alone. Another key is still refused.
#[tokio::test]
async fn an_immediate_retry_after_an_unknown_outcome_gets_the_credential() {
    let (svc, faulty, clock) = faulty_issuer(ks::OFFERS, true).await;
    let o = svc.create_offer("default", offer_req(None)).await.unwrap();
    let t = svc
        .token("default", token_req(&pre_auth_code(&o)))
        .await
        .unwrap();
    faulty
        .blind
        .store(true, std::sync::atomic::Ordering::SeqCst);
    faulty.fail.store(1, std::sync::atomic::Ordering::SeqCst);
    let holder = SigningKey::generate(KeyType::Ed25519);
    let req = credential_req_by(&svc, &clock, &holder).await;
    let first = svc
        .credential("default", Some(&t.access_token), req.clone())
        .await
        .unwrap_err();
    assert_eq!(OAuthError::from(first).status.as_u16(), 503);
    let retry = svc
        .credential("default", Some(&t.access_token), req)
        .await
        .map_err(OAuthError::from)
        .unwrap_or_else(|e| panic!("the retry the 503 asked for is refused: {e:?}"));
    let creds = svc.list_credentials("default").await.unwrap();
    assert_eq!(creds.len(), 1);
    let (uri, idx) = sd_jwt_status(&retry);
    assert!(uri.ends_with(&format!("/token-{}", creds[0].status_list)));
    assert_eq!(idx, creds[0].status_index);
    // the watch of the unknown outcome has ended and left it (and says so in its metric)
    watches_ended(&svc).await;
    assert_eq!(watch_outcomes(&svc), [0, 1, 0]);
    let view = svc.offer_view("default", &o.id).await.unwrap();
    assert_eq!(view.issued_credentials, vec![creds[0].id.clone()]);
    assert_eq!(svc.list_credentials("default").await.unwrap().len(), 1);
    // the same holder later (an answer that never arrived): the same credential again
    let resend = || async {
        svc.credential(
            "default",
            Some(&t.access_token),
            credential_req_by(&svc, &clock, &holder).await,
        )
        .await
        .unwrap()
    };
    assert_eq!(sd_jwt_status(&resend().await), (uri.clone(), idx));
    // the record knows the holder key by an HMAC, not by a bare hash that whoever reads the
    // store could match against a wallet's public keys; a record of an earlier release (the
    // bare hash) still resends
    let place = format!("default/{}", creds[0].id);
    let store = svc.ctx.store.clone();
    let mut rec: IssuedCredential = store.get_json(ks::CREDS, &place).await.unwrap().unwrap();
    let bare = crate::crypto::sha256_hex(holder.verifying_key().thumbprint());
    assert_ne!(rec.subject_hash, bare);
    rec.subject_hash = bare;
    store.put_json(ks::CREDS, &place, &rec, None).await.unwrap();
    assert_eq!(sd_jwt_status(&resend().await), (uri, idx));
    // anyone else with the token: used
    let other = OAuthError::from(
        svc.credential(
            "default",
            Some(&t.access_token),
            credential_req(&svc, &clock).await,
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(other.error, "invalid_token");
    assert_eq!(svc.list_credentials("default").await.unwrap().len(), 1);
}

/// A store scripted over another: reads of one pinned offer return an old copy of it (a cluster
/// node whose copy lags the key's primary: its compare-and-swaps and settled reads still go to
/// the primary, which reports its own value; a settled read merges it, so the pin ends there);
/// and, once armed, a credential record revoked right after an offer update that takes an
/// issuance back (an admin's revocation that lands between the undo's look at the records and
/// its drop of them), or at the first compare-and-swap that deletes it (it lands between the
/// drop's read of the record and its delete).
struct Scripted {
    inner: Arc<dyn crate::store::Store>,
    stale: std::sync::Mutex<Option<(String, Vec<u8>)>>,
    /// The same for one credential record.
    stale_credential: std::sync::Mutex<Option<(String, Vec<u8>)>>,
    /// Never set: the pin of every other keyspace.
    unpinned: std::sync::Mutex<Option<(String, Vec<u8>)>>,
    revoke_after_take_back: std::sync::Mutex<Option<String>>,
    /// Once: this credential record is revoked just before the first compare-and-swap that
    /// deletes it.
    revoke_at_delete: std::sync::Mutex<Option<String>>,
    /// Once: every credential an offer update takes back is revoked right after it.
    revoke_what_is_taken_back: std::sync::atomic::AtomicBool,
    /// Offer updates that took an issuance back (applied, whether answered as such or as failed).
    take_backs: std::sync::atomic::AtomicU32,
}

impl Scripted {
    /// The pinned record of keyspace `ks` (offers and credential records are pinned apart).
    fn pins(&self, ks: &str) -> &std::sync::Mutex<Option<(String, Vec<u8>)>> {
        if ks == ks::CREDS {
            &self.stale_credential
        } else if ks == ks::OFFERS {
            &self.stale
        } else {
            &self.unpinned
        }
    }

    /// From now on, reads of offer `key` return its current value.
    async fn pin_offer(&self, key: &str) {
        let now = self.inner.get(ks::OFFERS, key).await.unwrap().unwrap();
        self.pin_offer_to(key, now);
    }

    /// From now on, reads of credential record `key` return its current value (until a settled
    /// read of it).
    async fn pin_credential(&self, key: &str) {
        let now = self.inner.get(ks::CREDS, key).await.unwrap().unwrap();
        *self.stale_credential.lock().unwrap() = Some((key.to_string(), now));
    }

    /// From now on, reads of offer `key` return `value`.
    fn pin_offer_to(&self, key: &str, value: Vec<u8>) {
        *self.stale.lock().unwrap() = Some((key.to_string(), value));
    }

    /// Changes offer `key` behind the service's back (at the "primary": pinned reads still
    /// return the old copy).
    async fn change_offer(&self, key: &str, f: impl FnOnce(&mut Offer)) {
        let raw = self.inner.get(ks::OFFERS, key).await.unwrap().unwrap();
        let mut o: Offer = serde_json::from_slice(&raw).unwrap();
        f(&mut o);
        let raw = serde_json::to_vec(&o).unwrap();
        self.inner.put(ks::OFFERS, key, raw, None).await.unwrap();
    }

    /// Sets credential record `key` to revoked, behind the service's back.
    async fn revoke(&self, key: &str) {
        let raw = self.inner.get(ks::CREDS, key).await.unwrap().unwrap();
        let mut rec: IssuedCredential = serde_json::from_slice(&raw).unwrap();
        rec.status = CredentialStatus::Revoked;
        let raw = serde_json::to_vec(&rec).unwrap();
        self.inner.put(ks::CREDS, key, raw, None).await.unwrap();
    }
}

store_wrapper!(Scripted, own get_settled {
    async fn get_settled(
        &self,
        ks: &'static str,
        key: &str,
    ) -> crate::store::StoreResult<Option<Vec<u8>>> {
        let got = self.inner.get_settled(ks, key).await?;
        let mut pinned = self.pins(ks).lock().unwrap();
        if pinned.as_ref().is_some_and(|(k, _)| k == key) {
            // merged here: this node's copy is the primary's now
            *pinned = None;
        }
        Ok(got)
    }
    async fn get(&self, ks: &'static str, key: &str) -> crate::store::StoreResult<Option<Vec<u8>>> {
        let pinned = self.pins(ks).lock().unwrap().clone();
        match pinned {
            Some((k, v)) if k == key => Ok(Some(v)),
            _ => self.inner.get(ks, key).await,
        }
    }
    async fn put(
        &self,
        ks: &'static str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> crate::store::StoreResult<()> {
        self.inner.put(ks, key, value, ttl).await
    }
    async fn compare_and_swap(
        &self,
        ks: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> crate::store::StoreResult<Cas> {
        // an update from an offer listing credentials to one listing none
        let offer = |v: Option<&Vec<u8>>| v.and_then(|v| serde_json::from_slice::<Offer>(v).ok());
        let taken: Vec<String> = offer(expected.as_ref())
            .map(|o| o.issued)
            .unwrap_or_default();
        let took_back = ks == ks::OFFERS
            && !taken.is_empty()
            && offer(new.as_ref().map(|(v, _)| v)).is_some_and(|o| o.issued.is_empty());
        if ks == ks::CREDS && new.is_none() {
            let armed = self.revoke_at_delete.lock().unwrap().take_if(|k| k == key);
            if let Some(rec) = armed {
                self.revoke(&rec).await;
            }
        }
        let out = self.inner.compare_and_swap(ks, key, expected, new).await;
        // an error may come after the write was applied (a `Faulty` store set to): read back
        let applied = took_back
            && match &out {
            Ok(c) => *c == Cas::Swapped,
            // (past the `Faulty` store's failing read-back: its settled read is its inner one)
            Err(_) => self
                .inner
                .get_settled(ks, key)
                .await
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice::<Offer>(&v).ok())
                .is_some_and(|o| o.issued.is_empty()),
        };
        if applied {
            self.take_backs
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let armed = self.revoke_after_take_back.lock().unwrap().take();
            if let Some(rec) = armed {
                self.revoke(&rec).await;
            }
            let all = self
                .revoke_what_is_taken_back
                .swap(false, std::sync::atomic::Ordering::SeqCst);
            let issuer = key.split('/').next().unwrap_or_default();
            for id in taken.iter().filter(|_| all) {
                self.revoke(&format!("{issuer}/{id}")).await;
            }
        }
        out
    }
});

/// An issuer (default tenant initialised) on a [`Scripted`] store over a [`Faulty`] one (armed
/// with 0 failures) of `keyspace`.
async fn scripted_issuer(
    keyspace: &'static str,
    applied: bool,
) -> (IssuerService, Arc<Scripted>, Arc<Faulty>, Arc<FakeClock>) {
    let clock = FakeClock::new(1_800_000_000_000);
    let mut state = RoleContext::for_tests(clock.clone());
    let faulty = Arc::new(Faulty {
        inner: state.store.clone(),
        keyspace,
        applied,
        fail: std::sync::atomic::AtomicU32::new(0),
        blind: Default::default(),
        fail_next_get: Default::default(),
    });
    let scripted = Arc::new(Scripted {
        inner: faulty.clone(),
        stale: Default::default(),
        stale_credential: Default::default(),
        unpinned: Default::default(),
        revoke_after_take_back: Default::default(),
        revoke_at_delete: Default::default(),
        revoke_what_is_taken_back: Default::default(),
        take_backs: Default::default(),
    });
    state.store = scripted.clone();
    let svc = IssuerService::new(state, IssuerConfig::default());
    svc.init().await.unwrap();
    (svc, scripted, faulty, clock)
}

/// A redeemed offer's id and access token.
async fn redeemed(svc: &IssuerService) -> (String, String) {
    let o = svc.create_offer("default", offer_req(None)).await.unwrap();
    let t = svc
        .token("default", token_req(&pre_auth_code(&o)))
        .await
        .unwrap();
    (o.id, t.access_token)
}

/// A first request by `holder` whose recording lands but is answered 503 with a read-back that
/// fails too (an unknown outcome the issuer watches and would take back); returns the id of the
/// credential it signed and recorded.
async fn unknown_outcome(
    svc: &IssuerService,
    faulty: &Faulty,
    clock: &FakeClock,
    token: &str,
    holder: &SigningKey,
) -> String {
    faulty
        .blind
        .store(true, std::sync::atomic::Ordering::SeqCst);
    faulty.fail.store(1, std::sync::atomic::Ordering::SeqCst);
    let req = credential_req_by(svc, clock, holder).await;
    let first = svc
        .credential("default", Some(token), req)
        .await
        .unwrap_err();
    assert_eq!(OAuthError::from(first).status.as_u16(), 503);
    let creds = svc.list_credentials("default").await.unwrap();
    assert_eq!(creds.len(), 1);
    creds[0].id.clone()
}

/// Waits until every watch of an unknown outcome the service started has ended (each of these
/// tests' ends by itself at its first look, or at the end of its window moved by the test's
/// clock); fails after 20 s.
async fn watches_ended(svc: &IssuerService) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while svc.watches.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        assert!(
            std::time::Instant::now() < until,
            "a watch of an unknown outcome never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `issuer_unknown_outcomes_total` by how the watches ended: undone, never landed, store failing.
fn watch_outcomes(svc: &IssuerService) -> [u64; 3] {
    let ended = svc.watch_outcomes.as_ref().expect("registered");
    ["undone", "never_landed", "store_failing"].map(|l| ended.with_label_values(&[l]).get())
}

/// After the watch of an unknown outcome has ended: the offer still lists credential `id` as
/// issued, its record keeps status `to`, and neither its holder nor anyone else gets a fresh
/// credential with the token (which is still there: refused as used, not as expired).
async fn stays_issued_with_status(
    svc: &IssuerService,
    clock: &FakeClock,
    (offer, token): (&str, &str),
    holder: &SigningKey,
    (id, to): (&str, CredentialStatus),
) {
    watches_ended(svc).await;
    let grant = svc
        .ctx
        .store
        .get(ks::TOKENS, &super::service::hash(token))
        .await
        .unwrap();
    assert!(grant.is_some(), "{to:?}: the token expired");
    let view = svc.offer_view("default", offer).await.unwrap();
    assert_eq!(view.issued_credentials, vec![id.to_string()], "{to:?}");
    assert_eq!(view.state, OfferState::CredentialIssued, "{to:?}");
    let creds = svc.list_credentials("default").await.unwrap();
    assert_eq!(creds.len(), 1, "{to:?}: the record was dropped");
    assert_eq!((creds[0].id.as_str(), creds[0].status), (id, to));
    for key in [holder.clone(), SigningKey::generate(KeyType::Ed25519)] {
        let e = svc
            .credential(
                "default",
                Some(token),
                credential_req_by(svc, clock, &key).await,
            )
            .await
            .map(|_| "a fresh credential")
            .unwrap_err();
        assert_eq!(OAuthError::from(e).error, "invalid_token", "{to:?}");
    }
    assert_eq!(svc.list_credentials("default").await.unwrap().len(), 1);
}

/// An admin revokes (or suspends) a credential while its issuance has an unknown outcome: the
/// taking back of that outcome leaves the issuance alone — the offer keeps it (it is never taken
/// back, not even for a moment), its record keeps the admin's status — so the token does not
/// cover the configuration again and the holder cannot get a fresh, valid credential instead
/// (before, the undo dropped the record with the revocation and the token issued anew: a
/// revocation bypass).
#[tokio::test]
async fn a_credential_revoked_while_its_outcome_is_unknown_stays_issued_and_revoked() {
    for to in [CredentialStatus::Revoked, CredentialStatus::Suspended] {
        let (svc, scripted, faulty, clock) = scripted_issuer(ks::OFFERS, true).await;
        let (offer, token) = redeemed(&svc).await;
        let holder = SigningKey::generate(KeyType::Ed25519);
        let id = unknown_outcome(&svc, &faulty, &clock, &token, &holder).await;
        svc.set_status("default", &id, to).await.unwrap();
        stays_issued_with_status(&svc, &clock, (&offer, &token), &holder, (&id, to)).await;
        let take_backs = scripted
            .take_backs
            .load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(take_backs, 0, "{to:?}");
    }
}

/// The revocation lands after the watch looked at the records and took the issuance back, before
/// it dropped them: the drop reads each record again before deleting any, keeps the revoked one
/// and records the issuance in the offer again. (One landing between that read and the delete:
/// [`a_revocation_at_the_drop_of_an_undone_issuance_is_kept`].)
#[tokio::test]
async fn a_revocation_racing_the_undo_of_an_unknown_outcome_is_kept() {
    revocation_during_the_undo_is_kept(|s| &s.revoke_after_take_back, "").await;
}

/// The revocation races of the tests around it: `hook` names the record the scripted store revokes at its moment; it is
/// cleared when that moment came. The revocation stays, the issuance stays in the offer, and
/// the take-back happened once.
async fn revocation_during_the_undo_is_kept(
    hook: fn(&Scripted) -> &std::sync::Mutex<Option<String>>,
    not_reached: &str,
) {
    let (svc, scripted, faulty, clock) = scripted_issuer(ks::OFFERS, true).await;
    let (offer, token) = redeemed(&svc).await;
    let holder = SigningKey::generate(KeyType::Ed25519);
    let id = unknown_outcome(&svc, &faulty, &clock, &token, &holder).await;
    *hook(&scripted).lock().unwrap() = Some(format!("default/{id}"));
    let revoked = (id.as_str(), CredentialStatus::Revoked);
    stays_issued_with_status(&svc, &clock, (&offer, &token), &holder, revoked).await;
    assert!(hook(&scripted).lock().unwrap().is_none(), "{not_reached}");
    let take_backs = scripted
        .take_backs
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(take_backs, 1);
}

/// The revocation lands after the watch took the issuance back and read the records, at the
/// drop's compare-and-swap delete of the record: the delete conflicts (the record is no longer
/// the valid one read), the record stays revoked, and the issuance is recorded in the offer
/// again, so the token cannot issue a fresh credential.
#[tokio::test]
async fn a_revocation_at_the_drop_of_an_undone_issuance_is_kept() {
    revocation_during_the_undo_is_kept(
        |s| &s.revoke_at_delete,
        "the record's delete was never tried",
    )
    .await;
}

/// The watch's take-back is applied but answered as failed (the watch goes on, and can only end
/// as `NeverLanded`: the offer no longer shows the issuance), then a revocation lands: when the
/// watch ends, the revoked record stays and the issuance is recorded in the offer again, so the
/// token does not issue a fresh credential. Before, only an `Undone` watch restored it.
#[tokio::test]
async fn a_take_back_answered_as_failed_is_restored_when_a_revocation_lands() {
    let (svc, scripted, faulty, clock) = scripted_issuer(ks::OFFERS, true).await;
    let (offer, token) = redeemed(&svc).await;
    let holder = SigningKey::generate(KeyType::Ed25519);
    // two offer writes applied and answered 503: the recording (its read-back fails too: an
    // unknown outcome, watched) and then the watch's take-back, right after which the
    // credential is revoked
    faulty
        .blind
        .store(true, std::sync::atomic::Ordering::SeqCst);
    faulty.fail.store(2, std::sync::atomic::Ordering::SeqCst);
    scripted
        .revoke_what_is_taken_back
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let first = credential_by(&svc, &clock, &token, &holder)
        .await
        .unwrap_err();
    assert_eq!(OAuthError::from(first).status.as_u16(), 503);
    let id = svc.list_credentials("default").await.unwrap()[0].id.clone();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while scripted
        .take_backs
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        assert!(
            std::time::Instant::now() < until,
            "no take-back was written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // the take-back was answered as failed, and the revocation landed right after it
    assert_eq!(faulty.fail.load(std::sync::atomic::Ordering::SeqCst), 0);
    let revoked_now = svc.list_credentials("default").await.unwrap();
    assert_eq!(revoked_now[0].status, CredentialStatus::Revoked);
    // taken back at the store (read past the failing read): the token covers the
    // configuration while the watch goes on
    let now: Offer = svc
        .ctx
        .store
        .get_settled_json(ks::OFFERS, &format!("default/{offer}"))
        .await
        .unwrap()
        .unwrap();
    assert!(now.issued.is_empty(), "{now:?}");
    // the watch's next look meets the failing read-back of the take-back (a look that ends the
    // watch while the store fails leaves everything as it is); once it has, the window closes
    while faulty
        .fail_next_get
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        assert!(
            std::time::Instant::now() < until,
            "the watch stopped looking"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    clock.advance_ms(i64::try_from(super::outcome::UNDO_WINDOW.as_millis()).unwrap() + 1_000);
    let revoked = (id.as_str(), CredentialStatus::Revoked);
    stays_issued_with_status(&svc, &clock, (&offer, &token), &holder, revoked).await;
}

/// The recording's first read — this node's copy — shows the configuration issued while the
/// key's primary holds another issuance of it (the one shown was taken back and the
/// configuration issued again): the offer it answers with is the primary's, not the copy.
#[tokio::test]
async fn the_recording_answers_with_the_primarys_offer_over_a_lagging_copy() {
    let (svc, scripted, _, clock) = scripted_issuer(ks::OFFERS, false).await;
    let (offer, token) = redeemed(&svc).await;
    let key = format!("default/{offer}");
    svc.credential("default", Some(&token), credential_req(&svc, &clock).await)
        .await
        .unwrap();
    scripted.pin_offer(&key).await;
    scripted
        .change_offer(&key, |o| o.issued = vec!["issued-again".into()])
        .await;
    let config = "IdentityCredential_dc_sd_jwt";
    let got = svc
        .record_issuance("default", &key, config, &["unsent".into()])
        .await
        .unwrap();
    match got {
        Recording::AlreadyIssued(o) => assert_eq!(o.issued, ["issued-again"]),
        other => panic!("{other:?}"),
    }
}

/// A node whose copy of the offer lags a taking back (it still shows a credential issued whose
/// recording was taken back at the key's primary and its record dropped): another holder with
/// the token is not refused from that copy but issued (the token covers the configuration
/// again), and its retry on that lagging copy gets the same credential — before, both were
/// refused 401 "already used", the lagging copy's credentials being looked for.
#[tokio::test]
async fn a_node_whose_copy_lags_a_taking_back_issues_and_resends_from_the_primary() {
    let (svc, scripted, _, clock) = scripted_issuer(ks::OFFERS, false).await;
    let (offer, token) = redeemed(&svc).await;
    let key = format!("default/{offer}");
    let (first, second) = (
        SigningKey::generate(KeyType::Ed25519),
        SigningKey::generate(KeyType::Ed25519),
    );
    credential_by(&svc, &clock, &token, &first).await.unwrap();
    let taken = svc.list_credentials("default").await.unwrap()[0].id.clone();
    scripted.pin_offer(&key).await;
    let stale = scripted.stale.lock().unwrap().clone().unwrap().1;
    scripted
        .change_offer(&key, |o| {
            o.issued.clear();
            o.issued_configs.clear();
            o.state = OfferState::TokenIssued;
        })
        .await;
    svc.ctx
        .store
        .delete(ks::CREDS, &format!("default/{taken}"))
        .await
        .unwrap();
    let issued = credential_by(&svc, &clock, &token, &second)
        .await
        .map_err(OAuthError::from)
        .unwrap_or_else(|e| panic!("refused from the lagging copy: {e:?}"));
    let view = svc.offer_view("default", &offer).await.unwrap();
    assert_eq!(view.issued_credentials.len(), 1);
    assert_ne!(view.issued_credentials[0], taken);
    // its retry, on the lagging copy again
    scripted.pin_offer_to(&key, stale);
    let again = credential_by(&svc, &clock, &token, &second)
        .await
        .map_err(OAuthError::from)
        .unwrap_or_else(|e| panic!("the retry is refused from the lagging copy: {e:?}"));
    assert_eq!(sd_jwt_status(&again), sd_jwt_status(&issued));
    // the holder whose credential was taken back, and anyone else: used
    for key in [first, SigningKey::generate(KeyType::Ed25519)] {
        let e = credential_by(&svc, &clock, &token, &key).await.unwrap_err();
        assert_eq!(OAuthError::from(e).error, "invalid_token");
    }
    assert_eq!(svc.list_credentials("default").await.unwrap().len(), 1);
}

/// A resend on a node whose copy of the credential record lags its revocation at the primary is
/// refused: the records a resend reads are read at the primary (before, the revoked credential
/// was sent again from the lagging copy).
#[tokio::test]
async fn a_revocation_not_yet_replicated_here_stops_a_resend() {
    let (svc, scripted, _, clock) = scripted_issuer(ks::OFFERS, false).await;
    let (_, token) = redeemed(&svc).await;
    let holder = SigningKey::generate(KeyType::Ed25519);
    credential_by(&svc, &clock, &token, &holder).await.unwrap();
    let id = svc.list_credentials("default").await.unwrap()[0].id.clone();
    let key = format!("default/{id}");
    scripted.pin_credential(&key).await;
    scripted.revoke(&key).await;
    let e = credential_by(&svc, &clock, &token, &holder)
        .await
        .unwrap_err();
    assert_eq!(OAuthError::from(e).error, "invalid_token");
}

/// A retry whose request lands on a node whose copy of the offer lags (it does not show the
/// issuance that landed yet): the recording's compare-and-swap meets the configuration issued at
/// the primary, and the same holder key gets the same credential again (same status entry)
/// instead of 401 "already used"; any other key still gets `invalid_token`, and the refused
/// attempts leave no record.
#[tokio::test]
async fn a_retry_on_a_lagging_node_gets_the_same_credential() {
    let (svc, scripted, _, clock) = scripted_issuer(ks::OFFERS, false).await;
    let (offer, token) = redeemed(&svc).await;
    scripted.pin_offer(&format!("default/{offer}")).await;
    let holder = SigningKey::generate(KeyType::Ed25519);
    let first = credential_by(&svc, &clock, &token, &holder).await.unwrap();
    // this node's copy does not show it
    let view = svc.offer_view("default", &offer).await.unwrap();
    assert!(view.issued_credentials.is_empty());
    let retry = credential_by(&svc, &clock, &token, &holder)
        .await
        .map_err(OAuthError::from)
        .unwrap_or_else(|e| panic!("the same holder's retry is refused: {e:?}"));
    assert_eq!(sd_jwt_status(&retry), sd_jwt_status(&first));
    assert_eq!(svc.list_credentials("default").await.unwrap().len(), 1);
    let other = OAuthError::from(
        svc.credential("default", Some(&token), credential_req(&svc, &clock).await)
            .await
            .unwrap_err(),
    );
    assert_eq!(other.error, "invalid_token");
    assert_eq!(svc.list_credentials("default").await.unwrap().len(), 1);
}

/// The attack of a store reader (a read-only Redis user, an `idstack store export` file, a
/// backup): no record of the issuer's keyspaces holds what redeems a live offer — not the
/// pre-authorized code, not the issuer_state, not the tx_code nor anything its 4–12 characters
/// can be tested against offline (its bare SHA-256). The offer still works as created: by
/// reference it is the offer the admin got, a wrong tx_code is refused, the right one redeems.
#[tokio::test]
async fn an_offer_record_holds_no_redeemable_secret() {
    let (svc, _clock) = issuer().await;
    let mut req = offer_req(None);
    req.tx_code = Some(numeric_tx_code(8));
    let created = svc.create_offer("default", req).await.unwrap();
    let code = pre_auth_code(&created);
    let tx = created.tx_code.clone().unwrap();
    // (an offer with a tx_code offers no authorization code grant: another offer has the state)
    let mut with_state = offer_req(None);
    with_state.authorization_code = true;
    let other = svc.create_offer("default", with_state).await.unwrap();
    let issuer_state = other.credential_offer["grants"]["authorization_code"]["issuer_state"]
        .as_str()
        .unwrap()
        .to_string();
    let secrets = [
        code.clone(),
        issuer_state,
        crate::crypto::sha256_hex(tx.as_bytes()),
    ];
    let records = svc.ctx.store.export_all().await.unwrap();
    let mut seen = 0;
    for r in records.iter().filter(|r| r.keyspace.starts_with("issuer_")) {
        let value =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &r.value_b64)
                .unwrap();
        let value = String::from_utf8_lossy(&value);
        for s in &secrets {
            assert!(
                !value.contains(s.as_str()) && !r.key.contains(s.as_str()),
                "{}/{} holds a redeemable secret: {value}",
                r.keyspace,
                r.key
            );
        }
        seen += usize::from(r.keyspace == ks::OFFERS);
    }
    assert_eq!(seen, 2, "the offer records were scanned");
    // the id, which the store holds in clear (record key and field), fetches nothing
    for r in records.iter().filter(|r| r.keyspace == ks::OFFERS) {
        let id = r.key.trim_start_matches("default/");
        assert!(svc.offer_by_reference("default", id).await.is_err(), "{id}");
        let guessed = format!("{id}.{}", crate::clock::random_token(24));
        assert!(svc.offer_by_reference("default", &guessed).await.is_err());
    }

    let by_ref = svc
        .offer_by_reference("default", &reference(&created))
        .await
        .unwrap();
    assert_eq!(by_ref, created.credential_offer);
    let mut wrong = token_req(&code);
    wrong.tx_code = Some(
        if tx == "00000000" {
            "11111111"
        } else {
            "00000000"
        }
        .into(),
    );
    let e = OAuthError::from(svc.token("default", wrong).await.unwrap_err());
    assert_eq!(e.error, "invalid_grant");
    let mut right = token_req(&code);
    right.tx_code = Some(tx);
    svc.token("default", right).await.unwrap();
}

/// A record as the version before sealing wrote it (credential offer and issuer_state in clear,
/// the tx_code as a bare SHA-256) keeps working until it expires: a node upgraded while an offer
/// is out serves it by reference, refuses a wrong tx_code and redeems the right one.
#[tokio::test]
async fn an_offer_record_of_the_previous_version_still_redeems() {
    let (svc, _clock) = issuer().await;
    let mut req = offer_req(None);
    req.tx_code = Some(numeric_tx_code(6));
    // the codes' records are as before; only the offer record is rewritten in the old form
    let created = svc.create_offer("default", req).await.unwrap();
    let code = pre_auth_code(&created);
    let tx = created.tx_code.clone().unwrap();
    let now = svc.now();
    let old = json!({
        "id": created.id,
        "issuer": "default",
        "credential_configuration_ids": ["IdentityCredential_dc_sd_jwt"],
        "claims": {"given_name": "A"},
        "pre_auth_code_hash": crate::crypto::sha256_hex(code.as_bytes()),
        "issuer_state": null,
        "tx_code": {
            "hash": crate::crypto::sha256_hex(tx.as_bytes()),
            "input_mode": "numeric",
            "length": 6,
            "description": null,
        },
        "tx_code_failures": 0,
        "state": "offered",
        "created_at": now,
        "expires_at": created.expires_at,
        "credential_validity_seconds": null,
        "issued": [],
        "credential_offer": created.credential_offer,
    });
    let key = format!("default/{}", created.id);
    svc.ctx
        .store
        .put(ks::OFFERS, &key, old.to_string().into_bytes(), None)
        .await
        .unwrap();

    let by_ref = svc
        .offer_by_reference("default", &reference(&created))
        .await
        .unwrap();
    assert_eq!(by_ref, created.credential_offer);
    let mut wrong = token_req(&code);
    wrong.tx_code = Some(if tx == "000000" { "111111" } else { "000000" }.into());
    let e = OAuthError::from(svc.token("default", wrong).await.unwrap_err());
    assert_eq!(e.error, "invalid_grant");
    let mut right = token_req(&code);
    right.tx_code = Some(tx);
    svc.token("default", right).await.unwrap();
    assert_eq!(
        svc.offer_view("default", &created.id).await.unwrap().state,
        OfferState::TokenIssued
    );
}

/// The sealed credential offer is bound to its record: copied into another offer's record it
/// does not open (a 500, the store's fault, rather than another offer's codes served).
#[tokio::test]
async fn a_sealed_offer_does_not_open_in_another_record() {
    let (svc, _clock) = issuer().await;
    let a = svc.create_offer("default", offer_req(None)).await.unwrap();
    let b = svc.create_offer("default", offer_req(None)).await.unwrap();
    let read = |id: &str| {
        let store = svc.ctx.store.clone();
        let key = format!("default/{id}");
        async move {
            store
                .get_json::<Offer>(ks::OFFERS, &key)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let mut rec_b = read(&b.id).await;
    rec_b.sealed_offer = read(&a.id).await.sealed_offer;
    svc.ctx
        .store
        .put_json(ks::OFFERS, &format!("default/{}", b.id), &rec_b, None)
        .await
        .unwrap();
    let e = svc
        .offer_by_reference("default", &reference(&b))
        .await
        .unwrap_err();
    assert!(matches!(e, super::error::IssuerError::Internal(_)), "{e:?}");
    assert_eq!(
        svc.offer_by_reference("default", &reference(&a))
            .await
            .unwrap(),
        a.credential_offer
    );
}

use crate::store::test_wrapper::Yielding;

/// The right transaction code followed by a redemption that fails (503, the holder retries)
/// costs no attempt: after more such failures than there are attempts, the right code still
/// redeems. Before, each took one of the five and the offer locked itself.
#[tokio::test]
async fn failed_redemptions_with_the_right_tx_code_do_not_lock_the_offer() {
    let (svc, faulty, _) = faulty_issuer(ks::TOKENS, false).await;
    let mut req = offer_req(None);
    req.tx_code = Some(numeric_tx_code(6));
    let created = svc.create_offer("default", req).await.unwrap();
    let (code, tx) = (pre_auth_code(&created), created.tx_code.clone().unwrap());
    let right = || {
        let mut r = token_req(&code);
        r.tx_code = Some(tx.clone());
        r
    };
    for attempt in 0..=MAX_TX_CODE_FAILURES {
        faulty.fail.store(1, std::sync::atomic::Ordering::SeqCst);
        let e = OAuthError::from(svc.token("default", right()).await.unwrap_err());
        assert_eq!(e.status.as_u16(), 503, "attempt {attempt}: {e:?}");
    }
    let t = svc.token("default", right()).await.unwrap();
    assert!(!t.access_token.is_empty());
}

/// Guesses of a transaction code sent all at once: at most [`MAX_TX_CODE_FAILURES`] are
/// compared, whichever way they interleave, and the right code is refused once they are used.
/// Before, each guess was compared first and counted after: a burst was compared in full before
/// the lock took.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_tx_code_guesses_get_the_allowed_attempts_only() {
    let clock = FakeClock::new(1_800_000_000_000);
    let mut ctx = RoleContext::for_tests(clock.clone());
    ctx.store = Arc::new(Yielding {
        inner: ctx.store.clone(),
    });
    let svc = Arc::new(IssuerService::new(ctx, IssuerConfig::default()));
    svc.init().await.unwrap();
    let mut req = offer_req(None);
    req.tx_code = Some(numeric_tx_code(6));
    let created = svc.create_offer("default", req).await.unwrap();
    let (code, tx) = (pre_auth_code(&created), created.tx_code.clone().unwrap());
    let wrong = if tx == "000000" { "111111" } else { "000000" };
    let compared_before = super::offers::TX_CODES_COMPARED.with(|n| n.get());
    let guesses = (0..60).map(|i| {
        let (svc, mut r) = (svc.clone(), token_req(&code));
        r.tx_code = Some(if i == 40 { tx.clone() } else { wrong.into() });
        tokio::spawn(async move { svc.token("default", r).await.map_err(OAuthError::from) })
    });
    let answers = futures_util::future::join_all(guesses).await;
    let compared = super::offers::TX_CODES_COMPARED.with(|n| n.get()) - compared_before;
    assert!(
        compared <= MAX_TX_CODE_FAILURES as usize,
        "{compared} guesses compared"
    );
    // the right one redeemed the offer only if it was one of the attempts allowed
    let redeemed = answers
        .iter()
        .filter(|a| a.as_ref().unwrap().is_ok())
        .count();
    assert!(redeemed <= 1);
    let mut right = token_req(&code);
    right.tx_code = Some(tx);
    let e = OAuthError::from(svc.token("default", right).await.unwrap_err());
    assert_eq!(
        e.error, "invalid_grant",
        "the right code after the attempts were used"
    );
    // and offers with a tx_code offer no authorization code grant (its issuer_state would
    // redeem them without the code)
    let mut both = offer_req(None);
    both.tx_code = Some(numeric_tx_code(6));
    both.authorization_code = true;
    let e = svc.create_offer("default", both).await.unwrap_err();
    assert_eq!(e.error_code(), Code::Validation);
}

/// The nonce endpoint, open to anyone, writes nothing to the store: a c_nonce is the issuer's MAC
/// (see `nonces`), and only its use by a credential request leaves a marker. Before, each call
/// stored a record for five minutes.
#[tokio::test]
async fn the_nonce_endpoint_stores_nothing() {
    let (svc, _clock) = issuer().await;
    let before = svc.ctx.store.export_all().await.unwrap().len();
    for _ in 0..50 {
        svc.nonce("default").await.unwrap();
    }
    assert_eq!(svc.ctx.store.export_all().await.unwrap().len(), before);
    assert_eq!(
        svc.ctx
            .store
            .count_prefix(ks::NONCES, "", 1_000)
            .await
            .unwrap(),
        0
    );
}

/// A proof "signed" by a small-order Ed25519 key (the identity point, as a header `jwk` or a
/// did:key `kid`) with the forged signature R = identity, s = 0 — which the permissive Ed25519
/// check accepts for any message — is refused with invalid_proof, and nothing is issued: a
/// credential bound to such a key could be presented by anyone. (Attacker review.)
#[tokio::test]
async fn a_proof_by_a_weak_ed25519_key_is_refused() {
    use crate::crypto::b64url;
    let (svc, clock) = issuer().await;
    let o = svc.create_offer("default", offer_req(None)).await.unwrap();
    let t = svc
        .token("default", token_req(&pre_auth_code(&o)))
        .await
        .unwrap();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut forged = identity.to_vec();
    forged.extend([0u8; 32]);
    let mut did_key_bytes = vec![0xed, 0x01];
    did_key_bytes.extend(identity);
    let did_key = format!("did:key:z{}", bs58::encode(did_key_bytes).into_string());
    let headers = [
        json!({"typ": "openid4vci-proof+jwt", "alg": "EdDSA",
            "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64url(identity)}}),
        json!({"typ": "openid4vci-proof+jwt", "alg": "EdDSA",
            "kid": format!("{did_key}#{}", &did_key["did:key:".len()..])}),
    ];
    for header in headers {
        let n = svc.nonce("default").await.unwrap();
        let payload =
            json!({"aud": svc.issuer_url("default"), "iat": clock.now_secs(), "nonce": n});
        let proof = format!(
            "{}.{}.{}",
            b64url(header.to_string()),
            b64url(payload.to_string()),
            b64url(&forged)
        );
        let req = proof_req(proof);
        let e = OAuthError::from(
            svc.credential("default", Some(&t.access_token), req)
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (e.status.as_u16(), e.error),
            (400, "invalid_proof"),
            "{header}"
        );
    }
    // the token was not used up by the refusals: an honest proof still gets the credential
    svc.credential(
        "default",
        Some(&t.access_token),
        credential_req(&svc, &clock).await,
    )
    .await
    .unwrap();
}

/// A deleted issuer's offers, codes, tokens and nonces do not pass to a tenant created later
/// under the same id: the old pre-authorized code gets invalid_grant and the old access token
/// invalid_token. Its credential records are kept (history, and what its status lists describe).
/// (Attacker review.)
#[tokio::test]
async fn a_recreated_issuer_does_not_inherit_the_deleted_ones_offers_or_tokens() {
    let (svc, clock) = issuer().await;
    let create = || CreateIssuer {
        credential_configurations: default_issuer_request().credential_configurations,
        id: "acme".into(),
        display_name: None,
        key_type: None,
        did_method: None,
        webhook_url: None,
    };
    svc.create_issuer(create()).await.unwrap();
    let unredeemed = svc.create_offer("acme", offer_req(None)).await.unwrap();
    let redeemed = svc.create_offer("acme", offer_req(None)).await.unwrap();
    let token = svc
        .token("acme", token_req(&pre_auth_code(&redeemed)))
        .await
        .unwrap()
        .access_token;
    let nonce = svc.nonce("acme").await.unwrap();
    // one credential issued before the deletion: its record stays
    let holder = SigningKey::generate(KeyType::Ed25519);
    let proof = |n: &str| {
        jws::sign(
            &holder,
            json!({"typ": "openid4vci-proof+jwt", "jwk": holder.verifying_key().to_jwk()}),
            &json!({"aud": svc.issuer_url("acme"), "iat": clock.now_secs(), "nonce": n}),
        )
    };
    let req = |n: &str| proof_req(proof(n));
    let other = svc.create_offer("acme", offer_req(None)).await.unwrap();
    let other_token = svc
        .token("acme", token_req(&pre_auth_code(&other)))
        .await
        .unwrap()
        .access_token;
    let n = svc.nonce("acme").await.unwrap();
    svc.credential("acme", Some(&other_token), req(&n))
        .await
        .unwrap();

    svc.delete_issuer("acme").await.unwrap();
    svc.create_issuer(create()).await.unwrap();

    let e = OAuthError::from(
        svc.token("acme", token_req(&pre_auth_code(&unredeemed)))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.status.as_u16(), e.error), (400, "invalid_grant"));
    let e = OAuthError::from(
        svc.credential("acme", Some(&token), req(&nonce))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.status.as_u16(), e.error), (401, "invalid_token"));
    let store = &svc.ctx.store;
    for keyspace in [ks::OFFERS, ks::NONCES] {
        assert!(store
            .scan_prefix(keyspace, "acme/", 10)
            .await
            .unwrap()
            .is_empty());
    }
    // codes and tokens are keyed by hashes of their secrets; the ones the offers named are gone
    assert!(store
        .scan_prefix(ks::TOKENS, "", 100)
        .await
        .unwrap()
        .iter()
        .all(|(_, v)| serde_json::from_slice::<serde_json::Value>(v).unwrap()["issuer"] != "acme"));
    assert!(store
        .scan_prefix(ks::CODES, "pre/", 100)
        .await
        .unwrap()
        .iter()
        .all(|(_, v)| !v.starts_with(b"acme/")));
    assert_eq!(
        store
            .scan_prefix(ks::CREDS, "acme/", 10)
            .await
            .unwrap()
            .len(),
        1
    );
    // a second delete finds no tenant (404) and nothing left to purge
    svc.delete_issuer("acme").await.unwrap();
    let e = svc.delete_issuer("acme").await.unwrap_err();
    assert_eq!(e.error_code(), Code::NotFound);
    // a nonce used before the deletion (its use marker went with the purge) is not a tenant's
    // created later under the same id, so it is not used twice
    svc.create_issuer(create()).await.unwrap();
    let fresh = svc.create_offer("acme", offer_req(None)).await.unwrap();
    let fresh_token = svc
        .token("acme", token_req(&pre_auth_code(&fresh)))
        .await
        .unwrap()
        .access_token;
    let e = OAuthError::from(
        svc.credential("acme", Some(&fresh_token), req(&n))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.error, "invalid_nonce");
}

/// Attacker review: every offer update was stored without a TTL, so a redeemed offer, an offer
/// that met one wrong tx_code and an issued one lived for ever (claims included, never swept).
/// Each keeps its record's lifetime: the offer's and a day.
#[tokio::test]
async fn an_updated_offer_record_still_expires() {
    let (svc, clock) = issuer().await;
    let redeemed = svc
        .create_offer("default", offer_req(Some(60)))
        .await
        .unwrap();
    svc.token("default", token_req(&pre_auth_code(&redeemed)))
        .await
        .unwrap();
    let mut guarded = offer_req(Some(60));
    guarded.tx_code = Some(numeric_tx_code(6));
    let guessed = svc.create_offer("default", guarded).await.unwrap();
    let right = guessed.tx_code.clone().unwrap();
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    let mut req = token_req(&pre_auth_code(&guessed));
    req.tx_code = Some(wrong.into());
    svc.token("default", req).await.unwrap_err();
    let issued = svc
        .create_offer("default", offer_req(Some(60)))
        .await
        .unwrap();
    let t = svc
        .token("default", token_req(&pre_auth_code(&issued)))
        .await
        .unwrap();
    svc.credential(
        "default",
        Some(&t.access_token),
        credential_req(&svc, &clock).await,
    )
    .await
    .unwrap();

    let record = |id: String| {
        let store = svc.ctx.store.clone();
        async move {
            store
                .get(ks::OFFERS, &super::offers::offer_key("default", &id))
                .await
                .unwrap()
        }
    };
    for o in [&redeemed, &guessed, &issued] {
        assert!(record(o.id.clone()).await.is_some());
    }
    clock.advance_ms((60 + OFFER_RECORD_GRACE_SECS + 1) * 1000);
    for (what, o) in [
        ("redeemed", &redeemed),
        ("guessed", &guessed),
        ("issued", &issued),
    ] {
        assert!(
            record(o.id.clone()).await.is_none(),
            "the {what} offer's record never expires"
        );
    }
}

/// An authorization request of client `wallet` for an offer's issuer_state (PKCE S256).
fn authorize_request(
    redirect_uri: &str,
    challenge: String,
    issuer_state: String,
) -> super::authorize::AuthorizeRequest {
    super::authorize::AuthorizeRequest {
        response_type: Some("code".into()),
        client_id: Some("wallet".into()),
        redirect_uri: Some(redirect_uri.into()),
        code_challenge: Some(challenge),
        code_challenge_method: Some("S256".into()),
        issuer_state: Some(issuer_state),
        state: None,
        scope: None,
        authorization_details: None,
    }
}

/// An authorization code outlives the offer check at `/authorize` (by up to its own lifetime),
/// and the offer record outlives the offer by a day: a code obtained just before the offer
/// expired does not redeem it afterwards.
#[tokio::test]
async fn an_authorization_code_does_not_redeem_an_offer_that_expired_since() {
    let (svc, clock) = issuer().await;
    let mut req = offer_req(Some(60));
    req.authorization_code = true;
    let o = svc.create_offer("default", req).await.unwrap();
    let issuer_state = o.credential_offer["grants"]["authorization_code"]["issuer_state"]
        .as_str()
        .unwrap()
        .to_string();
    let verifier = "v".repeat(43);
    let challenge = crate::crypto::b64url(crate::crypto::sha256(verifier.as_bytes()));
    clock.advance_ms(50_000);
    let redirect = svc
        .authorize(
            "default",
            authorize_request("https://wallet.example/cb", challenge, issuer_state),
        )
        .await
        .unwrap();
    let code = reqwest::Url::parse(&redirect)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    clock.advance_ms(20_000);
    let e = OAuthError::from(
        svc.token(
            "default",
            TokenRequest {
                grant_type: Some("authorization_code".into()),
                pre_authorized_code: None,
                code: Some(code),
                code_verifier: Some(verifier),
                redirect_uri: Some("https://wallet.example/cb".into()),
                client_id: Some("wallet".into()),
                tx_code: None,
                authorization_details: None,
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.error, "invalid_grant");
    assert!(e.description.contains("expired"), "{}", e.description);
}

/// A token request of the authorization code grant that names a client names the one the code
/// was issued to (one naming none is answered: wallets in use send none, and PKCE binds the
/// code); a configuration asked for more than once is granted once (before, `scope=a a a …` was
/// carried by the code, the token and the answer as often as it was written).
#[tokio::test]
async fn authorization_code_token_requests_name_no_other_client_and_grant_each_configuration_once()
{
    let (svc, _clock) = issuer().await;
    let verifier = "v".repeat(43);
    let code_for = |details: Option<String>| {
        let svc = &svc;
        let verifier = verifier.clone();
        async move {
            let mut req = offer_req(None);
            req.authorization_code = true;
            let o = svc.create_offer("default", req).await.unwrap();
            let issuer_state = o.credential_offer["grants"]["authorization_code"]["issuer_state"]
                .as_str()
                .unwrap()
                .to_string();
            let challenge = crate::crypto::b64url(crate::crypto::sha256(verifier.as_bytes()));
            let mut a = authorize_request("https://wallet.example/cb", challenge, issuer_state);
            if details.is_some() {
                let id = "IdentityCredential_dc_sd_jwt";
                a.scope = Some(format!("{id} {id} {id}"));
            }
            a.authorization_details = details;
            let redirect = svc.authorize("default", a).await.unwrap();
            reqwest::Url::parse(&redirect)
                .unwrap()
                .query_pairs()
                .find(|(k, _)| k == "code")
                .unwrap()
                .1
                .into_owned()
        }
    };
    let token = |code: String, client_id: Option<&str>| TokenRequest {
        grant_type: Some("authorization_code".into()),
        pre_authorized_code: None,
        code: Some(code),
        code_verifier: Some(verifier.clone()),
        redirect_uri: Some("https://wallet.example/cb".into()),
        client_id: client_id.map(str::to_string),
        tx_code: None,
        authorization_details: None,
    };
    let code = code_for(None).await;
    let e = OAuthError::from(
        svc.token("default", token(code, Some("other")))
            .await
            .unwrap_err(),
    );
    assert!(e.description.contains("client_id"), "{}", e.description);
    let code = code_for(None).await;
    svc.token("default", token(code, None)).await.unwrap();
    // asked for in authorization_details, and three times again in scope
    let details = json!([
        {"type": "openid_credential", "credential_configuration_id": "IdentityCredential_dc_sd_jwt"},
    ]);
    let code = code_for(Some(details.to_string())).await;
    let t = svc
        .token("default", token(code, Some("wallet")))
        .await
        .unwrap();
    assert_eq!(t.authorization_details.unwrap().len(), 1);
}

/// The code `/authorize` gives for a new offer of the default issuer with the authorization
/// code grant, under PKCE `challenge` (redirect `https://wallet.example/cb`).
async fn authorization_code(svc: &IssuerService, challenge: &str) -> String {
    let mut req = offer_req(None);
    req.authorization_code = true;
    let o = svc.create_offer("default", req).await.unwrap();
    let issuer_state = o.credential_offer["grants"]["authorization_code"]["issuer_state"]
        .as_str()
        .unwrap()
        .to_string();
    let redirect = svc
        .authorize(
            "default",
            authorize_request("https://wallet.example/cb", challenge.into(), issuer_state),
        )
        .await
        .unwrap();
    reqwest::Url::parse(&redirect)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned()
}

/// A used authorization code replayed: with the right verifier, the token of its first use is
/// revoked (whoever has both may have taken them from the wallet); with another verifier nothing
/// is (attacker review: anyone who saw only the code could revoke the holder's token and, the
/// offer being redeemed, cost them the credential). A replay with the right verifier while the
/// first use is still being granted marks the code, so that grant is revoked as it ends.
#[tokio::test]
async fn a_replayed_authorization_code_revokes_only_with_its_verifier() {
    let (svc, _clock) = issuer().await;
    let verifier = "v".repeat(43);
    let challenge = crate::crypto::b64url(crate::crypto::sha256(verifier.as_bytes()));
    let code = authorization_code(&svc, &challenge).await;
    let token = |verifier: &str| TokenRequest {
        grant_type: Some("authorization_code".into()),
        pre_authorized_code: None,
        code: Some(code.clone()),
        code_verifier: Some(verifier.into()),
        redirect_uri: Some("https://wallet.example/cb".into()),
        client_id: None,
        tx_code: None,
        authorization_details: None,
    };
    let t = svc.token("default", token(&verifier)).await.unwrap();
    let grant_key = super::service::hash(&t.access_token);
    let held = || async {
        svc.ctx
            .store
            .get(ks::TOKENS, &grant_key)
            .await
            .unwrap()
            .is_some()
    };
    assert!(held().await);
    let e = OAuthError::from(
        svc.token("default", token(&"x".repeat(43)))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.error, "invalid_grant");
    assert!(
        held().await,
        "a replay without the verifier revokes nothing"
    );
    let e = OAuthError::from(svc.token("default", token(&verifier)).await.unwrap_err());
    assert_eq!(e.error, "invalid_grant");
    assert!(!held().await, "a replay with it revokes the token");

    // a code consumed, its token not recorded yet: a replay with the verifier marks it
    let key = format!("authz/{}", super::service::hash("in-flight"));
    let consumed = json!({"used": true, "token_hash": null, "code_challenge": challenge});
    svc.ctx
        .store
        .put(ks::CODES, &key, consumed.to_string().into_bytes(), None)
        .await
        .unwrap();
    let mut replay = token(&verifier);
    replay.code = Some("in-flight".into());
    let e = OAuthError::from(svc.token("default", replay).await.unwrap_err());
    assert_eq!(e.error, "invalid_grant");
    let marked: serde_json::Value =
        serde_json::from_slice(&svc.ctx.store.get(ks::CODES, &key).await.unwrap().unwrap())
            .unwrap();
    assert_eq!(marked["replayed"], true);
}

/// A store on which the first use of an authorization code records its token (`mark`) just
/// before a replay's compare-and-swap of the code's mark lands.
struct FirstUseFinishes {
    inner: Arc<dyn crate::store::Store>,
    mark: std::sync::Mutex<Option<(String, Vec<u8>)>>,
}

store_wrapper!(FirstUseFinishes, only compare_and_swap {
    async fn compare_and_swap(
        &self,
        ks: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> crate::store::StoreResult<Cas> {
        let armed = (ks == ks::CODES).then(|| self.mark.lock().unwrap().take()).flatten();
        if let Some((k, mark)) = armed {
            self.inner.put(ks, &k, mark, None).await?;
        }
        self.inner.compare_and_swap(ks, key, expected, new).await
    }
});

/// A replay with the right verifier racing the first use still revokes the token the first use
/// got, whichever way it raced: it read the code's mark before the first use recorded its token
/// and tries to mark it after (its swap fails, it reads the token now recorded; diff review), or
/// it read the code still unused, both requests before either marked it, and loses the swap to
/// the first use's mark (attacker review: it answered "already used" and left the token valid).
#[tokio::test]
async fn a_replay_racing_the_first_use_still_revokes_its_token() {
    for read_unused in [false, true] {
        let clock = FakeClock::new(1_800_000_000_000);
        let mut ctx = RoleContext::for_tests(clock.clone());
        let racing = Arc::new(FirstUseFinishes {
            inner: ctx.store.clone(),
            mark: Default::default(),
        });
        ctx.store = racing.clone();
        let svc = IssuerService::new(ctx, IssuerConfig::default());
        svc.init().await.unwrap();
        let verifier = "v".repeat(43);
        let challenge = crate::crypto::b64url(crate::crypto::sha256(verifier.as_bytes()));
        let code = authorization_code(&svc, &challenge).await;
        let token = || TokenRequest {
            grant_type: Some("authorization_code".into()),
            pre_authorized_code: None,
            code: Some(code.clone()),
            code_verifier: Some(verifier.clone()),
            redirect_uri: Some("https://wallet.example/cb".into()),
            client_id: None,
            tx_code: None,
            authorization_details: None,
        };
        let store = svc.ctx.store.clone();
        let key = format!("authz/{}", super::service::hash(&code));
        let unused = store.get(ks::CODES, &key).await.unwrap().unwrap();
        let t = svc.token("default", token()).await.unwrap();
        let grant_key = super::service::hash(&t.access_token);
        // back to what the replay read: the unused code, or the first use's mark before its
        // token was recorded; the recorded mark lands just before the replay's swap
        let recorded = store.get(ks::CODES, &key).await.unwrap().unwrap();
        let seen = match read_unused {
            true => unused,
            false => json!({"used": true, "token_hash": null, "code_challenge": challenge})
                .to_string()
                .into_bytes(),
        };
        store.put(ks::CODES, &key, seen, None).await.unwrap();
        *racing.mark.lock().unwrap() = Some((key, recorded));
        let e = OAuthError::from(svc.token("default", token()).await.unwrap_err());
        assert_eq!(e.error, "invalid_grant");
        assert!(
            store.get(ks::TOKENS, &grant_key).await.unwrap().is_none(),
            "read unused: {read_unused}: the first use's token is revoked"
        );
    }
}

/// A proof's DID becomes the credential's subject id: a did:jwk carrying JSON of the wallet's
/// own (signed into the subject by the issuer), or a did:key in another spelling of its key, is
/// refused (attacker review); the plain forms still get the credential.
#[tokio::test]
async fn a_proofs_did_is_the_plain_spelling_of_its_key() {
    let (svc, clock) = issuer().await;
    let t = redeemed_token(&svc).await;
    let holder = SigningKey::generate(KeyType::P256);
    let vk = holder.verifying_key();
    let mut jwk = vk.to_jwk();
    jwk["given_name"] = json!("Alice");
    let mut uncompressed = vec![0x80, 0x24, 0x04];
    uncompressed.extend(crate::crypto::b64url_decode(vk.to_jwk()["x"].as_str().unwrap()).unwrap());
    uncompressed.extend(crate::crypto::b64url_decode(vk.to_jwk()["y"].as_str().unwrap()).unwrap());
    let long_key = format!("did:key:z{}", bs58::encode(uncompressed).into_string());
    let token = &t.access_token;
    let with_kid = |did: String| {
        let svc = &svc;
        let holder = &holder;
        let clock = &clock;
        async move {
            let n = svc.nonce("default").await.unwrap();
            let header = json!({"typ": "openid4vci-proof+jwt", "kid": format!("{did}#0")});
            let payload =
                json!({"aud": svc.issuer_url("default"), "iat": clock.now_secs(), "nonce": n});
            let req = proof_req(jws::sign(holder, header, &payload));
            svc.credential("default", Some(token), req).await
        }
    };
    for did in [
        format!("did:jwk:{}", crate::crypto::b64url(jwk.to_string())),
        long_key,
    ] {
        let e = OAuthError::from(with_kid(did.clone()).await.unwrap_err());
        assert_eq!(
            (e.status.as_u16(), e.error),
            (400, "invalid_proof"),
            "{did}"
        );
    }
    with_kid(crate::crypto::did::did_jwk(&vk)).await.unwrap();
}

/// The access token of a new offer of the default issuer, redeemed.
async fn redeemed_token(svc: &IssuerService) -> super::grants::TokenResponse {
    let o = svc.create_offer("default", offer_req(None)).await.unwrap();
    svc.token("default", token_req(&pre_auth_code(&o)))
        .await
        .unwrap()
}

/// One access token makes at most 32 credential requests: its holder may not make the issuer sign
/// batch after batch (up to 10 credentials each, again for a configuration already issued to the
/// same key) for the token's whole life.
#[tokio::test]
async fn an_access_token_makes_a_bounded_number_of_credential_requests() {
    let (svc, clock) = issuer().await;
    let t = redeemed_token(&svc).await;
    // the same holder asking again is sent the credential again (a retry after a lost answer)
    let holder = SigningKey::generate(KeyType::Ed25519);
    for i in 0..super::credential::MAX_CREDENTIAL_REQUESTS_PER_TOKEN {
        credential_by(&svc, &clock, &t.access_token, &holder)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e:?}"));
    }
    let e = OAuthError::from(
        credential_by(&svc, &clock, &t.access_token, &holder)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.error, "invalid_token");
    assert!(
        e.description.contains("credential requests"),
        "{}",
        e.description
    );
}

/// A request that fails on the issuer's side (a store outage) is not counted against its token:
/// a wallet retrying through an outage does not use up its 32 requests and lose the credential.
#[tokio::test]
async fn requests_that_fail_on_the_issuers_side_are_not_counted_on_the_token() {
    let (svc, faulty, clock) = faulty_issuer(ks::CREDS, false).await;
    let t = redeemed_token(&svc).await;
    let holder = SigningKey::generate(KeyType::Ed25519);
    for i in 0..super::credential::MAX_CREDENTIAL_REQUESTS_PER_TOKEN + 8 {
        faulty.fail.store(1, std::sync::atomic::Ordering::SeqCst);
        let e = OAuthError::from(
            credential_by(&svc, &clock, &t.access_token, &holder)
                .await
                .unwrap_err(),
        );
        assert_eq!(e.status.as_u16(), 503, "request {i}: {e:?}");
    }
    let got = credential_by(&svc, &clock, &t.access_token, &holder)
        .await
        .unwrap();
    assert!(got["credentials"][0]["credential"].is_string());
}

/// There is no client registration, so `/authorize` would send its answer wherever its caller
/// asks (an open redirector on the issuer's origin for anyone holding an offer's issuer_state):
/// it answers only to the redirect URIs `issuer.redirect_uris` allows. Another one gets an error,
/// with no redirect and no code stored; a listed loopback URI matches on any port; `*` refuses
/// user-info and plain `http` off loopback; production mode without the key turns the grant off
/// (offers with it refused, the metadata without it).
#[tokio::test]
async fn authorize_redirects_only_to_allowed_redirect_uris() {
    use super::error::IssuerError;
    use crate::config::Mode;
    async fn service(uris: Option<&[&str]>, mode: Mode) -> IssuerService {
        let mut ctx = RoleContext::for_tests(FakeClock::new(1_800_000_000_000));
        ctx.mode = mode;
        let cfg = IssuerConfig {
            redirect_uris: uris.map(|l| l.iter().map(|u| u.to_string()).collect()),
            ..IssuerConfig::default()
        };
        let svc = IssuerService::new(ctx, cfg);
        svc.init().await.unwrap();
        svc
    }
    async fn authorize(svc: &IssuerService, redirect_uri: &str) -> Result<String, IssuerError> {
        let mut req = offer_req(None);
        req.authorization_code = true;
        let o = svc.create_offer("default", req).await.unwrap();
        let issuer_state = o.credential_offer["grants"]["authorization_code"]["issuer_state"]
            .as_str()
            .unwrap()
            .to_string();
        svc.authorize(
            "default",
            authorize_request(redirect_uri, "c".repeat(43), issuer_state),
        )
        .await
    }
    async fn codes(svc: &IssuerService) -> usize {
        svc.ctx
            .store
            .scan_prefix(ks::CODES, "authz/", 100)
            .await
            .unwrap()
            .len()
    }

    let listed = service(
        Some(&["https://wallet.example/cb", "http://127.0.0.1:4000/cb"]),
        Mode::Production,
    )
    .await;
    for ok in [
        "https://wallet.example/cb",
        "http://127.0.0.1:4000/cb",
        "http://127.0.0.1:53211/cb",
    ] {
        let to = authorize(&listed, ok).await.unwrap();
        assert!(to.starts_with(ok), "{to}");
    }
    assert_eq!(codes(&listed).await, 3);
    for refused in [
        "https://evil.example/cb",
        "https://wallet.example/cb/../x",
        "https://wallet.example/cb?x=1",
        "https://wallet.example@evil.example/cb",
        "http://127.0.0.1:4000/other",
        "http://localhost:4000/cb",
    ] {
        let e = authorize(&listed, refused).await.unwrap_err();
        assert!(
            matches!(e, IssuerError::BadAuthorization(_)),
            "{refused}: {e:?}"
        );
    }
    assert_eq!(codes(&listed).await, 3, "a refused request stores no code");
    // the client_id is stored with the code: bounded, printable (attacker review)
    for client_id in ["\u{1}".repeat(30_000), "w".repeat(1025), "wallet\n".into()] {
        let mut req = offer_req(None);
        req.authorization_code = true;
        let o = listed.create_offer("default", req).await.unwrap();
        let state = o.credential_offer["grants"]["authorization_code"]["issuer_state"]
            .as_str()
            .unwrap()
            .to_string();
        let mut a = authorize_request("https://wallet.example/cb", "c".repeat(43), state);
        a.client_id = Some(client_id);
        let e = listed.authorize("default", a).await.unwrap_err();
        assert!(matches!(e, IssuerError::BadAuthorization(_)), "{e:?}");
    }
    assert_eq!(codes(&listed).await, 3);
    let meta = listed.authorization_server_metadata(&listed.get_issuer("default").await.unwrap());
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);

    // `*` (the sandbox default): any absolute URI but user-info and plain http off loopback
    for any in [
        service(None, Mode::Sandbox).await,
        service(Some(&["*"]), Mode::Production).await,
    ] {
        for ok in [
            "https://elsewhere.example/cb",
            "eudi-openid4ci://authorize",
            "http://[::1]:8/cb",
            "http://localhost:3000/cb",
        ] {
            authorize(&any, ok).await.unwrap();
        }
        for refused in [
            "https://wallet.example@evil.example/cb",
            "http://plain.example/cb",
        ] {
            assert!(authorize(&any, refused).await.is_err(), "{refused}");
        }
    }

    // production mode, nothing listed: no authorization code grant at all
    let off = service(None, Mode::Production).await;
    let mut req = offer_req(None);
    req.authorization_code = true;
    assert!(matches!(
        off.create_offer("default", req).await.unwrap_err(),
        IssuerError::Invalid(_)
    ));
    let meta = off.authorization_server_metadata(&off.get_issuer("default").await.unwrap());
    assert!(meta.get("authorization_endpoint").is_none());
    assert_eq!(
        meta["grant_types_supported"],
        json!([super::service::PRE_AUTH_GRANT])
    );
}

/// A key proof past its `exp`, not yet valid by its `nbf`, or with a `crit` extension is refused
/// (RFC 7519 / 7515), and nothing is issued on it.
#[tokio::test]
async fn expired_or_critical_proofs_are_refused() {
    let (svc, clock) = issuer().await;
    let o = svc.create_offer("default", offer_req(None)).await.unwrap();
    let t = svc
        .token("default", token_req(&pre_auth_code(&o)))
        .await
        .unwrap();
    let holder = SigningKey::generate(KeyType::Ed25519);
    let now = clock.now_secs();
    for (extra_header, extra_claims) in [
        (json!({}), json!({"exp": now - 120})),
        (json!({}), json!({"nbf": now + 3600})),
        (json!({"crit": ["b64"], "b64": true}), json!({})),
    ] {
        let n = svc.nonce("default").await.unwrap();
        let mut header =
            json!({"typ": "openid4vci-proof+jwt", "jwk": holder.verifying_key().to_jwk()});
        let mut claims = json!({"aud": svc.issuer_url("default"), "iat": now, "nonce": n});
        for (k, v) in extra_header.as_object().unwrap() {
            header[k] = v.clone();
        }
        for (k, v) in extra_claims.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let proof = jws::sign(&holder, header, &claims);
        let e = OAuthError::from(
            svc.credential("default", Some(&t.access_token), proof_req(proof))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (e.status.as_u16(), e.error),
            (400, "invalid_proof"),
            "{claims}"
        );
    }
}

/// The claims an SD-JWT VC's issuer sets (its holder binding, status, validity, type) are not the
/// offer's: a configuration naming one is refused, and an offer's claim of such a name never
/// replaces the issuer's (attacker review: a non-disclosable `cnf` bound the credential to a key
/// the wallet never proved).
#[tokio::test]
async fn an_sd_jwt_vcs_own_claims_and_an_overflowing_validity_are_refused() {
    let (svc, _) = issuer().await;
    let mut req = super::tenants::default_issuer_request();
    req.id = "acme".into();
    let sd = req
        .credential_configurations
        .get_mut("IdentityCredential_dc_sd_jwt")
        .unwrap();
    sd.claims.push(ClaimSpec {
        name: "cnf".into(),
        mandatory: false,
        selectively_disclosable: false,
        display_name: None,
    });
    let e = svc.create_issuer(req).await.unwrap_err();
    assert!(e.to_string().contains("cnf"), "{e}");
    // a validity whose exp would overflow is refused where it is given
    let mut o = offer_req(None);
    o.credential_validity_seconds = Some(u64::MAX);
    assert!(svc.create_offer("default", o).await.is_err());
}

/// An ldp_vc offer whose credential could never be signed (claims the JSON-LD contexts do not
/// map, a number ssi cannot carry, a type that is not a term) is refused when it is made (422),
/// not at each wallet's credential request (500, with the request given back to retry).
#[tokio::test]
async fn an_ldp_vc_offer_that_cannot_be_signed_is_refused_when_made() {
    let (svc, _clock) = issuer().await;
    let ldp = |claims: serde_json::Value| CreateOffer {
        credential_configuration_ids: vec!["IdentityCredential_ldp_vc".into()],
        claims: serde_json::from_value(claims).unwrap(),
        ..offer_req(Some(600))
    };
    for bad in [
        json!({"given_name": {"type": 1}}),
        json!({"given_name": {"a b": "x"}}),
        json!({"given_name": {"@id": "x"}}),
        json!({"given_name": 1e20}),
        json!({"given_name": [1e-7]}),
        // JSON-LD drops these: unsigned, and refused by verifiers
        json!({"given_name": null}),
        json!({"given_name": []}),
        json!({"given_name": {"x": null}}),
    ] {
        let e = svc
            .create_offer("default", ldp(bad.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.error_code(), Code::Validation, "{bad}: {e}");
        assert!(e.to_string().contains("cannot be signed"), "{e}");
    }
    svc.create_offer(
        "default",
        ldp(json!({"given_name": "Erika", "family_name": {"x": 2.5}})),
    )
    .await
    .unwrap();
    // a type or claim name that is not a term is refused with the configuration
    let issuer = svc.get_issuer("default").await.unwrap();
    let update = |credential_type: &str, claim: &str| {
        let mut configs = issuer.credential_configurations.clone();
        let c = configs.get_mut("IdentityCredential_ldp_vc").unwrap();
        c.credential_type = credential_type.into();
        c.claims[0].name = claim.into();
        UpdateIssuer {
            display_name: None,
            credential_configurations: Some(configs),
            webhook_url: None,
        }
    };
    for (t, claim) in [
        ("Identity Credential", "given_name"),
        ("@id", "given_name"),
        ("Identity", "given name"),
        ("Identity", "ex:name"),
        ("Identity", "id"),
    ] {
        let e = svc
            .update_issuer("default", update(t, claim))
            .await
            .unwrap_err();
        assert_eq!(e.error_code(), Code::Validation, "{t} {claim}: {e}");
    }
    svc.update_issuer("default", update("Identity_v2", "given_name"))
        .await
        .unwrap();
}

/// A credential configuration id is 1 to 128 letters, digits, `.`, `-` and `_` (the check let
/// through anything that failed only one of its two halves: an empty id, any length).
#[tokio::test]
async fn credential_configuration_ids_are_short_plain_names() {
    let (svc, _clock) = issuer().await;
    let issuer = svc.get_issuer("default").await.unwrap();
    let renamed = |id: String| {
        let mut configs = issuer.credential_configurations.clone();
        let c = configs.remove("IdentityCredential_ldp_vc").unwrap();
        configs.insert(id, c);
        UpdateIssuer {
            display_name: None,
            credential_configurations: Some(configs),
            webhook_url: None,
        }
    };
    for bad in [String::new(), "a".repeat(129), "a b".into(), "a/b".into()] {
        let e = svc
            .update_issuer("default", renamed(bad.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.error_code(), Code::Validation, "{bad:?}: {e}");
    }
    svc.update_issuer("default", renamed("org.Example-ID_2".into()))
        .await
        .unwrap();
}

/// An offer's claims (personal data) are sealed to its record: the stored bytes (and what
/// replicates between nodes) hold none in clear, the issuance reads them, and sealed claims
/// copied into another offer's record do not open there.
#[tokio::test]
async fn an_offers_claims_are_sealed_in_its_record() {
    let (svc, clock) = issuer().await;
    let mut req = offer_req(None);
    req.claims = serde_json::from_value(json!({"given_name": "Erika-Secret"})).unwrap();
    let a = svc.create_offer("default", req).await.unwrap();
    let b = svc.create_offer("default", offer_req(None)).await.unwrap();
    let raw = |id: String| {
        let svc = &svc;
        async move {
            let key = format!("default/{id}");
            svc.ctx.store.get(ks::OFFERS, &key).await.unwrap().unwrap()
        }
    };
    assert!(!String::from_utf8_lossy(&raw(a.id.clone()).await).contains("Erika-Secret"));
    let c = issued_from(&svc, &clock, &a).await;
    let sd =
        crate::crypto::sdjwt::parse(c["credentials"][0]["credential"].as_str().unwrap()).unwrap();
    assert!(sd
        .disclosures
        .iter()
        .any(|d| crate::crypto::sdjwt::decode_disclosure(d).unwrap().1 == json!("Erika-Secret")));
    let stored_a: Offer = serde_json::from_slice(&raw(a.id.clone()).await).unwrap();
    let mut stored_b: Offer = serde_json::from_slice(&raw(b.id.clone()).await).unwrap();
    stored_b.sealed_claims = stored_a.sealed_claims;
    assert!(svc.offer_claims_of(&stored_b).is_err());
}

/// An issuer's webhook URL (it can carry its receiver's secret) is kept sealed to its record:
/// not in the store in clear, shown opened to the admin API, sealed again by an update, not
/// opened when copied to another issuer's record (the issuer stays usable, without a webhook).
/// A record of an earlier release (URL in clear) is read as it is and sealed at its next update.
#[tokio::test]
async fn an_issuers_webhook_url_is_sealed_in_its_record() {
    let (svc, _clock) = issuer().await;
    let hook = "https://hooks.example/services/T0/B0/hook-Secret";
    let create = |id: &str, webhook_url: Option<&str>| CreateIssuer {
        credential_configurations: default_issuer_request().credential_configurations,
        id: id.into(),
        display_name: None,
        key_type: None,
        did_method: None,
        webhook_url: webhook_url.map(str::to_string),
    };
    let shown = svc.create_issuer(create("acme", Some(hook))).await.unwrap();
    assert_eq!(shown.webhook_url.as_deref(), Some(hook));
    svc.create_issuer(create("other", None)).await.unwrap();
    let store = svc.ctx.store.clone();
    let raw = |id: &'static str| {
        let store = store.clone();
        async move {
            let raw = store.get(ks::TENANTS, id).await.unwrap().unwrap();
            String::from_utf8_lossy(&raw).to_string()
        }
    };
    assert!(!raw("acme").await.contains("hooks.example"));
    assert_eq!(
        svc.get_issuer("acme").await.unwrap().webhook_url.as_deref(),
        Some(hook)
    );
    let listed = svc.list_issuers().await.unwrap();
    let acme = listed.iter().find(|i| i.id == "acme").unwrap();
    assert_eq!(acme.webhook_url.as_deref(), Some(hook));
    assert!(acme.sealed_webhook_url.is_none());
    // an update (of another field) keeps it, sealed
    let update = |webhook_url: Option<&str>| UpdateIssuer {
        display_name: Some("Acme".into()),
        credential_configurations: None,
        webhook_url: webhook_url.map(str::to_string),
    };
    let updated = svc.update_issuer("acme", update(None)).await.unwrap();
    assert_eq!(updated.webhook_url.as_deref(), Some(hook));
    assert!(!raw("acme").await.contains("hooks.example"));
    // copied to another issuer's record it does not open there
    let mut acme_stored: Issuer = store.get_json(ks::TENANTS, "acme").await.unwrap().unwrap();
    let mut other: Issuer = store.get_json(ks::TENANTS, "other").await.unwrap().unwrap();
    other.sealed_webhook_url = acme_stored.sealed_webhook_url.clone();
    store
        .put_json(ks::TENANTS, "other", &other, None)
        .await
        .unwrap();
    assert!(svc.get_issuer("other").await.unwrap().webhook_url.is_none());
    // and an update of another field keeps it as it was (a node with the right key may open it)
    svc.update_issuer("other", update(None)).await.unwrap();
    let kept: Issuer = store.get_json(ks::TENANTS, "other").await.unwrap().unwrap();
    assert_eq!(kept.sealed_webhook_url, acme_stored.sealed_webhook_url);
    // an earlier release's record: in clear, read as it is, sealed by the next update
    acme_stored.sealed_webhook_url = None;
    acme_stored.webhook_url = Some(hook.into());
    store
        .put_json(ks::TENANTS, "acme", &acme_stored, None)
        .await
        .unwrap();
    assert_eq!(
        svc.get_issuer("acme").await.unwrap().webhook_url.as_deref(),
        Some(hook)
    );
    svc.update_issuer("acme", update(None)).await.unwrap();
    assert!(!raw("acme").await.contains("hooks.example"));
    // cleared
    let cleared = svc.update_issuer("acme", update(Some(""))).await.unwrap();
    assert!(cleared.webhook_url.is_none());
    let stored: Issuer = store.get_json(ks::TENANTS, "acme").await.unwrap().unwrap();
    assert!(stored.sealed_webhook_url.is_none() && stored.webhook_url.is_none());
}
