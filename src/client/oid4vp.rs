//! OpenID4VP client (wallet side): resolve a request (by value or `request_uri`, signed request
//! objects verified against the client identifier's DID), find matching credentials, build the
//! presentation (SD-JWT + KB-JWT, a JWT VP, a Data
//! Integrity VP, or an mdoc DeviceResponse over the OpenID4VP SessionTranscript) and post it (`direct_post` or `direct_post.jwt`).

use std::time::Duration;

use serde_json::{json, Value};

use super::{check_url, ok_body, query_params, send, truncate, ClientError, ClientResult};
use crate::crypto::{did, jwe, jws, sdjwt, SigningKey};
use crate::dcql::CredentialView;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

/// Resolves an OpenID4VP authorization request (by value, `request` or `request_uri`) at time
/// `now` (unix seconds: a signed request object's `exp` and `nbf` are held to it).
pub async fn resolve_request(
    http: &reqwest::Client,
    uri: &str,
    now: i64,
) -> ClientResult<ResolvedRequest> {
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
        // a request object of MAX_REQUEST_BYTES, signed, with its certificate chain: the rest
        // is not read (it was read up to the outbound cap, 4 MiB, and parsed)
        let resp = send(req.timeout(Duration::from_secs(10))).await?;
        let text = super::ok_body_within(resp, MAX_REQUEST_OBJECT_BYTES).await?;
        verify_request_object(http, text.trim(), &outer_client_id, now).await?
    } else if let Some(jwt) = get("request") {
        verify_request_object(http, &jwt, &outer_client_id, now).await?
    } else {
        let mut obj = serde_json::Map::new();
        for (k, v) in &params {
            let value = match k.as_str() {
                "dcql_query" | "presentation_definition" | "client_metadata" => json_param(v),
                _ => Value::String(v.clone()),
            };
            obj.insert(k.clone(), value);
        }
        if !prefix_of(&outer_client_id)?.unsigned_ok() {
            return Err(ClientError::Remote(
                "this client identifier prefix requires a signed request".into(),
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
    check_query_bounds(&payload)?;
    // a wallet keeps what it resolved until it is answered: no bigger than a real request
    let size = payload.to_string().len();
    if size > MAX_REQUEST_BYTES {
        return Err(ClientError::Remote(format!(
            "the request is {size} bytes, over {MAX_REQUEST_BYTES}"
        )));
    }
    // they are shown, recorded in the history and posted to: no longer than a real one
    for (name, v) in [
        ("client_id", Some(outer_client_id.as_str())),
        ("response_uri", payload["response_uri"].as_str()),
        ("redirect_uri", payload["redirect_uri"].as_str()),
    ] {
        if v.is_some_and(|v| v.len() > MAX_URI_CHARS) {
            return Err(ClientError::Remote(format!(
                "{name} is over {MAX_URI_CHARS} characters"
            )));
        }
    }
    let resolved = ResolvedRequest {
        client_id: outer_client_id,
        params: payload,
        signed_by,
    };
    check_response_uri(&resolved)?;
    Ok(resolved)
}

/// Largest request (its parameters as JSON) a wallet resolves.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest request object fetched from a `request_uri`: a payload of [`MAX_REQUEST_BYTES`]
/// encoded, with a header carrying a certificate chain (5 certificates of at most 16 KiB).
const MAX_REQUEST_OBJECT_BYTES: usize = 256 * 1024;

/// Longest `client_id`, `response_uri` or `redirect_uri` a request may carry.
const MAX_URI_CHARS: usize = 2048;

/// Most input descriptors, and fields per descriptor, of a presentation definition a wallet
/// matches against what it holds (DCQL's bounds: [`crate::dcql::check_query`]).
const MAX_INPUT_DESCRIPTORS: usize = crate::dcql::MAX_QUERIES;
const MAX_FIELDS: usize = crate::dcql::MAX_CLAIMS;

/// Refuses a request whose query is larger than any real one: the wallet matches it against
/// every credential it holds, on a request an outsider can make it resolve.
fn check_query_bounds(payload: &Value) -> ClientResult<()> {
    if let Some(q) = payload.get("dcql_query") {
        crate::dcql::check_query(q).map_err(ClientError::Remote)?;
    }
    if let Some(pd) = payload.get("presentation_definition") {
        let len = |v: &Value| v.as_array().map_or(0, Vec::len);
        let descriptors = &pd["input_descriptors"];
        let too_many = len(descriptors) > MAX_INPUT_DESCRIPTORS
            || descriptors
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| len(&d["constraints"]["fields"]) > MAX_FIELDS);
        if too_many {
            return Err(ClientError::Remote(format!(
                "presentation_definition: over {MAX_INPUT_DESCRIPTORS} input descriptors or {MAX_FIELDS} fields in one"
            )));
        }
        let patterns: usize = descriptors
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["constraints"]["fields"].as_array().into_iter().flatten())
            .map(|f| patterns_in(&f["filter"], 0))
            .sum();
        if patterns > MAX_PATTERNS {
            return Err(ClientError::Remote(format!(
                "presentation_definition: over {MAX_PATTERNS} filter patterns"
            )));
        }
    }
    Ok(())
}

/// Most regular expressions (filter `pattern`s) one presentation definition may ask a wallet to
/// compile: each may take milliseconds (a `\pL{0,40}` is near the 1 MiB program limit).
const MAX_PATTERNS: usize = 16;

/// How many `pattern` keywords a filter holds, at any depth (a filter nests at most 8 deep;
/// deeper ones are counted as far as that and refused when compiled).
fn patterns_in(v: &Value, depth: usize) -> usize {
    if depth > 16 {
        return 0;
    }
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| usize::from(k == "pattern") + patterns_in(v, depth + 1))
            .sum(),
        Value::Array(a) => a.iter().map(|v| patterns_in(v, depth + 1)).sum(),
        _ => 0,
    }
}

