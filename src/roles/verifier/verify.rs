//! Verification of presented credentials: every check is a named policy whose result (passed,
//! reason) goes into the result. The same engine serves OID4VP sessions (`query.rs`) and the VC-API
//! verify endpoints (`vc_api.rs`). Issuer keys come only from [`crate::crypto::binding`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use super::model::{PolicyResult, PresentedCredential, ALL_POLICIES};
use crate::crypto::binding::{self, IssuerKey, Issuers};
use crate::crypto::{did, jws, sdjwt, status::StatusArray, VerifyingKey};

const SKEW: i64 = 60;
const KB_MAX_AGE: i64 = 300;

/// What a presentation must be bound to: the session's nonce and the verifier's client id
/// (OID4VP: both, always), or the VC-API caller's `challenge` / `domain` (each checked when
/// given; `None` is not checked).
#[derive(Clone, Copy)]
pub struct Audience<'a> {
    pub nonce: Option<&'a str>,
    pub client_id: Option<&'a str>,
}

impl Audience<'_> {
    /// A presentation's `nonce` and `aud` (a string or a list) against this audience.
    fn nonce_ok(&self, nonce: &Value) -> bool {
        self.nonce.is_none_or(|n| nonce.as_str() == Some(n))
    }
    fn aud_ok(&self, aud: &Value) -> bool {
        self.client_id.is_none_or(|c| match aud {
            Value::String(a) => a == c,
            Value::Array(a) => a.iter().any(|x| x.as_str() == Some(c)),
            _ => false,
        })
    }
}

/// Context a verification runs in.
pub struct Ctx<'a> {
    /// OID4VP: the session's query (one of the two).
    pub dcql_query: Option<&'a Value>,
    pub presentation_definition: Option<&'a Value>,
    /// `None`: no nonce/audience to check (VC-API without `options`); presentations are still
    /// checked for their holder's signature.
    pub audience: Option<Audience<'a>>,
    pub now: i64,
    pub http: &'a reqwest::Client,
    pub trust: &'a Trust,
    pub status_cache: &'a StatusCache,
    /// CA certificates an SD-JWT VC issuer's `x5c` may chain to (`x509.trust_anchors`).
    pub anchors: &'a crate::crypto::x509::TrustAnchors,
    /// The `status` policy fails for a credential that carries no status reference.
    pub require_status: bool,
    /// mso_mdoc: the encoded SessionTranscript a device signature must cover (OID4VP 1.0
    /// Appendix B.2.6); `None` where there is no OpenID4VP request (VC-API).
    pub mdoc_transcript: Option<&'a [u8]>,
}

/// Fetched status-list tokens by URI with their ETag: every use revalidates with `If-None-Match`
/// (a revocation is seen at once; an unchanged list costs a 304 with no body). Only tokens whose
/// signature verified are kept, and the cache is bounded by total bytes
/// (`http.outbound.status_list_cache_bytes`), oldest first out. The signature is re-checked on
/// every use.
#[derive(Default)]
pub struct StatusCache {
    inner: std::sync::Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// uri → (etag, token, generation)
    entries: std::collections::HashMap<String, (String, String, u64)>,
    /// Insertion order for eviction: (uri, generation); stale generations are skipped.
    order: std::collections::VecDeque<(String, u64)>,
    bytes: usize,
    next_gen: u64,
}

impl StatusCache {
    fn get(&self, uri: &str) -> Option<(String, String)> {
        let m = self.inner.lock().ok()?;
        m.entries.get(uri).map(|(e, t, _)| (e.clone(), t.clone()))
    }

