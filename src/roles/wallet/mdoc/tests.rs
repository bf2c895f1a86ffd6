//! The wallet's checks on a received mdoc (each forgery refused under its code) and its
//! DeviceResponse (bound to the request's SessionTranscript, disclosing only what is asked).

use ciborium::Value as Cbor;
use serde_json::json;

use super::*;
use crate::client::oid4vp::{self, Held, ResolvedRequest};
use crate::clock::FakeClock;
use crate::crypto::mdoc::{issue, transcript};
use crate::roles::RoleContext;

const NOW: i64 = 1_800_000_000;
const MDL: &str = "org.iso.18013.5.1.mDL";
const NS: &str = "org.iso.18013.5.1";

/// A context, its sandbox IACA as the only anchor, and the default issuer's document signer.
async fn pki() -> (TrustAnchors, std::sync::Arc<mdoc_pki::Signer>) {
    let ctx = RoleContext::for_tests(FakeClock::new(NOW * 1000));
    let signer = mdoc_pki::document_signer(&ctx, "default").await.unwrap();
    let root = mdoc_pki::sandbox_anchor(&ctx).await.unwrap();
    let anchors = TrustAnchors::default()
        .with([<x509_cert::Certificate as x509_cert::der::Decode>::from_der(&root).unwrap()]);
    (anchors, signer)
}

fn issued(signer: &mdoc_pki::Signer, device: &VerifyingKey, valid_until: i64) -> String {
    let text = |t: &str| Cbor::Text(t.into());
    let elements = vec![
        ("family_name".to_string(), text("Mustermann")),
        ("given_name".to_string(), text("Erika")),
        ("age_over_18".to_string(), Cbor::Bool(true)),
    ];
    let bytes = issue::issuer_signed(&issue::IssueRequest {
        doc_type: MDL,
        namespaces: &[(NS.into(), elements)],
        device_key: device,
        signer: &signer.key,
        x5chain: std::slice::from_ref(&signer.cert),
        signed: NOW - 60,
        valid_from: NOW - 60,
        valid_until,
        status: None,
    })
    .unwrap();
    crate::crypto::b64url(bytes)
}

fn code_of(r: WalletResult<Verified>) -> String {
    match r {
        Err(WalletError::CredentialRejected(d)) => d,
        Err(other) => panic!("not a rejection: {other}"),
        Ok(_) => panic!("accepted"),
    }
}

#[tokio::test]
async fn a_received_mdoc_must_verify_and_be_bound_to_the_wallets_device_key() {
    let (anchors, signer) = pki().await;
    let device = SigningKey::generate(KeyType::P256).verifying_key();
    let good = issued(&signer, &device, NOW + 3600);
    let v = check_issued(&good, MDL, &device, &anchors, NOW).unwrap();
    assert_eq!(v.claims[NS]["family_name"], "Mustermann");
    assert_eq!(v.doc_type, MDL);

    let cases: Vec<(&str, WalletResult<Verified>)> = vec![
        (
            "mdoc_untrusted_signer",
            check_issued(&good, MDL, &device, &TrustAnchors::default(), NOW),
        ),
        (
            "mdoc_doctype_mismatch",
            check_issued(&good, "eu.europa.ec.eudi.pid.1", &device, &anchors, NOW),
        ),
        (
            "mdoc_device_auth_failed",
            check_issued(
                &issued(
                    &signer,
                    &SigningKey::generate(KeyType::P256).verifying_key(),
                    NOW + 3600,
                ),
                MDL,
                &device,
                &anchors,
                NOW,
            ),
        ),
        (
            "mdoc_not_valid_now",
            check_issued(
                &issued(&signer, &device, NOW - 1),
                MDL,
                &device,
                &anchors,
                NOW,
            ),
        ),
        (
            "mdoc_malformed",
            check_issued(&good[..good.len() / 2], MDL, &device, &anchors, NOW),
        ),
        (
            "mdoc_malformed",
            check_issued("not base64url!", MDL, &device, &anchors, NOW),
        ),
    ];
    for (code, result) in cases {
        let detail = code_of(result);
        assert!(detail.starts_with(code), "{code}: {detail}");
    }

    // an element changed after signing: its digest no longer matches
    let mut bytes = crate::crypto::b64url_decode(&good).unwrap();
    let at = bytes.windows(10).position(|w| w == b"Mustermann").unwrap();
    bytes[at] = b'N';
    let forged = crate::crypto::b64url(bytes);
    let detail = code_of(check_issued(&forged, MDL, &device, &anchors, NOW));
    assert!(detail.starts_with("mdoc_digest_mismatch"), "{detail}");

    // and the refusal is a 424 with the code in its detail, never a 500
    let api = crate::error::ApiError::from(rejected(MdocError::IssuerSignature));
    assert_eq!(api.code, crate::error::Code::RemoteFailed);
}

fn request(mode: &str, enc: Option<&crate::crypto::jwe::EncryptionKey>) -> ResolvedRequest {
    let mut params = json!({
        "response_type": "vp_token", "nonce": "n-1", "response_mode": mode,
        "response_uri": "https://rp.example/response",
    });
    if let Some(k) = enc {
        params["client_metadata"] = json!({"jwks": {"keys": [k.public_jwk("enc-1")]}});
    }
    ResolvedRequest {
        params,
        client_id: "decentralized_identifier:did:key:z6Mk".into(),
        signed_by: None,
    }
}

/// The DeviceResponse verifies against the SessionTranscript the verifier computes (with the
/// response key's thumbprint when encrypted), carries only the chosen elements, and fails for
/// any other request.
#[tokio::test]
async fn a_device_response_is_bound_to_the_request_and_discloses_only_the_chosen() {
    let (anchors, signer) = pki().await;
    let device = SigningKey::generate(KeyType::P256);
    let raw = issued(&signer, &device.verifying_key(), NOW + 3600);
    let (view, _) = crate::dcql::credential_view(FORMAT, &raw);
    let held = Held {
        id: "c1".into(),
        format: FORMAT.into(),
        raw,
        view,
        key: &device,
        kid: None,
    };
    let enc = crate::crypto::jwe::EncryptionKey::generate();
    for (req, thumbprint) in [
        (request("direct_post", None), None),
        (
            request("direct_post.jwt", Some(&enc)),
            Some(enc.thumbprint()),
        ),
    ] {
        let chosen = [format!("{NS}/age_over_18")];
        let token = oid4vp::presentation(&req, &held, &chosen, NOW).unwrap();
        let bytes = crate::crypto::b64url_decode(token.as_str().unwrap()).unwrap();
        let expected = |nonce: &str| {
            let uri = "https://rp.example/response";
            transcript::oid4vp(&req.client_id, nonce, thumbprint.as_deref(), uri)
        };
        let docs = mdoc::verify::device_response(&bytes, &expected("n-1"), &anchors, NOW).unwrap();
        assert_eq!(
            serde_json::to_value(&docs[0].claims).unwrap(),
            json!({NS: {"age_over_18": true}})
        );
        let e = mdoc::verify::device_response(&bytes, &expected("n-2"), &anchors, NOW).unwrap_err();
        assert_eq!(e.code(), "mdoc_device_auth_failed");
    }
    // no nonce or no response_uri: nothing to bind to, nothing signed
    let mut req = request("direct_post", None);
    req.params["nonce"] = serde_json::Value::Null;
    assert!(oid4vp::presentation(&req, &held, &[], NOW).is_err());
}
