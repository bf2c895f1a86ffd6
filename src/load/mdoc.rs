//! `idstack load --scenario mdoc`: one flow = an ISO 18013-5 mDL issued over OpenID4VCI (the
//! device key is the user's P-256 key) and presented over OpenID4VP (DCQL `mso_mdoc`, a
//! DeviceResponse disclosing two elements, device-signed over the SessionTranscript), the result
//! polled. Against a sandbox issuer (its document signer's country is "UT").

use serde_json::{json, Value};

use super::{present_flow, receive, timed, unix_now, Ctx};
use crate::client::oid4vp;
use crate::crypto::SigningKey;
use crate::dcql::CredentialView;

const CONFIG: &str = "org.iso.18013.5.1.mDL";
const DOCTYPE: &str = "org.iso.18013.5.1.mDL";
const NAMESPACE: &str = "org.iso.18013.5.1";

/// The mDL's elements (every mandatory one).
fn claims() -> Value {
    json!({
        "family_name": "Tester", "given_name": "Load", "birth_date": "1990-01-01",
        "issue_date": "2026-01-01", "expiry_date": "2031-01-01", "issuing_country": "UT",
        "issuing_authority": "idstack load", "document_number": "L-1",
        "driving_privileges": [{"vehicle_category_code": "B"}],
        "un_distinguishing_sign": "UT", "age_over_18": true,
    })
}

pub(super) async fn flow(ctx: &Ctx, key: &SigningKey) -> Option<()> {
    let offer = timed(
        &ctx.stats,
        "admin: create offer",
        ctx.offer_with(CONFIG, claims()),
    )
    .await?;
    let got = receive(ctx, key, CONFIG, &offer, unix_now()).await?;
    let raw = got.credential.as_str()?.to_string();
    let query = json!({"dcql_query": {"credentials": [{"id": "mdl", "format": "mso_mdoc",
        "meta": {"doctype_value": DOCTYPE},
        "claims": [{"path": [NAMESPACE, "family_name"]}, {"path": [NAMESPACE, "age_over_18"]}]}]}});
    let held = oid4vp::Held {
        id: "mdl".into(),
        format: "mso_mdoc".into(),
        raw,
        view: CredentialView {
            format: "mso_mdoc".into(),
            root: json!({}),
            vct: None,
            doctype: Some(DOCTYPE.into()),
            types: vec![],
        },
        key,
        kid: None,
    };
    let disclose = [
        format!("{NAMESPACE}/family_name"),
        format!("{NAMESPACE}/age_over_18"),
    ];
    present_flow(ctx, query, "mdl", &held, &disclose).await
}