    /// Stores a verified token, evicting the oldest entries to stay within `max_bytes`.
    fn put(&self, uri: &str, etag: String, token: String, max_bytes: usize) {
        let size = uri.len() + etag.len() + token.len();
        let Ok(mut m) = self.inner.lock() else {
            return;
        };
        if let Some((e, t, _)) = m.entries.remove(uri) {
            m.bytes -= uri.len() + e.len() + t.len();
        }
        if size > max_bytes {
            return;
        }
        while m.bytes + size > max_bytes {
            let Some((old, generation)) = m.order.pop_front() else {
                break;
            };
            if m.entries
                .get(&old)
                .is_some_and(|(_, _, g)| *g == generation)
            {
                if let Some((e, t, _)) = m.entries.remove(&old) {
                    m.bytes -= old.len() + e.len() + t.len();
                }
            }
        }
        let generation = m.next_gen;
        m.next_gen += 1;
        m.bytes += size;
        m.entries.insert(uri.to_string(), (etag, token, generation));
        m.order.push_back((uri.to_string(), generation));
        // Stale order entries (replaced URIs) are bounded by the live ones.
        if m.order.len() > 2 * m.entries.len() + 16 {
            let CacheInner { entries, order, .. } = &mut *m;
            order.retain(|(u, g)| entries.get(u).is_some_and(|(_, _, eg)| eg == g));
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().map(|m| m.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod status_cache_tests {
    use super::StatusCache;

    #[test]
    fn bounded_by_bytes_oldest_out_replacements_counted_once() {
        let c = StatusCache::default();
        let token = "t".repeat(1000);
        for i in 0..100 {
            c.put(&format!("https://s/{i}"), "e".into(), token.clone(), 10_000);
            assert!(c.bytes() <= 10_000);
        }
        assert!(c.get("https://s/0").is_none());
        assert!(c.get("https://s/99").is_some());
        // Replacing one URI over and over keeps one entry's bytes.
        for _ in 0..100 {
            c.put("https://s/99", "e".into(), token.clone(), 10_000);
        }
        assert!(c.bytes() <= 10_000);
        // A token larger than the whole budget is not kept (and drops the old one).
        c.put("https://s/99", "e".into(), "x".repeat(20_000), 10_000);
        assert!(c.get("https://s/99").is_none());
    }
}

/// Accumulates policy outcomes: a policy passes when it ran and nothing failed it.
#[derive(Default)]
pub struct Outcome {
    failures: BTreeMap<&'static str, Vec<String>>,
    ran: std::collections::BTreeSet<&'static str>,
    pub credentials: Vec<PresentedCredential>,
    /// Set when a JSON-LD verification hit a resource limit (too complex, or no free slot): the
    /// input was not judged, and VC-API answers with that error rather than a verdict.
    pub limit: Option<crate::crypto::CryptoError>,
}

fn over_limit(out: &mut Outcome, e: &crate::crypto::CryptoError) {
    use crate::crypto::CryptoError;
    if matches!(e, CryptoError::TooComplex(_) | CryptoError::Busy(_)) {
        out.limit = Some(e.clone());
    }
}

impl Outcome {
    pub fn pass(&mut self, policy: &'static str) {
        self.ran.insert(policy);
    }
    pub fn fail(&mut self, policy: &'static str, reason: impl Into<String>) {
        self.ran.insert(policy);
        self.failures.entry(policy).or_default().push(reason.into());
    }
    pub fn results(&self, enabled: &[String]) -> Vec<PolicyResult> {
        ALL_POLICIES
            .iter()
            .filter(|p| enabled.iter().any(|e| e == *p))
            .map(|p| match self.failures.get(p) {
                Some(reasons) => PolicyResult {
                    name: p.to_string(),
                    passed: false,
                    reason: Some(reasons.join("; ")),
                },
                None if self.ran.contains(p) => PolicyResult {
                    name: p.to_string(),
                    passed: true,
                    reason: None,
                },
                None => PolicyResult {
                    name: p.to_string(),
                    passed: false,
                    reason: Some("not evaluated: no credential reached this check".into()),
                },
            })
            .collect()
    }
}

/// A verified credential as the query matcher sees it.
pub struct Checked {
    pub query_id: String,
    pub format: String,
    /// The object DCQL claim paths are resolved against (SD-JWT: disclosed claims; W3C: the VC).
    pub root: Value,
    /// vct (SD-JWT) or types (W3C).
    pub vct: Option<String>,
    pub types: Vec<String>,
    /// mso_mdoc: the document type.
    pub doctype: Option<String>,
    pub issuer: Option<String>,
}

/// Parses an RFC 3339 / XML Schema dateTime; `Err` for a present but unparseable value.
fn date(v: &Value, name: &str) -> Result<Option<i64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|d| Some(d.timestamp()))
            .map_err(|_| format!("{name} `{s}` is not a valid date-time")),
        other => Err(format!("{name} {other} is not a date-time string")),
    }
}

/// A NumericDate claim (`exp`, `nbf`, `iat`); `Err` for a present but non-numeric value.
fn numeric(v: &Value, name: &str) -> Result<Option<i64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| format!("{name} is not a NumericDate")),
        _ => Err(format!("{name} is not a NumericDate")),
    }
}

