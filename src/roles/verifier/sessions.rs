//! Verification sessions: creation (DCQL or presentation definition), views, and the request
//! object wallets fetch.

use std::time::Duration;

use serde_json::{json, Value};

use super::error::{invalid, VerifierError};
use super::ks;
use super::model::*;
use super::service::*;
use super::verify::Trust;
use crate::clock::{random_id, random_token};
use crate::crypto::jwe::EncryptionKey;
use crate::crypto::jws;
use crate::crypto::mdoc::clip;
use crate::http::urlencode;
use crate::pex_filter::Filter;

impl VerifierService {
    /// A new session and the authorization request that starts it. (About 100 lines: most of it
    /// is the session record, field by field, and the request's two shapes.)
    pub async fn create_session(
        &self,
        verifier_id: &str,
        req: CreateSession,
    ) -> Result<SessionCreated, VerifierError> {
        let v = self.get_verifier(verifier_id).await?;
        if self.trusted(&v).await? == Trust::Only(Vec::new()) {
            return Err(invalid(format!(
                "verifier `{verifier_id}` trusts no issuer: set its trusted_issuers (or verifier.trust = \"any\" for development)"
            )));
        }
        check_query(&req)?;
        let ttl = req
            .ttl_seconds
            .unwrap_or(self.cfg.default_session_ttl_seconds);
        if ttl == 0 || ttl > crate::config::MAX_SESSION_TTL_SECONDS {
            return Err(invalid(format!(
                "ttl_seconds must be 1..={}",
                crate::config::MAX_SESSION_TTL_SECONDS
            )));
        }
        let policies = session_policies(req.policies)?;
        // (no fragment: the response_code is added to the query; no plain http in production:
        // both carry the response_code, the webhook the disclosed claims too)
        for (name, u) in [
            ("webhook_url", &req.webhook_url),
            ("success_redirect", &req.success_redirect),
        ] {
            if let Some(u) = u {
                crate::http::webhook::check_target(u)
                    .map_err(|e| invalid(format!("{name}: {e}")))?;
            }
        }
        let id = random_id();
        let response_uri = format!("{}/responses/{id}", self.base(verifier_id));
        // OpenID4VP 1.0 client identifier prefixes; presentation_definition requests are for
        // pre-1.0 wallets, which expect the draft form (plain id + client_id_scheme).
        let legacy = req.presentation_definition.is_some();
        let client_id = match (&v.did, legacy) {
            (Some(d), false) => format!("decentralized_identifier:{d}"),
            (None, false) => format!("redirect_uri:{response_uri}"),
            (Some(d), true) => d.clone(),
            (None, true) => response_uri.clone(),
        };
        let response_mode = req.response_mode.unwrap_or(ResponseMode::DirectPost);
        let encryption_key = match response_mode {
            ResponseMode::DirectPost => None,
            ResponseMode::DirectPostJwt => Some(self.new_encryption_key(verifier_id, &id)?),
        };
        let now = self.now();
        let session = Session {
            id: id.clone(),
            verifier: verifier_id.to_string(),
            nonce: random_token(24),
            state_param: random_token(24),
            client_id: client_id.clone(),
            response_uri,
            dcql_query: req.dcql_query,
            presentation_definition: req.presentation_definition,
            response_mode,
            policies,
            require_status: req.require_status.unwrap_or(false),
            webhook_url: None,
            success_redirect: None,
            sealed_targets: self.seal_targets(
                verifier_id,
                &id,
                &Targets {
                    webhook_url: req.webhook_url,
                    success_redirect: req.success_redirect,
                },
            )?,
            encryption_key,
            created_at: now,
            expires_at: now + ttl as i64,
            state: SessionState::Pending,
            verified: false,
            policy_results: Vec::new(),
            credentials: Vec::new(),
            sealed_credentials: None,
            error: None,
            failed_attempts: Vec::new(),
            evaluating: Vec::new(),
            completed_at: None,
            response_code: None,
            sealed_response_code: None,
        };
        // Kept a day past expiry so the result (or "expired") stays readable.
        self.ctx
            .store
            .put_json(
                ks::SESSIONS,
                &session_key(verifier_id, &id),
                &session,
                Some(Duration::from_secs(ttl + 86_400)),
            )
            .await?;
        let request_uri = format!("{}/requests/{id}", self.base(verifier_id));
        let authorization_request = if v.did.is_some() {
            format!(
                "openid4vp://?client_id={}&request_uri={}",
                urlencode(&client_id),
                urlencode(&request_uri)
            )
        } else {
            by_value_request(&v, &session, self)?
        };
        Ok(SessionCreated {
            id,
            authorization_request,
            request_uri,
            expires_at: session.expires_at,
        })
    }

