//! mso_mdoc in the cloud wallet end to end: our wallet receives an mDL and a PID from our issuer
//! (a device key per credential, IssuerSigned verified against the trusted IACA), lists them,
//! matches DCQL mdoc queries and presents DeviceResponses with only the requested elements to
//! our verifier; an mdoc whose document signer does not chain to a trusted IACA is refused.

use reqwest::Method as M;
use serde_json::{json, Value};

use crate::api::WalletUser;
use crate::common::{expect_problem, Server};
use crate::holder::{create_offer, sandbox_iaca_file};
use crate::wallet::{session_result, verify_session};

const MDL: &str = "org.iso.18013.5.1.mDL";
const NS: &str = "org.iso.18013.5.1";
const PID: &str = "eu.europa.ec.eudi.pid.1";

fn mdl_claims() -> Value {
    json!({
        "family_name": "Mustermann", "given_name": "Erika", "birth_date": "1984-01-26",
        "issue_date": "2026-01-01", "expiry_date": "2036-01-01", "issuing_country": "UT",
        "issuing_authority": "Sandbox DMV", "document_number": "D-123",
        "driving_privileges": [{"vehicle_category_code": "B", "issue_date": "2026-01-01"}],
        "un_distinguishing_sign": "D", "age_over_18": true,
    })
}

fn pid_claims() -> Value {
    json!({
        "family_name": "Mustermann", "given_name": "Erika", "birth_date": "1984-01-26",
        "age_over_18": true, "nationality": "DE", "issuance_date": "2026-01-01",
        "expiry_date": "2036-01-01", "issuing_authority": "Sandbox PID provider",
        "issuing_country": "UT",
    })
}

/// Offers `config` with `claims` at `issuer_server` and has `u` accept it at `wallet_server`.
async fn accept(
    issuer_server: &Server,
    wallet_server: &Server,
    u: &WalletUser,
    config: &str,
    claims: Value,
) -> reqwest::Response {
    let offer = create_offer(issuer_server, "default", json!({"credential_configuration_ids": [config], "claims": claims, "tx_code": {"length": 6}})).await;
    u.send(
        wallet_server,
        M::POST,
        "/exchange/accept-offer",
        Some(json!({"offer": offer["offer_uri"], "tx_code": offer["tx_code"]})),
    )
    .await
}

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The verifier's result after the wallet presents to a new session asking `query`.
async fn present(s: &Server, u: &WalletUser, query: Value) -> Value {
    let sess = verify_session(s, query).await;
    let body = json!({"request": sess["authorization_request"]});
    json_of(u.send(s, M::POST, "/exchange/present", Some(body)).await).await;
    session_result(s, sess["id"].as_str().unwrap()).await
}

