//! Verification of presented credentials: every check is a named policy whose result (passed,
//! reason) goes into the result. The same engine serves OID4VP sessions (`query.rs`) and the VC-API
//! verify endpoints (`vc_api.rs`). Issuer keys come only from [`crate::crypto::binding`].
//!
//! One file per credential format (`sd_jwt`, `jwt_vc`, `ldp`, `mdoc`), plus what they share: the
//! policy bookkeeping and the time and allow-list checks (`policy`) and status lists (`status`).
//! This file holds the context a verification runs in and what it returns.

mod jwt_vc;
mod ldp;
mod mdoc;
mod policy;
mod sd_jwt;
mod status;

use serde_json::Value;

use super::model::PresentedCredential;
use crate::crypto::binding::{self, IssuerKey, Issuers};

pub use jwt_vc::{jwt_credential, jwt_vp};
pub use ldp::{ldp_credential, ldp_vp};
pub use mdoc::{aki_entry, mdoc};
pub use policy::{clip_reason, Outcome, Trust};
pub use sd_jwt::sd_jwt;
pub use status::StatusCache;

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
    /// Whether `issuer_allowlist` decides the verdict (a session may turn it off): then a
    /// credential of an issuer outside `trust` has its status list left unfetched.
    pub issuer_allowlist: bool,
    pub status_cache: &'a StatusCache,
    /// CA certificates an SD-JWT VC issuer's `x5c` may chain to (`x509.trust_anchors`,
    /// `x509.sd_jwt_anchors`).
    pub anchors: &'a crate::crypto::x509::TrustAnchors,
    /// IACAs an mdoc's document signer (and its status list's signer) must chain to
    /// (`x509.trust_anchors`, `x509.iaca_anchors`, the sandbox IACA): never used for SD-JWT VCs,
    /// so an IACA cannot vouch for an `https` issuer.
    pub mdoc_anchors: &'a crate::crypto::x509::TrustAnchors,
    /// The `status` policy fails for a credential that carries no status reference.
    pub require_status: bool,
    /// mso_mdoc: the encoded SessionTranscript a device signature must cover (OID4VP 1.0
    /// Appendix B.2.6); `None` where there is no OpenID4VP request (VC-API).
    pub mdoc_transcript: Option<&'a [u8]>,
    /// Status lists fetched by this evaluation (each URI once).
    pub fetched: status::Fetched,
    /// Production mode: status lists only over `https` (a list fetched over plain HTTP could be
    /// an old, validly signed one replayed by anyone on the path).
    pub https_only: bool,
    /// `verifier.status_list_max_age_seconds` (`None`: no maximum age).
    pub status_max_age: Option<i64>,
}

/// Most distinct URLs one evaluation fetches (DID documents, issuer metadata, status lists: URLs
/// the presenter chose), and four times that many requests in all (the same issuer's metadata
/// is read again for each of its credentials). An honest response needs a few; 10 presentations
/// of 10 credentials each could otherwise have made hundreds, each up to its timeout.
pub const MAX_OUTBOUND_PER_EVALUATION: u32 = crate::http::outbound::REQUEST_BUDGET;

/// The longest one evaluation may take, its fetches included: within its budget, URLs that
/// answer slowly (a tarpit, each fetch just under its timeout) could otherwise hold it for
/// minutes (attacker review).
pub const EVALUATION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs one evaluation under its outbound budget ([`MAX_OUTBOUND_PER_EVALUATION`]) and its
/// [`EVALUATION_DEADLINE`]; `None` when the deadline passed first.
pub async fn bounded<T>(evaluation: impl std::future::Future<Output = T>) -> Option<T> {
    bounded_by(EVALUATION_DEADLINE, evaluation).await
}

async fn bounded_by<T>(
    deadline: std::time::Duration,
    evaluation: impl std::future::Future<Output = T>,
) -> Option<T> {
    let budgeted = crate::http::outbound::with_budget(MAX_OUTBOUND_PER_EVALUATION, evaluation);
    tokio::time::timeout(deadline, budgeted).await.ok()
}

/// What a presentation whose evaluation passed [`EVALUATION_DEADLINE`] answers: not verified.
pub fn too_slow() -> Outcome {
    let mut out = Outcome::default();
    out.fail(
        "signature",
        format!(
            "the evaluation took longer than {} s (the documents it fetched answered too slowly)",
            EVALUATION_DEADLINE.as_secs()
        ),
    );
    out
}

/// Most credentials verified out of one presentation (each may cost a DID resolution and a
/// status list fetch); a presentation carrying more is refused before any is verified.
pub const MAX_CREDENTIALS_PER_PRESENTATION: usize = 10;

