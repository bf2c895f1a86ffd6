//! X.509 chains to configured trust anchors (`x509.trust_anchors`), for the one case the
//! issuer-key binding rule accepts a header `x5c`: an SD-JWT VC whose `iss` is an `https` URL
//! (SD-JWT VC §3.5). The certificates are parsed by `x509-cert`; this module only walks the chain:
//!
//! - every certificate names the next one's subject as its issuer and its signature verifies
//!   under that one's key, and the last one is an anchor or is issued by one (the same name and
//!   signature checks, the anchor's validity and CA flags too);
//! - every CA on the path, the anchor included, has no more CAs below it than its
//!   `pathLenConstraint` allows;
//! - every certificate is within its validity period at `now`, and every certificate that signs
//!   another has `basicConstraints` CA true (and `keyCertSign` when it has a key usage);
//! - critical extensions other than the ones checked here are refused;
//! - the leaf names the issuer: a `uniformResourceIdentifier` SAN equal to `iss`, or a `dNSName`
//!   SAN equal to its host;
//! - at most [`MAX_CHAIN`] certificates of at most [`MAX_CERT_BYTES`] each (an outsider sends them).
//!
//! Every check runs on every use, against the `now` given, but one: a set of anchors remembers
//! which certificates (their exact DER) it has seen an anchor's signature on, so the chains of
//! its own issuers' document signers cost one signature check per anchor set, not one per mdoc.
//! A signature either verifies over given bytes or does not, at any time; validity, CA flags and
//! names are checked each time as before.
//!
//! Signature algorithms: ECDSA P-256 / SHA-256, ECDSA secp256k1 / SHA-256 and Ed25519 — the keys
//! idstack verifies elsewhere. No revocation checking (CRL/OCSP) yet: anchors should issue
//! short-lived document signers.

use std::sync::Arc;
use x509_cert::der::{self, Decode};
use x509_cert::ext::pkix::{
    name::GeneralName, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::Certificate;

use super::VerifyingKey;

/// Most certificates in an `x5c` (leaf and intermediates).
pub const MAX_CHAIN: usize = 5;
/// Largest single certificate, in bytes of DER.
pub const MAX_CERT_BYTES: usize = 16 * 1024;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_SECP256K1: &str = "1.3.132.0.10";
const OID_ED25519: &str = "1.3.101.112";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";
const OID_KEY_USAGE: &str = "2.5.29.15";
const OID_SAN: &str = "2.5.29.17";
const OID_EXT_KEY_USAGE: &str = "2.5.29.37";
const OID_SUBJECT_KEY_ID: &str = "2.5.29.14";
/// ISO 18013-5 id-mdl-kp-mdlDS: the extended key usage of an mdoc document signer.
const OID_MDL_DS: &str = "1.0.18013.5.1.2";
/// Extensions a chain may mark critical without us failing it (the ones checked, or harmless).
const KNOWN_CRITICAL: [&str; 4] = [
    OID_BASIC_CONSTRAINTS,
    OID_KEY_USAGE,
    OID_SAN,
    OID_EXT_KEY_USAGE, // extKeyUsage: checked for mdoc document signers, else informational
];

/// A chain that ends at a trust anchor: the leaf, its key, and the CA certificates above it
/// (the chain's, then the anchor's unless the chain already ends with it).
pub struct ChainPath {
    pub key: VerifyingKey,
    pub leaf: Certificate,
    pub above: Vec<Certificate>,
}

/// Most certificates one [`TrustAnchors`] remembers an anchor's signature on; past this it
/// starts over.
const MAX_SIGNED_BY_ANCHOR: usize = 1024;

/// The configured trust anchors (root or intermediate CA certificates).
#[derive(Default)]
pub struct TrustAnchors {
    anchors: Vec<Certificate>,
    /// What `anchors[i]` may vouch for (`x509.iaca_doc_types`): the mdoc doc types, exact or a
    /// prefix ending in `*`; `None` (or no entry): anything.
    scopes: Vec<Option<Arc<[String]>>>,
    /// Certificates (exact DER) whose signature verified under `anchors[i]` → `i`. Only an
    /// anchor's real signature puts one here, so an outsider cannot fill it.
    signed: std::sync::RwLock<std::collections::HashMap<Vec<u8>, usize>>,
}

impl Clone for TrustAnchors {
    fn clone(&self) -> Self {
        Self {
            anchors: self.anchors.clone(),
            scopes: self.scopes.clone(),
            signed: Default::default(),
        }
    }
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustAnchors({} certificates)", self.anchors.len())
    }
}