#[tokio::test]
async fn wallet_receives_mdl_and_pid_and_presents_only_the_requested_elements() {
    let s = Server::start().await;
    let u = WalletUser::signup(&s, "mdoc@example.org").await;

    // receive: an mDL and a PID, each with its own device key; no DID is needed for that
    let mdl = json_of(accept(&s, &s, &u, MDL, mdl_claims()).await).await;
    let mdl = &mdl[0];
    assert_eq!(
        (&mdl["format"], &mdl["credential_type"]),
        (&json!("mso_mdoc"), &json!(MDL))
    );
    assert_eq!(mdl["mdoc"]["doctype"], MDL);
    assert_eq!(mdl["mdoc"]["namespaces"][NS]["family_name"], "Mustermann");
    assert!(mdl["issuer"].as_str().unwrap().contains("document signer"));
    let pid = json_of(accept(&s, &s, &u, PID, pid_claims()).await).await;
    let pid = &pid[0];
    assert_eq!(pid["mdoc"]["namespaces"][PID]["nationality"], "DE");
    let dids = json_of(u.send(&s, M::GET, "/dids", None).await).await;
    assert_eq!(dids, json!([]), "device keys are not DIDs");
    let keys = json_of(u.send(&s, M::GET, "/keys", None).await).await;
    assert_eq!(keys, json!([]), "device keys are the credentials' own");

    // listing and detail: doctype, namespaces, elements; never the device key
    let listed = json_of(
        u.send(&s, M::GET, "/credentials?type=org.iso.18013.5.1.mDL", None)
            .await,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(
        listed[0]["mdoc"]["namespaces"][NS]["birth_date"],
        "1984-01-26"
    );
    assert_eq!(
        listed[0]["mdoc"]["namespaces"][NS]["driving_privileges"][0]["vehicle_category_code"],
        "B"
    );
    let all = u
        .send(&s, M::GET, "/credentials", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !all.contains("device_key") && !all.contains("\"d\""),
        "{all}"
    );
    let id = mdl["id"].as_str().unwrap();
    let detail = json_of(
        u.send(&s, M::GET, &format!("/credentials/{id}"), None)
            .await,
    )
    .await;
    assert_eq!(detail["claims"][NS]["given_name"], "Erika");
    assert!(detail["disclosable"]
        .as_array()
        .unwrap()
        .contains(&json!(format!("{NS}/document_number"))));
    assert!(detail.get("device_key").is_none());
    // the listing's mdoc view is documented
    let doc = json_of(s.anon().get_resp("/openapi.json").await).await;
    let schema = &doc["components"]["schemas"]["MdocContents"];
    assert!(schema["properties"]["namespaces"].is_object(), "{schema}");

    // match and present the mDL: only family_name and age_over_18 reach the verifier
    let mdl_query = json!({"dcql_query": {"credentials": [{"id": "mdl", "format": "mso_mdoc",
        "meta": {"doctype_value": MDL},
        "claims": [{"path": [NS, "family_name"]}, {"path": [NS, "age_over_18"]}]}]}});
    let sess = verify_session(&s, mdl_query).await;
    let matches = json_of(
        u.send(
            &s,
            M::POST,
            "/exchange/resolve-request",
            Some(json!({"request": sess["authorization_request"]})),
        )
        .await,
    )
    .await;
    assert_eq!(matches["satisfiable"], true, "{matches}");
    assert_eq!(
        matches["matches"]["mdl"],
        json!([id]),
        "the PID does not answer an mDL query"
    );
    // presenting is bound to the request that was resolved (shown): a digest of another
    // request is refused before anything is sent; this one's is presented
    let digest = matches["request_digest"].as_str().unwrap().to_string();
    let present_with = |d: String| {
        u.send(
            &s,
            M::POST,
            "/exchange/present",
            Some(json!({"request": sess["authorization_request"], "request_digest": d})),
        )
    };
    expect_problem(present_with("0".repeat(64)).await, 409, "conflict").await;
    json_of(present_with(digest).await).await;
    let result = session_result(&s, sess["id"].as_str().unwrap()).await;
    assert_eq!(result["verified"], true, "{result}");
    let c = &result["credentials"][0];
    assert_eq!(c["format"], "mso_mdoc");
    assert_eq!(
        c["claims"][NS],
        json!({"family_name": "Mustermann", "age_over_18": true}),
        "{c}"
    );

    // the PID over direct_post.jwt (the transcript names the response key), a claim set chosen
    let pid_query = json!({"response_mode": "direct_post.jwt", "dcql_query": {"credentials": [{"id": "pid", "format": "mso_mdoc",
        "meta": {"doctype_value": PID},
        "claims": [{"id": "o21", "path": [PID, "age_over_21"]}, {"id": "o18", "path": [PID, "age_over_18"]}, {"id": "fn", "path": [PID, "family_name"]}],
        "claim_sets": [["o21"], ["o18", "fn"]]}]}});
    let result = present(&s, &u, pid_query).await;
    assert_eq!(result["verified"], true, "{result}");
    assert_eq!(
        result["credentials"][0]["claims"][PID],
        json!({"family_name": "Mustermann", "age_over_18": true})
    );

    // an element no held mdoc has: not satisfiable, and presenting is refused before sending
    let missing = json!({"dcql_query": {"credentials": [{"id": "pid", "format": "mso_mdoc",
        "meta": {"doctype_value": PID}, "claims": [{"path": [PID, "resident_city"]}]}]}});
    let sess = verify_session(&s, missing).await;
    let r = u
        .send(
            &s,
            M::POST,
            "/exchange/present",
            Some(json!({"request": sess["authorization_request"]})),
        )
        .await;
    expect_problem(r, 422, "validation_failed").await;
    // a selection that does not answer the query is refused too
    let sess = verify_session(&s, json!({"dcql_query": {"credentials": [{"id": "mdl", "format": "mso_mdoc", "meta": {"doctype_value": MDL}}]}})).await;
    let r = u
        .send(
            &s,
            M::POST,
            "/exchange/present",
            Some(
                json!({"request": sess["authorization_request"], "selections": {"mdl": pid["id"]}}),
            ),
        )
        .await;
    expect_problem(r, 422, "validation_failed").await;

    // status: the MSO's CWT status list entry, following revocation at the issuer
    let status = json_of(
        u.send(&s, M::POST, &format!("/credentials/{id}/status"), None)
            .await,
    )
    .await;
    assert_eq!(status["status"], "valid", "{status}");
    let issued = json_of(s.admin().get_resp("/api/issuers/default/credentials").await).await;
    for c in issued.as_array().unwrap() {
        let path = format!(
            "/api/issuers/default/credentials/{}/revoke",
            c["id"].as_str().unwrap()
        );
        s.admin().post_resp(&path, &serde_json::json!({})).await;
    }
    let status = json_of(
        u.send(&s, M::POST, &format!("/credentials/{id}/status"), None)
            .await,
    )
    .await;
    assert_eq!(status["status"], "revoked", "{status}");
    s.stop();
}

/// Another deployment's mdoc chains to that deployment's sandbox IACA, which this wallet does not
/// trust: refused with 424 naming the failed check, nothing stored. With that IACA configured as
/// an `x509.trust_anchors` certificate, the same kind of offer is accepted.
#[tokio::test]
async fn wallet_refuses_an_mdoc_not_chaining_to_a_trusted_iaca() {
    let issuer = Server::start().await;
    let wallet = Server::start().await;
    let u = WalletUser::signup(&wallet, "untrusting@example.org").await;
    let r = accept(&issuer, &wallet, &u, MDL, mdl_claims()).await;
    let problem = expect_problem(r, 424, "remote_party_failed").await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("mdoc_untrusted_signer"), "{detail}");
    let held = json_of(u.send(&wallet, M::GET, "/credentials", None).await).await;
    assert_eq!(held, json!([]));
    wallet.stop();

    let (_dir, anchors) = sandbox_iaca_file(&issuer).await;
    let trusting = Server::builder()
        .env("IDSTACK__X509__TRUST_ANCHORS", anchors.to_str().unwrap())
        .start()
        .await;
    let u = WalletUser::signup(&trusting, "trusting@example.org").await;
    let got = json_of(accept(&issuer, &trusting, &u, MDL, mdl_claims()).await).await;
    assert_eq!(got[0]["mdoc"]["doctype"], MDL);
    trusting.stop();
    issuer.stop();
}

