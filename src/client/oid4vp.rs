//! OpenID4VP client (wallet side): resolve a request (by value or `request_uri`, signed request
//! objects verified against the client identifier's DID), find matching credentials, build the
//! presentation (SD-JWT + KB-JWT, or a JWT VP) and post it (`direct_post` or `direct_post.jwt`).

use std::time::Duration;

use serde_json::{json, Value};

use super::{body, check_url, query_params, truncate, ClientError, ClientResult};
use crate::crypto::{did, jwe, jws, sdjwt, SigningKey};
use crate::dcql::CredentialView;

#[derive(Debug, Clone)]
pub struct ResolvedRequest {
    pub params: Value,
    pub client_id: String,
    /// The DID whose key signed the request object, when signed.
    pub signed_by: Option<String>,
}

impl ResolvedRequest {
    pub fn dcql(&self) -> Option<&Value> {
        self.params.get("dcql_query")
    }
    pub fn response_uri(&self) -> Option<&str> {
        self.params["response_uri"].as_str()
    }
}

fn json_param(v: &str) -> Value {
    serde_json::from_str(v).unwrap_or(Value::String(v.to_string()))
}

pub async fn resolve_request(http: &reqwest::Client, uri: &str) -> ClientResult<ResolvedRequest> {
    let params = query_params(uri.trim());
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let outer_client_id = get("client_id")
        .ok_or_else(|| ClientError::Input("authorization request without client_id".into()))?;
    let (payload, signed_by) = if let Some(request_uri) = get("request_uri") {
        check_url(&request_uri)?;
        let req = if get("request_uri_method").as_deref() == Some("post") {
            http.post(&request_uri).form(&[("wallet_metadata", "{}")])
        } else {
            http.get(&request_uri)
        };
        let resp = req
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| ClientError::Remote(format!("request_uri: {e}")))?;
        let (status, text) = body(resp).await?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Status {
                status,
                body: truncate(&text),
            });
        }
        verify_request_object(http, text.trim(), &outer_client_id).await?
    } else if let Some(jwt) = get("request") {
        verify_request_object(http, &jwt, &outer_client_id).await?
    } else {
        let mut obj = serde_json::Map::new();
        for (k, v) in &params {
            let value = match k.as_str() {
                "dcql_query" | "presentation_definition" | "client_metadata" => json_param(v),
                _ => Value::String(v.clone()),
            };
            obj.insert(k.clone(), value);
        }
        if outer_client_id.starts_with("decentralized_identifier:") {
            return Err(ClientError::Input(
                "a decentralized_identifier client must send a signed request".into(),
            ));
        }
        (Value::Object(obj), None)
    };
    if payload["client_id"].as_str() != Some(outer_client_id.as_str()) {
        return Err(ClientError::Remote(
            "the request object's client_id differs from the one in the URI".into(),
        ));
    }
    if payload["response_type"].as_str() != Some("vp_token") {
        return Err(ClientError::Remote("response_type must be vp_token".into()));
    }
    Ok(ResolvedRequest {
        client_id: outer_client_id,
        params: payload,
        signed_by,
    })
}

async fn verify_request_object(
    http: &reqwest::Client,
    jwt: &str,
    client_id: &str,
) -> ClientResult<(Value, Option<String>)> {
    let (header, payload, _, _) = jws::decode_unverified(jwt)
        .map_err(|e| ClientError::Remote(format!("request object: {e}")))?;
    if header["alg"] == "none" {
        if !(client_id.starts_with("redirect_uri:") || client_id.starts_with("http")) {
            return Err(ClientError::Remote(
                "an unsigned request object is only acceptable for redirect_uri clients".into(),
            ));
        }
        return Ok((payload, None));
    }
    let did = client_id
        .strip_prefix("decentralized_identifier:")
        .or_else(|| client_id.starts_with("did:").then_some(client_id))
        .ok_or_else(|| {
            ClientError::Remote(format!(
                "cannot verify a signed request for client_id {client_id}"
            ))
        })?;
    let kid = header["kid"]
        .as_str()
        .ok_or_else(|| ClientError::Remote("signed request object without kid".into()))?;
    if kid.split('#').next() != Some(did) {
        return Err(ClientError::Remote(
            "the request object is signed by a key of another DID".into(),
        ));
    }
    let key = did::resolve(kid, http)
        .await
        .map_err(|e| ClientError::Remote(format!("verifier DID: {e}")))?;
    let (_, payload) = jws::verify(jwt, &key)
        .map_err(|e| ClientError::Remote(format!("request object signature: {e}")))?;
    Ok((payload, Some(did.to_string())))
}

/// A held credential as the presenter needs it.
pub struct Held<'a> {
    pub id: String,
    pub format: String,
    pub raw: String,
    pub view: CredentialView,
    pub key: &'a SigningKey,
    /// DID URL of the holder key (JWT VPs name their signer by it).
    pub kid: Option<String>,
}

