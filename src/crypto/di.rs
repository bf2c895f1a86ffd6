//! W3C Data Integrity `eddsa-rdfc-2022` (VCDM 2.0 credentials and presentations, `ldp_vc`), via the
//! `ssi` crate: RDF canonicalization and the cryptosuite are ssi's; JSON-LD contexts are bundled
//! (ssi's own plus idstack's) and never fetched; verification methods are did:key / did:jwk only,
//! checked before ssi sees them, so ssi's resolver never does I/O. ssi's API is async but CPU-only
//! here, driven with `futures_executor::block_on` (callers run it on the blocking pool).

use std::collections::HashMap;

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

fn resolver() -> VerificationMethodDIDResolver<AnyDidMethod, AnyMethod> {
    VerificationMethodDIDResolver::new(AnyDidMethod::default())
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
    let doc: DataIntegrityDocument = serde_json::from_value(document).map_err(err)?;
    let env = SignatureEnvironment {
        json_ld_loader: loader()?,
        eip712_loader: (),
    };
    let signer = SingleSecretSigner::new(jwk).into_local();
    let secured: DataIntegrity<DataIntegrityDocument, AnySuite> = futures_executor::block_on(
        AnySuite::EdDsaRdfc2022.sign_with(env, doc, resolver(), signer, opts, Default::default()),
    )
    .map_err(err)?;
    serde_json::to_value(&secured).map_err(err)
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

/// Verifies the single proof of `document` with `purpose`; returns the proof.
fn verify(document: &Value, purpose: &str, now: i64) -> CryptoResult<Value> {
    verify_with(document, purpose, now, Suites::Eddsa2022)
}

fn verify_with(document: &Value, purpose: &str, now: i64, suites: Suites) -> CryptoResult<Value> {
    let proof = match document.get("proof") {
        Some(Value::Object(p)) => Value::Object(p.clone()),
        Some(Value::Array(a)) if a.len() == 1 => a[0].clone(),
        _ => return Err(CryptoError::Malformed("expected exactly one proof".into())),
    };
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
    let key = did::resolve_offline(vm)?;
    if ed25519_2018 {
        verify_ed25519_signature_2018(document, &proof, &key)?;
        return Ok(proof);
    }
    let secured: DataIntegrity<DataIntegrityDocument, AnySuite> =
        serde_json::from_value(document.clone()).map_err(err)?;
    let params = VerificationParameters::from_resolver(resolver())
        .with_json_ld_loader(loader()?)
        .with_date_time(timestamp(now)?);
    futures_executor::block_on(secured.verify(params))
        .map_err(err)?
        .map_err(|e| {
            tracing::debug!("data integrity proof rejected: {e:?}");
            CryptoError::BadSignature
        })?;
    Ok(proof)
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
    let doc: DataIntegrityDocument = serde_json::from_value(doc).map_err(err)?;
    let mut ld = ssi::rdf::LdEnvironment::default();
    let loader = loader()?;
    let expanded = futures_executor::block_on(doc.expand_with(&mut ld, &loader)).map_err(err)?;
    ld.canonical_form_of(&expanded).map_err(err)
}

fn vm_did(vm: &str) -> &str {
    vm.split('#').next().unwrap_or(vm)
}

/// Secures a VCDM 2.0 credential (`issuer` set to the method's DID, `validFrom` defaulted).
pub fn issue_credential(
    key: &SigningKey,
    vm: &str,
    credential: Map<String, Value>,
    now: i64,
) -> CryptoResult<Value> {
    let mut vc = credential;
    vc.entry("@context").or_insert_with(credential_contexts);
    vc.insert("issuer".into(), json!(vm_did(vm)));
    vc.entry("validFrom")
        .or_insert_with(|| json!(super::rfc3339(now)));
    sign(
        key,
        vm,
        Value::Object(vc),
        options(vm, ProofPurpose::Assertion, now)?,
    )
}

/// Verifies a Data Integrity credential: proof, issuer = the proof's DID. Returns it without `proof`.
pub fn verify_credential(vc: &Value, now: i64) -> CryptoResult<Value> {
    verify_credential_with(vc, now, Suites::Eddsa2022)
}

/// [`verify_credential`], also accepting `Ed25519Signature2018` proofs (VCDM 1.1 JSON-LD
/// credentials received over DIDComm issue-credential).
pub fn verify_legacy_credential(vc: &Value, now: i64) -> CryptoResult<Value> {
    verify_credential_with(vc, now, Suites::WithEd25519Signature2018)
}

fn verify_credential_with(vc: &Value, now: i64, suites: Suites) -> CryptoResult<Value> {
    let proof = verify_with(vc, "assertionMethod", now, suites)?;
    let issuer = match &vc["issuer"] {
        Value::String(s) => s.as_str(),
        other => other["id"].as_str().unwrap_or_default(),
    };
    if issuer != vm_did(proof["verificationMethod"].as_str().unwrap_or_default()) {
        return Err(CryptoError::Malformed(
            "issuer is not the proof's DID".into(),
        ));
    }
    let mut out = vc.as_object().cloned().unwrap_or_default();
    out.remove("proof");
    Ok(Value::Object(out))
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
    let vp = json!({
        "@context": credential_contexts(),
        "type": ["VerifiablePresentation"],
        "holder": vm_did(vm),
        "verifiableCredential": credentials,
    });
    let mut opts = options(vm, ProofPurpose::Authentication, now)?;
    opts.challenge = Some(challenge.to_string());
    opts.domains = vec![domain.to_string()];
    sign(key, vm, vp, opts)
}

/// Verifies a Data Integrity presentation's proof, challenge and domain; returns (holder DID, proof).
pub fn verify_presentation(
    vp: &Value,
    challenge: &str,
    domain: &str,
    now: i64,
) -> CryptoResult<(String, Value)> {
    let proof = verify(vp, "authentication", now)?;
    if proof["challenge"].as_str() != Some(challenge) {
        return Err(CryptoError::Malformed("challenge mismatch".into()));
    }
    let domain_ok = match &proof["domain"] {
        Value::String(d) => d == domain,
        Value::Array(a) => a.iter().any(|d| d == domain),
        _ => false,
    };
    if !domain_ok {
        return Err(CryptoError::Malformed("domain mismatch".into()));
    }
    Ok((
        vm_did(proof["verificationMethod"].as_str().unwrap_or_default()).to_string(),
        proof,
    ))
}

/// [`verify_credential`] for request handlers: runs on the blocking pool. Every entry point that
/// verifies an outsider's JSON-LD goes through this (or [`verify_presentation_bounded`]), so the
/// limits on that work live in one place.
pub async fn verify_credential_bounded(vc: Value, now: i64) -> CryptoResult<Value> {
    tokio::task::spawn_blocking(move || verify_credential(&vc, now))
        .await
        .map_err(|e| CryptoError::Malformed(format!("verification task: {e}")))?
}

/// [`verify_presentation`] for request handlers; see [`verify_credential_bounded`].
pub async fn verify_presentation_bounded(
    vp: Value,
    challenge: String,
    domain: String,
    now: i64,
) -> CryptoResult<(String, Value)> {
    tokio::task::spawn_blocking(move || verify_presentation(&vp, &challenge, &domain, now))
        .await
        .map_err(|e| CryptoError::Malformed(format!("verification task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (h, _) = verify_presentation(&vp, "nonce-1", "verifier", now).unwrap();
        assert_eq!(h, vm_did(&hvm));
        assert!(verify_presentation(&vp, "nonce-2", "verifier", now).is_err());
        // P-256 keys are refused for this suite
        let p = SigningKey::generate(KeyType::P256);
        let pvm = did::verification_method(&did::did_key(&p.verifying_key()));
        assert!(issue_credential(&p, &pvm, Map::new(), now).is_err());
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
}
