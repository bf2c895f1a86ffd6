//! `ldp_vc`: W3C credentials and presentations secured with Data Integrity proofs, checked by
//! [`crate::crypto::di`] (bounded canonicalization), then bound to their issuer.

use serde_json::Value;

use super::policy::{check_issuer, check_time, over_limit, Outcome};
use super::status::{status_checked, status_not_checked, w3c_status};
use super::{subject_is_signer, w3c_checked, Checked, Ctx};
use crate::crypto::binding;

/// One Data Integrity credential already verified by [`crate::crypto::di`] (`vc` without its
/// proof; `method` the proof's verification method): issuer binding, validity, allow-list, status.
async fn ld_credential(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    vc: Value,
    method: &str,
) -> Option<Checked> {
    let issuer = match binding::ld_issuer_key(&vc, method, ctx.http).await {
        Ok(k) => k,
        Err(e) => {
            out.fail("signature", format!("{query_id}: {e} [{}]", e.code()));
            return None;
        }
    };
    if let Some(why) = super::not_a_presentable_credential(ctx, &vc) {
        out.fail("signature", format!("{query_id}: {why}"));
        return None;
    }
    out.pass("signature");
    out.pass("disclosure_integrity");
    check_time(out, &Value::Null, &vc, ctx.now, query_id);
    let trusted = check_issuer(out, ctx, &issuer.issuer);
    if status_checked(ctx, trusted, &vc["credentialStatus"]) {
        w3c_status(ctx, out, query_id, &vc["credentialStatus"], &issuer).await;
    } else {
        status_not_checked(out, query_id);
    }
    Some(w3c_checked(
        out,
        query_id,
        "ldp_vc",
        issuer.issuer,
        None,
        vc,
    ))
}

/// Verifies one Data Integrity credential object end to end.
pub async fn ldp_credential(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    vc: &Value,
) -> Option<Checked> {
    // The issuer's proof (of one, or of a proof set) is the one the binding rule checks.
    let method = crate::crypto::di::issuer_proof_method(vc).unwrap_or_default();
    match crate::crypto::di::verify_credential_bounded(vc.clone(), ctx.now).await {
        Ok(plain) => ld_credential(ctx, out, query_id, plain, &method).await,
        Err(e) => {
            over_limit(out, &e);
            out.fail("signature", format!("{query_id}: credential proof: {e}"));
            None
        }
    }
}

/// ldp_vc: a Data Integrity presentation (challenge = nonce, domain = client_id) of DI credentials.
pub async fn ldp_vp(ctx: &Ctx<'_>, out: &mut Outcome, query_id: &str, vp: Value) -> Vec<Checked> {
    if !vp.is_object() {
        out.fail(
            "signature",
            format!("{query_id}: an ldp_vc presentation must be a JSON object"),
        );
        return Vec::new();
    }
    // No audience, or part of it not given: that part is not checked, only the signature.
    let nonce = ctx.audience.and_then(|a| a.nonce).map(str::to_string);
    let client_id = ctx.audience.and_then(|a| a.client_id).map(str::to_string);
    let holder =
        match crate::crypto::di::verify_presentation_bounded(vp.clone(), nonce, client_id, ctx.now)
            .await
        {
            Ok((h, _)) => {
                out.pass("signature");
                if ctx.audience.is_some() {
                    out.pass("nonce_audience");
                }
                h
            }
            Err(e) => {
                over_limit(out, &e);
                let e = e.to_string();
                if e.contains("challenge") || e.contains("domain") {
                    out.fail("nonce_audience", format!("{query_id}: {e}"));
                } else {
                    out.fail("signature", format!("{query_id}: presentation proof: {e}"));
                }
                return Vec::new();
            }
        };
    let creds: Vec<Value> = match &vp["verifiableCredential"] {
        Value::Array(a) => a.clone(),
        Value::Object(_) => vec![vp["verifiableCredential"].clone()],
        _ => Vec::new(),
    };
    if super::too_many_in_one(out, query_id, creds.len()) {
        return Vec::new();
    }
    if creds.is_empty() {
        out.fail(
            "query_match",
            format!("{query_id}: the presentation carries no credential"),
        );
    }
    let mut checked = Vec::new();
    for c in creds {
        let Some(vc) = ldp_credential(ctx, out, query_id, &c).await else {
            continue;
        };
        let bound = vc.root["credentialSubject"]["id"].as_str() == Some(holder.as_str());
        subject_is_signer(out, query_id, bound);
        checked.push(vc);
    }
    checked
}