    /// A fresh response encryption key for session `id`, sealed (base64url) for its record.
    fn new_encryption_key(&self, verifier_id: &str, id: &str) -> Result<String, VerifierError> {
        let k = EncryptionKey::generate();
        let sealed = self
            .ctx
            .sealer
            .seal(session_key_aad(verifier_id, id).as_bytes(), &k.to_bytes())?;
        Ok(crate::crypto::b64url(sealed))
    }

    pub(super) async fn load_session(
        &self,
        verifier_id: &str,
        id: &str,
    ) -> Result<Session, VerifierError> {
        self.ctx
            .store
            .get_json::<Session>(ks::SESSIONS, &session_key(verifier_id, id))
            .await?
            .ok_or_else(|| VerifierError::NoSession(id.to_string()))
    }

    pub async fn session_view(
        &self,
        verifier_id: &str,
        id: &str,
    ) -> Result<SessionView, VerifierError> {
        self.get_verifier(verifier_id).await?;
        let s = self.load_session(verifier_id, id).await?;
        Ok(self.opened(&s)?.view(self.now()))
    }

    pub async fn list_sessions(
        &self,
        verifier_id: &str,
    ) -> Result<Vec<SessionView>, VerifierError> {
        self.get_verifier(verifier_id).await?;
        let now = self.now();
        self.ctx
            .store
            .scan_json::<Session>(ks::SESSIONS, &format!("{verifier_id}/"), 1000)
            .await?
            .into_iter()
            .map(|(_, s)| match self.opened(&s) {
                Ok(s) => Ok(s.view(now)),
                // One damaged record does not hide the others: listed without its claims.
                Err(e) => {
                    tracing::warn!(verifier = %verifier_id, session = %s.id, error = %e, "session claims do not open");
                    let mut view = s.view(now);
                    view.claims_unavailable = true;
                    Ok(view)
                }
            })
            .collect()
    }

    /// The request object (`request_uri`): signed when the verifier has a key, else `alg: none`.
    pub async fn request_object(
        &self,
        verifier_id: &str,
        id: &str,
        wallet_nonce: Option<String>,
    ) -> Result<String, VerifierError> {
        let v = self.get_verifier(verifier_id).await?;
        let s = self.load_session(verifier_id, id).await?;
        if s.expires_at <= self.now() {
            return Err(VerifierError::SessionExpired);
        }
        if s.state != SessionState::Pending {
            return Err(VerifierError::SessionFinished);
        }
        let client_metadata = client_metadata(&v, &s, self)?;
        let now = self.now();
        let mut payload = json!({
            "response_type": "vp_token",
            "client_id": s.client_id,
            "response_uri": s.response_uri,
            "response_mode": s.response_mode.as_str(),
            "nonce": s.nonce,
            "state": s.state_param,
            "client_metadata": client_metadata,
            "iat": now,
            "exp": s.expires_at,
            "aud": "https://self-issued.me/v2",
        });
        if let Some(q) = &s.dcql_query {
            payload["dcql_query"] = q.clone();
        }
        if let Some(pd) = &s.presentation_definition {
            payload["presentation_definition"] = pd.clone();
            payload["client_id_scheme"] = json!(if v.did.is_some() {
                "did"
            } else {
                "redirect_uri"
            });
        }
        if let Some(wn) = wallet_nonce {
            payload["wallet_nonce"] = json!(wn);
        }
        match self.signing_key(&v).await? {
            Some(key) => Ok(jws::sign(
                &key,
                json!({"typ": "oauth-authz-req+jwt", "kid": v.verification_method}),
                &payload,
            )),
            None => {
                let h = crate::crypto::b64url(
                    json!({"alg": "none", "typ": "oauth-authz-req+jwt"}).to_string(),
                );
                Ok(format!(
                    "{h}.{}.",
                    crate::crypto::b64url(payload.to_string())
                ))
            }
        }
    }
}

