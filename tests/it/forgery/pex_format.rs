//! presentation_definition: the input descriptor's `format` decides what answers it, not the
//! holder's descriptor_map (attacker review t_pex_format).

use super::*;

/// An input descriptor for an mDL (id = the doc type, format mso_mdoc) is not answered by a
/// genuine SD-JWT VC of the trusted issuer that the holder's descriptor_map calls dc+sd-jwt
/// (query_match); a descriptor asking for dc+sd-jwt is.
#[tokio::test]
async fn pex_an_mdl_descriptor_is_not_answered_by_an_sd_jwt() {
    let s = Server::start().await;
    let (holder, cred) = full_flow(
        &s,
        "IdentityCredential_dc_sd_jwt",
        json!({"given_name": "Erika", "family_name": "Mustermann"}),
    )
    .await;
    let parsed = sdjwt::parse(cred["credentials"][0]["credential"].as_str().unwrap()).unwrap();
    let answer = |id: &str, format: &str| {
        let s = &s;
        let (id, format) = (id.to_string(), format.to_string());
        let (holder, parsed) = (&holder, &parsed);
        async move {
            let pd = json!({"presentation_definition": {"id": "pd", "input_descriptors": [{
                "id": id, "format": {format: {}},
                "constraints": {"limit_disclosure": "required"}}]}});
            let req = open(s, "default", pd).await;
            let submission = json!({"id": "s", "definition_id": "pd",
                "descriptor_map": [{"id": id, "format": "dc+sd-jwt", "path": "$"}]});
            let vp_token = sd_present(holder, &parsed.jwt, &parsed.disclosures, &req);
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
            let path = format!("/api/verifiers/default/sessions/{}", req.id);
            let result: Value = s.admin().get(&path).await;
            (status, result)
        }
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
    s.stop();
}