impl TrustAnchors {
    /// Anchors from PEM text (one or more `CERTIFICATE` blocks).
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let anchors =
            Certificate::load_pem_chain(pem).map_err(|e| format!("trust anchor PEM: {e}"))?;
        for a in &anchors {
            spki_key(a).map_err(|e| format!("trust anchor: {e}"))?;
        }
        Ok(Self {
            scopes: vec![None; anchors.len()],
            anchors,
            signed: Default::default(),
        })
    }

    /// Anchors from PEM files (`x509.trust_anchors`).
    pub fn load(paths: &[String]) -> Result<Self, String> {
        Self::load_scoped(paths, &Default::default())
    }

    /// Anchors from PEM files, the certificates of a file named in `scopes` trusted for those
    /// mdoc doc types only (exact, or a prefix ending in `*`; `x509.iaca_doc_types`). A file
    /// named there but not in `paths`, or given no doc type, is a configuration error.
    pub fn load_scoped(
        paths: &[String],
        scopes: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<Self, String> {
        for (file, types) in scopes {
            if !paths.contains(file) {
                return Err(format!(
                    "iaca_doc_types names {file}, which is not an anchor file"
                ));
            }
            if types.is_empty() || types.iter().any(|t| t.is_empty() || t == "*") {
                return Err(format!(
                    "iaca_doc_types for {file}: name one or more doc types (a prefix ends in *)"
                ));
            }
        }
        let mut all = Self::default();
        for p in paths {
            let pem = std::fs::read(p).map_err(|e| format!("{p}: {e}"))?;
            let more = Self::from_pem(&pem).map_err(|e| format!("{p}: {e}"))?;
            let scope: Option<Arc<[String]>> = scopes.get(p).map(|t| t.clone().into());
            all.scopes
                .extend(std::iter::repeat_n(scope, more.anchors.len()));
            all.anchors.extend(more.anchors);
        }
        Ok(all)
    }

    /// Whether `anchors[i]` may vouch for `doc_type` (`None`: the caller asks for no doc type,
    /// e.g. an SD-JWT VC issuer or a status list under an already checked mdoc).
    fn permits(&self, i: usize, doc_type: Option<&str>) -> bool {
        let (Some(want), Some(Some(scope))) = (doc_type, self.scopes.get(i)) else {
            return true;
        };
        scope.iter().any(|t| match t.strip_suffix('*') {
            Some(prefix) => want.starts_with(prefix),
            None => t == want,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// The leaf key of `x5c` (base64 standard DER, leaf first) when the chain ends at an anchor
    /// and the leaf names `iss` (see the module doc).
    pub fn leaf_key(&self, x5c: &[String], iss: &str, now: i64) -> Result<VerifyingKey, String> {
        if self.anchors.is_empty() {
            return Err("no X.509 trust anchor is configured (x509.trust_anchors)".into());
        }
        if x5c.is_empty() || x5c.len() > MAX_CHAIN {
            return Err(format!("x5c must hold 1 to {MAX_CHAIN} certificates"));
        }
        let der = x5c
            .iter()
            .map(|b| {
                use base64::Engine;
                if b.len() > MAX_CERT_BYTES * 4 / 3 + 4 {
                    return Err("an x5c certificate is too large".to_string());
                }
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|_| "x5c entries must be base64 DER".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (key, leaf) = self.chain_key(&der, now)?;
        check_issuer_signer(&leaf)?;
        if !leaf_names(&leaf, iss)? {
            return Err(format!(
                "the x5c leaf certificate does not name the issuer {iss} (SAN URI or DNS name)"
            ));
        }
        Ok(key)
    }

    /// The leaf's key and certificate when the chain (DER, leaf first) is a valid path to a
    /// configured anchor (see [`TrustAnchors::chain_path`]).
    pub fn chain_key(
        &self,
        der: &[Vec<u8>],
        now: i64,
    ) -> Result<(VerifyingKey, Certificate), String> {
        self.chain_path(der, now).map(|p| (p.key, p.leaf))
    }

    /// The path from the chain (DER, leaf first) to a configured anchor, when every certificate
    /// is within its validity at `now`, each one is signed by the next (a CA whose subject is its
    /// issuer name and whose `pathLenConstraint` allows the CAs below it), and the last one is or
    /// is issued by an anchor (which obeys the same rules). Names are the caller's business (an
    /// x5c JWT issuer: SAN = `iss`; an mdoc document signer: any, its IACA is the anchor).
    pub fn chain_path(&self, der: &[Vec<u8>], now: i64) -> Result<ChainPath, String> {
        self.chain_path_for(der, now, None)
    }

    /// [`TrustAnchors::chain_path`] through the anchors trusted for the mdoc doc type
    /// `doc_type` (`x509.iaca_doc_types`; `None`: any anchor).
    pub fn chain_path_for(
        &self,
        der: &[Vec<u8>],
        now: i64,
        doc_type: Option<&str>,
    ) -> Result<ChainPath, String> {
        if self.anchors.is_empty() {
            return Err("no X.509 trust anchor is configured (x509.trust_anchors)".into());
        }
        if der.is_empty() || der.len() > MAX_CHAIN {
            return Err(format!("the chain must hold 1 to {MAX_CHAIN} certificates"));
        }
        let chain = der
            .iter()
            .map(|d| {
                if d.len() > MAX_CERT_BYTES {
                    return Err("a chain certificate is too large".to_string());
                }
                Certificate::from_der(d).map_err(|e| format!("chain certificate: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let last = chain.last().ok_or("empty chain")?;
        // by name first: a chain no anchor could have issued costs no signature check
        let named =
            |a: &Certificate| a == last || a.tbs_certificate.subject == last.tbs_certificate.issuer;
        if !self.anchors.iter().any(named) {
            return Err("the x5c chain does not end at a configured trust anchor".into());
        }
        if !self
            .anchors
            .iter()
            .enumerate()
            .any(|(i, a)| named(a) && self.permits(i, doc_type))
        {
            return Err(format!(
                "the chain's trust anchor is not trusted for doc type {} (x509.iaca_doc_types)",
                doc_type.map(clip_type).unwrap_or_default()
            ));
        }
        for (i, c) in chain.iter().enumerate() {
            check_validity(c, now).map_err(|e| format!("x5c[{i}]: {e}"))?;
            check_critical(c).map_err(|e| format!("x5c[{i}]: {e}"))?;
            if i > 0 {
                // the CAs between it and the leaf: x5c[1..i]
                check_ca(c, i - 1).map_err(|e| format!("x5c[{i}]: {e}"))?;
                issued_by(&chain[i - 1], &der[i - 1], c)
                    .map_err(|e| format!("x5c[{}] is not signed by x5c[{i}]: {e}", i - 1))?;
            }
        }
        let last_der = der.last().ok_or("empty chain")?;
        let anchor = self
            .anchors
            .iter()
            .enumerate()
            .find(|(i, a)| {
                self.permits(*i, doc_type)
                    && (*a == last
                        || (check_validity(a, now).is_ok()
                            && check_ca(a, chain.len() - 1).is_ok()
                            && self.issued_by_anchor(last, last_der, *i)))
            })
            .map(|(_, a)| a.clone())
            .ok_or("the x5c chain does not end at a configured trust anchor")?;
        let mut above: Vec<Certificate> = chain.iter().skip(1).cloned().collect();
        if above.last() != Some(&anchor) {
            above.push(anchor);
        }
        let leaf = chain.into_iter().next().ok_or("empty chain")?;
        Ok(ChainPath {
            key: spki_key(&leaf)?,
            leaf,
            above,
        })
    }

    /// Adds anchors trusted for anything (e.g. the sandbox IACA this node created).
    pub fn with(mut self, more: impl IntoIterator<Item = Certificate>) -> Self {
        self.anchors.extend(more);
        self.scopes.resize(self.anchors.len(), None);
        self
    }

    /// [`issued_by`]`(child, anchors[i])`, whose signature check is done once per certificate
    /// (`child_der`: its exact DER) for this anchor set; the name is compared every time.
    fn issued_by_anchor(&self, child: &Certificate, child_der: &[u8], i: usize) -> bool {
        let anchor = &self.anchors[i];
        if child.tbs_certificate.issuer != anchor.tbs_certificate.subject {
            return false;
        }
        let seen = self
            .signed
            .read()
            .ok()
            .and_then(|m| m.get(child_der).copied());
        if seen == Some(i) {
            return true;
        }
        if verify_signed_by(child, child_der, anchor).is_err() {
            return false;
        }
        if let Ok(mut m) = self.signed.write() {
            if m.len() >= MAX_SIGNED_BY_ANCHOR {
                m.clear();
            }
            m.insert(child_der.to_vec(), i);
        }
        true
    }
}

/// A doc type from an untrusted MSO, short and printable, for an error message.
fn clip_type(s: &str) -> String {
    s.chars().take(64).flat_map(char::escape_debug).collect()
}

fn oid_str(o: &der::asn1::ObjectIdentifier) -> String {
    o.to_string()
}

/// The certificate's public key, as one of the key types idstack verifies.
fn spki_key(c: &Certificate) -> Result<VerifyingKey, String> {
    let spki = &c.tbs_certificate.subject_public_key_info;
    let bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or("public key bits not octet-aligned")?;
    match oid_str(&spki.algorithm.oid).as_str() {
        OID_ED25519 => {
            let raw: [u8; 32] = bits.try_into().map_err(|_| "bad Ed25519 key length")?;
            VerifyingKey::ed25519_from_bytes(&raw).map_err(|e| format!("Ed25519 key: {e}"))
        }
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
                .map(|o| oid_str(&o))
                .ok_or("EC key without a named curve")?;
            match curve.as_str() {
                OID_P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(bits)
                    .map(VerifyingKey::P256)
                    .map_err(|e| format!("P-256 key: {e}")),
                OID_SECP256K1 => k256::ecdsa::VerifyingKey::from_sec1_bytes(bits)
                    .map(VerifyingKey::Secp256k1)
                    .map_err(|e| format!("secp256k1 key: {e}")),
                other => Err(format!("unsupported EC curve {other}")),
            }
        }
        other => Err(format!("unsupported public key algorithm {other}")),
    }
}

/// `child` names `parent` as its issuer (RFC 5280 6.1.3 (a)(4)) and is signed by it.
/// (`child_der`: `child` as received.)
fn issued_by(child: &Certificate, child_der: &[u8], parent: &Certificate) -> Result<(), String> {
    if child.tbs_certificate.issuer != parent.tbs_certificate.subject {
        return Err("its issuer name is not the signing certificate's subject".into());
    }
    verify_signed_by(child, child_der, parent)
}

/// The bytes a certificate's signature covers: its `tbsCertificate` exactly as received in
/// `der`. Encoding the decoded certificate again is not the same: the der crate sorts a SET OF
/// (a multi-valued RDN) as it decodes, so a certificate whose CA wrote one in another order
/// would not verify.
fn signed_part(der: &[u8]) -> Result<&[u8], String> {
    use der::Reader;
    let mut r = der::SliceReader::new(der).map_err(|e| format!("certificate: {e}"))?;
    r.sequence(|c| {
        let tbs = c.tlv_bytes()?;
        c.tlv_bytes()?; // signatureAlgorithm
        c.tlv_bytes()?; // signatureValue
        Ok(tbs)
    })
    .map_err(|e| format!("certificate: {e}"))
}

/// `child`'s signature verifies under `parent`'s key, with an algorithm that fits the key
/// (`child_der`: `child` as received, whose `tbsCertificate` bytes are what was signed).
fn verify_signed_by(
    child: &Certificate,
    child_der: &[u8],
    parent: &Certificate,
) -> Result<(), String> {
    if child.signature_algorithm != child.tbs_certificate.signature {
        return Err("the signature algorithm fields disagree".into());
    }
    let key = spki_key(parent)?;
    let tbs = signed_part(child_der)?;
    let sig = child
        .signature
        .as_bytes()
        .ok_or("signature bits not octet-aligned")?;
    let alg = oid_str(&child.signature_algorithm.oid);
    let ok = match (&key, alg.as_str()) {
        (VerifyingKey::Ed25519(_), OID_ED25519) => key.verify(tbs, sig).is_ok(),
        (VerifyingKey::P256(k), OID_ECDSA_SHA256) => {
            use signature::Verifier;
            p256::ecdsa::Signature::from_der(sig)
                .map(|s| k.verify(tbs, &s).is_ok())
                .unwrap_or(false)
        }
        (VerifyingKey::Secp256k1(k), OID_ECDSA_SHA256) => {
            use signature::Verifier;
            k256::ecdsa::Signature::from_der(sig)
                .map(|s| {
                    let s = s.normalize_s().unwrap_or(s);
                    k.verify(tbs, &s).is_ok()
                })
                .unwrap_or(false)
        }
        _ => return Err(format!("signature algorithm {alg} does not fit the key")),
    };
    ok.then_some(()).ok_or_else(|| "bad signature".into())
}

fn check_validity(c: &Certificate, now: i64) -> Result<(), String> {
    let v = &c.tbs_certificate.validity;
    let from = v.not_before.to_unix_duration().as_secs() as i64;
    let until = v.not_after.to_unix_duration().as_secs() as i64;
    if now < from {
        return Err("certificate not yet valid".into());
    }
    if now > until {
        return Err("certificate expired".into());
    }
    Ok(())
}

fn extension<'a>(c: &'a Certificate, oid: &str) -> Option<&'a x509_cert::ext::Extension> {
    c.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| oid_str(&e.extn_id) == oid)
}

/// Unknown critical extensions, and any extension twice (RFC 5280 §4.2: a certificate MUST NOT
/// include more than one instance of an extension; the first would be read, the other ignored).
fn check_critical(c: &Certificate) -> Result<(), String> {
    let mut seen: Vec<String> = Vec::new();
    for e in c.tbs_certificate.extensions.iter().flatten() {
        let id = oid_str(&e.extn_id);
        if e.critical && !KNOWN_CRITICAL.contains(&id.as_str()) {
            return Err(format!("unknown critical extension {id}"));
        }
        if seen.contains(&id) {
            return Err(format!("extension {id} appears twice"));
        }
        seen.push(id);
    }
    Ok(())
}

/// The extension `oid` of `c` decoded as `T`, when present (`what` names it in errors).
fn decoded<'a, T: x509_cert::der::Decode<'a>>(
    c: &'a Certificate,
    oid: &str,
    what: &str,
) -> Result<Option<T>, String> {
    extension(c, oid)
        .map(|e| T::from_der(e.extn_value.as_bytes()).map_err(|err| format!("{what}: {err}")))
        .transpose()
}

/// The key identifiers of the authorities over a verified chain: DCQL `trusted_authorities` of
/// type `aki`, and a verifier's `aki:` entries in `trusted_issuers`, name one of these. Only
/// identifiers that stand for a key that signed something in the path count: the configured
/// anchor's own Subject Key Identifier when it is a hash of the anchor's key, and for each CA
/// above the leaf (the anchor included) the RFC 5280 method-1 key identifier computed from its
/// public key. Never an identifier a certificate merely declares for another (a leaf's Authority
/// Key Identifier, an intermediate's Subject Key Identifier): any trusted CA could write another
/// CA's identifier there and pass for it.
pub fn authority_key_ids(path: &ChainPath) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    out.extend(path.above.last().and_then(own_subject_key_id));
    out.extend(path.above.iter().map(computed_key_id));
    out.retain(|k| !k.is_empty());
    out.sort();
    out.dedup();
    out
}

/// The RFC 5280 §4.2.1.2 method-1 key identifier of `c`'s public key (SHA-1 of the key's bits),
/// computed, never read from the certificate.
pub fn computed_key_id(c: &Certificate) -> Vec<u8> {
    use sha1::Digest as _;
    let spk = c
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    sha1::Sha1::digest(spk).to_vec()
}

/// An anchor's Subject Key Identifier when it identifies the anchor's own key: a hash of its
/// public key by one of the usual methods (RFC 5280 §4.2.1.2 method 1, RFC 7093 methods 1–4).
/// Any other value is merely declared, and another trusted CA could declare the same.
fn own_subject_key_id(c: &Certificate) -> Option<Vec<u8>> {
    use sha2::Digest as _;
    let ski = subject_key_id(c)?;
    let spki = &c.tbs_certificate.subject_public_key_info;
    let spk = spki.subject_public_key.raw_bytes();
    let spki_der = x509_cert::der::Encode::to_der(spki).ok()?;
    let t = |d: &[u8]| d[..20].to_vec();
    let own = [
        sha1::Sha1::digest(spk).to_vec(),
        t(&sha2::Sha256::digest(spk)),
        t(&sha2::Sha384::digest(spk)),
        t(&sha2::Sha512::digest(spk)),
        t(&sha2::Sha256::digest(&spki_der)),
        t(&sha2::Sha384::digest(&spki_der)),
        t(&sha2::Sha512::digest(&spki_der)),
    ];
    own.contains(&ski).then_some(ski)
}

/// A certificate's Subject Key Identifier, when it has one that decodes.
pub fn subject_key_id(c: &Certificate) -> Option<Vec<u8>> {
    decoded::<SubjectKeyIdentifier>(c, OID_SUBJECT_KEY_ID, "")
        .ok()
        .flatten()
        .map(|k| k.0.as_bytes().to_vec())
}

/// The subject's countryName (ISO 18013-5 Annex B: an IACA's and its document signers' agree,
/// and an mdoc's `issuing_country` is it), when the subject has one.
pub fn country(c: &Certificate) -> Option<String> {
    countries(c).into_iter().next().filter(|c| !c.is_empty())
}

/// Every countryName in the subject (a document signer must have exactly one); one that is not
/// UTF-8 text shows as an empty string, so it never matches a country.
pub fn countries(c: &Certificate) -> Vec<String> {
    const OID_COUNTRY: &str = "2.5.4.6";
    c.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| oid_str(&atv.oid) == OID_COUNTRY)
        .map(|atv| {
            std::str::from_utf8(atv.value.value())
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The certificate's subject (RFC 4514 form) and the end of its validity (Unix seconds).
pub fn subject_and_expiry(c: &Certificate) -> (String, i64) {
    (
        c.tbs_certificate.subject.to_string(),
        c.tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs() as i64,
    )
}

/// Whether `c` is a self-signed CA certificate (a root such as an IACA); `der`: `c` as received.
pub fn is_self_signed_ca(c: &Certificate, der: &[u8]) -> bool {
    c.tbs_certificate.subject == c.tbs_certificate.issuer
        && check_ca(c, 0).is_ok()
        && verify_signed_by(c, der, c).is_ok()
}

/// The certificates of PEM text (one or more `CERTIFICATE` blocks, at most [`MAX_CHAIN`]), each
/// decoded and with its DER as written: what is passed on or verified must be those bytes, not
/// the decoded certificate encoded again ([`signed_part`]).
pub fn pem_chain(pem: &str) -> Result<Vec<(Certificate, Vec<u8>)>, String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem.trim();
    while !rest.is_empty() {
        if out.len() == MAX_CHAIN {
            return Err(format!("more than {MAX_CHAIN} certificates"));
        }
        let end = rest
            .find(END)
            .ok_or("a CERTIFICATE block has no END line")?
            + END.len();
        let (label, der) =
            der::pem::decode_vec(rest[..end].trim().as_bytes()).map_err(|e| format!("PEM: {e}"))?;
        if label != "CERTIFICATE" {
            return Err(format!("a PEM block is a {label}, not a CERTIFICATE"));
        }
        if der.len() > MAX_CERT_BYTES {
            return Err("a certificate is too large".into());
        }
        let cert = Certificate::from_der(&der).map_err(|e| format!("certificate: {e}"))?;
        out.push((cert, der));
        rest = rest[end..].trim_start();
    }
    Ok(out)
}

/// A certificate that signs another must be a CA allowed to sign certificates, with `below`
/// CA certificates between it and the leaf (at most its `pathLenConstraint`).
fn check_ca(c: &Certificate, below: usize) -> Result<(), String> {
    let bc: BasicConstraints = decoded(c, OID_BASIC_CONSTRAINTS, "basicConstraints")?
        .ok_or("a signing certificate without basicConstraints")?;
    if !bc.ca {
        return Err("a signing certificate that is not a CA".into());
    }
    if let Some(max) = bc.path_len_constraint {
        if below > usize::from(max) {
            return Err(format!(
                "its pathLenConstraint {max} allows fewer CAs below it than the {below} there are"
            ));
        }
    }
    let ku: Option<KeyUsage> = decoded(c, OID_KEY_USAGE, "keyUsage")?;
    if ku.is_some_and(|ku| !ku.key_cert_sign()) {
        return Err("a signing certificate without keyCertSign".into());
    }
    Ok(())
}

/// An mdoc document signer (ISO 18013-5 Annex B.1.4): an end entity (not a CA) whose
/// extendedKeyUsage names id-mdl-kp-mdlDS and whose keyUsage, when present, allows
/// digitalSignature. Anything else under the same anchor (an SD-JWT issuer's or a TLS server's
/// certificate, an intermediate, the IACA itself) does not sign MSOs.
pub fn check_document_signer(c: &Certificate) -> Result<(), String> {
    check_end_entity_signer(c, "a document signer")?;
    let eku: ExtendedKeyUsage = decoded(c, OID_EXT_KEY_USAGE, "extendedKeyUsage")?
        .ok_or("the certificate has no extendedKeyUsage: not an mdoc document signer")?;
    if !eku.0.iter().any(|o| oid_str(o) == OID_MDL_DS) {
        return Err(format!(
            "the certificate's extendedKeyUsage lacks mdlDS ({OID_MDL_DS}): not an mdoc document signer"
        ));
    }
    Ok(())
}

/// An SD-JWT VC issuer's leaf certificate signs credentials: not a CA, keyUsage (when present)
/// allows digitalSignature, and not an mdoc document signer's (a document signer under a trusted
/// IACA signs MSOs for its IACA's country, not SD-JWT VCs).
fn check_issuer_signer(c: &Certificate) -> Result<(), String> {
    check_end_entity_signer(c, "an issuer's signing certificate")?;
    let eku: Option<ExtendedKeyUsage> = decoded(c, OID_EXT_KEY_USAGE, "extendedKeyUsage")?;
    if let Some(eku) = eku {
        if eku.0.iter().any(|o| oid_str(o) == OID_MDL_DS) {
            return Err("the x5c leaf is an mdoc document signer's certificate".into());
        }
        // a TLS server's or client's certificate (every usage it names is one of those) is
        // for TLS: it signs no credentials, whatever host it names (verifier review)
        if !eku.0.is_empty()
            && eku
                .0
                .iter()
                .all(|o| [OID_SERVER_AUTH, OID_CLIENT_AUTH].contains(&oid_str(o).as_str()))
        {
            return Err(
                "the x5c leaf is a TLS certificate (extendedKeyUsage serverAuth/clientAuth only)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// extendedKeyUsage id-kp-serverAuth and id-kp-clientAuth (RFC 5280 §4.2.1.12).
const OID_SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";
const OID_CLIENT_AUTH: &str = "1.3.6.1.5.5.7.3.2";

/// A certificate that signs data, not certificates: not a CA, and keyUsage (when present) allows
/// digitalSignature. `what` names the role in errors.
fn check_end_entity_signer(c: &Certificate, what: &str) -> Result<(), String> {
    let bc: Option<BasicConstraints> = decoded(c, OID_BASIC_CONSTRAINTS, "basicConstraints")?;
    if bc.is_some_and(|bc| bc.ca) {
        return Err(format!("a CA certificate is not {what}"));
    }
    let ku: Option<KeyUsage> = decoded(c, OID_KEY_USAGE, "keyUsage")?;
    if ku.is_some_and(|ku| !ku.digital_signature()) {
        return Err(format!("the keyUsage of {what} lacks digitalSignature"));
    }
    Ok(())
}

/// Whether the leaf's subjectAltName names `iss` (SD-JWT VC §3.5): a URI equal to it; for a
/// `dns:` issuer (RFC 4501) that DNS name; and for an https issuer that is a bare origin
/// (`https://host`, no path, user-info or port) also its host as a DNS name, as HAIP's SD-JWT VC
/// profile had it and issuers in use name themselves. An https issuer with a path is named by a
/// URI only: a certificate for the host is no certificate for every issuer under it (verifier
/// review: one tenant's signing certificate on a shared platform, or the site's TLS
/// certificate, signed for `https://host/issuers/pid`).
fn leaf_names(leaf: &Certificate, iss: &str) -> Result<bool, String> {
    let Some(ext) = extension(leaf, OID_SAN) else {
        return Ok(false);
    };
    let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
        .map_err(|e| format!("subjectAltName: {e}"))?;
    let host = dns_name_of(iss);
    Ok(san.0.iter().any(|n| match n {
        GeneralName::UniformResourceIdentifier(u) => u.as_str() == iss,
        GeneralName::DnsName(d) => host.as_deref() == Some(&d.as_str().to_ascii_lowercase()),
        _ => false,
    }))
}

/// The DNS name a `dNSName` SAN must carry to name issuer `iss` ([`leaf_names`]), if any.
fn dns_name_of(iss: &str) -> Option<String> {
    if let Some(name) = iss.strip_prefix("dns:") {
        // `dns:host`, or `dns://authority/host` (RFC 4501 §3)
        let name = name.rsplit('/').next().unwrap_or(name);
        return (!name.is_empty() && !name.contains(['?', ';', '@', ':']))
            .then(|| name.trim_end_matches('.').to_ascii_lowercase());
    }
    // not one with user-info (`https://issuer.example@evil.example` is evil.example's), on
    // another port, or with anything after the origin
    reqwest::Url::parse(iss)
        .ok()
        .filter(|u| {
            u.scheme() == "https"
                && u.username().is_empty()
                && u.password().is_none()
                && u.port().is_none()
                && u.path() == "/"
                && u.query().is_none()
                && u.fragment().is_none()
        })
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
}

#[cfg(test)]
pub(crate) mod tests;
