//! `dc+sd-jwt` (SD-JWT VC): the issuer's signature, disclosures, the key-binding JWT.

use serde_json::{Map, Value};

use super::policy::{check_issuer, check_time, numeric, Outcome, KB_MAX_AGE, SKEW};
use super::status::{status_checked, status_not_checked, token_status};
use super::{issuer_jwt, Checked, Ctx};
use crate::crypto::binding::Issuers;
use crate::crypto::sdjwt;
use crate::roles::verifier::model::PresentedCredential;

/// dc+sd-jwt presentation with key binding (`holder_binding`: a KB-JWT is required; when the
/// query waives it, a presentation without one is accepted and one that is present is still
/// checked in full).
/// Claims of an SD-JWT VC that its issuer must not make selectively disclosable (SD-JWT VC
/// §3.2.2.2).
const RESERVED_CLAIMS: [&str; 7] = ["iss", "nbf", "exp", "cnf", "vct", "vct#integrity", "status"];

pub async fn sd_jwt(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    presentation: &str,
    holder_binding: bool,
) -> Option<Checked> {
    let parsed = match sdjwt::parse(presentation) {
        Ok(p) => p,
        Err(e) => {
            out.fail("signature", format!("{query_id}: not an SD-JWT: {e}"));
            return None;
        }
    };
    let (issuer, payload) = issuer_jwt(
        ctx,
        out,
        query_id,
        &parsed.jwt,
        Issuers::DidOrHttps {
            anchors: ctx.anchors,
            now: ctx.now,
        },
    )
    .await?;
    let verified = match sdjwt::verify(presentation, &issuer.key) {
        Ok(v) => v,
        Err(e) => {
            let msg = e.to_string();
            if msg.contains("KB-JWT") || msg.contains("signature") {
                out.fail("holder_binding", format!("{query_id}: {msg}"));
            } else {
                out.fail("disclosure_integrity", format!("{query_id}: {msg}"));
            }
            return None;
        }
    };
    // An SD-JWT VC is one by its type: any other JWT its issuer signed (a status list, another
    // credential) with `~` appended is not, whatever the query waives.
    let typ = &verified.header["typ"];
    if !matches!(typ.as_str(), Some("dc+sd-jwt" | "vc+sd-jwt")) {
        out.fail(
            "signature",
            format!("{query_id}: the issuer JWT's typ is {typ}, not dc+sd-jwt"),
        );
        return None;
    }
    // SD-JWT VC: these claims are never selectively disclosable. One presented as a disclosure
    // is refused (a disclosed `cnf` would pick the holder key, a disclosed `exp` went unchecked).
    // One the holder withholds cannot be seen — only a digest — so the validity and status
    // policies read the issuer-signed payload alone.
    if let Some(name) = verified
        .disclosed
        .iter()
        .find(|n| RESERVED_CLAIMS.contains(&n.as_str()))
    {
        out.fail(
            "disclosure_integrity",
            format!("{query_id}: `{name}` must not be selectively disclosable"),
        );
        return None;
    }
    out.pass("disclosure_integrity");
    key_binding(
        ctx,
        out,
        query_id,
        verified.key_binding.as_ref(),
        holder_binding,
    );
    check_time(out, &payload, &Value::Null, ctx.now, query_id);
    let trusted = check_issuer(out, ctx, &issuer.issuer);
    if status_checked(ctx, trusted, &payload["status"]) {
        token_status(ctx, out, query_id, &payload["status"], &issuer).await;
    } else {
        status_not_checked(out, query_id);
    }
    let mut claims: Map<String, Value> = verified.claims.clone();
    for k in [
        "cnf", "status", "iat", "nbf", "exp", "iss", "vct", "_sd", "_sd_alg",
    ] {
        claims.remove(k);
    }
    out.credentials.push(PresentedCredential {
        query_id: query_id.to_string(),
        format: "dc+sd-jwt".into(),
        issuer: Some(issuer.issuer.clone()),
        issuer_name: None,
        claims: claims.clone(),
    });
    // the KB-JWT was verified with the `cnf` key, whose algorithm it must name
    let holder_alg = verified.key_binding.as_ref().and_then(|_| {
        crate::crypto::VerifyingKey::from_jwk(&verified.claims["cnf"]["jwk"])
            .ok()
            .map(|k| k.alg().to_string())
    });
    Some(Checked {
        issuer_alg: Some(issuer.key.alg().to_string()),
        holder_alg,
        query_id: query_id.to_string(),
        format: "dc+sd-jwt".into(),
        root: Value::Object(verified.claims),
        vct: payload["vct"].as_str().map(str::to_string),
        doctype: None,
        types: Vec::new(),
        issuer: Some(issuer.issuer),
        authorities: Vec::new(),
    })
}

/// The `holder_binding` and `nonce_audience` policies of an SD-JWT presentation's KB-JWT (`kb`,
/// already verified with the credential's `cnf` key by [`sdjwt::verify`]).
fn key_binding(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    kb: Option<&Value>,
    holder_binding: bool,
) {
    let Some(kb) = kb else {
        if holder_binding {
            return out.fail("holder_binding", format!("{query_id}: no key-binding JWT"));
        }
        // The verifier asked for no holder binding: nothing ties this presentation to the
        // session's nonce, which the query accepted.
        out.pass("holder_binding");
        if ctx.audience.is_some() {
            out.pass("nonce_audience");
        }
        return;
    };
    out.pass("holder_binding");
    let Some(aud) = ctx.audience else {
        return;
    };
    let aud_ok = aud.aud_ok(&kb["aud"]) && !kb["aud"].is_array();
    let nonce_ok = aud.nonce_ok(&kb["nonce"]);
    let iat = numeric(&kb["iat"], "iat").ok().flatten();
    if !nonce_ok {
        out.fail(
            "nonce_audience",
            format!("{query_id}: KB-JWT nonce does not match the session"),
        );
    } else if !aud_ok {
        out.fail(
            "nonce_audience",
            format!(
                "{query_id}: KB-JWT aud is not {}",
                aud.client_id.unwrap_or_default()
            ),
        );
    } else if iat.is_none_or(|iat| iat < ctx.now - KB_MAX_AGE || iat > ctx.now + SKEW) {
        out.fail(
            "nonce_audience",
            format!("{query_id}: KB-JWT iat missing or outside the accepted window"),
        );
    } else {
        out.pass("nonce_audience");
    }
}
