//! `jwt_vc_json`: W3C credentials as JWTs (VC-JWT 1.1 `vc` claim, or VC-JOSE `vc+jwt`) and the
//! holder-signed JWT presentations carrying them.

use serde_json::Value;

use super::policy::{check_issuer, check_time, Outcome};
use super::status::{status_checked, status_not_checked, w3c_status};
use super::{issuer_jwt, subject_is_signer, types_of, w3c_checked, Checked, Ctx};
use crate::crypto::binding::Issuers;
use crate::crypto::{did, jws, VerifyingKey};

/// The credential object of a JWT-secured W3C VC: the `vc` claim (VC-JWT 1.1) or the payload
/// itself (VC-JOSE `vc+jwt`, VCDM 2.0).
fn jwt_vc_object(payload: &Value) -> Value {
    if payload["vc"].is_object() {
        payload["vc"].clone()
    } else {
        payload.clone()
    }
}

/// One issuer-signed W3C JWT credential: signature (bound to its issuer), validity, issuer
/// allow-list, status. Returns it and its subject DID (for holder binding), or `None` when its
/// signature cannot be trusted.
pub async fn jwt_credential(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    vc: &str,
) -> Option<(Checked, Option<String>)> {
    if let Some(why) = not_a_jwt_credential(vc) {
        out.fail("signature", format!("{query_id}: {why}"));
        return None;
    }
    let (issuer, p) = issuer_jwt(ctx, out, query_id, vc, Issuers::Did).await?;
    let vc_obj = jwt_vc_object(&p);
    if let Some(why) = super::not_a_presentable_credential(ctx, &vc_obj).or_else(|| {
        // a Token Status List token has no `type` to tell it by
        ctx.audience
            .as_ref()
            .and(p.get("status_list"))
            .map(|_| "a status list is not a credential".into())
    }) {
        out.fail("signature", format!("{query_id}: {why}"));
        return None;
    }
    check_time(out, &p, &vc_obj, ctx.now, query_id);
    let trusted = check_issuer(out, ctx, &issuer.issuer);
    if status_checked(ctx, trusted, &vc_obj["credentialStatus"]) {
        w3c_status(ctx, out, query_id, &vc_obj["credentialStatus"], &issuer).await;
    } else {
        status_not_checked(out, query_id);
    }
    out.pass("disclosure_integrity");
    let subject = vc_obj["credentialSubject"]["id"]
        .as_str()
        .or(p["sub"].as_str())
        .map(str::to_string);
    Some((
        w3c_checked(
            out,
            query_id,
            "jwt_vc_json",
            issuer.issuer,
            Some(issuer.key.alg().to_string()),
            vc_obj,
        ),
        subject,
    ))
}

/// Why a JWT is not a JWT-secured W3C credential by its own header and payload: its `typ` (absent,
/// `JWT`, `JOSE`, `vc+jwt`, or the drafts' `vc+ld+jwt` / `vc+ld+json+jwt`, bare or as
/// `application/…`) or the marks of an SD-JWT's
/// issuer JWT (`_sd`, `_sd_alg`). Another JWT its issuer signed — an SD-JWT VC stripped of its
/// key binding, a status list — would otherwise answer a `jwt_vc_json` query that waives holder
/// binding (attacker review; SD-JWT checks its own `typ` the same way).
fn not_a_jwt_credential(jwt: &str) -> Option<String> {
    let (header, payload, _, _) = jws::decode_unverified(jwt).ok()?;
    if let Some(typ) = header.get("typ") {
        let t = typ.as_str().unwrap_or_default().to_ascii_lowercase();
        let t = t.strip_prefix("application/").unwrap_or(&t);
        if !matches!(
            t,
            "jwt" | "jose" | "vc+jwt" | "vc+ld+jwt" | "vc+ld+json+jwt"
        ) {
            return Some(format!(
                "typ {} is not that of a JWT credential (vc+jwt)",
                crate::crypto::mdoc::clip(&typ.to_string())
            ));
        }
    }
    (payload.get("_sd").is_some() || payload.get("_sd_alg").is_some())
        .then(|| "an SD-JWT's issuer JWT is not a jwt_vc_json credential".to_string())
}