pub(super) fn client_metadata(
    v: &Verifier,
    s: &Session,
    svc: &VerifierService,
) -> Result<Value, VerifierError> {
    let algs = json!(["EdDSA", "ES256", "ES256K"]);
    let mut m = if s.presentation_definition.is_some() {
        // the draft (pre-1.0) shape that presentation_definition wallets understand
        json!({
            "vp_formats": {
                "vc+sd-jwt": {"sd-jwt_alg_values": algs, "kb-jwt_alg_values": algs},
                "dc+sd-jwt": {"sd-jwt_alg_values": algs, "kb-jwt_alg_values": algs},
                "jwt_vp_json": {"alg": algs},
                "jwt_vc_json": {"alg": algs},
            },
            "client_name": v.display_name,
        })
    } else {
        // Every format a query of this session asks for (OID4VP 1.0 §5.1, Appendix B).
        let mut formats = serde_json::Map::new();
        formats.insert(
            "dc+sd-jwt".into(),
            json!({"sd-jwt_alg_values": algs, "kb-jwt_alg_values": algs}),
        );
        formats.insert("jwt_vc_json".into(), json!({"alg_values": algs}));
        let asked = s
            .dcql_query
            .as_ref()
            .and_then(|q| q["credentials"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| c["format"].as_str());
        for f in asked {
            let entry = match f {
                "vc+sd-jwt" => json!({"sd-jwt_alg_values": algs, "kb-jwt_alg_values": algs}),
                "ldp_vc" => json!({
                    "proof_type_values": ["DataIntegrityProof"],
                    "cryptosuite_values": ["eddsa-rdfc-2022"],
                }),
                // COSE ES256 (-7) for issuerAuth and deviceSignature (OID4VP 1.0 B.2.1)
                "mso_mdoc" => json!({
                    "issuerauth_alg_values": [-7],
                    "deviceauth_alg_values": [-7],
                }),
                _ => continue,
            };
            formats.insert(f.to_string(), entry);
        }
        json!({
            "vp_formats_supported": formats,
            "client_name": v.display_name,
        })
    };
    if let Some(sealed) = &s.encryption_key {
        let k = svc.encryption_key(&s.verifier, &s.id, sealed)?;
        m["jwks"] = json!({"keys": [k.public_jwk(&format!("enc-{}", s.id))]});
        m["encrypted_response_enc_values_supported"] = json!(["A128GCM", "A256GCM"]);
        // pre-1.0 wallets read these
        m["authorization_encrypted_response_alg"] = json!("ECDH-ES");
        m["authorization_encrypted_response_enc"] = json!("A256GCM");
    }
    Ok(m)
}

fn validate_dcql(q: &Value) -> Result<(), VerifierError> {
    crate::dcql::check_query(q).map_err(invalid)?;
    let creds = q["credentials"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| invalid("dcql_query.credentials must be a non-empty array"))?;
    let mut ids = Vec::new();
    for c in creds {
        let id = c["id"]
            .as_str()
            .filter(|i| {
                !i.is_empty()
                    && i.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            })
            .ok_or_else(|| {
                invalid("each credential query needs an id of letters, digits, _ and -")
            })?;
        if ids.contains(&id) {
            return Err(invalid(format!("duplicate credential query id `{id}`")));
        }
        ids.push(id);
        check_credential_query(id, c)?;
    }
    Ok(())
}

/// DCQL `trusted_authorities` (OID4VP 1.0 §6.1.1): enforced, never ignored, so a query accepts
/// only what it can be held to — type `aki` (the key identifier of an authority over the
/// credential's X.509 chain, base64url) on mso_mdoc queries. Other types and formats: 422.
fn check_trusted_authorities(id: &str, c: &Value) -> Result<(), VerifierError> {
    let Some(ta) = c.get("trusted_authorities") else {
        return Ok(());
    };
    let list = ta.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
        invalid(format!(
            "credential query `{id}`: trusted_authorities must be a non-empty array"
        ))
    })?;
    if c["format"] != "mso_mdoc" {
        return Err(invalid(format!(
            "credential query `{id}`: trusted_authorities is supported for mso_mdoc queries only"
        )));
    }
    for a in list {
        if a["type"] != "aki" {
            return Err(invalid(format!(
                "credential query `{id}`: trusted_authorities type {} is not supported (aki)",
                a["type"]
            )));
        }
        let ok = a["values"].as_array().is_some_and(|v| {
            !v.is_empty()
                && v.iter().all(|x| {
                    x.as_str().is_some_and(|s| {
                        crate::crypto::b64url_decode(s).is_ok_and(|b| !b.is_empty())
                    })
                })
        });
        if !ok {
            return Err(invalid(format!(
                "credential query `{id}`: trusted_authorities values must be base64url key identifiers"
            )));
        }
    }
    Ok(())
}