/// The validity window a credential states: JWT `nbf`/`exp` and the W3C `validFrom`/`validUntil`
/// (VCDM 2.0) or `issuanceDate`/`expirationDate` (VCDM 1.1) of `vc` — the strictest of them.
fn window(jwt: &Value, vc: &Value) -> Result<(Option<i64>, Option<i64>), String> {
    let mut from = numeric(&jwt["nbf"], "nbf")?;
    let mut until = numeric(&jwt["exp"], "exp")?;
    for (k, is_from) in [
        ("validFrom", true),
        ("issuanceDate", true),
        ("validUntil", false),
        ("expirationDate", false),
    ] {
        if let Some(t) = date(&vc[k], k)? {
            if is_from {
                from = Some(from.map_or(t, |f| f.max(t)));
            } else {
                until = Some(until.map_or(t, |u| u.min(t)));
            }
        }
    }
    Ok((from, until))
}

/// The `validity` policy for one credential (or presentation).
fn check_time(out: &mut Outcome, jwt: &Value, vc: &Value, now: i64, what: &str) {
    match window(jwt, vc) {
        Err(e) => out.fail("validity", format!("{what}: {e}")),
        Ok((_, Some(until))) if until + SKEW <= now => {
            out.fail("validity", format!("{what} expired at {until}"))
        }
        Ok((Some(from), _)) if from - SKEW > now => {
            out.fail("validity", format!("{what} not valid before {from}"))
        }
        Ok(_) => out.pass("validity"),
    }
}

/// The issuers a verification trusts (`issuer_allowlist`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// `verifier.trust = "any"`: every issuer whose key binding and signature verify.
    Any,
    /// Exactly these issuer identifiers; an empty list trusts no one.
    Only(Vec<String>),
}

fn check_issuer(out: &mut Outcome, ctx: &Ctx<'_>, iss: &str) {
    match ctx.trust {
        Trust::Any => out.pass("issuer_allowlist"),
        Trust::Only(list) if list.iter().any(|t| t == iss) => out.pass("issuer_allowlist"),
        Trust::Only(list) if list.is_empty() => out.fail(
            "issuer_allowlist",
            format!("issuer {iss}: this verifier trusts no issuer (set trusted_issuers)"),
        ),
        Trust::Only(_) => out.fail("issuer_allowlist", format!("issuer {iss} is not trusted")),
    }
}

/// The `signature` policy for an issuer-signed JWT: the key is bound to the issuer the token names
/// (see [`binding`]) before the signature is checked with it.
async fn issuer_jwt(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    what: &str,
    token: &str,
    allowed: Issuers<'_>,
) -> Option<(IssuerKey, Value)> {
    match binding::verify_issuer_jwt(token, allowed, ctx.http).await {
        Ok((bound, _, payload)) => {
            out.pass("signature");
            Some((bound, payload))
        }
        Err(e) => {
            out.fail("signature", format!("{what}: {e} [{}]", e.code()));
            None
        }
    }
}

/// The `status` policy when the credential carries no status reference.
fn no_status(ctx: &Ctx<'_>, out: &mut Outcome, what: &str) {
    if ctx.require_status {
        out.fail(
            "status",
            format!("{what}: no status reference, and this verifier requires one"),
        );
    } else {
        out.pass("status");
    }
}

/// A fetched status list (signature already checked with the credential issuer's key) must not
/// name another issuer.
fn list_issuer_ok(list: &Value, issuer: &IssuerKey) -> Result<(), String> {
    match binding::jwt_issuer(list) {
        Ok(i) if i != issuer.issuer => Err(format!(
            "the status list is issued by {i}, not by the credential's issuer"
        )),
        _ => Ok(()),
    }
}

/// Fetches a status list token (size/time bounded, through the outbound guard) and verifies it
/// with the issuer's key; only a verified token is cached. Error texts never carry the remote body.
async fn fetch_status(ctx: &Ctx<'_>, uri: &str, key: &VerifyingKey) -> Result<Value, String> {
    use crate::http::outbound::{limits, read_capped};
    if !(uri.starts_with("https://") || uri.starts_with("http://")) {
        return Err("status list URI is not http(s)".into());
    }
    let limits = limits();
    let cached = ctx.status_cache.get(uri);
    let mut req = ctx.http.get(uri).timeout(Duration::from_secs(5));
    if let Some((etag, _)) = &cached {
        req = req.header("If-None-Match", etag);
    }
    let r = crate::http::outbound::send(req)
        .await
        .map_err(|e| format!("status list: {e}"))?;
    let (token, fresh_etag) = match (r.status().as_u16(), cached) {
        (304, Some((_, t))) => (t, None),
        (s, _) if (200..300).contains(&s) => {
            let etag = r
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .filter(|e| e.len() <= 256)
                .map(str::to_string);
            let body = read_capped(r, limits.max_body_bytes)
                .await
                .map_err(|e| format!("status list: {e}"))?;
            (String::from_utf8_lossy(&body).trim().to_string(), etag)
        }
        (s, _) => return Err(format!("status list: HTTP {s}")),
    };
    let (_, payload) =
        jws::verify(&token, key).map_err(|e| format!("status list signature: {e}"))?;
    if let Some(etag) = fresh_etag {
        ctx.status_cache
            .put(uri, etag, token, limits.status_list_cache_bytes);
    }
    Ok(payload)
}

