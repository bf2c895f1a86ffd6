//! Documents, not presentations, are what a credential query counts (attacker review
//! t_twodocs): one DeviceResponse carrying two people's mDLs.

use super::*;

/// The `documents` array of a decoded DeviceResponse.
fn documents(resp: &mut ciborium::Value) -> &mut Vec<ciborium::Value> {
    let ciborium::Value::Map(entries) = resp else {
        panic!("a DeviceResponse is a map")
    };
    match entries
        .iter_mut()
        .find(|(k, _)| *k == ciborium::Value::Text("documents".into()))
    {
        Some((_, ciborium::Value::Array(docs))) => docs,
        _ => panic!("no documents"),
    }
}

/// Two mDLs of two holders, each genuine and device-signed for the session, in one
/// DeviceResponse: refused (query_match) by a query without `multiple`, accepted as two
/// credentials by one with `multiple: true`.
#[tokio::test]
async fn mdoc_two_documents_answer_a_single_credential_query_only_with_multiple() {
    use idstack::crypto::mdoc::{decode, encode};
    let root = x509_root("Test IACA");
    let (s, _dir) = anchored_server(&root).await;
    let ds = mdoc_ds(&root);
    let mdl = "org.iso.18013.5.1.mDL";
    let holders = [
        SigningKey::generate(KeyType::P256),
        SigningKey::generate(KeyType::P256),
    ];
    let query = |multiple: bool| {
        json!({"dcql_query": {"credentials": [{"id": "mdl", "format": "mso_mdoc",
            "multiple": multiple, "meta": {"doctype_value": mdl},
            "claims": [{"path": ["org.iso.18013.5.1", "family_name"]}]}]}})
    };
    let both = |req: &Request| {
        let mut responses = holders.iter().map(|device| {
            let signed = mdoc_issue(&ds, device, mdl, now() + 3600);
            let b64 = mdoc_present(device, &signed, mdl, req);
            decode(&idstack::crypto::b64url_decode(&b64).unwrap()).unwrap()
        });
        let mut first = responses.next().unwrap();
        let mut second = responses.next().unwrap();
        documents(&mut first).append(documents(&mut second));
        b64url(encode(&first))
    };
    let req = open(&s, "default", query(false)).await;
    let pres = json!(both(&req));
    refused(&s, &req, "mdl", pres, "query_match", "2 credentials").await;

    let req = open(&s, "default", query(true)).await;
    let (status, r) = respond(&s, &req, "mdl", json!(both(&req))).await;
    assert_eq!((status, &r["verified"]), (200, &json!(true)), "{r}");
    assert_eq!(r["credentials"].as_array().unwrap().len(), 2, "{r}");
    s.stop();
}