/// One credential query of a DCQL query: a supported format, its `meta`, its claims.
fn check_credential_query(id: &str, c: &Value) -> Result<(), VerifierError> {
    match c["format"].as_str() {
        Some("dc+sd-jwt" | "vc+sd-jwt" | "jwt_vc_json" | "ldp_vc") => {}
        Some("mso_mdoc") => {
            if c["meta"]["doctype_value"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                return Err(invalid(format!(
                    "credential query `{id}`: mso_mdoc needs meta.doctype_value (e.g. \"org.iso.18013.5.1.mDL\")"
                )));
            }
        }
        other => {
            return Err(invalid(format!(
                "credential query `{id}`: unsupported format {other:?}"
            )))
        }
    }
    check_trusted_authorities(id, c)?;
    // `meta` is REQUIRED (OID4VP 1.0 §6.1); its members are per format (Appendix B).
    let meta = c["meta"].as_object().ok_or_else(|| {
        invalid(format!(
            "credential query `{id}`: `meta` is required (an object; e.g. {{\"vct_values\": [...]}} for dc+sd-jwt, {{\"type_values\": [[...]]}} for W3C formats, or {{}})"
        ))
    })?;
    if let Some(v) = meta.get("vct_values") {
        let ok = v.as_array().is_some_and(|a| {
            !a.is_empty() && a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty()))
        });
        if !ok {
            return Err(invalid(format!(
                "credential query `{id}`: meta.vct_values must be a non-empty array of strings"
            )));
        }
    }
    if let Some(v) = meta.get("type_values") {
        let ok = v.as_array().is_some_and(|sets| {
            !sets.is_empty()
                && sets.iter().all(|set| {
                    set.as_array().is_some_and(|ts| {
                        !ts.is_empty()
                            && ts.iter().all(|t| t.as_str().is_some_and(|s| !s.is_empty()))
                    })
                })
        });
        if !ok {
            return Err(invalid(format!(
                "credential query `{id}`: meta.type_values must be a non-empty array of non-empty arrays of strings"
            )));
        }
    }
    if let Some(b) = c.get("require_cryptographic_holder_binding") {
        if !b.is_boolean() {
            return Err(invalid(format!(
                "credential query `{id}`: require_cryptographic_holder_binding must be a boolean"
            )));
        }
    }
    if let Some(claims) = c.get("claims") {
        let ok = claims.as_array().is_some_and(|a| {
            a.iter()
                .all(|cl| cl["path"].as_array().is_some_and(|p| !p.is_empty()))
        });
        if !ok {
            return Err(invalid(format!(
                "credential query `{id}`: every claim needs a non-empty path"
            )));
        }
    }
    Ok(())
}

/// The `constraints` members a definition may carry: `fields` (enforced) and `limit_disclosure`
/// (what the holder may disclose: the wallet's rule, nothing a verifier checks). Any other —
/// `same_subject`, `is_holder`, `subject_is_issuer`, `statuses` — the matcher would ignore, so it
/// is refused (attacker review: a `same_subject` definition was answered by two holders'
/// credentials, each bound to its own holder).
const CONSTRAINT_MEMBERS: [&str; 2] = ["fields", "limit_disclosure"];