/// The SD-JWT VC status entry (Token Status List).
async fn token_status(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    status: &Value,
    issuer: &IssuerKey,
) {
    let Some(sl) = status["status_list"].as_object() else {
        return no_status(ctx, out, query_id);
    };
    let idx = sl.get("idx").and_then(Value::as_u64);
    let uri = sl.get("uri").and_then(Value::as_str).unwrap_or_default();
    let list = match (idx, fetch_status(ctx, uri, &issuer.key).await) {
        (None, _) => return out.fail("status", format!("{query_id}: status entry has no idx")),
        (_, Err(e)) => return out.fail("status", format!("{query_id}: {e}")),
        (Some(idx), Ok(list)) => (idx, list),
    };
    let (idx, list) = list;
    if let Err(e) = list_issuer_ok(&list, issuer) {
        return out.fail("status", format!("{query_id}: {e}"));
    }
    let bits = list["status_list"]["bits"].as_u64().unwrap_or(1) as u8;
    let lst = list["status_list"]["lst"].as_str().unwrap_or_default();
    match StatusArray::from_token_lst(bits, lst).and_then(|a| a.get_lsb(idx)) {
        Ok(0) => out.pass("status"),
        Ok(1) => out.fail("status", format!("{query_id}: revoked")),
        Ok(2) => out.fail("status", format!("{query_id}: suspended")),
        Ok(v) => out.fail("status", format!("{query_id}: status {v}")),
        Err(e) => out.fail("status", format!("{query_id}: status list: {e}")),
    }
}

/// dc+sd-jwt presentation with key binding (`holder_binding`: a KB-JWT is required; when the
/// query waives it, a presentation without one is accepted and one that is present is still
/// checked in full).
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
        Ok(v) => {
            out.pass("disclosure_integrity");
            v
        }
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
    match &verified.key_binding {
        None if !holder_binding => {
            // The verifier asked for no holder binding: nothing ties this presentation to the
            // session's nonce, which the query accepted.
            out.pass("holder_binding");
            if ctx.audience.is_some() {
                out.pass("nonce_audience");
            }
        }
        None => out.fail("holder_binding", format!("{query_id}: no key-binding JWT")),
        Some(kb) => {
            out.pass("holder_binding");
            match ctx.audience {
                None => {}
                Some(aud) => {
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
                    } else if iat
                        .is_none_or(|iat| iat < ctx.now - KB_MAX_AGE || iat > ctx.now + SKEW)
                    {
                        out.fail(
                            "nonce_audience",
                            format!(
                                "{query_id}: KB-JWT iat missing or outside the accepted window"
                            ),
                        );
                    } else {
                        out.pass("nonce_audience");
                    }
                }
            }
        }
    }
    check_time(out, &payload, &Value::Null, ctx.now, query_id);
    check_issuer(out, ctx, &issuer.issuer);
    token_status(ctx, out, query_id, &payload["status"], &issuer).await;
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
        claims: claims.clone(),
    });
    Some(Checked {
        query_id: query_id.to_string(),
        format: "dc+sd-jwt".into(),
        root: Value::Object(verified.claims),
        vct: payload["vct"].as_str().map(str::to_string),
        doctype: None,
        types: Vec::new(),
        issuer: Some(issuer.issuer),
    })
}

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
    let (issuer, p) = issuer_jwt(ctx, out, query_id, vc, Issuers::Did).await?;
    let vc_obj = jwt_vc_object(&p);
    check_time(out, &p, &vc_obj, ctx.now, query_id);
    check_issuer(out, ctx, &issuer.issuer);
    w3c_status(ctx, out, query_id, &vc_obj["credentialStatus"], &issuer).await;
    out.pass("disclosure_integrity");
    let subject = vc_obj["credentialSubject"]["id"]
        .as_str()
        .or(p["sub"].as_str())
        .map(str::to_string);
    let mut claims = vc_obj["credentialSubject"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    claims.remove("id");
    out.credentials.push(PresentedCredential {
        query_id: query_id.to_string(),
        format: "jwt_vc_json".into(),
        issuer: Some(issuer.issuer.clone()),
        claims,
    });
    Some((
        Checked {
            query_id: query_id.to_string(),
            format: "jwt_vc_json".into(),
            types: types_of(&vc_obj),
            root: vc_obj,
            vct: None,
            doctype: None,
            issuer: Some(issuer.issuer),
        },
        subject,
    ))
}