/// [`MAX_CREDENTIALS_PER_PRESENTATION`] as a `query_match` failure; true when `n` is too many.
fn too_many_in_one(out: &mut policy::Outcome, query_id: &str, n: usize) -> bool {
    if n <= MAX_CREDENTIALS_PER_PRESENTATION {
        return false;
    }
    out.fail(
        "query_match",
        format!(
            "{query_id}: {n} credentials in one presentation; at most {MAX_CREDENTIALS_PER_PRESENTATION} are verified"
        ),
    );
    true
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
    /// mso_mdoc: the key identifiers of the authorities over its document signer (DCQL
    /// `trusted_authorities` of type `aki`); empty for other formats.
    pub authorities: Vec<Vec<u8>>,
    /// The JWS / COSE algorithm of the issuer's signature (`None`: a Data Integrity proof).
    pub issuer_alg: Option<String>,
    /// The algorithm of the holder's signature around it (KB-JWT, JWT presentation, mdoc
    /// device signature), when there is one.
    pub holder_alg: Option<String>,
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

/// Why a signed W3C credential object is not one a holder may present as a credential: not a
/// `VerifiableCredential` at all, or a status list its issuer publishes for everyone
/// (`*StatusList*Credential`, `RevocationList2020Credential`, an `encodedList` subject, or a
/// Token Status List's `status_list`) — signed by a trusted issuer, it would otherwise answer a
/// query that waives holder binding and asks for little (attacker review). Only for what answers
/// a presentation request (`ctx.audience`): a VC-API call may verify a status list as such.
fn not_a_presentable_credential(ctx: &Ctx<'_>, vc: &Value) -> Option<String> {
    ctx.audience.as_ref()?;
    let types = types_of(vc);
    if !types.iter().any(|t| t == "VerifiableCredential") {
        return Some("its type does not say VerifiableCredential".into());
    }
    if let Some(t) = types
        .iter()
        .find(|t| t.contains("StatusList") || t.contains("RevocationList"))
    {
        return Some(format!(
            "a {} is a status list, not a credential",
            crate::crypto::mdoc::clip(t)
        ));
    }
    let subject_is_list = match &vc["credentialSubject"] {
        Value::Array(a) => a.iter().any(|s| s.get("encodedList").is_some()),
        s => s.get("encodedList").is_some(),
    };
    if subject_is_list || vc.get("status_list").is_some() {
        return Some("a status list is not a credential".into());
    }
    None
}

/// A W3C credential's `type` (a string or a list).
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

/// The deepest W3C credential subject whose claims are kept (SD-JWT claims are bounded by
/// `sdjwt::reveal`, mdoc by its CBOR depth).
const MAX_CLAIM_DEPTH: usize = 32;

/// A verified W3C credential (`vc`, the credential object): its subject's claims go into the
/// result, and it is returned for the query matcher.
fn w3c_checked(
    out: &mut policy::Outcome,
    query_id: &str,
    format: &str,
    issuer: String,
    issuer_alg: Option<String>,
    vc: Value,
) -> Checked {
    let mut claims = vc["credentialSubject"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    claims.remove("id");
    // The claims are stored with the session, a few levels down: past serde_json's read limit
    // (128) the record could be written but never read again (attacker review: a self-issued
    // credential nested 127 deep made the tenant's session list a 500 for the record's TTL).
    let depth = 1 + claims
        .values()
        .map(crate::store::json_depth)
        .max()
        .unwrap_or(0);
    if depth > MAX_CLAIM_DEPTH {
        out.fail(
            "disclosure_integrity",
            format!("{query_id}: its claims nest deeper than {MAX_CLAIM_DEPTH}"),
        );
        claims.clear();
    }
    out.credentials.push(PresentedCredential {
        query_id: query_id.to_string(),
        format: format.to_string(),
        issuer: Some(issuer.clone()),
        issuer_name: None,
        claims,
    });
    Checked {
        query_id: query_id.to_string(),
        format: format.to_string(),
        types: types_of(&vc),
        root: vc,
        vct: None,
        doctype: None,
        issuer: Some(issuer),
        authorities: Vec::new(),
        issuer_alg,
        holder_alg: None,
    }
}

/// The `holder_binding` policy of a credential inside a presentation: its subject (`bound`) must
/// be the presentation's signer.
fn subject_is_signer(out: &mut policy::Outcome, query_id: &str, bound: bool) {
    if bound {
        out.pass("holder_binding");
    } else {
        out.fail(
            "holder_binding",
            format!("{query_id}: the presentation signer is not the credential subject"),
        );
    }
}

/// Test helpers shared by the verifier's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A context at `now` with nothing to match (VC-API shape), fetching over plain http, with a
    /// day's maximum list age and the given trust.
    pub(crate) fn ctx_at<'a>(
        now: i64,
        http: &'a reqwest::Client,
        cache: &'a StatusCache,
        anchors: &'a crate::crypto::x509::TrustAnchors,
        trust: &'a Trust,
    ) -> Ctx<'a> {
        Ctx {
            dcql_query: None,
            presentation_definition: None,
            audience: None,
            now,
            http,
            trust,
            issuer_allowlist: true,
            status_cache: cache,
            anchors,
            mdoc_anchors: anchors,
            require_status: false,
            mdoc_transcript: None,
            fetched: Default::default(),
            https_only: false,
            status_max_age: Some(86_400),
        }
    }

    /// A local HTTP server that answers every request 503 and counts them: its port and count.
    pub(crate) fn counting_503_server() -> (u16, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { break };
                let _ = s.read(&mut [0u8; 2048]);
                h.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        (port, hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An evaluation that outlasts its deadline (its fetches answered slowly) ends there, and
    /// fails: it is not held for as long as its fetches would take.
    #[tokio::test]
    async fn an_evaluation_ends_at_its_deadline() {
        assert_eq!(bounded(async { 7 }).await, Some(7));
        let deadline = std::time::Duration::from_millis(20);
        let slow = bounded_by(
            deadline,
            tokio::time::sleep(std::time::Duration::from_secs(600)),
        );
        assert!(slow.await.is_none());
        let results = too_slow().results(&["signature".to_string()]);
        assert!(!results[0].passed);
    }
}
