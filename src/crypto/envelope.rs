//! VC-JOSE-COSE enveloping (W3C "Securing Verifiable Credentials using JOSE and COSE", §3.1;
//! VCDM 2.0 §4.13): a JWT-secured credential or presentation carried as an
//! `EnvelopedVerifiableCredential` / `EnvelopedVerifiablePresentation` object whose `id` is a
//! `data:application/vc+jwt,<jwt>` (`vp+jwt` for presentations; the generic
//! `data:application/jwt,` too, which VCDM 2.0's examples use) URL. Only the framing lives here;
//! the JWT inside is verified like any other (the issuer-key binding rule, `crypto::binding`).

use serde_json::{json, Value};

use super::di::VCDM2_CONTEXT;

pub const ENVELOPED_VC: &str = "EnvelopedVerifiableCredential";
pub const ENVELOPED_VP: &str = "EnvelopedVerifiablePresentation";
const VC_JWT_DATA_URL: &str = "data:application/vc+jwt,";
const VP_JWT_DATA_URL: &str = "data:application/vp+jwt,";
const JWT_DATA_URL: &str = "data:application/jwt,";

/// The enveloped form of a `vc+jwt`.
pub fn envelop_vc_jwt(jwt: &str) -> Value {
    json!({
        "@context": VCDM2_CONTEXT,
        "id": format!("{VC_JWT_DATA_URL}{jwt}"),
        "type": ENVELOPED_VC,
    })
}

/// `None` when `v` is not an enveloped credential; else the JWT it carries, or why it cannot be
/// read (another media type, a base64 data URL, a missing id, a wrong `@context`).
pub fn enveloped_vc_jwt(v: &Value) -> Option<Result<&str, String>> {
    enveloped_jwt(v, ENVELOPED_VC, VC_JWT_DATA_URL)
}

/// [`enveloped_vc_jwt`] for an `EnvelopedVerifiablePresentation` (`vp+jwt`).
pub fn enveloped_vp_jwt(v: &Value) -> Option<Result<&str, String>> {
    enveloped_jwt(v, ENVELOPED_VP, VP_JWT_DATA_URL)
}

fn enveloped_jwt<'v>(
    v: &'v Value,
    envelope: &str,
    data_url: &str,
) -> Option<Result<&'v str, String>> {
    let is_envelope = match &v["type"] {
        Value::String(t) => t == envelope,
        Value::Array(a) => a.iter().any(|t| t == envelope),
        _ => false,
    };
    if !is_envelope {
        return None;
    }
    let context_ok = match &v["@context"] {
        Value::String(c) => c == VCDM2_CONTEXT,
        Value::Array(a) => a.first().and_then(Value::as_str) == Some(VCDM2_CONTEXT),
        _ => false,
    };
    if !context_ok {
        return Some(Err(format!(
            "an {envelope} must have the VCDM 2.0 @context"
        )));
    }
    let Some(id) = v["id"].as_str() else {
        return Some(Err(format!("an {envelope} needs an id (a data: URL)")));
    };
    Some(
        match id
            .strip_prefix(data_url)
            .or_else(|| id.strip_prefix(JWT_DATA_URL))
        {
            Some(jwt) if !jwt.is_empty() && jwt.split('.').count() == 3 => Ok(jwt),
            Some(_) => Err("the data: URL does not carry a compact JWS".into()),
            None => Err(format!(
                "unsupported envelope: only {data_url}<jwt> or {JWT_DATA_URL}<jwt> is accepted"
            )),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJ4IjoxfQ.c2ln";
        let env = envelop_vc_jwt(jwt);
        assert_eq!(enveloped_vc_jwt(&env), Some(Ok(jwt)));
        let generic = json!({"@context": VCDM2_CONTEXT, "type": ENVELOPED_VC, "id": format!("data:application/jwt,{jwt}")});
        assert_eq!(enveloped_vc_jwt(&generic), Some(Ok(jwt)));
        let vp = json!({"@context": [VCDM2_CONTEXT], "type": ENVELOPED_VP, "id": format!("data:application/vp+jwt,{jwt}")});
        assert_eq!(enveloped_vp_jwt(&vp), Some(Ok(jwt)));
        // a presentation envelope is not a credential envelope, nor the other way round
        assert_eq!(enveloped_vc_jwt(&vp), None);
        assert_eq!(enveloped_vp_jwt(&env), None);
        assert!(matches!(
            enveloped_vp_jwt(&json!({"@context": [], "type": ENVELOPED_VP, "id": vp["id"]})),
            Some(Err(_))
        ));
        assert!(matches!(
            enveloped_vp_jwt(&json!({"@context": VCDM2_CONTEXT, "type": ENVELOPED_VP, "id": jwt})),
            Some(Err(_))
        ));
        assert_eq!(
            enveloped_vc_jwt(&json!({"type": "VerifiableCredential"})),
            None
        );
        for bad in [
            json!({"@context": VCDM2_CONTEXT, "type": ENVELOPED_VC}),
            json!({"@context": "https://www.w3.org/2018/credentials/v1", "type": ENVELOPED_VC, "id": env["id"]}),
            json!({"@context": VCDM2_CONTEXT, "type": ENVELOPED_VC, "id": format!("data:application/vc+sd-jwt,{jwt}")}),
            json!({"@context": VCDM2_CONTEXT, "type": ENVELOPED_VC, "id": "data:application/vc+jwt;base64,eHh4"}),
            json!({"@context": VCDM2_CONTEXT, "type": ENVELOPED_VC, "id": "data:application/vc+jwt,not-a-jws"}),
            json!({"@context": VCDM2_CONTEXT, "type": [ENVELOPED_VC], "id": 7}),
        ] {
            assert!(matches!(enveloped_vc_jwt(&bad), Some(Err(_))), "{bad}");
        }
    }
}
