//! `mso_mdoc` (ISO 18013-5): DeviceResponses checked by [`crate::crypto::mdoc`].

use serde_json::{Map, Value};

use super::policy::{Outcome, Trust};
use super::status::{mdoc_status, status_not_checked};
use super::{Checked, Ctx};
use crate::roles::verifier::model::PresentedCredential;

/// mso_mdoc: a base64url DeviceResponse. Its documents are checked by [`crate::crypto::mdoc`]
/// (document signer chain to `anchors`, issuerAuth, digests, validity, device signature over this
/// request's SessionTranscript); a failure is reported under the policy it breaks. An mdoc's
/// issuer is named by the key identifiers of the authorities over its document signer
/// ([`check_mdoc_issuer`]).
pub async fn mdoc(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    presentation: &str,
) -> Vec<Checked> {
    let Some(transcript) = ctx.mdoc_transcript else {
        out.fail(
            "nonce_audience",
            format!("{query_id}: an mdoc is only verified inside an OpenID4VP request"),
        );
        return Vec::new();
    };
    let bytes = match crate::crypto::b64url_decode(presentation) {
        Ok(b) => b,
        Err(_) => {
            out.fail(
                "signature",
                format!("{query_id}: the DeviceResponse is not base64url"),
            );
            return Vec::new();
        }
    };
    let docs = match crate::crypto::mdoc::verify::device_response(
        &bytes,
        transcript,
        ctx.mdoc_anchors,
        ctx.now,
    ) {
        Ok(d) => d,
        Err(e) => {
            out.fail(policy_broken(&e), format!("{query_id}: {} ({e})", e.code()));
            return Vec::new();
        }
    };
    for p in [
        "signature",
        "disclosure_integrity",
        "validity",
        "holder_binding",
        "nonce_audience",
    ] {
        out.pass(p);
    }
    let mut checked = Vec::new();
    for d in docs {
        let trusted = check_mdoc_issuer(out, ctx, query_id, &d);
        let issuer = trusted
            .clone()
            .unwrap_or_else(|| aki_entry(&d.anchor_key_id));
        if trusted.is_none() && ctx.issuer_allowlist && matches!(d.status, Ok(Some(_))) {
            status_not_checked(out, query_id);
            checked.push(presented(out, query_id, issuer, d));
            continue;
        }
        match &d.status {
            Ok(Some((idx, uri))) => mdoc_status(ctx, out, query_id, *idx, uri, &d).await,
            Ok(None) if ctx.require_status => out.fail(
                "status",
                format!("{query_id}: the mdoc carries no status reference"),
            ),
            Ok(None) => out.pass("status"),
            Err(why) => out.fail("status", format!("{query_id}: {why}")),
        }
        checked.push(presented(out, query_id, issuer, d));
    }
    checked
}

/// The `issuer_allowlist` policy for an mdoc, whose chain already ends at an anchor of this
/// node: with `verifier.trust = "any"` that is enough; otherwise the verifier's trusted issuers
/// must name one of the authorities over its document signer as `aki:<base64url key identifier>`
/// (its IACA's, in sandbox mode listed for a verifier with no list of its own). The reason names
/// the identifiers, so an operator can list the IACA they mean to trust.
///
/// Returns the trusted issuer the result names: the entry that matched, or under `trust = "any"`
/// the anchor's key identifier; `None` when no entry matched. Never the document signer's
/// subject, which is whatever the signer wrote: under `trust = "any"`, or with two trusted IACAs,
/// a signer could name another authority there.
fn check_mdoc_issuer(
    out: &mut Outcome,
    ctx: &Ctx<'_>,
    query_id: &str,
    d: &crate::crypto::mdoc::verify::Verified,
) -> Option<String> {
    let Trust::Only(list) = ctx.trust else {
        out.pass("issuer_allowlist");
        return Some(aki_entry(&d.anchor_key_id));
    };
    let ids: Vec<String> = d.authorities.iter().map(|k| aki_entry(k)).collect();
    if let Some(entry) = list.iter().find(|t| ids.contains(t)) {
        out.pass("issuer_allowlist");
        return Some(entry.clone());
    }
    let named = if ids.is_empty() {
        "its chain names no key identifier".to_string()
    } else {
        format!(
            "trust it by listing one of {} in trusted_issuers",
            ids.join(", ")
        )
    };
    out.fail(
        "issuer_allowlist",
        format!(
            "{query_id}: mdoc issuer {} is not trusted by this verifier ({named})",
            clip(&d.signer)
        ),
    );
    None
}

/// How `trusted_issuers` names an X.509 authority: `aki:` and its key identifier, base64url.
pub fn aki_entry(key_id: &[u8]) -> String {
    format!("aki:{}", crate::crypto::b64url(key_id))
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

/// The policy an mdoc verification failure breaks.
fn policy_broken(e: &crate::crypto::mdoc::MdocError) -> &'static str {
    use crate::crypto::mdoc::MdocError;
    match e {
        MdocError::Digest(_) => "disclosure_integrity",
        MdocError::Validity(_) => "validity",
        MdocError::DeviceAuth(_) => "holder_binding",
        MdocError::Untrusted(_) | MdocError::Country(_) => "issuer_allowlist",
        _ => "signature",
    }
}

/// A verified document as the session result shows it (claims by namespace, plus `doctype`;
/// `issuer` the `aki:` identifier trust was decided on, `issuer_name` the signer's own subject)
/// and as the query matcher sees it.
fn presented(
    out: &mut Outcome,
    query_id: &str,
    issuer: String,
    d: crate::crypto::mdoc::verify::Verified,
) -> Checked {
    let mut claims = Map::new();
    let mut root = Map::new();
    for (ns, elements) in &d.claims {
        claims.insert(ns.clone(), Value::Object(elements.clone()));
        root.insert(ns.clone(), Value::Object(elements.clone()));
    }
    claims.insert("doctype".into(), Value::String(d.doc_type.clone()));
    out.credentials.push(PresentedCredential {
        query_id: query_id.to_string(),
        format: "mso_mdoc".into(),
        issuer: Some(issuer.clone()),
        issuer_name: Some(clip(&d.signer)),
        claims,
    });
    Checked {
        query_id: query_id.to_string(),
        format: "mso_mdoc".into(),
        root: Value::Object(root),
        vct: None,
        types: Vec::new(),
        doctype: Some(d.doc_type),
        issuer: Some(issuer),
        authorities: d.authorities,
        // issuerAuth and deviceSignature are ES256 or refused
        issuer_alg: Some("ES256".into()),
        holder_alg: Some("ES256".into()),
    }
}
