//! W3C Data Integrity `eddsa-rdfc-2022` (VCDM 2.0 credentials and presentations, `ldp_vc`), via the
//! `ssi` crate: RDF canonicalization and the cryptosuite are ssi's; JSON-LD contexts are bundled
//! (ssi's own plus idstack's) and never fetched; verification methods are did:key / did:jwk only,
//! checked before ssi sees them, so ssi's resolver never does I/O. ssi's API is async but CPU-only
//! here, driven with `futures_executor::block_on` (callers run it on the blocking pool).
//!
//! RDF canonicalization (URDNA2015 / RDFC-1.0) is exponential in the worst case: a 1.8 KB
//! credential of 8 mutually linked blank nodes costs ssi seconds of CPU, 9 nodes minutes. ssi-rdf
//! has no call limit, so every verification first runs [`precheck`]: a size bound, a blank-node
//! bound, and the same canonicalization algorithm as ssi-rdf 0.1 (its own hash functions, its
//! loop structure) with RDFC-1.0's call-limit idea, a budget of work units, a recursion-depth bound,
//! a wall-clock deadline and a cancellation flag. Only a document that canonicalizes within the
//! budget reaches ssi, whose run then does the same, bounded, work. The async entry points
//! ([`verify_credential_bounded`], [`verify_presentation_bounded`]) add a bound on concurrent
//! verifications and stop the pre-check when the caller goes away. Limits: `jsonld.*` in config.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use ssi::claims::data_integrity::{
    AnyInputSuiteOptions, AnySuite, CryptographicSuite, DataIntegrity, DataIntegrityDocument,
    ProofOptions,
};
use ssi::claims::{SignatureEnvironment, VerificationParameters};
use ssi::dids::{AnyDidMethod, VerificationMethodDIDResolver};
use ssi::json_ld::ContextLoader;
use ssi::verification_methods::{AnyMethod, ProofPurpose, ReferenceOrOwned, SingleSecretSigner};

use super::{did, CryptoError, CryptoResult, KeyType, SigningKey};
use crate::config::JsonLdConfig;

pub const VCDM2_CONTEXT: &str = "https://www.w3.org/ns/credentials/v2";
/// Where every idstack node serves [`IDSTACK_CONTEXT`], under its public URL (`application/ld+json`).
pub const IDSTACK_CONTEXT_PATH: &str = "/contexts/credentials/v1";
/// The older path the docs named; served too.
pub const IDSTACK_CONTEXT_LEGACY_PATH: &str = "/contexts/credentials-v1";
/// The context URL credentials issued before contexts were served named. Nothing serves it
/// (w3id.org has no such redirect), so it stays bundled: those credentials still verify here.
/// New credentials name [`context_url`] of the issuing node instead.
pub const IDSTACK_CONTEXT_URL: &str = "https://w3id.org/idstack/credentials/v1";
/// idstack's JSON-LD context for its claim terms (schema.org IRIs for the identity claims, an
/// idstack `@vocab` for the rest). Immutable: a credential's signature covers the RDF these terms
/// expand to, so a change needs a new URL (`/contexts/credentials/v2`), never an edit.
pub const IDSTACK_CONTEXT: &str = r#"{
  "@context": {
    "@version": 1.1,
    "@vocab": "https://w3id.org/idstack/vocab#",
    "IdentityCredential": "https://w3id.org/idstack/vocab#IdentityCredential",
    "given_name": "https://schema.org/givenName",
    "family_name": "https://schema.org/familyName",
    "birthdate": "https://schema.org/birthDate",
    "email": "https://schema.org/email"
  }
}"#;

/// Whether [`IDSTACK_CONTEXT`] defines `term` itself (not through its `@vocab`).
pub fn idstack_context_defines(term: &str) -> bool {
    static TERMS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    TERMS
        .get_or_init(|| {
            serde_json::from_str::<Value>(IDSTACK_CONTEXT)
                .ok()
                .and_then(|v| v["@context"].as_object().cloned())
                .map(|o| o.keys().filter(|k| !k.starts_with('@')).cloned().collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|t| t == term)
}

/// The context URL a node with this public URL serves [`IDSTACK_CONTEXT`] at.
pub fn context_url(public_url: &str) -> String {
    format!("{}{IDSTACK_CONTEXT_PATH}", public_url.trim_end_matches('/'))
}

/// The public URLs whose [`context_url`] the loader maps to the bundled [`IDSTACK_CONTEXT`]:
/// this node's own (registered at startup) and any other idstack deployment the operator lists
/// in `server.trusted_context_origins`. A map of exact URLs, never a fetch.
static SERVED_CONTEXTS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Registers a public URL whose [`context_url`] the loader resolves offline. The first one
/// registered is this node's: new credentials name its context (see [`credential_contexts`]).
pub fn register_context_origin(public_url: &str) {
    let url = context_url(public_url);
    let mut served = SERVED_CONTEXTS.write().unwrap_or_else(|e| e.into_inner());
    if !served.contains(&url) {
        served.push(url);
    }
}

/// The `@context` idstack puts on the credentials it issues: VCDM 2.0, then the idstack context
/// this node serves (the bundled legacy URL when no public URL was registered, e.g. in unit tests).
pub fn credential_contexts() -> Value {
    let own = SERVED_CONTEXTS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .first()
        .cloned()
        .unwrap_or_else(|| IDSTACK_CONTEXT_URL.to_string());
    json!([VCDM2_CONTEXT, own])
}

/// Whether `url` names [`IDSTACK_CONTEXT`] here: the legacy URL or a registered served one.
pub fn is_idstack_context(url: &str) -> bool {
    url == IDSTACK_CONTEXT_URL
        || SERVED_CONTEXTS
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|u| u == url)
}

fn err(e: impl std::fmt::Display) -> CryptoError {
    CryptoError::Malformed(format!("data integrity: {e}"))
}

/// The JSON-LD loader for every expansion here: ssi's bundled standard contexts (credentials v1/v2,
/// data integrity, ...), the legacy idstack URL and the registered served URLs. It never fetches:
/// any other context URL fails the expansion.
pub(crate) fn loader() -> CryptoResult<ContextLoader> {
    let mut map = HashMap::new();
    map.insert(IDSTACK_CONTEXT_URL.to_string(), IDSTACK_CONTEXT.to_string());
    for url in SERVED_CONTEXTS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        map.insert(url.clone(), IDSTACK_CONTEXT.to_string());
    }
    ContextLoader::default()
        .with_context_map_from(map)
        .map_err(err)
}

/// The DID methods ssi may resolve for us: did:key and did:jwk, which need no network.
/// `AnyDidMethod` alone would also fetch (did:web, did:ion, ...) with a client of its own that
/// the outbound guard does not see, honours `HTTPS_PROXY` and reads bodies uncapped. Every path
/// resolves the verification method with [`did::resolve_offline`] first, so this only makes sure
/// nothing here ever depends on that order.
#[derive(Default)]
struct OfflineDids(AnyDidMethod);

impl ssi::dids::DIDResolver for OfflineDids {
    async fn resolve_representation<'a>(
        &'a self,
        did: &'a ssi::dids::DID,
        options: ssi::dids::resolution::Options,
    ) -> Result<ssi::dids::resolution::Output<Vec<u8>>, ssi::dids::resolution::Error> {
        match did.method_name() {
            "key" | "jwk" => self.0.resolve_representation(did, options).await,
            other => Err(ssi::dids::resolution::Error::MethodNotSupported(
                other.to_string(),
            )),
        }
    }
}

fn resolver() -> VerificationMethodDIDResolver<OfflineDids, AnyMethod> {
    VerificationMethodDIDResolver::new(OfflineDids::default())
}

fn timestamp(now: i64) -> CryptoResult<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(now, 0)
        .ok_or_else(|| CryptoError::Malformed(format!("timestamp {now}")))
}

fn options(
    vm: &str,
    purpose: ProofPurpose,
    now: i64,
) -> CryptoResult<ProofOptions<AnyMethod, AnyInputSuiteOptions>> {
    let vm: ReferenceOrOwned<AnyMethod> = ReferenceOrOwned::Reference(
        vm.parse()
            .map_err(|_| CryptoError::Did(format!("bad verification method {vm}")))?,
    );
    Ok(ProofOptions::new(
        ssi::xsd::DateTimeStamp::from(timestamp(now)?).into(),
        vm,
        purpose,
        Default::default(),
    ))
}

fn sign(
    key: &SigningKey,
    vm: &str,
    document: Value,
    opts: ProofOptions<AnyMethod, AnyInputSuiteOptions>,
) -> CryptoResult<Value> {
    serde_json::to_value(&sign_secured(key, vm, document, opts)?).map_err(err)
}

fn sign_secured(
    key: &SigningKey,
    vm: &str,
    document: Value,
    opts: ProofOptions<AnyMethod, AnyInputSuiteOptions>,
) -> CryptoResult<DataIntegrity<DataIntegrityDocument, AnySuite>> {
    if key.key_type() != KeyType::Ed25519 {
        return Err(CryptoError::Unsupported(
            "eddsa-rdfc-2022 needs an Ed25519 key".into(),
        ));
    }
    if did::resolve_offline(vm)? != key.verifying_key() {
        return Err(CryptoError::InvalidKey(
            "the verification method is not this key".into(),
        ));
    }
    let jwk: ssi::JWK = serde_json::from_str(&key.to_private_jwk()).map_err(err)?;
    let doc = ld_document(document)?;
    let env = SignatureEnvironment {
        json_ld_loader: loader()?,
        eip712_loader: (),
    };
    let signer = SingleSecretSigner::new(jwk).into_local();
    let secured: DataIntegrity<DataIntegrityDocument, AnySuite> = futures_executor::block_on(
        AnySuite::EdDsaRdfc2022.sign_with(env, doc, resolver(), signer, opts, Default::default()),
    )
    .map_err(err)?;
    Ok(secured)
}

/// Adds an `assertionMethod` proof to a secured credential: a proof set, or, with `previous`, a
/// proof chain (the new proof signs the document carrying the proofs it names, VC Data Integrity
/// §4.5). `id` names the new proof, for later links.
pub fn add_assertion_proof(
    key: &SigningKey,
    vm: &str,
    secured: &Value,
    id: Option<&str>,
    previous: &[&str],
    now: i64,
) -> CryptoResult<Value> {
    let mut doc = secured
        .as_object()
        .cloned()
        .ok_or_else(|| CryptoError::Malformed("a document is a JSON object".into()))?;
    let existing = match doc.remove("proof") {
        Some(Value::Array(a)) => a,
        Some(p) => vec![p],
        None => Vec::new(),
    };
    let mut unsecured = doc.clone();
    let mut opts = options(vm, ProofPurpose::Assertion, now)?;
    if !previous.is_empty() {
        let named = previous
            .iter()
            .map(|id| {
                existing
                    .iter()
                    .find(|p| p["id"] == *id)
                    .cloned()
                    .ok_or_else(|| CryptoError::Malformed(format!("no proof {id} to chain to")))
            })
            .collect::<CryptoResult<Vec<_>>>()?;
        unsecured.insert("proof".into(), Value::Array(named));
        let link = match previous {
            [one] => json!(one),
            many => json!(many),
        };
        opts.extra_properties.insert(
            "previousProof".into(),
            serde_json::from_value(link).map_err(err)?,
        );
    }
    if let Some(id) = id {
        opts.extra_properties
            .insert("id".into(), serde_json::from_value(json!(id)).map_err(err)?);
    }
    let secured = sign_secured(key, vm, Value::Object(unsecured), opts)?;
    let proof = secured
        .proofs
        .first()
        .ok_or_else(|| CryptoError::Malformed("no proof made".into()))?;
    let mut proofs = existing;
    proofs.push(serde_json::to_value(proof).map_err(err)?);
    doc.insert("proof".into(), Value::Array(proofs));
    Ok(Value::Object(doc))
}

