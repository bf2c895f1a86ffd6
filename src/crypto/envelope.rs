//! VC-JOSE-COSE enveloping (W3C "Securing Verifiable Credentials using JOSE and COSE", §3.1):
//! a JWT-secured VCDM 2.0 credential carried as an `EnvelopedVerifiableCredential` object whose
//! `id` is a `data:application/vc+jwt,<jwt>` URL. Only the framing lives here; the JWT inside is
//! verified like any other (the issuer-key binding rule, `crypto::binding`).

use serde_json::{json, Value};

use super::di::VCDM2_CONTEXT;

pub const ENVELOPED_VC: &str = "EnvelopedVerifiableCredential";
const VC_JWT_DATA_URL: &str = "data:application/vc+jwt,";

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
    let is_envelope = match &v["type"] {
        Value::String(t) => t == ENVELOPED_VC,
        Value::Array(a) => a.iter().any(|t| t == ENVELOPED_VC),
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
            "an {ENVELOPED_VC} must have the VCDM 2.0 @context"
        )));
    }
    let Some(id) = v["id"].as_str() else {
        return Some(Err(format!("an {ENVELOPED_VC} needs an id (a data: URL)")));
    };
    Some(match id.strip_prefix(VC_JWT_DATA_URL) {
        Some(jwt) if !jwt.is_empty() && jwt.split('.').count() == 3 => Ok(jwt),
        Some(_) => Err("the data: URL does not carry a compact JWS".into()),
        None => Err(format!(
            "unsupported envelope: only {VC_JWT_DATA_URL}<jwt> is accepted"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJ4IjoxfQ.c2ln";
        let env = envelop_vc_jwt(jwt);
        assert_eq!(enveloped_vc_jwt(&env), Some(Ok(jwt)));
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