fn types_of(vc: &Value) -> Vec<String> {
    match &vc["type"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
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
    let (holder_key, holder_did) = match header_holder(&header, &payload, ctx.http).await {
        Ok(v) => v,
        Err(e) => {
            out.fail("signature", format!("{query_id}: presentation key: {e}"));
            return Vec::new();
        }
    };
    if let Err(e) = jws::verify(vp, &holder_key) {
        out.fail(
            "signature",
            format!("{query_id}: presentation signature: {e}"),
        );
        return Vec::new();
    }
    out.pass("signature");
    jwt_audience(ctx, out, query_id, &payload);
    check_time(
        out,
        &payload,
        &Value::Null,
        ctx.now,
        &format!("{query_id} presentation"),
    );
    // VCDM 1.1 `vp` claim, or a VC-JOSE `vp+jwt` whose payload is the presentation; credentials
    // as compact JWTs or VC-JOSE-COSE envelopes of them.
    let vp_obj = if payload["vp"].is_object() {
        &payload["vp"]
    } else {
        &payload
    };
    let jwt_of = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        other => crate::crypto::envelope::enveloped_vc_jwt(other)
            .and_then(Result::ok)
            .map(str::to_string),
    };
    let vcs: Vec<String> = match &vp_obj["verifiableCredential"] {
        Value::Array(a) => a.iter().filter_map(jwt_of).collect(),
        other => jwt_of(other).into_iter().collect(),
    };
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
        if subject.is_some() && holder_did == subject {
            out.pass("holder_binding");
        } else {
            out.fail(
                "holder_binding",
                format!("{query_id}: the presentation signer is not the credential subject"),
            );
        }
        checked.push(c);
    }
    checked
}

async fn w3c_status(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    status: &Value,
    issuer: &IssuerKey,
) {
    let entries: Vec<&Value> = match status {
        Value::Array(a) if !a.is_empty() => a.iter().collect(),
        Value::Object(_) => vec![status],
        _ => return no_status(ctx, out, query_id),
    };
    for e in entries {
        let purpose = e["statusPurpose"].as_str().unwrap_or("revocation");
        let idx = e["statusListIndex"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or(e["statusListIndex"].as_u64());
        let uri = e["statusListCredential"].as_str().unwrap_or_default();
        let list = match (idx, fetch_status(ctx, uri, &issuer.key).await) {
            (None, _) => {
                out.fail("status", format!("{query_id}: status entry without index"));
                continue;
            }
            (_, Err(e)) => {
                out.fail("status", format!("{query_id}: {e}"));
                continue;
            }
            (Some(idx), Ok(list)) => (idx, list),
        };
        let (idx, list) = list;
        if let Err(e) = list_issuer_ok(&list, issuer) {
            out.fail("status", format!("{query_id}: {e}"));
            continue;
        }
        let subject = if list["credentialSubject"].is_object() {
            &list["credentialSubject"]
        } else {
            &list["vc"]["credentialSubject"]
        };
        match StatusArray::from_encoded_list(subject["encodedList"].as_str().unwrap_or_default())
            .and_then(|a| a.get_msb(idx))
        {
            Ok(false) => out.pass("status"),
            Ok(true) => out.fail(
                "status",
                format!(
                    "{query_id}: {}",
                    if purpose == "suspension" {
                        "suspended"
                    } else {
                        "revoked"
                    }
                ),
            ),
            Err(e) => out.fail("status", format!("{query_id}: status list: {e}")),
        }
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
            let key = did::resolve(&kid, http).await.map_err(|e| e.to_string())?;
            return Ok((key, Some(kid_did)));
        }
    }
    let (key, _) = jws::header_key(header).map_err(|e| e.to_string())?;
    let did = did::did_jwk(&key);
    Ok((key, Some(did)))
}

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
    out.pass("signature");
    out.pass("disclosure_integrity");
    check_time(out, &Value::Null, &vc, ctx.now, query_id);
    check_issuer(out, ctx, &issuer.issuer);
    w3c_status(ctx, out, query_id, &vc["credentialStatus"], &issuer).await;
    let mut claims = vc["credentialSubject"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    claims.remove("id");
    out.credentials.push(PresentedCredential {
        query_id: query_id.to_string(),
        format: "ldp_vc".into(),
        issuer: Some(issuer.issuer.clone()),
        claims,
    });
    Some(Checked {
        query_id: query_id.to_string(),
        format: "ldp_vc".into(),
        types: types_of(&vc),
        root: vc,
        vct: None,
        doctype: None,
        issuer: Some(issuer.issuer),
    })
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
        if vc.root["credentialSubject"]["id"].as_str() == Some(holder.as_str()) {
            out.pass("holder_binding");
        } else {
            out.fail(
                "holder_binding",
                format!("{query_id}: the presentation signer is not the credential subject"),
            );
        }
        checked.push(vc);
    }
    checked
}