/// Which proofs a verification accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Suites {
    /// `DataIntegrityProof` / `eddsa-rdfc-2022` only (what idstack issues and verifiers accept).
    Eddsa2022,
    /// That, or the legacy `Ed25519Signature2018` (VCDM 1.1) that DIDComm issuers such as credo-ts
    /// and ACA-Py sign JSON-LD credentials with.
    WithEd25519Signature2018,
}

/// The most proofs one document may carry (a proof set or chain): each costs a canonicalization.
pub const MAX_PROOFS: usize = 4;

/// The proofs of a secured document: one object, or a non-empty proof set of at most
/// [`MAX_PROOFS`] objects whose `id`s (where given) are distinct.
fn proofs_of(document: &Value) -> CryptoResult<Vec<Value>> {
    let proofs = match document.get("proof") {
        Some(p @ Value::Object(_)) => vec![p.clone()],
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_PROOFS => a.clone(),
        Some(Value::Array(a)) if a.len() > MAX_PROOFS => {
            return Err(too_complex(format!(
                "{} proofs; at most {MAX_PROOFS} are verified",
                a.len()
            )))
        }
        _ => return Err(CryptoError::Malformed("no proof".into())),
    };
    let mut ids = HashSet::new();
    for p in &proofs {
        if !p.is_object() {
            return Err(CryptoError::Malformed(
                "every proof must be an object".into(),
            ));
        }
        match &p["id"] {
            Value::Null => {}
            Value::String(id) if ids.insert(id.clone()) => {}
            _ => {
                return Err(CryptoError::Malformed(
                    "proof ids must be distinct strings".into(),
                ))
            }
        }
    }
    Ok(proofs)
}

/// The proofs a chained proof's `previousProof` (a string or a list of strings) names; each must
/// be another proof of the same document (VC Data Integrity §4.5, "verify proof sets and chains").
fn previous_proofs(proof: &Value, all: &[Value]) -> CryptoResult<Vec<Value>> {
    let ids: Vec<&str> = match &proof["previousProof"] {
        Value::Null => return Ok(Vec::new()),
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|v| {
                v.as_str().ok_or_else(|| {
                    CryptoError::Malformed("previousProof entries must be strings".into())
                })
            })
            .collect::<CryptoResult<_>>()?,
        _ => {
            return Err(CryptoError::Malformed(
                "previousProof must be a string or a non-empty list of strings".into(),
            ))
        }
    };
    ids.into_iter()
        .map(|id| {
            all.iter()
                .find(|p| p["id"] == id && !std::ptr::eq(*p, proof))
                .cloned()
                .ok_or_else(|| {
                    CryptoError::Malformed(format!(
                        "previousProof {id} is not a proof of this document"
                    ))
                })
        })
        .collect()
}

/// Verifies every proof of `document` (one, a proof set, or a chain: each `previousProof` must
/// name another proof here, and a chained proof is checked over the document carrying the proofs
/// it names). All must verify, all with `purpose`; returns them. Binding a proof to the issuer or
/// holder is the caller's.
fn verify_with(
    document: &Value,
    purpose: &str,
    now: i64,
    suites: Suites,
    work: &mut Work<'_>,
) -> CryptoResult<Vec<Value>> {
    check_size(document, work.limits)?;
    check_plain_json(document)?;
    let proofs = proofs_of(document)?;
    for proof in &proofs {
        let mut input = document.as_object().cloned().unwrap_or_default();
        input.remove("proof");
        let previous = previous_proofs(proof, &proofs)?;
        if !previous.is_empty() {
            input.insert("proof".into(), Value::Array(previous));
        }
        verify_one(&Value::Object(input), proof, purpose, now, suites, work)?;
    }
    Ok(proofs)
}

/// One proof over `unsecured` (the document without its proofs, or with the proofs a chained
/// proof names as its `proof`).
fn verify_one(
    unsecured: &Value,
    proof: &Value,
    purpose: &str,
    now: i64,
    suites: Suites,
    work: &mut Work<'_>,
) -> CryptoResult<()> {
    let eddsa_2022 =
        proof["type"] == "DataIntegrityProof" && proof["cryptosuite"] == "eddsa-rdfc-2022";
    let ed25519_2018 =
        suites == Suites::WithEd25519Signature2018 && proof["type"] == "Ed25519Signature2018";
    if !eddsa_2022 && !ed25519_2018 {
        return Err(CryptoError::Unsupported(
            "only DataIntegrityProof / eddsa-rdfc-2022".into(),
        ));
    }
    if proof["proofPurpose"].as_str() != Some(purpose) {
        return Err(CryptoError::Malformed(format!(
            "proofPurpose must be {purpose}"
        )));
    }
    let vm = proof["verificationMethod"]
        .as_str()
        .ok_or_else(|| CryptoError::Malformed("no verificationMethod".into()))?;
    // Resolved here even for the suites ssi verifies below: ssi 0.16 resolves the method again and
    // checks EdDSA with ed25519-dalek's permissive `verify` (via ssi_jws::verify_bytes), which
    // accepts a forged signature under a small-order key for any document. Our resolution refuses
    // such keys (and anything not did:key / did:jwk), so ssi only ever sees keys that passed it.
    let key = did::resolve_offline(vm)?;
    // ssi reads these as xsd dates and panics on a year past i32 (xsd-types `unwrap`s it)
    for field in ["created", "expires"] {
        match &proof[field] {
            Value::Null => {}
            Value::String(t) if xsd_date_time_ok(t) => {}
            _ => {
                return Err(CryptoError::Malformed(format!(
                    "the proof's {field} is not an RFC 3339 date-time"
                )))
            }
        }
    }
    // ssi 0.16 enforces neither: a proof past its `expires` (an issuer that limits a credential
    // by its proof) or made later than now (beyond clock skew) does not verify (review)
    let at = |field: &str| proof[field].as_str().and_then(xsd_unix_seconds);
    if at("expires").is_some_and(|t| t <= now) {
        return Err(CryptoError::Malformed("the proof has expired".into()));
    }
    if at("created").is_some_and(|t| t > now + PROOF_CLOCK_SKEW_SECONDS) {
        return Err(CryptoError::Malformed(
            "the proof was created in the future".into(),
        ));
    }
    precheck(unsecured, proof, work)?;
    if ed25519_2018 {
        return verify_ed25519_signature_2018(unsecured, proof, &key);
    }
    let claims = ld_document(unsecured.clone())?;
    let proof: ssi::claims::data_integrity::Proof<AnySuite> =
        serde_json::from_value(proof.clone()).map_err(err)?;
    let secured = DataIntegrity::new(claims, proof.into());
    let params = VerificationParameters::from_resolver(resolver())
        .with_json_ld_loader(loader()?)
        .with_date_time(timestamp(now)?);
    futures_executor::block_on(secured.verify(params))
        .map_err(err)?
        .map_err(|e| {
            tracing::debug!("data integrity proof rejected: {e:?}");
            CryptoError::BadSignature
        })
}

/// `Ed25519Signature2018` (LD Signatures with a detached, unencoded-payload JWS), computed here
/// rather than by ssi: ssi 0.16 re-serializes the JWS header before checking the signature
/// (spruceid/ssi#701), so the signatures of jsonld-signatures (credo-ts, Digital Bazaar), whose
/// header keys come in another order, never verify. The verify data is the same as ssi's and
/// jsonld-signatures': SHA-256 of the URDNA2015 form of the proof options (under the document's
/// `@context`, without `jws`) followed by SHA-256 of that of the document without `proof`; the
/// signing input is the header exactly as received, `.`, and those 64 bytes.
fn verify_ed25519_signature_2018(
    document: &Value,
    proof: &Value,
    key: &super::VerifyingKey,
) -> CryptoResult<()> {
    use sha2::{Digest, Sha256};
    let jws = proof["jws"]
        .as_str()
        .ok_or_else(|| CryptoError::Malformed("Ed25519Signature2018 proof without jws".into()))?;
    let (header_b64, signature_b64) = jws
        .split_once("..")
        .ok_or_else(|| CryptoError::Malformed("the jws is not detached".into()))?;
    let header: Value = serde_json::from_slice(&super::b64url_decode(header_b64)?).map_err(err)?;
    if header["alg"] != "EdDSA" || header["b64"] != false || header["crit"] != json!(["b64"]) {
        return Err(CryptoError::Malformed(format!(
            "Ed25519Signature2018 needs an EdDSA JWS with b64: false, got {header}"
        )));
    }
    if key.key_type() != KeyType::Ed25519 {
        return Err(CryptoError::InvalidKey("not an Ed25519 key".into()));
    }
    let mut options = proof.as_object().cloned().unwrap_or_default();
    options.remove("jws");
    options.insert("@context".into(), document["@context"].clone());
    let mut claims = document.as_object().cloned().unwrap_or_default();
    claims.remove("proof");
    let hash = |doc: Map<String, Value>| -> CryptoResult<Vec<u8>> {
        let lines = canonical_nquads(Value::Object(doc))?;
        Ok(lines
            .iter()
            .fold(Sha256::new(), |h, l| h.chain_update(l.as_bytes()))
            .finalize()
            .to_vec())
    };
    let mut signing_input = format!("{header_b64}.").into_bytes();
    signing_input.extend(hash(options)?);
    signing_input.extend(hash(claims)?);
    key.verify(&signing_input, &super::b64url_decode(signature_b64)?)
        .map_err(|_| CryptoError::BadSignature)
}

/// The URDNA2015 canonical N-Quads lines of a JSON-LD document (bundled contexts only).
fn canonical_nquads(doc: Value) -> CryptoResult<Vec<String>> {
    use ssi::json_ld::Expandable as _;
    use ssi::rdf::AnyLdEnvironment as _;
    let doc = ld_document(doc)?;
    let mut ld = ssi::rdf::LdEnvironment::default();
    let loader = loader()?;
    let expanded = futures_executor::block_on(doc.expand_with(&mut ld, &loader)).map_err(err)?;
    ld.canonical_form_of(&expanded).map_err(err)
}

fn vm_did(vm: &str) -> &str {
    vm.split('#').next().unwrap_or(vm)
}

/// Secures a VCDM 2.0 credential (`issuer` set to the method's DID, `validFrom` defaulted),
/// within the `jsonld.*` limits (but neither the concurrency bound nor cancellation: handlers use
/// [`issue_credential_bounded`]).
pub fn issue_credential(
    key: &SigningKey,
    vm: &str,
    credential: Map<String, Value>,
    now: i64,
) -> CryptoResult<Value> {
    let limits = bounds().limits.clone();
    issue_credential_with(key, vm, credential, now, &mut Work::new(&limits, None))
}

/// [`issue_credential`] for request handlers: in one of the `jsonld.max_concurrent` slots
/// verifications share, stopped when the caller goes away or the time budget runs out
/// ([`CryptoError::TooComplex`]).
pub async fn issue_credential_bounded(
    key: Arc<SigningKey>,
    vm: String,
    credential: Map<String, Value>,
    now: i64,
) -> CryptoResult<Value> {
    run_bounded(move |work| issue_credential_with(&key, &vm, credential, now, work)).await
}