/// The client identifier prefix (OpenID4VP 1.0 §5.9) and what it implies for the wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    /// `redirect_uri:<uri>` (and the draft form: a plain http(s) URL): requests are not signed,
    /// and responses go to exactly that URI.
    RedirectUri,
    /// `decentralized_identifier:<did>` (and the draft form: a plain DID): requests must be
    /// signed by a key of that DID.
    Did,
}

impl Prefix {
    fn unsigned_ok(self) -> bool {
        self == Prefix::RedirectUri
    }
}

fn prefix_of(client_id: &str) -> ClientResult<Prefix> {
    if client_id.starts_with("redirect_uri:")
        || client_id.starts_with("https://")
        || client_id.starts_with("http://")
    {
        Ok(Prefix::RedirectUri)
    } else if client_id.starts_with("decentralized_identifier:did:")
        || client_id.starts_with("did:")
    {
        Ok(Prefix::Did)
    } else {
        // x509_san_dns, x509_hash, verifier_attestation, openid_federation, pre-registered ids:
        // this wallet has no means to authenticate them.
        Err(ClientError::Remote(format!(
            "client identifier {} uses a prefix this wallet does not support",
            truncate(client_id)
        )))
    }
}

/// For a `redirect_uri:` client identifier the response must go to that very URI (OpenID4VP 1.0
/// §5.9.3): otherwise anyone could put a verifier's `response_uri` into their own request and
/// relay the holder's presentation into that verifier's session.
fn check_response_uri(req: &ResolvedRequest) -> ClientResult<()> {
    if prefix_of(&req.client_id)? != Prefix::RedirectUri {
        return Ok(());
    }
    let bound = req
        .client_id
        .strip_prefix("redirect_uri:")
        .unwrap_or(&req.client_id);
    let target = req
        .response_uri()
        .or_else(|| req.params["redirect_uri"].as_str());
    if target != Some(bound) {
        return Err(ClientError::Remote(
            "the response_uri differs from the redirect_uri client identifier".into(),
        ));
    }
    Ok(())
}

/// Clock skew allowed on a request object's `exp` and `nbf`, in seconds.
const REQUEST_OBJECT_LEEWAY: i64 = 60;