/// Whether the verifier enforces restriction `restriction` of a `format` entry for `format`
/// (per credential, `query::restriction_refusal`): `alg` (JWT VCs and presentations, mso_mdoc),
/// `sd-jwt_alg_values` and `kb-jwt_alg_values` (SD-JWT), `proof_type` (Data Integrity).
fn restriction_enforced(format: &str, restriction: &str) -> bool {
    matches!(
        (super::query::format_family(format), restriction),
        (Some("jwt" | "mso_mdoc"), "alg")
            | (Some("sd-jwt"), "sd-jwt_alg_values" | "kb-jwt_alg_values")
            | (Some("ldp"), "proof_type")
    )
}

/// A definition's or a descriptor's `format`: an object of formats, each an object of
/// restrictions the verifier enforces, each a non-empty list of names; any other restriction
/// would be ignored, so it is refused.
fn validate_format(whose: &str, format: &Value) -> Result<(), VerifierError> {
    let formats = format
        .as_object()
        .ok_or_else(|| invalid(format!("{whose}: format must be an object")))?;
    for (name, restrictions) in formats {
        let restrictions = restrictions.as_object().ok_or_else(|| {
            invalid(format!(
                "{whose}: format `{}` must map to an object",
                clip(name)
            ))
        })?;
        for (r, values) in restrictions {
            if !restriction_enforced(name, r) {
                return Err(invalid(format!(
                    "{whose}: format `{}` restriction `{}` is not supported (it would be ignored)",
                    clip(name),
                    clip(r)
                )));
            }
            let listed = values
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
            if !listed {
                return Err(invalid(format!(
                    "{whose}: format `{}` restriction `{}` must be a non-empty array of names",
                    clip(name),
                    clip(r)
                )));
            }
        }
    }
    // A family's entries of one level are alternatives (`jwt_vc` or `jwt_vc_json`): when none
    // can ever be met, no session could verify — said now rather than at every response.
    let level = |name: &str| name.starts_with("jwt_vp") || name.starts_with("ldp_vp");
    for (name, _) in formats {
        let family = super::query::format_family(name);
        let group = formats
            .iter()
            .filter(|(n, _)| super::query::format_family(n) == family && level(n) == level(name));
        if group.clone().all(|(n, rs)| !can_be_met(n, rs)) {
            return Err(invalid(format!(
                "{whose}: format `{}`: no credential this verifier accepts is signed as it asks (JWTs: EdDSA, ES256, ES256K; mso_mdoc: ES256; Data Integrity: DataIntegrityProof)",
                clip(name)
            )));
        }
    }
    Ok(())
}

/// Whether some credential the verifier accepts meets every restriction of entry `name`.
fn can_be_met(name: &str, restrictions: &Value) -> bool {
    let possible: &[&str] = match super::query::format_family(name) {
        Some("mso_mdoc") => &["ES256"],
        Some("ldp") => &["DataIntegrityProof"],
        _ => &["EdDSA", "ES256", "ES256K"],
    };
    restrictions
        .as_object()
        .into_iter()
        .flatten()
        .all(|(_, listed)| {
            listed.as_array().is_some_and(|l| {
                l.iter()
                    .any(|x| x.as_str().is_some_and(|x| possible.contains(&x)))
            })
        })
}