/// The `nonce_audience` policy of a JWT presentation.
fn jwt_audience(ctx: &Ctx<'_>, out: &mut Outcome, query_id: &str, payload: &Value) {
    let Some(aud) = ctx.audience else {
        return;
    };
    let aud_ok = aud.aud_ok(&payload["aud"]);
    if !aud.nonce_ok(&payload["nonce"]) {
        out.fail(
            "nonce_audience",
            format!("{query_id}: presentation nonce does not match the session"),
        );
    } else if !aud_ok {
        out.fail(
            "nonce_audience",
            format!(
                "{query_id}: presentation aud is not {}",
                aud.client_id.unwrap_or_default()
            ),
        );
    } else {
        out.pass("nonce_audience");
    }
}

/// jwt_vc_json: a JWT VP (signed by the holder) carrying JWT VCs; a bare credential only when
/// the query waives holder binding (`holder_binding` false).
pub async fn jwt_vp(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    vp: &str,
    holder_binding: bool,
) -> Vec<Checked> {
    let (header, payload) = match jws::decode_unverified(vp) {
        Ok((h, p, _, _)) => (h, p),
        Err(e) => {
            out.fail(
                "signature",
                format!("{query_id}: presentation is not a JWT: {e}"),
            );
            return Vec::new();
        }
    };
    // VCDM 1.1 JWT VP (`vp` claim) or VC-JOSE-COSE `vp+jwt` (the payload is the presentation)
    let is_vp = payload.get("vp").is_some()
        || header["typ"] == "vp+jwt"
        || types_of(&payload)
            .iter()
            .any(|t| t == "VerifiablePresentation");
    if !is_vp && !holder_binding {
        let Some((c, _)) = jwt_credential(ctx, out, query_id, vp).await else {
            return Vec::new();
        };
        out.pass("holder_binding");
        if ctx.audience.is_some() {
            out.pass("nonce_audience");
        }
        return vec![c];
    }
    if !is_vp {
        out.fail("holder_binding", format!("{query_id}: a bare credential was sent; a verifiable presentation signed by the holder is required"));
        return Vec::new();
    }
    let holder_did = match holder_signature(ctx.http, vp, &header, &payload).await {
        Ok(did) => did,
        Err(e) => {
            out.fail("signature", format!("{query_id}: {e}"));
            return Vec::new();
        }
    };
    out.pass("signature");
    jwt_audience(ctx, out, query_id, &payload);
    check_time(
        out,
        &payload,
        &Value::Null,
        ctx.now,
        &format!("{query_id} presentation"),
    );
    let vcs = match presented_jwts(&payload) {
        Ok(vcs) => vcs,
        Err(e) => {
            out.fail("signature", format!("{query_id}: {e}"));
            return Vec::new();
        }
    };
    if super::too_many_in_one(out, query_id, vcs.len()) {
        return Vec::new();
    }
    if vcs.is_empty() {
        out.fail(
            "query_match",
            format!("{query_id}: the presentation carries no JWT credential"),
        );
    }
    let mut checked = Vec::new();
    for vc in vcs {
        let Some((c, subject)) = jwt_credential(ctx, out, query_id, &vc).await else {
            continue;
        };
        subject_is_signer(out, query_id, subject.is_some() && holder_did == subject);
        // verified with the holder's key, whose algorithm it must name
        let holder_alg = header["alg"].as_str().map(str::to_string);
        checked.push(Checked { holder_alg, ..c });
    }
    checked
}

/// The holder's signature over a JWT presentation ([`header_holder`] names the key); returns the
/// holder's DID.
async fn holder_signature(
    http: &reqwest::Client,
    vp: &str,
    header: &Value,
    payload: &Value,
) -> Result<Option<String>, String> {
    let (key, did) = header_holder(header, payload, http)
        .await
        .map_err(|e| format!("presentation key: {e}"))?;
    jws::verify(vp, &key).map_err(|e| format!("presentation signature: {e}"))?;
    Ok(did)
}

/// The credentials a JWT presentation carries: the VCDM 1.1 `vp` claim's, or those of a VC-JOSE
/// `vp+jwt` whose payload is the presentation; each a compact JWT or a VC-JOSE-COSE envelope of
/// one. Anything else in the list — an unsigned credential object, an envelope that does not
/// read — is an error, never skipped: a caller reading the presentation it sent would take every
/// credential in it as verified.
fn presented_jwts(payload: &Value) -> Result<Vec<String>, String> {
    let vp_obj = if payload["vp"].is_object() {
        &payload["vp"]
    } else {
        payload
    };
    let jwt_of = |(i, v): (usize, &Value)| match v {
        Value::String(s) => Ok(s.clone()),
        other => match crate::crypto::envelope::enveloped_vc_jwt(other) {
            Some(Ok(jwt)) => Ok(jwt.to_string()),
            Some(Err(e)) => Err(format!("verifiableCredential[{i}]: {e}")),
            None => Err(format!(
                "verifiableCredential[{i}] is neither a JWT credential nor an enveloped one"
            )),
        },
    };
    match &vp_obj["verifiableCredential"] {
        Value::Array(a) => a.iter().enumerate().map(jwt_of).collect(),
        Value::Null => Ok(Vec::new()),
        other => jwt_of((0, other)).map(|jwt| vec![jwt]),
    }
}

