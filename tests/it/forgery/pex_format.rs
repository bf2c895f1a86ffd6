//! presentation_definition: the input descriptor decides what answers it, not the holder — its
//! `format`, not the holder's descriptor_map (attacker review t_pex_format), and every keyword of
//! its fields' `filter`s (attacker review t_pex_filter).

use super::*;

/// Opens a presentation_definition session for `pd` and answers its first input descriptor with
/// `present(request)`, which the holder's descriptor_map calls `format`; returns (HTTP status of
/// the response, session result).
async fn pex_respond(
    s: &Server,
    pd: Value,
    format: &str,
    present: impl Fn(&Request) -> String,
) -> (u16, Value) {
    let id = pd["input_descriptors"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let req = open(s, "default", json!({ "presentation_definition": pd })).await;
    let submission = json!({"id": "s", "definition_id": pd["id"],
        "descriptor_map": [{"id": id, "format": format, "path": "$"}]});
    let vp_token = present(&req);
    let status = client()
        .post(&req.response_uri)
        .form(&[
            ("vp_token", vp_token.as_str()),
            ("presentation_submission", submission.to_string().as_str()),
            ("state", req.state.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(status < 500, "a presentation caused a {status}");
    let path = format!("/api/verifiers/default/sessions/{}", req.id);
    let result: Value = s.admin().get(&path).await;
    (status, result)
}

/// A presentation_definition with one input descriptor `id` whose only field is `field`.
fn pd_with(id: &str, field: Value) -> Value {
    json!({"id": "pd", "input_descriptors": [{"id": id, "constraints": {"fields": [field]}}]})
}

/// Asserts a genuine credential that does not satisfy the definition is refused by query_match.
fn not_satisfied(status: u16, r: &Value, why: &str) {
    assert_eq!(status, 400, "{why}: accepted: {r}");
    assert_ne!(r["verified"], true, "{why}: {r}");
    let (passed, reason) = policy(r, "query_match");
    assert!(!passed, "{why}: query_match passed: {r}");
    assert!(reason.contains("not satisfied"), "{why}: {reason}");
}

/// An input descriptor for an mDL (id = the doc type, format mso_mdoc) is not answered by a
/// genuine SD-JWT VC of the trusted issuer that the holder's descriptor_map calls dc+sd-jwt
/// (query_match); a descriptor asking for dc+sd-jwt is.
///
/// t_pex_filter: a field's filter is enforced, every keyword of it: a genuine credential of the
/// wrong type (`contains`), issued too early (`minimum`) or of someone too young (`format` date
/// with `formatMaximum`) is not verified, while the same filters answered by a credential that
/// satisfies them are; a filter keyword the verifier does not evaluate is refused with 422 at
/// session creation instead of being ignored.
#[tokio::test]
async fn pex_an_mdl_descriptor_is_not_answered_by_an_sd_jwt() {
    let s = Server::start().await;
    let (holder, cred) = full_flow(
        &s,
        "IdentityCredential_dc_sd_jwt",
        json!({"given_name": "Erika", "family_name": "Mustermann", "birthdate": "2012-03-04"}),
    )
    .await;
    let parsed = sdjwt::parse(cred["credentials"][0]["credential"].as_str().unwrap()).unwrap();
    let sd = |req: &Request| sd_present(&holder, &parsed.jwt, &parsed.disclosures, req);
    let answer = |id: &str, format: &str| {
        let pd = json!({"id": "pd", "input_descriptors": [{
            "id": id, "format": {format: {}},
            "constraints": {"limit_disclosure": "required"}}]});
        pex_respond(&s, pd, "dc+sd-jwt", sd)
    };
    let (status, r) = answer("org.iso.18013.5.1.mDL", "mso_mdoc").await;
    assert_eq!(status, 400, "accepted: {r}");
    assert_ne!(r["verified"], true, "{r}");
    let (passed, reason) = policy(&r, "query_match");
    assert!(
        !passed && reason.contains("format dc+sd-jwt does not answer"),
        "{reason}"
    );
    assert!(r["credentials"].as_array().is_none_or(Vec::is_empty), "{r}");
    let (status, r) = answer("pid", "dc+sd-jwt").await;
    assert_eq!((status, &r["verified"]), (200, &json!(true)), "{r}");

    // t_pex_filter, SD-JWT: `minimum` (issued in 2100 or later) and an age check on the
    // birthdate (born on or before 2007-06-01) are not met by this genuine credential.
    for (why, field) in [
        (
            "minimum",
            json!({"path": ["$.iat"], "filter": {"type": "number", "minimum": 4_102_444_800u64}}),
        ),
        (
            "formatMaximum",
            json!({"path": ["$.birthdate"], "filter": {"type": "string", "format": "date", "formatMaximum": "2007-06-01"}}),
        ),
    ] {
        let (status, r) = pex_respond(&s, pd_with("pid", field), "dc+sd-jwt", sd).await;
        not_satisfied(status, &r, why);
    }
    let met = json!({"path": ["$.vc.birthdate", "$.birthdate"], "filter": {"type": "string", "format": "date", "formatMinimum": "2010-01-01", "pattern": "^2012-"}});
    let (status, r) = pex_respond(&s, pd_with("pid", met), "dc+sd-jwt", sd).await;
    assert_eq!((status, &r["verified"]), (200, &json!(true)), "{r}");

    // t_pex_filter, jwt_vc_json: a relying party asking for a UniversityDegreeCredential gets
    // no verified result from a genuine IdentityCredential.
    let offer = create_offer(
        &s,
        "default",
        json!({"credential_configuration_ids": ["IdentityCredential_jwt_vc_json"], "claims": {"given_name": "Erika", "birthdate": "2012-03-04"}}),
    )
    .await;
    let code = crate::holder::pre_auth_code(&offer);
    let (st, tok) = crate::holder::token(&s, "default", &code, None).await;
    assert_eq!(st, 200, "{tok}");
    let did_holder = SigningKey::generate(KeyType::P256);
    let n = crate::holder::nonce(&s, "default").await;
    let aud = s.url("/issuers/default");
    let body = json!({"credential_configuration_id": "IdentityCredential_jwt_vc_json",
        "proofs": {"jwt": [crate::holder::proof(&did_holder, &aud, &n, true)]}});
    let (st, jwt_cred) =
        crate::holder::credential(&s, "default", tok["access_token"].as_str().unwrap(), body).await;
    assert_eq!(st, 200, "{jwt_cred}");
    let vc = jwt_cred["credentials"][0]["credential"].as_str().unwrap();
    let vp = |req: &Request| jwt_vp(&did_holder, vc, req);
    let degree = |name: &str| json!({"path": ["$.type"], "filter": {"type": "array", "contains": {"const": name}}});
    let pd = pd_with("degree", degree("UniversityDegreeCredential"));
    let (status, r) = pex_respond(&s, pd, "jwt_vp_json", vp).await;
    not_satisfied(status, &r, "contains");
    let pd = pd_with("idc", degree("IdentityCredential"));
    let (status, r) = pex_respond(&s, pd, "jwt_vp_json", vp).await;
    assert_eq!((status, &r["verified"]), (200, &json!(true)), "{r}");

    // Enforced, never ignored: a keyword the verifier does not evaluate, a pattern it cannot
    // compile and a filter that is not a schema object are refused when the session is created.
    for (filter, named) in [
        (json!({"type": "array", "maxContains": 1}), "maxContains"),
        (json!({"type": "string", "pattern": "(?<=a)b"}), "pattern"),
        (
            json!({"not": {"not": {"dependentSchemas": {}}}}),
            "dependentSchemas",
        ),
        (json!("string"), "filter"),
    ] {
        let pd = pd_with("pid", json!({"path": ["$.given_name"], "filter": filter}));
        let r = s
            .admin()
            .post_resp(
                "/api/verifiers/default/sessions",
                &json!({ "presentation_definition": pd }),
            )
            .await;
        let problem = crate::common::expect_problem(r, 422, "validation_failed").await;
        assert!(
            problem["detail"].as_str().unwrap().contains(named),
            "{named}: {problem}"
        );
    }
    // Submission requirements (n of a group) would be judged stricter than asked: refused.
    let mut pd = pd_with("pid", json!({"path": ["$.given_name"]}));
    pd["submission_requirements"] = json!([{"rule": "pick", "count": 1, "from": "A"}]);
    let r = s
        .admin()
        .post_resp(
            "/api/verifiers/default/sessions",
            &json!({ "presentation_definition": pd }),
        )
        .await;
    let problem = crate::common::expect_problem(r, 422, "validation_failed").await;
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("submission_requirements"));
    s.stop();
}