/// credo-ts 0.6.3 as mdoc issuer for our wallet: an mDL signed by a document signer under
/// credo's own IACA is refused while that IACA is not trusted, accepted once it is a configured
/// `x509.trust_anchors` certificate, and then presented to our verifier and to credo's with only
/// the requested elements.
#[tokio::test]
async fn credo_issues_an_mdl_to_our_wallet() {
    let dir = crate::interop::interop_dir();
    assert!(
        dir.join("credo/node_modules/@credo-ts/openid4vc").exists(),
        "credo-ts is not installed: run tests/interop/install.sh"
    );
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(dir).arg("credo/credo-party.mjs");
    let mut party = crate::common::LineChild::spawn(cmd);
    let info = party.ask(&json!({"cmd": "info"}));
    let offer_from_credo = |party: &mut crate::common::LineChild| {
        let offer = party.ask(&json!({"cmd": "offer", "format": "mso_mdoc"}));
        assert_eq!(offer["ok"], true, "{offer}");
        json!({"offer": offer["offer_uri"]})
    };

    let untrusting = Server::start().await;
    let u = WalletUser::signup(&untrusting, "credo-mdl@example.org").await;
    let offer = offer_from_credo(&mut party);
    let r = u
        .send(&untrusting, M::POST, "/exchange/accept-offer", Some(offer))
        .await;
    let problem = expect_problem(r, 424, "remote_party_failed").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("mdoc_untrusted_signer"),
        "{problem}"
    );
    untrusting.stop();

    let anchors = tempfile::tempdir().unwrap();
    let pem = anchors.path().join("credo-iaca.pem");
    std::fs::write(&pem, info["iaca_pem"].as_str().unwrap()).unwrap();
    let s = Server::builder()
        .env("IDSTACK__X509__TRUST_ANCHORS", pem.to_str().unwrap())
        .start()
        .await;
    // its default verifier trusts mdocs under credo's IACA (besides this node's own issuer)
    let iaca = {
        use x509_cert::der::DecodePem;
        x509_cert::Certificate::from_pem(info["iaca_pem"].as_str().unwrap()).unwrap()
    };
    let ski = idstack::crypto::x509::subject_key_id(&iaca).expect("credo's IACA has an SKI");
    let own = s.default_issuer_did().await;
    let r = s
        .admin()
        .put_resp(
            "/api/verifiers/default",
            &json!({"trusted_issuers": [own, format!("aki:{}", idstack::crypto::b64url(ski))]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let u = WalletUser::signup(&s, "credo-mdl@example.org").await;
    let offer = offer_from_credo(&mut party);
    let got = json_of(
        u.send(&s, M::POST, "/exchange/accept-offer", Some(offer))
            .await,
    )
    .await;
    assert_eq!(got[0]["mdoc"]["doctype"], MDL, "{got}");
    assert_eq!(
        got[0]["mdoc"]["namespaces"][NS]["family_name"],
        "Mustermann"
    );
    assert!(got[0]["issuer"]
        .as_str()
        .unwrap()
        .contains("credo-party document signer"));

    let query = json!({"dcql_query": {"credentials": [{"id": "mdl", "format": "mso_mdoc",
        "meta": {"doctype_value": MDL}, "claims": [{"path": [NS, "age_over_18"]}]}]}});
    let result = present(&s, &u, query).await;
    assert_eq!(result["verified"], true, "{result}");
    assert_eq!(
        result["credentials"][0]["claims"][NS],
        json!({"age_over_18": true})
    );

    // and to credo's verifier (@animo-id/mdoc checks our DeviceResponse and SessionTranscript)
    let req =
        party.ask(&json!({"cmd": "request", "format": "mso_mdoc", "claims": ["family_name"]}));
    assert_eq!(req["ok"], true, "{req}");
    let body = json!({"request": req["request_uri"]});
    json_of(u.send(&s, M::POST, "/exchange/present", Some(body)).await).await;
    let result = party.ask(&json!({"cmd": "result", "id": req["id"]}));
    assert_eq!(result["verified"], true, "{result}");
    assert_eq!(
        result["claims"][NS],
        json!({"family_name": "Mustermann"}),
        "{result}"
    );
    party.tell(&json!({"cmd": "shutdown"}));
    s.stop();
}