/// The holder's key for a JWT presentation: a DID `kid` (resolved; an absolute kid must belong to
/// the presentation's `iss` when it names one) or a header `jwk` (the holder is then that key's
/// did:jwk). Holder keys are self-asserted: what binds them is the comparison with the
/// credential's subject or `cnf`.
async fn header_holder(
    header: &Value,
    payload: &Value,
    http: &reqwest::Client,
) -> Result<(VerifyingKey, Option<String>), String> {
    if header.get("jwk").is_none() {
        let kid = did::signer_kid(header, payload);
        if kid.starts_with("did:") {
            let kid_did = kid.split('#').next().unwrap_or(&kid).to_string();
            let named = payload["iss"]
                .as_str()
                .or(payload["holder"].as_str())
                .or(payload["holder"]["id"].as_str());
            if let Some(iss) = named {
                if iss != kid_did {
                    return Err(format!("kid {kid} does not belong to the holder {iss}"));
                }
            }
            let key = did::resolve(&kid, &["authentication"], http)
                .await
                .map_err(|e| e.to_string())?;
            return Ok((key, Some(kid_did)));
        }
    }
    let (key, _) = jws::header_key(header).map_err(|e| e.to_string())?;
    let did = did::did_jwk(&key);
    Ok((key, Some(did)))
}

#[cfg(test)]
mod tests {
    use super::super::policy::Trust;
    use super::super::testing::{counting_503_server, ctx_at};
    use super::*;
    use crate::crypto::{KeyType, SigningKey};
    use serde_json::json;
    use std::sync::atomic::Ordering;

    /// The status list of a credential whose issuer the verifier does not trust is not fetched:
    /// the presenter chose its URL, and the credential fails `issuer_allowlist` anyway.
    #[tokio::test]
    async fn an_untrusted_issuers_status_list_is_not_fetched() {
        let (port, hits) = counting_503_server();
        let now = 1_800_000_000;
        let key = SigningKey::generate(KeyType::Ed25519);
        let issuer = did::did_jwk(&key.verifying_key());
        let vc = jws::sign(
            &key,
            json!({"typ": "JWT", "kid": did::verification_method(&issuer)}),
            &json!({"iss": issuer, "nbf": now - 10, "vc": {
                "@context": ["https://www.w3.org/2018/credentials/v1"],
                "type": ["VerifiableCredential", "X"],
                "credentialSubject": {"id": "did:example:holder"},
                "credentialStatus": {"id": format!("http://127.0.0.1:{port}/s#3"),
                    "type": "BitstringStatusListEntry", "statusPurpose": "revocation",
                    "statusListIndex": "3",
                    "statusListCredential": format!("http://127.0.0.1:{port}/s")}}}),
        );
        let http = reqwest::Client::new();
        let (cache, anchors) = (Default::default(), Default::default());
        let run = |trust: Trust, issuer_allowlist: bool| {
            let (http, cache, anchors, vc) = (&http, &cache, &anchors, &vc);
            async move {
                let mut ctx = ctx_at(now, http, cache, anchors, &trust);
                ctx.issuer_allowlist = issuer_allowlist;
                let mut out = Outcome::default();
                assert!(jwt_credential(&ctx, &mut out, "q", vc).await.is_some());
                out
            }
        };
        let out = run(Trust::Only(vec!["did:example:other".into()]), true).await;
        let results = out.results(&["issuer_allowlist".into(), "status".into()]);
        let by = |n: &str| results.iter().find(|r| r.name == n).unwrap();
        assert!(!by("issuer_allowlist").passed, "{results:?}");
        let status = by("status");
        assert!(!status.passed, "{results:?}");
        assert!(
            status
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("not checked")),
            "{results:?}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        // trusted: the list is fetched (here it answers 503)
        let out = run(Trust::Any, true).await;
        let results = out.results(&["status".into()]);
        assert!(!results[0].passed, "{results:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // a session that turns issuer_allowlist off checks every credential's status
        run(Trust::Only(vec!["did:example:other".into()]), false).await;
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }
}
