//! Whom an mdoc's issuer is trusted by, end to end (attacker review): a verifier tenant trusts an
//! mDL only when its trusted_issuers name an authority over the document signer (`aki:…`), not
//! because its IACA is one of the node's anchors; DCQL `trusted_authorities` is enforced for
//! mso_mdoc and refused where it cannot be; the result names the matched authority as issuer.

use super::*;

#[tokio::test]
async fn an_mdl_is_trusted_only_by_verifiers_that_name_its_iaca() {
    let root = x509_root("Some other IACA the node trusts");
    let (s, _dir) = anchored_server(&root).await;
    for (id, trusted) in [
        ("dmv-only", json!(["did:web:dmv.example"])),
        ("iaca", json!([iaca_entry(&root)])),
    ] {
        let r = s
            .admin()
            .post_resp(
                "/api/verifiers",
                &json!({"id": id, "signing_key_type": "P-256", "trusted_issuers": trusted}),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    let device = SigningKey::generate(KeyType::P256);
    let mdl = "org.iso.18013.5.1.mDL";
    let signed = mdoc_issue(&mdoc_ds(&root), &device, mdl, now() + 3600);
    let query = |extra: Value| {
        let mut q = json!({"id": "mdl", "format": "mso_mdoc", "meta": {"doctype_value": mdl},
            "claims": [{"path": ["org.iso.18013.5.1", "age_over_18"]}]});
        for (k, v) in extra.as_object().unwrap() {
            q[k] = v.clone();
        }
        json!({"dcql_query": {"credentials": [q]}})
    };
    let answer = |verifier: &'static str, q: Value| {
        let (s, device, signed) = (&s, &device, &signed);
        async move {
            let req = open(s, verifier, q).await;
            let pres = json!(mdoc_present(device, signed, mdl, &req));
            respond(s, &req, "mdl", pres).await
        }
    };
    let (status, r) = answer("dmv-only", query(json!({}))).await;
    assert_ne!((status, &r["verified"]), (200, &json!(true)), "{r}");
    let (status, r) = answer("iaca", query(json!({}))).await;
    assert_eq!((status, &r["verified"]), (200, &json!(true)), "{r}");
    // the result names the issuer trust was decided on, not what the document signer calls
    // itself (a signer under a trusted IACA could write another authority's name there)
    let presented = &r["credentials"][0];
    assert_eq!(presented["issuer"], json!(iaca_entry(&root)), "{r}");
    assert!(
        presented["issuer_name"]
            .as_str()
            .is_some_and(|n| n.contains("C=UT")),
        "{r}"
    );
    // trusted_authorities: another IACA's key identifier is not answered by this mDL
    let elsewhere = json!({"trusted_authorities": [{"type": "aki", "values": ["s9tIpPmhxdiuNkHMEWNpYim8S8Y"]}]});
    let (status, r) = answer("iaca", query(elsewhere)).await;
    assert_ne!((status, &r["verified"]), (200, &json!(true)), "{r}");
    let ours = iaca_entry(&root).trim_start_matches("aki:").to_string();
    let here = json!({"trusted_authorities": [{"type": "aki", "values": [ours]}]});
    let (status, r) = answer("iaca", query(here)).await;
    assert_eq!((status, &r["verified"]), (200, &json!(true)), "{r}");
    // what cannot be enforced is refused at session creation
    for (bad, why) in [
        (
            json!({"trusted_authorities": [{"type": "etsi_tl", "values": ["https://tl.example"]}]}),
            "etsi_tl",
        ),
        (json!({"trusted_authorities": []}), "non-empty"),
    ] {
        let r = s
            .admin()
            .post_resp("/api/verifiers/iaca/sessions", &query(bad))
            .await;
        assert_eq!(r.status(), 422);
        assert!(r.text().await.unwrap().contains(why));
    }
    let sd = json!({"dcql_query": {"credentials": [{"id": "pid", "format": "dc+sd-jwt", "meta": {},
        "trusted_authorities": [{"type": "aki", "values": ["s9tIpPmhxdiuNkHMEWNpYim8S8Y"]}]}]}});
    let r = s
        .admin()
        .post_resp("/api/verifiers/iaca/sessions", &sd)
        .await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("mso_mdoc queries only"));
    s.stop();
}