fn issue_credential_with(
    key: &SigningKey,
    vm: &str,
    credential: Map<String, Value>,
    now: i64,
    work: &mut Work<'_>,
) -> CryptoResult<Value> {
    let mut vc = credential;
    vc.entry("@context").or_insert_with(credential_contexts);
    // The issuer is the method's DID; an issuer object with that id keeps its name/description.
    let named = match vc.get("issuer") {
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str) == Some(vm_did(vm)),
        _ => false,
    };
    if !named {
        vc.insert("issuer".into(), json!(vm_did(vm)));
    }
    let v1 = vc.get("@context").and_then(|c| c.get(0))
        == Some(&json!("https://www.w3.org/2018/credentials/v1"));
    vc.entry(if v1 { "issuanceDate" } else { "validFrom" })
        .or_insert_with(|| json!(super::rfc3339(now)));
    // what the verifiers here would refuse is not signed, nor what no proof signs
    let vc = Value::Object(vc);
    check_plain_json(&vc)?;
    if holds_unsigned(&vc) {
        return Err(err(
            "a null or an empty array: JSON-LD leaves it out of what is signed (leave it out)",
        ));
    }
    // Signing canonicalizes as verifying does: the same `jsonld.*` bounds first (ssi's own
    // canonicalization has none; nine linked blank nodes took it more than 15 minutes).
    check_size(&vc, work.limits)?;
    rdfc::check(&rdf_quads(vc.clone())?, work)?;
    sign(key, vm, vc, options(vm, ProofPurpose::Assertion, now)?)
}

/// Verifies a Data Integrity credential: proof, issuer = the proof's DID. Returns it without `proof`.
/// Within the `jsonld.*` limits (but neither the concurrency bound nor cancellation: handlers use
/// [`verify_credential_bounded`]).
pub fn verify_credential(vc: &Value, now: i64) -> CryptoResult<Value> {
    let limits = bounds().limits.clone();
    verify_credential_with(vc, now, Suites::Eddsa2022, &mut Work::new(&limits, None))
}

/// [`verify_credential`], also accepting `Ed25519Signature2018` proofs (VCDM 1.1 JSON-LD
/// credentials received over DIDComm issue-credential).
pub fn verify_legacy_credential(vc: &Value, now: i64) -> CryptoResult<Value> {
    let limits = bounds().limits.clone();
    verify_credential_with(
        vc,
        now,
        Suites::WithEd25519Signature2018,
        &mut Work::new(&limits, None),
    )
}

fn verify_credential_with(
    vc: &Value,
    now: i64,
    suites: Suites,
    work: &mut Work<'_>,
) -> CryptoResult<Value> {
    verify_with(vc, "assertionMethod", now, suites, work)?;
    if issuer_proof_method(vc).is_none() {
        return Err(CryptoError::Malformed(
            "no proof is by the issuer's DID".into(),
        ));
    }
    let mut out = vc.as_object().cloned().unwrap_or_default();
    out.remove("proof");
    let mut out = Value::Object(out);
    strip_unsigned(&mut out);
    Ok(out)
}

/// Whether `v` holds a null or an empty array outside `@context`: JSON-LD expansion drops both,
/// so no proof signs them.
fn holds_unsigned(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty() || a.iter().any(holds_unsigned),
        Value::Object(o) => o.iter().any(|(k, v)| !signed_whole(k) && holds_unsigned(v)),
        _ => false,
    }
}

/// Keys whose value is signed as it is: `@context`, and the terms the verified contexts define as
/// JSON literals (`@json`: nulls and empty arrays inside are signed) or lists (`@list`: an empty
/// list is signed). Found by reading ssi-contexts 0.1.10 for the contexts in `KNOWN_CONTEXTS`.
fn signed_whole(key: &str) -> bool {
    matches!(
        key,
        "@context"
            | "_sd"
            | "capabilityChain"
            | "driving_privileges"
            | "jsonSchema"
            | "jwk"
            | "presentation_submission"
            | "privateKeyJwk"
            | "publicKeyJwk"
    )
}

/// Removes the nulls and empty arrays ([`holds_unsigned`]) from a verified credential: what a
/// query then reads is what the proof signed. A holder could add `"family_name": null` to a
/// signed credential and a claim asked for without values was satisfied (review). Arrays left
/// empty by the removal go too; what [`signed_whole`] names is kept as it is.
pub fn strip_unsigned(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if !signed_whole(k) {
                    strip_unsigned(child);
                }
            }
            o.retain(|k, child| signed_whole(k) || !is_unsigned(child));
        }
        Value::Array(a) => {
            a.iter_mut().for_each(strip_unsigned);
            a.retain(|x| !is_unsigned(x));
        }
        _ => {}
    }
}

fn is_unsigned(v: &Value) -> bool {
    v.is_null() || v.as_array().is_some_and(Vec::is_empty)
}

/// The verification method of the credential's proof by its issuer: the first proof (of one, or
/// of a proof set) whose method's DID is the `issuer` id. Other proofs of a set (witnesses,
/// endorsements) must verify too but bind nothing; the issuer-key binding rule
/// (`crypto::binding::ld_issuer_key`) is applied to this method.
pub fn issuer_proof_method(vc: &Value) -> Option<String> {
    let issuer = match &vc["issuer"] {
        Value::String(s) => s.as_str(),
        other => other["id"].as_str()?,
    };
    let proofs = match &vc["proof"] {
        Value::Array(a) => a.iter().collect(),
        p => vec![p],
    };
    proofs
        .into_iter()
        .filter_map(|p| p["verificationMethod"].as_str())
        .find(|m| !issuer.is_empty() && vm_did(m) == issuer)
        .map(str::to_string)
}

/// A Data Integrity presentation (`authentication`, `challenge`, `domain`).
pub fn issue_presentation(
    key: &SigningKey,
    vm: &str,
    credentials: &[Value],
    challenge: &str,
    domain: &str,
    now: i64,
) -> CryptoResult<Value> {
    // Only VCDM 2.0 terms: each embedded credential carries its own contexts.
    let vp = json!({
        "@context": [VCDM2_CONTEXT],
        "type": ["VerifiablePresentation"],
        "holder": vm_did(vm),
        "verifiableCredential": credentials,
    });
    let mut opts = options(vm, ProofPurpose::Authentication, now)?;
    opts.challenge = Some(challenge.to_string());
    opts.domains = vec![domain.to_string()];
    sign(key, vm, vp, opts)
}

/// Verifies a Data Integrity presentation's proofs and, when given, its challenge and domain (the
/// holder's proof must carry exactly that challenge and that domain; `None`: not checked). Returns
/// (the signer's DID, its proof): the proof by `holder` when there is one, else the only proof.
/// Within the `jsonld.*` limits; handlers use [`verify_presentation_bounded`].
pub fn verify_presentation(
    vp: &Value,
    challenge: Option<&str>,
    domain: Option<&str>,
    now: i64,
) -> CryptoResult<(String, Value)> {
    let limits = bounds().limits.clone();
    verify_presentation_with(vp, challenge, domain, now, &mut Work::new(&limits, None))
}

fn verify_presentation_with(
    vp: &Value,
    challenge: Option<&str>,
    domain: Option<&str>,
    now: i64,
    work: &mut Work<'_>,
) -> CryptoResult<(String, Value)> {
    let proofs = verify_with(vp, "authentication", now, Suites::Eddsa2022, work)?;
    let holder = match &vp["holder"] {
        Value::String(h) => Some(h.as_str()),
        Value::Object(o) => o.get("id").and_then(Value::as_str),
        _ => None,
    };
    let method =
        |p: &Value| vm_did(p["verificationMethod"].as_str().unwrap_or_default()).to_string();
    let by_holder = holder.and_then(|h| proofs.iter().find(|p| method(p) == h));
    let proof = match by_holder {
        Some(p) => p,
        None if proofs.len() == 1 => &proofs[0],
        None => {
            return Err(CryptoError::Malformed(
                "a presentation with several proofs needs one by its holder".into(),
            ))
        }
    };
    if let Some(challenge) = challenge {
        if proof["challenge"].as_str() != Some(challenge) {
            return Err(CryptoError::Malformed("challenge mismatch".into()));
        }
    }
    if let Some(domain) = domain {
        let domain_ok = match &proof["domain"] {
            Value::String(d) => d == domain,
            Value::Array(a) => a.iter().any(|d| d == domain),
            _ => false,
        };
        if !domain_ok {
            return Err(CryptoError::Malformed("domain mismatch".into()));
        }
    }
    Ok((method(proof), proof.clone()))
}

/// [`verify_credential`] for request handlers, and the one way outsiders' JSON-LD credentials get
/// verified: waits at most `jsonld.queue_timeout_ms` for one of `jsonld.max_concurrent` slots
/// ([`CryptoError::Busy`] otherwise), runs on the blocking pool holding the slot until the work
/// really ends, and stops the canonicalization pre-check when this future is dropped (the client
/// went away) or its time budget runs out ([`CryptoError::TooComplex`]).
pub async fn verify_credential_bounded(vc: Value, now: i64) -> CryptoResult<Value> {
    run_bounded(move |work| verify_credential_with(&vc, now, Suites::Eddsa2022, work)).await
}

/// [`verify_presentation`] for request handlers; see [`verify_credential_bounded`].
pub async fn verify_presentation_bounded(
    vp: Value,
    challenge: Option<String>,
    domain: Option<String>,
    now: i64,
) -> CryptoResult<(String, Value)> {
    run_bounded(move |work| {
        verify_presentation_with(&vp, challenge.as_deref(), domain.as_deref(), now, work)
    })
    .await
}

/// Runs Data Integrity work that has no canonicalization budget of its own (signing a
/// presentation of a credential that was verified within the limits when it was received) on
/// the blocking pool, holding one of the `jsonld.max_concurrent` slots the verifications share:
/// a wallet request answering many queries cannot take every blocking thread (attacker review).
pub async fn run_in_slot<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> CryptoResult<T> {
    run_bounded(move |_| Ok(f())).await
}

// ------------------------------------------------------------------------------------ limits

struct Bounds {
    limits: JsonLdConfig,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Bounds {
    fn new(limits: JsonLdConfig) -> Self {
        let n = match limits.max_concurrent {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Self {
            limits,
            slots: Arc::new(tokio::sync::Semaphore::new(n)),
        }
    }
}

static BOUNDS: OnceLock<Bounds> = OnceLock::new();

/// Sets the `jsonld.*` limits for this process (at startup; the first call wins, and until then
/// the defaults apply).
pub fn configure(limits: &JsonLdConfig) {
    let _ = BOUNDS.set(Bounds::new(limits.clone()));
}

fn bounds() -> &'static Bounds {
    BOUNDS.get_or_init(|| Bounds::new(JsonLdConfig::default()))
}

/// Sets its flag when dropped: the blocking work polls it and stops.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn run_bounded<T: Send + 'static>(
    f: impl FnOnce(&mut Work<'_>) -> CryptoResult<T> + Send + 'static,
) -> CryptoResult<T> {
    run_within(bounds(), f).await
}

async fn run_within<T: Send + 'static>(
    b: &'static Bounds,
    f: impl FnOnce(&mut Work<'_>) -> CryptoResult<T> + Send + 'static,
) -> CryptoResult<T> {
    let wait = Duration::from_millis(b.limits.queue_timeout_ms);
    let slot = match tokio::time::timeout(wait, b.slots.clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        _ => {
            return Err(CryptoError::Busy(format!(
                "every JSON-LD verification slot stayed busy for {} ms (jsonld.max_concurrent)",
                b.limits.queue_timeout_ms
            )))
        }
    };
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancelled.clone());
    let limits = b.limits.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own rather than the blocking pool: JSON-LD expansion recurses with large
    // frames (objects nested 14 deep overflowed a 2 MiB stack in a debug build, and an overflow
    // aborts the process); stack pages are only committed as they are used.
    std::thread::Builder::new()
        .name("idstack-jsonld".into())
        .stack_size(JSONLD_STACK_BYTES)
        .spawn(move || {
            // The slot is released when the work ends, not when the caller stops waiting for it.
            let _slot = slot;
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                f(&mut Work::new(&limits, Some(&cancelled)))
            }));
            let _ = tx.send(done);
        })
        .map_err(|e| CryptoError::Busy(format!("no thread for JSON-LD work: {e}")))?;
    match rx.await {
        Ok(Ok(result)) => result,
        // the panic's message went to the log (the panic hook); the caller is told less
        _ => Err(CryptoError::Malformed(
            "the JSON-LD processing of this document failed".into(),
        )),
    }
}