/// mso_mdoc: a base64url DeviceResponse. Its documents are checked by [`crate::crypto::mdoc`]
/// (document signer chain to `anchors`, issuerAuth, digests, validity, device signature over this
/// request's SessionTranscript); a failure is reported under the policy it breaks. The issuer
/// allow-list of DIDs does not apply: an mdoc issuer is trusted through its IACA being an anchor.
pub async fn mdoc(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    presentation: &str,
) -> Vec<Checked> {
    use crate::crypto::mdoc::MdocError;
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
        ctx.anchors,
        ctx.now,
    ) {
        Ok(d) => d,
        Err(e) => {
            let policy = match &e {
                MdocError::Digest(_) => "disclosure_integrity",
                MdocError::Validity(_) => "validity",
                MdocError::DeviceAuth(_) => "holder_binding",
                MdocError::Untrusted(_) => "issuer_allowlist",
                _ => "signature",
            };
            out.fail(policy, format!("{query_id}: {} ({e})", e.code()));
            return Vec::new();
        }
    };
    for p in [
        "signature",
        "disclosure_integrity",
        "validity",
        "holder_binding",
        "nonce_audience",
        "issuer_allowlist",
    ] {
        out.pass(p);
    }
    let mut checked = Vec::new();
    for d in docs {
        match &d.status {
            Some((idx, uri)) => mdoc_status(ctx, out, query_id, *idx, uri, &d.signer_key).await,
            None if ctx.require_status => out.fail(
                "status",
                format!("{query_id}: the mdoc carries no status reference"),
            ),
            None => out.pass("status"),
        }
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
            issuer: Some(d.signer.clone()),
            claims,
        });
        checked.push(Checked {
            query_id: query_id.to_string(),
            format: "mso_mdoc".into(),
            root: Value::Object(root),
            vct: None,
            types: Vec::new(),
            doctype: Some(d.doc_type),
            issuer: Some(d.signer),
        });
    }
    checked
}

/// An mdoc's Token Status List (CWT form, fetched through the outbound guard, bounded), which
/// must be signed by the mdoc's own document signer.
async fn mdoc_status(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    idx: u64,
    uri: &str,
    signer: &VerifyingKey,
) {
    use crate::crypto::mdoc::status;
    use crate::http::outbound::read_capped;
    if !(uri.starts_with("https://") || uri.starts_with("http://")) {
        return out.fail(
            "status",
            format!("{query_id}: status list URI is not http(s)"),
        );
    }
    let req = ctx
        .http
        .get(uri)
        .header("Accept", status::MEDIA_TYPE)
        .timeout(Duration::from_secs(5));
    let body = match crate::http::outbound::send(req).await {
        Ok(r) if r.status().is_success() => read_capped(r, status::MAX_TOKEN_BYTES)
            .await
            .map_err(|e| format!("status list: {e}")),
        Ok(r) => Err(format!("status list: HTTP {}", r.status())),
        Err(e) => Err(format!("status list: {e}")),
    };
    let list = body.and_then(|b| {
        status::verify(&b, uri, signer, ctx.anchors, ctx.now).map_err(|e| e.to_string())
    });
    match list.and_then(|l| l.get_lsb(idx).map_err(|e| e.to_string())) {
        Ok(0) => out.pass("status"),
        Ok(1) => out.fail("status", format!("{query_id}: revoked")),
        Ok(2) => out.fail("status", format!("{query_id}: suspended")),
        Ok(v) => out.fail("status", format!("{query_id}: status {v}")),
        Err(e) => out.fail("status", format!("{query_id}: {e}")),
    }
}