/// Builds one presentation of `held` for the request, disclosing `disclose` (SD-JWT claim names).
/// JWT and SD-JWT presentations are strings; `ldp_vc` ones are JSON objects (Data Integrity VP).
/// Data Integrity signing is CPU-heavy: call this on the blocking pool for `ldp_vc`.
pub fn presentation(
    req: &ResolvedRequest,
    held: &Held<'_>,
    disclose: &[String],
    now: i64,
) -> ClientResult<Value> {
    if held.format == "ldp_vc" {
        let nonce = req.params["nonce"]
            .as_str()
            .ok_or_else(|| ClientError::Remote("request without nonce".into()))?;
        let vm = held.kid.clone().ok_or_else(|| {
            ClientError::Input("ldp_vc presentations need a did:key or did:jwk holder".into())
        })?;
        let vc: Value = serde_json::from_str(&held.raw)
            .map_err(|e| ClientError::Input(format!("stored credential: {e}")))?;
        return crate::crypto::di::issue_presentation(
            held.key,
            &vm,
            &[vc],
            nonce,
            &req.client_id,
            now,
        )
        .map_err(|e| ClientError::Input(format!("Data Integrity presentation: {e}")));
    }
    presentation_jwt(req, held, disclose, now).map(Value::String)
}

fn presentation_jwt(
    req: &ResolvedRequest,
    held: &Held<'_>,
    disclose: &[String],
    now: i64,
) -> ClientResult<String> {
    let nonce = req.params["nonce"]
        .as_str()
        .ok_or_else(|| ClientError::Remote("request without nonce".into()))?;
    match held.format.as_str() {
        "dc+sd-jwt" | "vc+sd-jwt" => {
            let names: Vec<&str> = disclose.iter().map(String::as_str).collect();
            let selected = sdjwt::select(&held.raw, &names)
                .map_err(|e| ClientError::Input(format!("stored SD-JWT: {e}")))?;
            Ok(sdjwt::add_key_binding(
                &selected,
                held.key,
                &req.client_id,
                nonce,
                now,
            ))
        }
        "jwt_vc_json" => {
            let subject = held.view.root["credentialSubject"]["id"]
                .as_str()
                .map(str::to_string);
            let header = match &held.kid {
                Some(kid) => json!({"typ": "JWT", "kid": kid}),
                None => json!({"typ": "JWT", "jwk": held.key.verifying_key().to_jwk()}),
            };
            let mut payload = json!({
                "aud": req.client_id, "nonce": nonce, "iat": now, "exp": now + 300,
                "vp": {"@context": ["https://www.w3.org/2018/credentials/v1"], "type": ["VerifiablePresentation"], "verifiableCredential": [held.raw]},
            });
            if let Some(s) = subject {
                payload["iss"] = json!(s);
                payload["vp"]["holder"] = json!(s);
            }
            Ok(jws::sign(held.key, header, &payload))
        }
        other => Err(ClientError::Input(format!(
            "cannot present {other} credentials"
        ))),
    }
}

/// Posts the response; returns the verifier's JSON answer (e.g. `{"redirect_uri": ...}`).
pub async fn submit(
    http: &reqwest::Client,
    req: &ResolvedRequest,
    vp_token: Value,
    submission: Option<Value>,
) -> ClientResult<Value> {
    let uri = req
        .response_uri()
        .ok_or_else(|| ClientError::Remote("request without response_uri".into()))?;
    check_url(uri)?;
    let state = req.params["state"].as_str();
    let mode = req.params["response_mode"]
        .as_str()
        .unwrap_or("direct_post");
    let form: Vec<(String, String)> = match mode {
        "direct_post" => {
            let mut f = vec![("vp_token".to_string(), vp_token.to_string())];
            if let Some(s) = submission {
                f.push(("presentation_submission".into(), s.to_string()));
            }
            if let Some(s) = state {
                f.push(("state".into(), s.to_string()));
            }
            f
        }
        "direct_post.jwt" => {
            let keys = req.params["client_metadata"]["jwks"]["keys"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let key = keys
                .iter()
                .find(|k| k["kty"] == "EC" && k["crv"] == "P-256")
                .ok_or_else(|| {
                    ClientError::Remote(
                        "direct_post.jwt without a P-256 encryption key in client_metadata.jwks"
                            .into(),
                    )
                })?;
            let enc = req.params["client_metadata"]["encrypted_response_enc_values_supported"][0]
                .as_str()
                .unwrap_or("A256GCM");
            let mut inner = json!({"vp_token": vp_token});
            if let Some(s) = submission {
                inner["presentation_submission"] = s;
            }
            if let Some(s) = state {
                inner["state"] = json!(s);
            }
            let jwe = jwe::encrypt(inner.to_string().as_bytes(), key, enc, json!({}))
                .map_err(|e| ClientError::Remote(format!("encrypting the response: {e}")))?;
            vec![("response".into(), jwe)]
        }
        other => {
            return Err(ClientError::Remote(format!(
                "response_mode {other} is not supported"
            )))
        }
    };
    let resp = http
        .post(uri)
        .form(&form)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| ClientError::Remote(format!("posting the response: {e}")))?;
    let (status, text) = body(resp).await?;
    if !(200..300).contains(&status) {
        return Err(ClientError::Status {
            status,
            body: truncate(&text),
        });
    }
    Ok(serde_json::from_str(&text).unwrap_or(json!({})))
}