/// Stack of a JSON-LD work thread ([`run_within`]): documents nest at most [`MAX_NESTING`] deep,
/// which takes a few MiB in a debug build.
const JSONLD_STACK_BYTES: usize = 32 << 20;

fn too_complex(what: impl std::fmt::Display) -> CryptoError {
    CryptoError::TooComplex(what.to_string())
}

/// Whether `e` is the JSON-LD work running out of time (or its caller going away) rather than a
/// document over a limit: the same document may pass on a less busy node.
pub fn ran_out_of_time(e: &CryptoError) -> bool {
    matches!(e, CryptoError::OutOfTime(_))
}

/// The canonicalization budget of one verification.
struct Work<'a> {
    limits: &'a JsonLdConfig,
    left: u64,
    deadline: Instant,
    cancelled: Option<&'a AtomicBool>,
}

impl<'a> Work<'a> {
    fn new(limits: &'a JsonLdConfig, cancelled: Option<&'a AtomicBool>) -> Self {
        Self {
            limits,
            left: limits.max_work,
            deadline: Instant::now() + Duration::from_millis(limits.time_budget_ms),
            cancelled,
        }
    }

    /// Spends `units` of work, or fails: over budget, past the deadline, or abandoned.
    fn spend(&mut self, units: u64) -> CryptoResult<()> {
        if units > self.left {
            return Err(too_complex(format!(
                "canonicalizing it needs more than {} work units (jsonld.max_work)",
                self.limits.max_work
            )));
        }
        self.left -= units;
        if self.cancelled.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(CryptoError::OutOfTime(
                "verification abandoned by the caller".into(),
            ));
        }
        if Instant::now() > self.deadline {
            return Err(CryptoError::OutOfTime(format!(
                "canonicalizing it takes more than {} ms (jsonld.time_budget_ms)",
                self.limits.time_budget_ms
            )));
        }
        Ok(())
    }
}

/// Counts bytes written (the size of a document's JSON without building it).
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn check_size(document: &Value, limits: &JsonLdConfig) -> CryptoResult<()> {
    let mut n = ByteCount(0);
    serde_json::to_writer(&mut n, document).map_err(err)?;
    if n.0 > limits.max_bytes {
        return Err(too_complex(format!(
            "the document is {} bytes; the limit is {} (jsonld.max_bytes)",
            n.0, limits.max_bytes
        )));
    }
    Ok(())
}

/// Context entries a document may name in all (its own, its proofs', embedded credentials'):
/// each is processed again where it appears, and a bundled context can be large (schema.org,
/// 171 KB).
const MAX_CONTEXT_ENTRIES: usize = 16;
/// The longest `proofValue`: a multibase Ed25519 signature is 89 characters (ssi decodes it
/// with quadratic base58, before the signature is checked).
const MAX_PROOF_VALUE: usize = 128;
/// The most JSON objects (RDF nodes and values) a document may hold: json-ld copies the active
/// context for each node under a type-scoped context, so expansion costs nodes × context size,
/// before any work bound. Credentials hold tens.
const MAX_OBJECTS: usize = 1000;
/// Deepest nesting of objects and arrays in a document, from its root (a presentation's
/// credentials included): JSON-LD expansion recurses per level with large frames, so the
/// nesting bounds the stack a document takes ([`JSONLD_STACK_BYTES`]). A credential rarely nests
/// more than 8.
const MAX_NESTING: usize = 32;
/// The context URLs a document may name, each spelled exactly as here (the loader compares IRIs
/// normalised — percent-decoded, dot segments removed — so a list of refused spellings could be
/// walked around): ssi's bundled credential, security and vocabulary contexts, and idstack's own
/// ([`is_idstack_context`]). Not schema.org (171 KB) nor traceability (110 KB): json-ld copies
/// the active context for every node, and either made one request cost seconds of CPU
/// (attacker review; `https://%73chema.org/` loaded schema.org past a list of refused ones).
const KNOWN_CONTEXTS: [&str; 25] = [
    "https://www.w3.org/2018/credentials/v1",
    "https://www.w3.org/ns/credentials/v2",
    "https://www.w3.org/2018/credentials/examples/v1",
    "https://www.w3.org/ns/credentials/examples/v2",
    "https://w3id.org/security/data-integrity/v1",
    "https://w3id.org/security/data-integrity/v2",
    "https://w3id.org/security/v1",
    "https://w3id.org/security/v2",
    "https://w3id.org/security/multikey/v1",
    "https://w3id.org/security/suites/ed25519-2020/v1",
    "https://w3id.org/security/suites/jws-2020/v1",
    "https://w3id.org/security/bbs/v1",
    "https://w3id.org/vc/status-list/2021/v1",
    "https://w3id.org/vc-revocation-list-2020/v1",
    "https://w3id.org/citizenship/v1",
    "https://w3id.org/vaccination/v1",
    "https://w3id.org/vdl/v1",
    "https://w3id.org/age/v1",
    "https://w3id.org/did/v1",
    "https://www.w3.org/ns/did/v1",
    "https://identity.foundation/presentation-exchange/submission/v1",
    "https://purl.imsglobal.org/spec/ob/v3p0/context.json",
    "https://w3c-ccg.github.io/vc-ed/plugfest-1-2022/jff-vc-edu-plugfest-1-context.json",
    "https://w3c-ccg.github.io/lds-jws2020/contexts/lds-jws2020-v1.json",
    "https://w3id.org/security/suites/secp256k1recovery-2020/v2",
];

/// The signature covers the RDF a document expands to, while policies, queries and the result
/// read its JSON; this keeps the two saying the same thing. JSON-LD can spell one statement many
/// ways — under a full or compact IRI key, as an `@value` object, through a term an inline context
/// maps to `null` (dropped from the RDF: a JSON claim nothing signed), under a short key an
/// `@vocab` glues onto the rest of a signed property's IRI — so a document is refused unless:
/// - every key other than `@context` is a plain name: no `@`, `:`, `#` or `/`;
/// - `@context` appears only at the root of the document, of its proofs and of the credentials a
///   presentation embeds (no property- or type-scoped contexts), at most
///   [`MAX_CONTEXT_ENTRIES`] entries in all, none twice in one list;
/// - an inline context sets only `@vocab` (an absolute IRI ending in `#` or `/`, so a key is the
///   whole last segment of the IRI it makes) and `@version` (what credo writes): no term
///   definitions, hence no null mappings, redefinitions or scoped contexts.
///
/// Also bounded here, before ssi sees it: a proof's `proofValue` ([`MAX_PROOF_VALUE`]).
fn check_plain_json(document: &Value) -> CryptoResult<()> {
    plain(document, true, 0, &mut Counts::default())
}

/// How far a proof's `created` may be ahead of our clock.
const PROOF_CLOCK_SKEW_SECONDS: i64 = 300;

/// An xsd:dateTime as Unix seconds (without an offset: UTC, as ssi takes it).
fn xsd_unix_seconds(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp())
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|d| d.and_utc().timestamp())
        })
}

/// An xsd:dateTime chrono reads (RFC 3339, or without an offset, which ssi takes as UTC): its
/// year then fits ssi's i32.
fn xsd_date_time_ok(t: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(t).is_ok()
        || chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").is_ok()
}

/// A document as ssi takes it, once ssi can serialize it again. ssi 0.16 keeps JSON numbers as
/// their text (serde_json's `arbitrary_precision`, which ssi turns on) and its expansion
/// `unwrap`s their serialization (ssi-data-integrity-core `document.rs`), which fails for a
/// number written without a fraction outside i64/u64: `1e2`, `5e-1`, `1e400`. The same
/// serialization is run here first, so such a document is refused instead of panicking ssi.
fn ld_document(v: Value) -> CryptoResult<DataIntegrityDocument> {
    let doc: DataIntegrityDocument = serde_json::from_value(v).map_err(err)?;
    ssi::json_ld::syntax::to_value(&doc).map_err(|e| {
        err(format!(
            "a value JSON-LD canonicalization here cannot carry ({e}): numbers outside 64-bit integers need a fraction"
        ))
    })?;
    Ok(doc)
}

/// What [`check_plain_json`] has met so far.
#[derive(Default)]
struct Counts {
    context_entries: usize,
    objects: usize,
}

fn refuse_json_ld(what: String) -> CryptoResult<()> {
    Err(err(format!(
        "{what}: only plain JSON-LD is verified here (terms of bundled contexts or an inline @vocab)"
    )))
}