/// A presentation definition whose every field can be enforced: `constraints.fields` an array of
/// fields, each with a non-empty `path` of strings and, if any, a `filter` of the JSON Schema
/// subset [`Filter`] evaluates. Enforced, never ignored: a constraint the matcher would skip
/// (a `fields` that is not an array, an unknown filter keyword, a constraint other than `fields`
/// and `limit_disclosure`, a `format` restriction it does not check) is refused here instead.
fn validate_definition(pd: &Value) -> Result<(), VerifierError> {
    let descriptors = pd["input_descriptors"]
        .as_array()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| invalid("presentation_definition needs input_descriptors"))?;
    if let Some(f) = pd.get("format") {
        validate_format("presentation_definition", f)?;
    }
    // Every input descriptor is required here; submission requirements (pick n of a group)
    // would be silently stricter than asked, so a definition with them is refused.
    if pd.get("submission_requirements").is_some() {
        return Err(invalid(
            "presentation_definition: submission_requirements are not supported (every input descriptor is required); use DCQL credential_sets",
        ));
    }
    for d in descriptors {
        let id = clip(d["id"].as_str().unwrap_or_default());
        if let Some(f) = d.get("format") {
            validate_format(&format!("input descriptor `{id}`"), f)?;
        }
        let Some(constraints) = d.get("constraints") else {
            continue;
        };
        let Some(members) = constraints.as_object() else {
            return Err(invalid(format!(
                "input descriptor `{id}`: constraints must be an object"
            )));
        };
        if let Some(m) = members
            .keys()
            .find(|m| !CONSTRAINT_MEMBERS.contains(&m.as_str()))
        {
            return Err(invalid(format!(
                "input descriptor `{id}`: constraints.{} is not supported (it would be ignored); use DCQL, or leave it out",
                clip(m)
            )));
        }
        let Some(fields) = constraints.get("fields") else {
            continue;
        };
        let fields = fields.as_array().ok_or_else(|| {
            invalid(format!(
                "input descriptor `{id}`: constraints.fields must be an array"
            ))
        })?;
        for (i, f) in fields.iter().enumerate() {
            let paths_ok = f["path"].as_array().is_some_and(|p| {
                !p.is_empty()
                    && p.iter()
                        .all(|x| x.as_str().is_some_and(super::query::json_path_supported))
            });
            if !paths_ok {
                return Err(invalid(format!(
                    "input descriptor `{id}`, field {i}: path must be a non-empty array of JSONPath strings of names, indexes and [*] (no .., .*, filter or script expressions)"
                )));
            }
            if let Some(filter) = f.get("filter") {
                Filter::compile(filter)
                    .map_err(|why| invalid(format!("input descriptor `{id}`, field {i}: {why}")))?;
            }
        }
    }
    Ok(())
}

/// Exactly one of a DCQL query or a presentation definition, well-formed.
fn check_query(req: &CreateSession) -> Result<(), VerifierError> {
    match (&req.dcql_query, &req.presentation_definition) {
        (Some(q), None) => validate_dcql(q)?,
        (None, Some(pd)) => validate_definition(pd)?,
        _ => {
            return Err(invalid(
                "send exactly one of dcql_query or presentation_definition",
            ))
        }
    }
    Ok(())
}

/// The policies a session applies: all by default; a list is completed with the ones that are
/// always on.
fn session_policies(asked: Option<Vec<String>>) -> Result<Vec<String>, VerifierError> {
    Ok(match asked {
        None => ALL_POLICIES.iter().map(|p| p.to_string()).collect(),
        Some(list) => {
            if let Some(bad) = list.iter().find(|p| !ALL_POLICIES.contains(&p.as_str())) {
                return Err(invalid(format!(
                    "unknown policy `{bad}`; known: {}",
                    ALL_POLICIES.join(", ")
                )));
            }
            let mut l: Vec<String> = list;
            for must in [
                "signature",
                "holder_binding",
                "nonce_audience",
                "query_match",
            ] {
                if !l.iter().any(|p| p == must) {
                    l.push(must.into());
                }
            }
            l
        }
    })
}

/// The authorization request of a verifier without a key, by value.
fn by_value_request(
    v: &Verifier,
    session: &Session,
    svc: &VerifierService,
) -> Result<String, VerifierError> {
    // redirect_uri client identifiers cannot sign, and wallets refuse unsigned request
    // objects by reference: pass the request by value.
    let mut q = format!(
        "openid4vp://?client_id={}&response_type=vp_token&response_mode={}&response_uri={}&nonce={}&state={}",
        urlencode(&session.client_id),
        session.response_mode.as_str(),
        urlencode(&session.response_uri),
        urlencode(&session.nonce),
        urlencode(&session.state_param)
    );
    if let Some(dq) = &session.dcql_query {
        q.push_str(&format!("&dcql_query={}", urlencode(&dq.to_string())));
    }
    if let Some(pd) = &session.presentation_definition {
        q.push_str(&format!(
            "&presentation_definition={}&client_id_scheme=redirect_uri",
            urlencode(&pd.to_string())
        ));
    }
    q.push_str(&format!(
        "&client_metadata={}",
        urlencode(&client_metadata(v, session, svc)?.to_string())
    ));
    Ok(q)
}