async fn verify_request_object(
    http: &reqwest::Client,
    jwt: &str,
    client_id: &str,
    now: i64,
) -> ClientResult<(Value, Option<String>)> {
    let (header, payload, _, _) = jws::decode_unverified(jwt)
        .map_err(|_| ClientError::Remote("the request object is not a JWS".into()))?;
    let prefix = prefix_of(client_id)?;
    if header["alg"] == "none" {
        if !prefix.unsigned_ok() {
            return Err(ClientError::Remote(
                "an unsigned request object is only acceptable for redirect_uri clients".into(),
            ));
        }
        return Ok((payload, None));
    }
    if prefix == Prefix::RedirectUri {
        return Err(ClientError::Remote(
            "a redirect_uri client's request must not be signed".into(),
        ));
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
    let key = did::resolve(kid, &["authentication", "assertionMethod"], http)
        .await
        .map_err(|e| match did::outbound_error(&e) {
            Some(o) => ClientError::Outbound(o),
            None => ClientError::Remote(format!("verifier DID: {e}")),
        })?;
    let (_, payload) = jws::verify(jwt, &key)
        .map_err(|e| ClientError::Remote(format!("request object signature: {e}")))?;
    check_request_object_claims(&header, &payload, now)?;
    Ok((payload, Some(did.to_string())))
}

/// A signed request object is one (RFC 9101 explicit typing: a `typ` naming another kind of JWT
/// — a key binding JWT, a credential, a proof — signed by the same key is not a request; none,
/// and the generic `JWT` that deployed verifiers send (did-jwt, Sphereon), are accepted, as by
/// Animo's `@openid4vc`) and is current (`exp`, `nbf`: NumericDates, with
/// [`REQUEST_OBJECT_LEEWAY`]): an old request replayed into the wallet is not answered.
fn check_request_object_claims(header: &Value, payload: &Value, now: i64) -> ClientResult<()> {
    let refused = |why: &str| Err(ClientError::Remote(why.to_string()));
    if let Some(t) = header.get("typ") {
        let t = t.as_str().unwrap_or_default().to_ascii_lowercase();
        let t = t.strip_prefix("application/").unwrap_or(&t);
        if !matches!(t, "oauth-authz-req+jwt" | "jwt") {
            return refused("the request object's typ is not oauth-authz-req+jwt");
        }
    }
    let time = |claim: &str| match payload.get(claim) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(()),
    };
    let (Ok(exp), Ok(nbf)) = (time("exp"), time("nbf")) else {
        return refused("the request object's exp and nbf must be numbers");
    };
    let (now, leeway) = (now as f64, REQUEST_OBJECT_LEEWAY as f64);
    if exp.is_some_and(|exp| exp + leeway <= now) {
        return refused("the request object has expired");
    }
    if nbf.is_some_and(|nbf| nbf - leeway > now) {
        return refused("the request object is not valid yet");
    }
    Ok(())
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

/// Builds one presentation of `held` for the request, disclosing `disclose` (SD-JWT claim names
/// or claim paths as JSON array text; mso_mdoc `namespace/element`).
/// JWT and SD-JWT presentations are strings; `ldp_vc` ones are JSON objects (Data Integrity VP).
/// Data Integrity signing is CPU-heavy: call this on the blocking pool for `ldp_vc`.
pub fn presentation(
    req: &ResolvedRequest,
    held: &Held<'_>,
    disclose: &[String],
    now: i64,
) -> ClientResult<Value> {
    if held.format == "mso_mdoc" {
        return mdoc_presentation(req, held, disclose).map(Value::String);
    }
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
            let paths: Vec<Vec<Value>> = disclose.iter().map(|d| claim_path(d)).collect();
            let selected = sdjwt::select_paths(&held.raw, &paths)
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

/// An SD-JWT claim to disclose: a claim path as JSON array text (`["address","country"]`), else
/// a first-level claim name.
fn claim_path(d: &str) -> Vec<Value> {
    match serde_json::from_str(d) {
        Ok(Value::Array(path)) if d.starts_with('[') && !path.is_empty() => path,
        _ => vec![json!(d)],
    }
}

/// mso_mdoc: a base64url DeviceResponse disclosing the elements named `namespace/element` in
/// `disclose`, device-signed with `held.key` over this request's SessionTranscript.
fn mdoc_presentation(
    req: &ResolvedRequest,
    held: &Held<'_>,
    disclose: &[String],
) -> ClientResult<String> {
    use crate::crypto::mdoc::present;
    let doc_type = held
        .view
        .doctype
        .as_deref()
        .ok_or_else(|| ClientError::Input("stored mdoc without a doc type".into()))?;
    let issuer_signed = crate::crypto::b64url_decode(&held.raw)
        .map_err(|_| ClientError::Input("stored mdoc: not base64url".into()))?;
    let transcript = mdoc_session_transcript(req)?;
    // `namespace/element` names one element only when neither part holds a `/` (else `ns` +
    // `x/y` and `ns/x` + `y` would be one name): an element named so is never disclosed
    let wanted = |ns: &str, element: &str| {
        !ns.contains('/')
            && !element.contains('/')
            && disclose.iter().any(|d| *d == format!("{ns}/{element}"))
    };
    present::device_response(&issuer_signed, doc_type, wanted, held.key, &transcript)
        .map(crate::crypto::b64url)
        .map_err(|e| ClientError::Input(format!("mdoc presentation: {e}")))
}

/// The SessionTranscript an mdoc presented to `req` is device-signed over (OpenID4VP 1.0
/// Appendix B.2.6.1, the same computation as the verifier's): client_id, nonce, the thumbprint
/// of the key the response is encrypted to (`direct_post.jwt`) and the response_uri.
pub fn mdoc_session_transcript(req: &ResolvedRequest) -> ClientResult<Vec<u8>> {
    let nonce = req.params["nonce"]
        .as_str()
        .ok_or_else(|| ClientError::Remote("request without nonce".into()))?;
    let response_uri = req
        .response_uri()
        .ok_or_else(|| ClientError::Remote("request without response_uri".into()))?;
    let thumbprint = match req.params["response_mode"].as_str() {
        Some("direct_post.jwt") => {
            let jwk = encryption_jwk(req)?;
            let key = crate::crypto::VerifyingKey::from_jwk(jwk)
                .map_err(|e| ClientError::Remote(format!("the verifier's encryption key: {e}")))?;
            Some(crate::crypto::b64url_decode(&key.thumbprint()).unwrap_or_default())
        }
        _ => None,
    };
    Ok(crate::crypto::mdoc::transcript::oid4vp(
        &req.client_id,
        nonce,
        thumbprint.as_deref(),
        response_uri,
    ))
}

/// The verifier's key a `direct_post.jwt` response is encrypted to: the first P-256 key of
/// `client_metadata.jwks`.
fn encryption_jwk(req: &ResolvedRequest) -> ClientResult<&Value> {
    req.params["client_metadata"]["jwks"]["keys"]
        .as_array()
        .and_then(|keys| {
            keys.iter()
                .find(|k| k["kty"] == "EC" && k["crv"] == "P-256")
        })
        .ok_or_else(|| {
            ClientError::Remote(
                "direct_post.jwt without a P-256 encryption key in client_metadata.jwks".into(),
            )
        })
}

/// Posts the response; returns a summary of the verifier's answer, never its raw body:
/// `{"status": <HTTP status>, "redirect_uri": <http(s) URL, when the verifier sent one>}`.
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
    check_response_uri(req)?;
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
            let key = encryption_jwk(req)?;
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
    let resp = send(http.post(uri).form(&form).timeout(Duration::from_secs(15))).await?;
    let status = resp.status().as_u16();
    let text = ok_body(resp).await?;
    let answer: Value = serde_json::from_str(&text).unwrap_or(json!({}));
    let mut summary = json!({ "status": status });
    if let Some(r) = answer["redirect_uri"]
        .as_str()
        .filter(|r| r.starts_with("https://") || r.starts_with("http://"))
    {
        summary["redirect_uri"] = json!(r);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_value(query: (&str, Value)) -> String {
        let cb = "https://rp.example/cb";
        serde_urlencoded::to_string([
            ("client_id", format!("redirect_uri:{cb}")),
            ("response_uri", cb.to_string()),
            ("response_type", "vp_token".to_string()),
            ("response_mode", "direct_post".to_string()),
            ("nonce", "n".to_string()),
            (query.0, query.1.to_string()),
        ])
        .map(|q| format!("openid4vp://?{q}"))
        .unwrap()
    }

    /// Attacker review: a request's query is matched against every held credential on the
    /// worker; 14,000 claims × 39,000 claim sets in one unsigned request was accepted. A query
    /// past the bounds is refused when the request is resolved, before anything is matched.
    #[tokio::test]
    async fn an_oversized_query_is_refused_when_the_request_is_resolved() {
        let http = reqwest::Client::new();
        let claims: Vec<Value> = (0..=crate::dcql::MAX_CLAIMS)
            .map(|i| json!({"id": format!("c{i}"), "path": ["x"]}))
            .collect();
        let sets = vec![json!(["c0"]); crate::dcql::MAX_SETS + 1];
        let descriptors = vec![json!({"id": "d"}); MAX_INPUT_DESCRIPTORS + 1];
        // patterns nested in a filter count too
        let field =
            json!({"path": ["$.vct"], "filter": {"not": {"pattern": "^a"}, "pattern": "b"}});
        let patterned = vec![field; MAX_PATTERNS / 2 + 1];
        for (what, query) in [
            (
                "claims",
                (
                    "dcql_query",
                    json!({"credentials": [{"id": "q", "format": "dc+sd-jwt", "claims": claims}]}),
                ),
            ),
            (
                "claim sets",
                (
                    "dcql_query",
                    json!({"credentials": [{"id": "q", "format": "dc+sd-jwt", "claims": [{"id": "c0", "path": ["x"]}], "claim_sets": sets}]}),
                ),
            ),
            (
                "input descriptors",
                (
                    "presentation_definition",
                    json!({"id": "p", "input_descriptors": descriptors}),
                ),
            ),
            (
                "filter patterns",
                (
                    "presentation_definition",
                    json!({"id": "p", "input_descriptors": [{"id": "d", "constraints": {"fields": patterned}}]}),
                ),
            ),
        ] {
            let e = resolve_request(&http, &by_value(query), 0)
                .await
                .unwrap_err();
            assert!(
                e.to_string().contains("at most") || e.to_string().contains("over"),
                "{what}: {e}"
            );
        }
        // a query within the bounds resolves
        let fields = vec![json!({"path": ["$.vct"], "filter": {"pattern": "^a"}}); MAX_PATTERNS];
        let ok = (
            "presentation_definition",
            json!({"id": "p", "input_descriptors": [{"id": "d", "constraints": {"fields": fields}}]}),
        );
        resolve_request(&http, &by_value(ok), 0).await.unwrap();
        let ok = (
            "dcql_query",
            json!({"credentials": [{"id": "q", "format": "dc+sd-jwt", "claims": [{"id": "c0", "path": ["x"]}], "claim_sets": [["c0"]]}]}),
        );
        resolve_request(&http, &by_value(ok), 0).await.unwrap();
        // two credential queries of one id (the vp_token answers one of them)
        let twice = (
            "dcql_query",
            json!({"credentials": [{"id": "q", "format": "dc+sd-jwt"}, {"id": "q", "format": "jwt_vc_json"}]}),
        );
        let e = resolve_request(&http, &by_value(twice), 0)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
    }

    /// What the wallet asks an SD-JWT to disclose: claim paths as JSON array text (a DCQL claim
    /// path, down to the member asked for), else first-level names.
    #[test]
    fn disclosures_are_claim_paths_or_names() {
        assert_eq!(
            claim_path(r#"["address","country"]"#),
            vec![json!("address"), json!("country")]
        );
        assert_eq!(
            claim_path(r#"["nationalities",null]"#),
            vec![json!("nationalities"), Value::Null]
        );
        assert_eq!(claim_path("given_name"), vec![json!("given_name")]);
        assert_eq!(claim_path("[]"), vec![json!("[]")]);
    }

    /// A client_id or response_uri is shown, recorded in the wallet's history and posted to:
    /// one of 500 KB made each presentation attempt store half a megabyte (attacker review).
    #[tokio::test]
    async fn an_oversized_client_id_is_refused_when_the_request_is_resolved() {
        let http = reqwest::Client::new();
        let cb = format!("https://rp.example/{}", "a".repeat(MAX_URI_CHARS));
        let uri = serde_urlencoded::to_string([
            ("client_id", format!("redirect_uri:{cb}")),
            ("response_uri", cb.clone()),
            ("response_type", "vp_token".to_string()),
            ("response_mode", "direct_post".to_string()),
            ("nonce", "n".to_string()),
            (
                "dcql_query",
                json!({"credentials": [{"id": "q", "format": "dc+sd-jwt"}]}).to_string(),
            ),
        ])
        .map(|q| format!("openid4vp://?{q}"))
        .unwrap();
        let e = resolve_request(&http, &uri, 0).await.unwrap_err();
        assert!(e.to_string().contains("characters"), "{e}");
        // nor a request bigger than any real one (the wallet keeps what it resolved)
        let big = (
            "client_metadata",
            json!({"client_name": "x".repeat(MAX_REQUEST_BYTES)}),
        );
        let e = resolve_request(&http, &by_value(big), 0).await.unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");
    }

    /// A signed request object is a request object (`typ` `oauth-authz-req+jwt`, `JWT` or none) and
    /// current (`exp`, `nbf`): another JWT the verifier's key signed, or an old request
    /// replayed into the wallet, is not answered.
    #[tokio::test]
    async fn signed_request_objects_are_typed_and_current() {
        let http = reqwest::Client::new();
        let key = SigningKey::generate(crate::crypto::KeyType::Ed25519);
        let d = did::did_key(&key.verifying_key());
        let client_id = format!("decentralized_identifier:{d}");
        let now = 1_800_000_000;
        let signed = |typ: Option<&str>, claims: Value| {
            let mut header = json!({"kid": did::verification_method(&d)});
            if let Some(t) = typ {
                header["typ"] = json!(t);
            }
            let mut payload = json!({"client_id": client_id, "response_type": "vp_token",
                "response_mode": "direct_post", "response_uri": "https://rp.example/cb",
                "nonce": "n", "dcql_query": {"credentials": [{"id": "q", "format": "dc+sd-jwt"}]}});
            payload
                .as_object_mut()
                .unwrap()
                .extend(claims.as_object().unwrap().clone());
            let jwt = jws::sign(&key, header, &payload);
            let q = serde_urlencoded::to_string([("client_id", &client_id), ("request", &jwt)]);
            format!("openid4vp://?{}", q.unwrap())
        };
        let typed = Some("oauth-authz-req+jwt");
        for (typ, claims) in [
            (typed, json!({"exp": now + 300, "iat": now})),
            (None, json!({})),
            (typed, json!({"exp": now - 30, "nbf": now + 30})),
            // what deployed verifiers send: the generic type, the media type, fractional times
            (Some("JWT"), json!({"exp": now as f64 + 0.5})),
            (Some("application/oauth-authz-req+jwt"), json!({})),
        ] {
            resolve_request(&http, &signed(typ, claims.clone()), now)
                .await
                .unwrap_or_else(|e| panic!("{typ:?} {claims}: {e}"));
        }
        for (typ, claims, why) in [
            (Some("dc+sd-jwt"), json!({}), "typ"),
            (Some("kb+jwt"), json!({"exp": now + 300}), "typ"),
            (typed, json!({"exp": now - 61}), "expired"),
            (typed, json!({"nbf": now + 61}), "not valid yet"),
            (typed, json!({"exp": "tomorrow"}), "numbers"),
        ] {
            let e = resolve_request(&http, &signed(typ, claims.clone()), now)
                .await
                .unwrap_err();
            assert!(e.to_string().contains(why), "{typ:?} {claims}: {e}");
        }
    }
}