fn plain_context(c: &Value, counts: &mut Counts) -> CryptoResult<()> {
    let list = match c {
        Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    for (i, entry) in list.iter().enumerate() {
        counts.context_entries += 1;
        if counts.context_entries > MAX_CONTEXT_ENTRIES {
            return refuse_json_ld(format!("over {MAX_CONTEXT_ENTRIES} @context entries"));
        }
        if list[..i].contains(entry) {
            return refuse_json_ld("an @context names one entry twice".into());
        }
        match entry {
            Value::String(url)
                if KNOWN_CONTEXTS.contains(&url.as_str()) || is_idstack_context(url) => {}
            Value::String(url) => {
                return refuse_json_ld(format!(
                    "the context {} is not one verified here",
                    crate::crypto::mdoc::clip(url)
                ));
            }
            Value::Object(o) => {
                for (k, v) in o {
                    let ok = match k.as_str() {
                        "@vocab" => v.as_str().is_some_and(|i| {
                            i.contains(':') && (i.ends_with('#') || i.ends_with('/'))
                        }),
                        "@version" => v.as_f64() == Some(1.1),
                        _ => false,
                    };
                    if !ok {
                        return refuse_json_ld(format!(
                            "the inline @context sets `{k}` (only @vocab, an absolute IRI ending in # or /, and @version)"
                        ));
                    }
                }
            }
            _ => return refuse_json_ld("an @context that is neither a URL nor an object".into()),
        }
    }
    Ok(())
}

/// [`check_plain_json`] of `v`; `root`: a place where an `@context` may stand.
fn plain(v: &Value, root: bool, depth: usize, counts: &mut Counts) -> CryptoResult<()> {
    if matches!(v, Value::Object(_) | Value::Array(_)) && depth >= MAX_NESTING {
        return refuse_json_ld(format!("objects and arrays nested over {MAX_NESTING} deep"));
    }
    match v {
        Value::Object(o) => {
            counts.objects += 1;
            if counts.objects > MAX_OBJECTS {
                return refuse_json_ld(format!("over {MAX_OBJECTS} JSON objects"));
            }
            for (k, v) in o {
                if k == "@context" {
                    if !root {
                        return refuse_json_ld("an @context below the root of a document".into());
                    }
                    plain_context(v, counts)?;
                    continue;
                }
                if k.starts_with('@') || k.contains([':', '#', '/']) {
                    return refuse_json_ld(format!("the key `{k}` is a keyword or an IRI"));
                }
                if k == "proofValue" && v.as_str().is_some_and(|p| p.len() > MAX_PROOF_VALUE) {
                    return Err(err(format!(
                        "proofValue is over {MAX_PROOF_VALUE} characters"
                    )));
                }
                // a proof, and a credential a presentation embeds, are documents of their own
                let child_root = matches!(k.as_str(), "proof" | "verifiableCredential");
                plain(v, child_root, depth + 1, counts)?;
            }
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(|x| plain(x, root, depth + 1, counts)),
        _ => Ok(()),
    }
}

/// What the proof's verification canonicalizes, each within the limits: the unsecured document
/// (without `proof`, or with the previous proofs of a chain), and the proof options (the proof
/// without its signature, under the document's `@context`).
fn precheck(document: &Value, proof: &Value, work: &mut Work<'_>) -> CryptoResult<()> {
    let claims = document.as_object().cloned().unwrap_or_default();
    let mut options = proof.as_object().cloned().unwrap_or_default();
    options.remove("proofValue");
    options.remove("jws");
    options.insert("@context".into(), document["@context"].clone());
    for part in [claims, options] {
        let quads = rdf_quads(Value::Object(part))?;
        rdfc::check(&quads, work)?;
    }
    Ok(())
}

/// The RDF quads of a JSON-LD document (bundled contexts only), not yet canonicalized.
fn rdf_quads(doc: Value) -> CryptoResult<Vec<ssi::rdf::LexicalQuad>> {
    use ssi::json_ld::Expandable as _;
    use ssi::rdf::AnyLdEnvironment as _;
    let doc = ld_document(doc)?;
    let mut ld = ssi::rdf::LdEnvironment::default();
    let loader = loader()?;
    let expanded = futures_executor::block_on(doc.expand_with(&mut ld, &loader)).map_err(err)?;
    ld.quads_of(&expanded).map_err(err)
}

/// URDNA2015 exactly as ssi-rdf 0.1 runs it (`ssi::rdf::urdna2015::normalize`: the same hash
/// functions, loop structure and permutation order), with every step paid for from a [`Work`]
/// budget: one unit per first-degree hash, per Hash N-Degree Quads call and per related blank node
/// hashed, and `n!` units before a group of `n` related blank nodes is permuted. A document that
/// completes here within the budget costs ssi the same steps; one that does not never reaches it.
mod rdfc {
    use super::*;
    use rdf_types::BlankId;
    use ssi::rdf::urdna2015::{
        hash_first_degree_quads, hash_related_blank_node, issue_identifier, BlankNodeComponents,
        HashNDegreeQuadsOutput, IdentifierIssuer, NormalizationState, NormalizingSubstitution,
    };
    use ssi::rdf::{LexicalQuad, LexicalQuadRef};

    /// Checks the blank-node count and runs the bounded canonicalization; returns the canonical
    /// blank node labels it issued (the same as ssi's).
    pub(super) fn check(
        quads: &[LexicalQuad],
        work: &mut Work<'_>,
    ) -> CryptoResult<NormalizingSubstitution> {
        let mut state = NormalizationState {
            blank_node_to_quads: BTreeMap::new(),
            hash_to_blank_nodes: BTreeMap::new(),
            canonical_issuer: IdentifierIssuer::new("_:c14n".to_string()),
        };
        for quad in quads {
            let quad = quad.as_lexical_quad_ref();
            for id in quad.blank_node_components() {
                state.blank_node_to_quads.entry(id).or_default().push(quad);
            }
        }
        let blank_nodes = state.blank_node_to_quads.len();
        if blank_nodes > work.limits.max_blank_nodes {
            return Err(too_complex(format!(
                "it has {blank_nodes} blank nodes; the limit is {} (jsonld.max_blank_nodes)",
                work.limits.max_blank_nodes
            )));
        }
        let mut non_normalized: HashSet<&BlankId> =
            state.blank_node_to_quads.keys().cloned().collect();
        let mut simple = true;
        while simple {
            simple = false;
            state.hash_to_blank_nodes.clear();
            for id in non_normalized.iter() {
                work.spend(1)?;
                let hash = hash_first_degree_quads(&mut state, id);
                state.hash_to_blank_nodes.entry(hash).or_default().push(*id);
            }
            let mut unique = Vec::new();
            for (hash, ids) in state.hash_to_blank_nodes.iter() {
                if let [id] = ids.as_slice() {
                    issue_identifier(&mut state.canonical_issuer, id);
                    unique.push((hash.clone(), *id));
                    simple = true;
                }
            }
            for (hash, id) in unique {
                non_normalized.remove(id);
                state.hash_to_blank_nodes.remove(&hash);
            }
            for (_, ids) in state.hash_to_blank_nodes.clone() {
                let mut paths: Vec<HashNDegreeQuadsOutput> = Vec::new();
                for id in ids {
                    if state.canonical_issuer.find_issued_identifier(id).is_some() {
                        continue;
                    }
                    let mut temporary = IdentifierIssuer::new("_:b".to_string());
                    issue_identifier(&mut temporary, id);
                    paths.push(hash_n_degree_quads(
                        &mut state,
                        id,
                        &mut temporary,
                        work,
                        1,
                    )?);
                }
                paths.sort_by(|a, b| a.hash.cmp(&b.hash));
                for result in paths {
                    for (existing, _) in result.issuer.issued_identifiers {
                        issue_identifier(&mut state.canonical_issuer, &existing);
                    }
                }
            }
        }
        Ok(state.canonical_issuer.issued_identifiers)
    }

    fn factorial(n: usize) -> u64 {
        (2..=n as u64).fold(1u64, |acc, k| acc.saturating_mul(k))
    }

    /// ssi-rdf's `hash_n_degree_quads`, paying for each step.
    fn hash_n_degree_quads<'q>(
        state: &mut NormalizationState<'q>,
        identifier: &BlankId,
        issuer: &mut IdentifierIssuer,
        work: &mut Work<'_>,
        depth: usize,
    ) -> CryptoResult<HashNDegreeQuadsOutput> {
        if depth > work.limits.max_recursion_depth {
            return Err(too_complex(format!(
                "canonicalizing it recurses deeper than {} (jsonld.max_recursion_depth)",
                work.limits.max_recursion_depth
            )));
        }
        work.spend(1)?;
        let mut issuer: IdentifierIssuer = issuer.clone();
        let mut related: BTreeMap<String, Vec<&'q BlankId>> = BTreeMap::new();
        let quads: Vec<LexicalQuadRef<'q>> = state
            .blank_node_to_quads
            .get(identifier)
            .cloned()
            .unwrap_or_default();
        for quad in quads {
            for (component, position) in quad.blank_node_components_with_position() {
                if component != identifier {
                    work.spend(1)?;
                    let hash =
                        hash_related_blank_node(state, component, quad, &mut issuer, position);
                    related.entry(hash).or_default().push(component);
                }
            }
        }
        let mut data_to_hash = String::new();
        for (related_hash, blank_nodes) in related {
            data_to_hash.push_str(&related_hash);
            work.spend(factorial(blank_nodes.len()))?;
            let mut chosen_path = String::new();
            let mut chosen_issuer = None;
            for permutation in combination::permutate::from_vec(&blank_nodes) {
                let mut issuer_copy = issuer.clone();
                let mut path = String::new();
                let mut recursion_list: Vec<rdf_types::BlankIdBuf> = Vec::new();
                for related in permutation {
                    if let Some(canonical) = state.canonical_issuer.find_issued_identifier(related)
                    {
                        recursion_list.push(canonical.to_owned());
                    } else {
                        if issuer_copy.find_issued_identifier(related).is_none() {
                            recursion_list.push(related.to_owned());
                        }
                        path += &issue_identifier(&mut issuer_copy, related);
                    }
                }
                for related in recursion_list {
                    let result =
                        hash_n_degree_quads(state, &related, &mut issuer_copy, work, depth + 1)?;
                    path.push_str(&issue_identifier(&mut issuer_copy, &related));
                    path.push('<');
                    path.push_str(&result.hash);
                    path.push('>');
                    issuer_copy = result.issuer;
                }
                if chosen_path.is_empty() || path < chosen_path {
                    chosen_path = path;
                    chosen_issuer = Some(issuer_copy);
                }
            }
            data_to_hash.push_str(&chosen_path);
            issuer = chosen_issuer.ok_or_else(|| err("no permutation chosen"))?;
        }
        Ok(HashNDegreeQuadsOutput {
            hash: super::super::sha256_hex(data_to_hash.as_bytes()),
            issuer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ssi's resolver here answers did:key and did:jwk only: nothing it does can fetch.
    #[test]
    fn ssi_resolves_only_dids_that_need_no_network() {
        use ssi::dids::{resolution::Error, DIDBuf, DIDResolver};
        let r = OfflineDids::default();
        let resolve = |d: &str| {
            let did = DIDBuf::from_string(d.to_string()).unwrap();
            futures_executor::block_on(r.resolve_representation(&did, Default::default())).map(drop)
        };
        resolve("did:key:z6Mkin7GCtk21cLBwGc6AbuBNHBVLUMkZ3V1cPMc8YQ6a538").unwrap();
        for d in [
            "did:web:127.0.0.1%3A1",
            "did:ion:abc",
            "did:pkh:eip155:1:0xb9c5714089478a327f09197987f16f9e5d936e8a",
        ] {
            assert!(
                matches!(resolve(d), Err(Error::MethodNotSupported(_))),
                "{d}"
            );
        }
    }

    /// ssi panicked on numbers it could not serialize again (`1e20`, `1e-7`, `-1e21`): a
    /// credential carrying one, presented or about to be signed, is refused, not a panic.
    #[test]
    fn numbers_ssi_cannot_carry_are_refused_not_a_panic() {
        let now = 1_800_000_000;
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let vm = did::verification_method(&did::did_key(&issuer.verifying_key()));
        let cred = |a: Value| {
            let mut c = Map::new();
            c.insert("type".into(), json!(["VerifiableCredential", "X"]));
            c.insert(
                "credentialSubject".into(),
                json!({"id": "did:example:h", "a": a}),
            );
            c
        };
        let vc = issue_credential(&issuer, &vm, cred(json!(1)), now).unwrap();
        // as received: a number keeps its text (serde_json's arbitrary_precision, which ssi
        // turns on), so `1e2` is not `100`
        for text in [
            "1e20", "1e-7", "-1e21", "1e300", "1e2", "5e-1", "1E2", "1e+2", "1e400",
        ] {
            let bad: Value = serde_json::from_str(text).unwrap();
            let mut t = vc.clone();
            t["credentialSubject"]["a"] = bad.clone();
            let got = std::panic::catch_unwind(|| verify_credential(&t, now))
                .unwrap_or_else(|_| panic!("verifying {bad} panicked"));
            assert!(
                got.unwrap_err().to_string().contains("cannot carry"),
                "{bad}"
            );
            let got =
                std::panic::catch_unwind(|| issue_credential(&issuer, &vm, cred(bad.clone()), now))
                    .unwrap_or_else(|_| panic!("signing {bad} panicked"));
            assert!(got.is_err(), "{bad}");
        }
        for fine in [
            json!(1.5),
            json!(-7),
            json!(u64::MAX),
            json!(2.5e20),
            json!(0.001),
        ] {
            let v = issue_credential(&issuer, &vm, cred(fine.clone()), now).unwrap();
            verify_credential(&v, now).unwrap();
        }
        // (without an offset, as ssi reads it, is a date-time still)
        let mut naive = vc.clone();
        naive["proof"]["created"] = json!("2027-01-15T10:00:00");
        assert!(!verify_credential(&naive, now)
            .unwrap_err()
            .to_string()
            .contains("RFC 3339"));
        // a proof date ssi would read as a year past i32 (xsd-types unwraps it)
        for created in [
            json!("99999999999-01-01T00:00:00Z"),
            json!(5),
            json!("yesterday"),
        ] {
            let mut t = vc.clone();
            t["proof"]["created"] = created.clone();
            let got = std::panic::catch_unwind(|| verify_credential(&t, now))
                .unwrap_or_else(|_| panic!("verifying created {created} panicked"));
            assert!(got.is_err(), "{created}");
        }
    }

    /// JSON-LD expansion recursed deep enough to overflow a 2 MiB blocking-pool stack (an abort,
    /// not a panic) for objects nested 14 deep in a debug build: the work runs on threads with a
    /// larger stack, documents nest at most [`MAX_NESTING`] deep, and the deepest allowed
    /// credential and presentation are signed and verified there.
    #[tokio::test]
    async fn deeply_nested_documents_are_refused_and_the_deepest_allowed_fit_the_stack() {
        let now = 1_800_000_000;
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let vm = did::verification_method(&did::did_key(&issuer.verifying_key()));
        let holder = SigningKey::generate(KeyType::Ed25519);
        let hvm = did::verification_method(&did::did_key(&holder.verifying_key()));
        // `levels` objects {"b": …} around 1 as claim `a`: its innermost object is at depth
        // levels + 1 in the credential, levels + 3 in a presentation
        let nested = |levels: usize| (0..levels).fold(json!(1), |inner, _| json!({ "b": inner }));
        let cred = move |a: Value| {
            let mut c = Map::new();
            c.insert("type".into(), json!(["VerifiableCredential", "X"]));
            c.insert(
                "credentialSubject".into(),
                json!({"id": "did:example:h", "a": a}),
            );
            c
        };
        let sign = |levels: usize| {
            let (issuer, vm, c) = (issuer.clone(), vm.clone(), cred(nested(levels)));
            run_in_slot(move || issue_credential(&issuer, &vm, c, now))
        };
        let deepest = sign(MAX_NESTING - 2).await.unwrap().unwrap();
        verify_credential_bounded(deepest.clone(), now)
            .await
            .unwrap();
        let c = sign(MAX_NESTING - 4).await.unwrap().unwrap();
        let (h, v) = (holder.clone(), hvm.clone());
        let vp = run_in_slot(move || issue_presentation(&h, &v, &[c], "n", "d", now))
            .await
            .unwrap()
            .unwrap();
        verify_presentation_bounded(vp, Some("n".into()), Some("d".into()), now)
            .await
            .unwrap();
        // the deepest credential is two levels too deep in a presentation
        let (h, v, d) = (holder.clone(), hvm.clone(), deepest.clone());
        let vp = run_in_slot(move || issue_presentation(&h, &v, &[d], "n", "d", now))
            .await
            .unwrap()
            .unwrap();
        let got = verify_presentation_bounded(vp, Some("n".into()), Some("d".into()), now).await;
        refused_as_not_plain(got.map(|(d, _)| json!(d)), "nested", "presentation");
        let mut deeper = deepest.clone();
        deeper["credentialSubject"]["a"] = nested(MAX_NESTING - 1);
        refused_as_not_plain(verify_credential(&deeper, now), "nested", "objects");
        let arrays: Value = serde_json::from_str(&format!(
            "{}1{}",
            "[".repeat(MAX_NESTING),
            "]".repeat(MAX_NESTING)
        ))
        .unwrap();
        deeper["credentialSubject"]["a"] = arrays;
        refused_as_not_plain(verify_credential(&deeper, now), "nested", "arrays");
        assert!(sign(MAX_NESTING - 1).await.unwrap().is_err());
    }

    #[test]
    fn credential_and_presentation_round_trip_and_tamper() {
        let now = 1_800_000_000;
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let vm = did::verification_method(&did::did_key(&issuer.verifying_key()));
        let mut cred = Map::new();
        cred.insert(
            "type".into(),
            json!(["VerifiableCredential", "IdentityCredential"]),
        );
        cred.insert(
            "credentialSubject".into(),
            json!({"id": "did:example:holder", "given_name": "Erika", "email": "e@x.org"}),
        );
        let vc = issue_credential(&issuer, &vm, cred, now).unwrap();
        assert_eq!(vc["proof"]["cryptosuite"], "eddsa-rdfc-2022");
        verify_credential(&vc, now).unwrap();
        let mut tampered = vc.clone();
        tampered["credentialSubject"]["given_name"] = json!("Mallory");
        assert!(verify_credential(&tampered, now).is_err());

        let holder = SigningKey::generate(KeyType::Ed25519);
        let hvm = did::verification_method(&did::did_key(&holder.verifying_key()));
        let vp = issue_presentation(&holder, &hvm, &[vc], "nonce-1", "verifier", now).unwrap();
        let (h, _) = verify_presentation(&vp, Some("nonce-1"), Some("verifier"), now).unwrap();
        assert_eq!(h, vm_did(&hvm));
        assert!(verify_presentation(&vp, Some("nonce-2"), Some("verifier"), now).is_err());
        assert!(verify_presentation(&vp, Some("nonce-1"), Some("other"), now).is_err());
        // neither given: only the proof is checked
        verify_presentation(&vp, None, None, now).unwrap();
        // a presentation with no credential (ACA-Py's DID authentication sends
        // `"verifiableCredential": []`): judged on its own proof
        let empty = issue_presentation(&holder, &hvm, &[], "nonce-1", "verifier", now).unwrap();
        assert_eq!(empty["verifiableCredential"], json!([]));
        verify_presentation(&empty, Some("nonce-1"), Some("verifier"), now).unwrap();
        // P-256 keys are refused for this suite
        let p = SigningKey::generate(KeyType::P256);
        let pvm = did::verification_method(&did::did_key(&p.verifying_key()));
        assert!(issue_credential(&p, &pvm, Map::new(), now).is_err());
    }

    /// ssi checks neither: a proof past its `expires`, or created later than now beyond the
    /// clock skew, does not verify (both are read before the signature is).
    #[test]
    fn a_proof_is_held_to_its_expires_and_created() {
        let vc = ordinary_credential();
        verify_credential(&vc, NOW).unwrap();
        let with = |field: &str, at: i64| {
            let mut v = vc.clone();
            v["proof"][field] = json!(DateTime::<Utc>::from_timestamp(at, 0).unwrap().to_rfc3339());
            verify_credential(&v, NOW).unwrap_err().to_string()
        };
        assert!(with("expires", NOW - 1).contains("expired"));
        assert!(with("expires", NOW).contains("expired"));
        assert!(with("created", NOW + PROOF_CLOCK_SKEW_SECONDS + 1).contains("future"));
        // within the skew, or expiring later: only the signature (changed here) fails
        assert!(!with("created", NOW + 60).contains("future"));
        assert!(!with("expires", NOW + 60).contains("expired"));
    }

    #[test]
    fn proof_sets_and_chains() {
        let now = 1_800_000_000;
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let vm = did::verification_method(&did::did_key(&issuer.verifying_key()));
        let witness = SigningKey::generate(KeyType::Ed25519);
        let wvm = did::verification_method(&did::did_key(&witness.verifying_key()));
        let mut cred = Map::new();
        cred.insert("type".into(), json!(["VerifiableCredential"]));
        cred.insert(
            "credentialSubject".into(),
            json!({"id": "did:example:holder"}),
        );
        let vc = issue_credential(&issuer, &vm, cred, now).unwrap();
        // a proof set: the issuer's and a witness's; both verify, the issuer's binds
        let set = add_assertion_proof(&witness, &wvm, &vc, None, &[], now).unwrap();
        assert_eq!(set["proof"].as_array().unwrap().len(), 2);
        verify_credential(&set, now).unwrap();
        assert_eq!(issuer_proof_method(&set).as_deref(), Some(vm.as_str()));
        // every proof must verify
        let mut bad = set.clone();
        bad["proof"][1]["proofValue"] = json!("z111");
        assert!(verify_credential(&bad, now).is_err());
        // a set with no proof by the issuer binds nothing
        let mut unbound = set.clone();
        unbound["proof"] = json!([set["proof"][1].clone()]);
        assert!(verify_credential(&unbound, now).is_err());
        assert!(issuer_proof_method(&unbound).is_none());

        // a chain: the issuer's proof (named), then one over the document carrying it
        let mut first = vc.clone();
        first.as_object_mut().unwrap().remove("proof");
        let first =
            add_assertion_proof(&issuer, &vm, &first, Some("urn:uuid:first"), &[], now).unwrap();
        let chain =
            add_assertion_proof(&witness, &wvm, &first, None, &["urn:uuid:first"], now).unwrap();
        assert_eq!(
            chain["proof"][1]["previousProof"], "urn:uuid:first",
            "{chain}"
        );
        verify_credential(&chain, now).unwrap();
        // the chained proof covers the one it names: changing the first breaks the second
        let mut bad = chain.clone();
        bad["proof"][0]["created"] = json!("2020-01-01T00:00:00Z");
        assert!(verify_credential(&bad, now).is_err());
        // previousProof naming no proof here, or not a string
        for link in [
            json!("urn:uuid:missing"),
            json!(["urn:uuid:missing"]),
            json!(7),
            json!([]),
        ] {
            let mut bad = chain.clone();
            bad["proof"][1]["previousProof"] = link.clone();
            assert!(verify_credential(&bad, now).is_err(), "{link}");
        }
        // the chained proof verified as a set member (without the link) does not verify
        let mut unlinked = chain.clone();
        unlinked["proof"][1]
            .as_object_mut()
            .unwrap()
            .remove("previousProof");
        assert!(verify_credential(&unlinked, now).is_err());
        // duplicate proof ids, and more proofs than the bound
        let mut dup = chain.clone();
        dup["proof"][1]["id"] = json!("urn:uuid:first");
        assert!(verify_credential(&dup, now).is_err());
        let mut many = set.clone();
        many["proof"] = json!(vec![set["proof"][0].clone(); MAX_PROOFS + 1]);
        assert!(matches!(
            verify_credential(&many, now),
            Err(CryptoError::TooComplex(_))
        ));
        assert!(verify_credential(&json!({"proof": []}), now).is_err());
    }

    #[test]
    fn idstack_context_resolves_offline_for_registered_origins_only() {
        let now = 1_800_000_000;
        register_context_origin("https://idstack.test/");
        assert!(loader().is_ok());
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let vm = did::verification_method(&did::did_key(&issuer.verifying_key()));
        let with_context = |ctx: &str| {
            let mut cred = Map::new();
            cred.insert("@context".into(), json!([VCDM2_CONTEXT, ctx]));
            cred.insert(
                "type".into(),
                json!(["VerifiableCredential", "IdentityCredential"]),
            );
            cred.insert(
                "credentialSubject".into(),
                json!({"id": "did:example:holder", "given_name": "Erika"}),
            );
            issue_credential(&issuer, &vm, cred, now)
        };
        // this node's served URL (trailing slash of the public URL ignored)
        let vc = with_context("https://idstack.test/contexts/credentials/v1").unwrap();
        verify_credential(&vc, now).unwrap();
        // credentials issued before naming the w3id URL still verify
        let old = with_context(IDSTACK_CONTEXT_URL).unwrap();
        verify_credential(&old, now).unwrap();
        // another deployment's context is not fetched: unknown until configured
        assert!(with_context("https://elsewhere.test/contexts/credentials/v1").is_err());
        let mut foreign = vc.clone();
        foreign["@context"][1] = json!("https://elsewhere.test/contexts/credentials/v1");
        assert!(verify_credential(&foreign, now).is_err());
        assert_eq!(
            context_url("https://idstack.test/"),
            "https://idstack.test/contexts/credentials/v1"
        );
    }

    /// Signed by credo-ts 0.6.3 (jsonld-signatures, header keys alg, b64, crit) and sent over
    /// DIDComm issue-credential 2.0 in the interop test.
    const CREDO_ED25519_2018: &str = r#"{"@context":["https://www.w3.org/2018/credentials/v1",{"@vocab":"https://credo-mediation.invalid/vocab#"}],"type":["VerifiableCredential"],"issuer":"did:key:z6Mkin7GCtk21cLBwGc6AbuBNHBVLUMkZ3V1cPMc8YQ6a538","issuanceDate":"2026-12-02T01:14:03Z","credentialSubject":{"given_name":"Erika","family_name":"Mustermann"},"proof":{"verificationMethod":"did:key:z6Mkin7GCtk21cLBwGc6AbuBNHBVLUMkZ3V1cPMc8YQ6a538#z6Mkin7GCtk21cLBwGc6AbuBNHBVLUMkZ3V1cPMc8YQ6a538","type":"Ed25519Signature2018","created":"2026-12-02T01:14:03Z","proofPurpose":"assertionMethod","jws":"eyJhbGciOiJFZERTQSIsImI2NCI6ZmFsc2UsImNyaXQiOlsiYjY0Il19..xPNCxcLa2RCfGUdDA3So9sC2OrXo40fv5LzVKm_HEaeKPQylbgbPHQv9QMWUYkt8gwsl4PygSzUjhJw-6Eg2Bg"}}"#;

    #[test]
    fn ed25519_signature_2018_from_credo_verifies_and_tampering_is_caught() {
        let vc: Value = serde_json::from_str(CREDO_ED25519_2018).unwrap();
        let now = 1_800_000_000;
        let plain = verify_legacy_credential(&vc, now).unwrap();
        assert_eq!(plain["credentialSubject"]["given_name"], "Erika");
        // not accepted where only eddsa-rdfc-2022 is
        assert!(verify_credential(&vc, now).is_err());
        let mut changed = vc.clone();
        changed["credentialSubject"]["given_name"] = json!("Mallory");
        assert!(matches!(
            verify_legacy_credential(&changed, now),
            Err(CryptoError::BadSignature)
        ));
        let mut later = vc.clone();
        later["proof"]["created"] = json!("2026-12-03T00:00:00Z");
        assert!(matches!(
            verify_legacy_credential(&later, now),
            Err(CryptoError::BadSignature)
        ));
    }

    // ------------------------------------------------------------------ JSON-LD limits

    const NOW: i64 = 1_800_000_000;

    /// A credential whose subject is `n` blank nodes all linked to each other (a complete graph):
    /// every node has the same first-degree hash, so URDNA2015 permutes them. The proof is
    /// well-formed but its value is not a signature (the limits must trip before that matters).
    fn linked_blank_nodes(n: usize) -> Value {
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let did = did::did_key(&issuer.verifying_key());
        let vm = did::verification_method(&did);
        let subjects: Vec<Value> = (0..n)
            .map(|i| {
                let knows: Vec<Value> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| json!({"id": format!("_:n{j}")}))
                    .collect();
                json!({"id": format!("_:n{i}"), "knows": knows})
            })
            .collect();
        json!({
            "@context": [VCDM2_CONTEXT, IDSTACK_CONTEXT_URL],
            "type": ["VerifiableCredential"],
            "issuer": did,
            "validFrom": "2026-01-01T00:00:00Z",
            "credentialSubject": subjects,
            "proof": {
                "type": "DataIntegrityProof",
                "cryptosuite": "eddsa-rdfc-2022",
                "created": "2026-01-01T00:00:00Z",
                "verificationMethod": vm,
                "proofPurpose": "assertionMethod",
                "proofValue": "z3FXQjecWufY46yg5abdVZsXqLhxhueuSoZgNSARiKBk9czhSePTFehP8c3PGfb6a22gkfUKKT4ZxjUacTpzQfYB"
            }
        })
    }

    fn ordinary_credential() -> Value {
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let vm = did::verification_method(&did::did_key(&issuer.verifying_key()));
        let mut cred = Map::new();
        cred.insert(
            "type".into(),
            json!(["VerifiableCredential", "IdentityCredential"]),
        );
        cred.insert(
            "credentialSubject".into(),
            json!({"id": "did:example:holder", "given_name": "Erika",
                   "address": {"street": "Heidestraße 17", "locality": "Köln"},
                   "degrees": [{"name": "BSc"}, {"name": "MSc"}]}),
        );
        issue_credential(&issuer, &vm, cred, NOW).unwrap()
    }

    /// `r` is the plain-JSON-LD refusal (or the proofValue bound) naming `what`; `case` labels
    /// the failure.
    fn refused_as_not_plain(r: CryptoResult<Value>, what: &str, case: &str) {
        match r {
            Err(CryptoError::Malformed(e)) => assert!(e.contains(what), "{case}: {e}"),
            other => panic!("{case}: expected a refusal, got {other:?}"),
        }
    }

    fn too_complex_mentioning(r: CryptoResult<impl std::fmt::Debug>, key: &str) {
        match r {
            Err(CryptoError::TooComplex(d) | CryptoError::OutOfTime(d)) => {
                assert!(d.contains(key), "{d}")
            }
            other => panic!("expected TooComplex ({key}), got {other:?}"),
        }
    }

    #[test]
    fn linked_blank_node_bombs_are_refused_by_the_work_bound() {
        for n in [8, 9, 12] {
            let bomb = linked_blank_nodes(n);
            assert!(serde_json::to_string(&bomb).unwrap().len() < 4096);
            too_complex_mentioning(verify_credential(&bomb, NOW), "jsonld.max_work");
        }
    }

    /// Signing canonicalizes too: a credential an admin (or an issuer tenant's offer claims)
    /// hands in is held to the same work bound as one a wallet presents.
    #[test]
    fn blank_node_bombs_are_not_signed() {
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let vm = did::verification_method(&did::did_key(&issuer.verifying_key()));
        for n in [9, 12] {
            let mut bomb = linked_blank_nodes(n);
            let bomb = bomb.as_object_mut().unwrap();
            bomb.remove("proof");
            bomb.remove("issuer");
            too_complex_mentioning(
                issue_credential(&issuer, &vm, bomb.clone(), NOW),
                "jsonld.max_work",
            );
        }
        // what verifies within the bound is still signed
        let mut small = linked_blank_nodes(3);
        small.as_object_mut().unwrap().remove("proof");
        let small = small.as_object().unwrap().clone();
        let signed = issue_credential(&issuer, &vm, small, NOW).unwrap();
        verify_credential(&signed, NOW).unwrap();
    }

    #[test]
    fn ordinary_credentials_and_small_symmetric_graphs_still_verify() {
        let vc = ordinary_credential();
        verify_credential(&vc, NOW).unwrap();
        // 3 linked blank nodes need Hash N-Degree Quads, within the default budget: the
        // pre-check passes and the (fake) signature is what fails.
        assert_eq!(
            verify_credential(&linked_blank_nodes(3), NOW),
            Err(CryptoError::BadSignature)
        );
    }

    #[tokio::test]
    async fn bounded_entry_points_verify_and_refuse() {
        let vc = ordinary_credential();
        verify_credential_bounded(vc, NOW).await.unwrap();
        too_complex_mentioning(
            verify_credential_bounded(linked_blank_nodes(9), NOW).await,
            "jsonld.max_work",
        );
        let holder = SigningKey::generate(KeyType::Ed25519);
        let hvm = did::verification_method(&did::did_key(&holder.verifying_key()));
        let vp =
            issue_presentation(&holder, &hvm, &[ordinary_credential()], "n", "d", NOW).unwrap();
        let (h, _) = verify_presentation_bounded(vp, Some("n".into()), Some("d".into()), NOW)
            .await
            .unwrap();
        assert_eq!(h, vm_did(&hvm));
        // a presentation carrying the bomb
        let bomb_vp = json!({
            "@context": [VCDM2_CONTEXT, IDSTACK_CONTEXT_URL],
            "type": ["VerifiablePresentation"],
            "holder": vm_did(&hvm),
            "verifiableCredential": [linked_blank_nodes(8)],
            "proof": {
                "type": "DataIntegrityProof", "cryptosuite": "eddsa-rdfc-2022",
                "created": "2026-01-01T00:00:00Z", "verificationMethod": hvm,
                "proofPurpose": "authentication", "challenge": "n", "domain": "d",
                "proofValue": "z3FXQjecWufY46yg5abdVZsXqLhxhueuSoZgNSARiKBk9czhSePTFehP8c3PGfb6a22gkfUKKT4ZxjUacTpzQfYB"
            }
        });
        too_complex_mentioning(
            verify_presentation_bounded(bomb_vp, Some("n".into()), Some("d".into()), NOW).await,
            "jsonld.max_work",
        );
    }

    fn limits(f: impl FnOnce(&mut JsonLdConfig)) -> JsonLdConfig {
        let mut l = JsonLdConfig::default();
        f(&mut l);
        l
    }

    fn verify_within(vc: &Value, l: &JsonLdConfig) -> CryptoResult<Value> {
        verify_credential_with(vc, NOW, Suites::Eddsa2022, &mut Work::new(l, None))
    }

    #[test]
    fn each_limit_gives_its_own_error() {
        let vc = ordinary_credential();
        verify_within(&vc, &JsonLdConfig::default()).unwrap();
        too_complex_mentioning(
            verify_within(&vc, &limits(|l| l.max_bytes = 200)),
            "jsonld.max_bytes",
        );
        too_complex_mentioning(
            verify_within(&vc, &limits(|l| l.max_blank_nodes = 1)),
            "jsonld.max_blank_nodes",
        );
        too_complex_mentioning(
            verify_within(&vc, &limits(|l| l.max_work = 2)),
            "jsonld.max_work",
        );
        let bomb = linked_blank_nodes(5);
        too_complex_mentioning(
            verify_within(&bomb, &limits(|l| l.max_recursion_depth = 2)),
            "jsonld.max_recursion_depth",
        );
        // an exhausted time budget (0 ms: the first step is already late)
        let late = verify_within(&bomb, &limits(|l| l.time_budget_ms = 0));
        assert!(late.as_ref().is_err_and(ran_out_of_time), "{late:?}");
        too_complex_mentioning(late, "jsonld.time_budget_ms");
        // a caller that went away
        let gone = AtomicBool::new(true);
        let l = JsonLdConfig::default();
        let left = verify_credential_with(
            &bomb,
            NOW,
            Suites::Eddsa2022,
            &mut Work::new(&l, Some(&gone)),
        );
        assert!(left.as_ref().is_err_and(ran_out_of_time), "{left:?}");
        too_complex_mentioning(left, "abandoned");
        // a document over a limit is not the node running out of time
        let over = verify_within(&bomb, &limits(|l| l.max_work = 2));
        assert!(!over.as_ref().is_err_and(ran_out_of_time), "{over:?}");
    }

    /// The bounded canonicalizer gives ssi's canonical form (so its steps are ssi's). Labels of
    /// automorphic blank nodes may swap between runs (ssi visits them in hash-set order); the
    /// canonical N-Quads they produce may not.
    #[test]
    fn bounded_canonicalization_matches_ssi() {
        use ssi::rdf::urdna2015::BlankNodeComponentsMut as _;
        use ssi::rdf::IntoNQuads as _;
        let mut docs = vec![ordinary_credential()];
        for n in [2, 3, 4, 5] {
            docs.push(linked_blank_nodes(n));
        }
        // a ring of 6 blank nodes (equal first-degree hashes, no permutation blow-up)
        let ring: Vec<Value> = (0..6)
            .map(
                |i| json!({"id": format!("_:r{i}"), "next": {"id": format!("_:r{}", (i + 1) % 6)}}),
            )
            .collect();
        let mut r = linked_blank_nodes(1);
        r["credentialSubject"] = json!(ring);
        docs.push(r);
        let l = limits(|l| l.max_work = 1_000_000);
        for doc in docs {
            let mut d = doc.as_object().cloned().unwrap();
            d.remove("proof");
            let quads = rdf_quads(Value::Object(d)).unwrap();
            let labels = rdfc::check(&quads, &mut Work::new(&l, None)).unwrap();
            let ours = quads
                .iter()
                .cloned()
                .map(|mut q| {
                    for b in q.blank_node_components_mut() {
                        *b = labels[&*b].clone();
                    }
                    q
                })
                .into_nquads_lines();
            let theirs =
                ssi::rdf::urdna2015::normalize(quads.iter().map(|q| q.as_lexical_quad_ref()))
                    .into_nquads_lines();
            assert!(theirs.iter().any(|l| l.contains("_:c14n")));
            assert_eq!(ours, theirs);
        }
    }

    #[tokio::test]
    async fn the_concurrency_bound_answers_busy() {
        let b: &'static Bounds = Box::leak(Box::new(Bounds::new(limits(|l| {
            l.max_concurrent = 1;
            l.queue_timeout_ms = 50;
        }))));
        let held = b.slots.clone().acquire_owned().await.unwrap();
        let r = run_within(b, |_| Ok(())).await;
        assert!(matches!(r, Err(CryptoError::Busy(_))), "{r:?}");
        drop(held);
        run_within(b, |_| Ok(())).await.unwrap();
    }

    /// Dropping the future (the client hung up) stops the blocking work: its slot comes back
    /// long before the 9-node bomb could finish (about 90 s of CPU) under an unlimited budget.
    #[tokio::test]
    async fn dropping_the_future_stops_the_work() {
        let b: &'static Bounds = Box::leak(Box::new(Bounds::new(limits(|l| {
            l.max_concurrent = 1;
            l.max_work = u64::MAX;
            l.time_budget_ms = 3_600_000;
        }))));
        let bomb = linked_blank_nodes(9);
        let started = std::sync::Arc::new(AtomicBool::new(false));
        let s = started.clone();
        let fut = run_within(b, move |work| {
            s.store(true, Ordering::Relaxed);
            verify_credential_with(&bomb, NOW, Suites::Eddsa2022, work)
        });
        let fut = tokio::spawn(fut);
        while !started.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fut.abort();
        let slot = tokio::time::timeout(Duration::from_secs(60), b.slots.clone().acquire_owned())
            .await
            .expect("the abandoned work did not stop");
        drop(slot);
    }

    /// The signature covers the RDF a credential expands to, while every policy reads its JSON:
    /// JSON that expands to the same RDF but says something else must not verify (attacker review:
    /// a claim forged through a term mapped to null, validity and status hidden behind full-IRI
    /// keys — all `verified: true` before).
    #[test]
    fn json_re_expressed_to_say_what_was_not_signed_is_refused() {
        let issuer = SigningKey::generate(KeyType::Ed25519);
        let vm = did::verification_method(&did::did_key(&issuer.verifying_key()));
        let mut cred = Map::new();
        cred.insert(
            "type".into(),
            json!(["VerifiableCredential", "IdentityCredential"]),
        );
        cred.insert("validUntil".into(), json!("2028-01-15T08:00:00Z"));
        cred.insert(
            "credentialStatus".into(),
            json!({"id": "https://issuer.example/status/1#7", "type": "BitstringStatusListEntry",
                   "statusPurpose": "revocation", "statusListIndex": "7",
                   "statusListCredential": "https://issuer.example/status/1"}),
        );
        cred.insert(
            "credentialSubject".into(),
            json!({"id": "did:example:holder", "birthdate": "2015-01-01"}),
        );
        let vc = issue_credential(&issuer, &vm, cred, NOW).unwrap();
        verify_credential(&vc, NOW).unwrap();

        let mut forged = vc.clone();
        forged["@context"]
            .as_array_mut()
            .unwrap()
            .push(json!({"birthdate": null}));
        let subject = forged["credentialSubject"].as_object_mut().unwrap();
        subject.remove("birthdate");
        subject.insert("https://schema.org/birthDate".into(), json!("2015-01-01"));
        subject.insert("birthdate".into(), json!("1990-01-01"));

        let mut unexpiring = vc.clone();
        let until = unexpiring
            .as_object_mut()
            .unwrap()
            .remove("validUntil")
            .unwrap();
        unexpiring["https://www.w3.org/2018/credentials#validUntil"] =
            json!({"@value": until, "@type": "http://www.w3.org/2001/XMLSchema#dateTime"});

        let mut unrevocable = vc.clone();
        let status = unrevocable
            .as_object_mut()
            .unwrap()
            .remove("credentialStatus")
            .unwrap();
        unrevocable["https://www.w3.org/2018/credentials#credentialStatus"] = status;

        let mut aliased = vc.clone();
        aliased["@context"]
            .as_array_mut()
            .unwrap()
            .push(json!({"@vocab": "https://schema.org/"}));
        let subject = aliased["credentialSubject"].as_object_mut().unwrap();
        let b = subject.remove("birthdate").unwrap();
        subject.insert("schema:birthDate".into(), b);

        // attacker review of the first rule: an @vocab glued onto a short key made the signed
        // credentialStatus IRI, and the nested context restored the claims
        let mut vocab_glued = vc.clone();
        vocab_glued["@context"]
            .as_array_mut()
            .unwrap()
            .push(json!({"@vocab": "https://www.w3.org/2018/credentials#credentialStatu"}));
        let status = vocab_glued
            .as_object_mut()
            .unwrap()
            .remove("credentialStatus")
            .unwrap();
        vocab_glued["s"] = status;
        vocab_glued["credentialSubject"]["@context"] =
            json!({"@vocab": "https://w3id.org/idstack/vocab#"});

        // review: JSON-LD expansion drops a null and an empty array, so a holder could add
        // unsigned members a query reads as present claims: they verify (nothing signed
        // changed) and are gone from what the verification returns
        let mut unsigned = vc.clone();
        unsigned["credentialSubject"]["family_name"] = Value::Null;
        unsigned["credentialSubject"]["is_student"] = json!([]);
        unsigned["credentialSubject"]["degrees"] = json!([null, []]);
        let read = verify_credential(&unsigned, NOW).unwrap();
        let mut expected = vc.clone();
        expected.as_object_mut().unwrap().remove("proof");
        assert_eq!(read, expected);
        // a JSON-literal term keeps them: they are signed there
        let mut literal = json!({"credentialSubject": {"a": null, "b": [1, null, []],
            "jsonSchema": {"enum": [null], "x": []}}, "proof": {"capabilityChain": []}});
        strip_unsigned(&mut literal);
        assert_eq!(
            literal,
            json!({"credentialSubject": {"b": [1], "jsonSchema": {"enum": [null], "x": []}},
                   "proof": {"capabilityChain": []}})
        );
        // and nothing holding them is signed here
        let mut cred = Map::new();
        cred.insert(
            "credentialSubject".into(),
            json!({"id": "did:example:holder", "x": null}),
        );
        assert!(issue_credential(&issuer, &vm, cred, NOW).is_err());

        for (what, doc) in [
            ("status behind a glued @vocab", vocab_glued),
            ("a claim forged through a null term", forged),
            ("validity behind a full-IRI key", unexpiring),
            ("status behind a full-IRI key", unrevocable),
            ("a claim behind a compact IRI", aliased),
        ] {
            refused_as_not_plain(verify_credential(&doc, NOW), "JSON-LD", what);
        }
    }

    /// An inline type-scoped context is processed again for every node of its type: expansion
    /// cost S × N within `jsonld.max_bytes`, before any work bound (12–64 s per request before).
    /// Only `@vocab` (and `@version`) may be inline; such a document is refused before expansion.
    #[test]
    fn an_inline_scoped_context_is_refused_before_expansion() {
        let terms: Map<String, Value> = (0..2000)
            .map(|i| (format!("a{i}"), json!("urn:x:i")))
            .collect();
        let mut vc = ordinary_credential();
        vc["@context"]
            .as_array_mut()
            .unwrap()
            .push(json!({"T": {"@id": "urn:t", "@context": terms}}));
        vc["credentialSubject"]["urn:p"] = json!(vec![json!({"type": "T"}); 3000]);
        let started = std::time::Instant::now();
        refused_as_not_plain(verify_credential(&vc, NOW), "inline", "");
        eprintln!("refused in {:?}", started.elapsed());
        // what real clients send inline stays accepted: credo's `@vocab` (CREDO_ED25519_2018)

        // a bundled context named again below the root is processed again each time: 1,500
        // nested schema.org references cost 14 s (attacker review of the first rule)
        let mut nested = ordinary_credential();
        nested["credentialSubject"]["knows"] = json!(vec![
            json!({"@context": "https://schema.org/", "id": "urn:a"});
            100
        ]);
        refused_as_not_plain(verify_credential(&nested, NOW), "below the root", "");
        let mut many = ordinary_credential();
        let list: Vec<Value> = (0..=MAX_CONTEXT_ENTRIES)
            .map(|i| json!({"@vocab": format!("urn:v{i}#")}))
            .collect();
        many["@context"] = json!(list);
        refused_as_not_plain(verify_credential(&many, NOW), "entries", "");
        // a large bundled context at the root, and more nodes than any credential has
        for spelling in [
            "https://schema.org/",
            "https://%73chema.org/",
            "https://w3id.org/%74raceability/v1",
            "https://w3id.org/traceability/./v1",
            "https://www.w3.org/ns/credentials/../credentials/v2",
        ] {
            let mut large = ordinary_credential();
            large["@context"]
                .as_array_mut()
                .unwrap()
                .insert(0, json!(spelling));
            refused_as_not_plain(verify_credential(&large, NOW), "not one verified", spelling);
        }
        let mut nodes = ordinary_credential();
        nodes["credentialSubject"]["knows"] = json!(vec![json!({"id": "urn:a"}); MAX_OBJECTS]);
        refused_as_not_plain(verify_credential(&nodes, NOW), "JSON objects", "");
        // and ssi's base58 of proofValue is quadratic too
        let mut long = ordinary_credential();
        long["proof"]["proofValue"] = json!(format!("z{}", "2".repeat(240_000)));
        refused_as_not_plain(verify_credential(&long, NOW), "proofValue", "");
    }
}
