//! Proofs of possession at the credential endpoint: the proof JWTs of a request, each checked
//! (type, key, signature, audience, age) and its c_nonce consumed once.

use serde_json::Value;

use super::error::IssuerError;
use super::model::{CredentialRequest, Issuer};
use super::service::*;
use crate::crypto::{jws, VerifyingKey};
use crate::error::OAuthCode::*;

const PROOF_MAX_AGE: i64 = 300;
const PROOF_MAX_SKEW: i64 = 60;

impl IssuerService {
    /// Verifies each proof and consumes the c_nonces they carry; returns each proof's holder key
    /// (and DID when its header named one).
    pub(super) async fn check_proofs(
        &self,
        issuer: &Issuer,
        client_id: Option<&str>,
        jwts: &[String],
        now: i64,
    ) -> Result<Proven, IssuerError> {
        let aud = self.issuer_url(&issuer.id);
        let mut holders = Vec::new();
        let mut nonces: Vec<String> = Vec::new();
        for jwt in jwts {
            let (vk, holder_did, nonce) =
                verify_proof(jwt, &aud, client_id, now).map_err(|e| InvalidProof.because(e))?;
            if !nonces.contains(&nonce) {
                nonces.push(nonce);
            }
            // a batch is for credentials that cannot be linked by their key: one key per
            // credential (a repeated proof would only buy copies on one key)
            if holders.iter().any(|(k, _)| *k == vk) {
                return Err(InvalidProof
                    .because(
                        "two proofs for one key: each credential of a batch needs a key of its own",
                    )
                    .into());
            }
            holders.push((vk, holder_did));
        }
        // Each c_nonce is single-use: use it before issuing anything.
        let mut used = Vec::new();
        for nonce in nonces {
            match self.use_nonce(issuer, &nonce, now).await {
                Ok(Some(u)) => used.push(u),
                outcome => {
                    self.restore_nonces(&used).await;
                    outcome?;
                    return Err(InvalidNonce.because("c_nonce is unknown, expired or already used; get a fresh one from the nonce endpoint").into());
                }
            }
        }
        Ok(Proven {
            holders,
            nonces: used,
        })
    }
}

/// What a request's proofs established: each proof's holder key (and DID when its header named
/// one), and the c_nonces consumed for them.
pub(super) struct Proven {
    pub holders: Vec<(VerifyingKey, Option<String>)>,
    pub nonces: Vec<super::nonces::UsedNonce>,
}

/// Checks one proof JWT; returns (holder key, holder DID when named by kid, nonce).
/// `client_id`: the client the access token was issued to, when it named one.
fn verify_proof(
    jwt: &str,
    aud: &str,
    client_id: Option<&str>,
    now: i64,
) -> Result<(VerifyingKey, Option<String>, String), String> {
    let (header, _, _, _) = jws::decode_unverified(jwt).map_err(|e| e.to_string())?;
    if header["typ"] != "openid4vci-proof+jwt" {
        return Err("proof typ must be openid4vci-proof+jwt".into());
    }
    let (vk, kid) = jws::header_key(&header).map_err(|e| format!("proof key: {e}"))?;
    // a critical extension this issuer does not know cannot be understood: refused (RFC 7515)
    if header.get("crit").is_some() {
        return Err("proof crit extensions are not supported".into());
    }
    let (_, claims) = jws::verify(jwt, &vk).map_err(|e| format!("proof signature: {e}"))?;
    if claims["exp"]
        .as_i64()
        .is_some_and(|exp| exp.saturating_add(PROOF_MAX_SKEW) <= now)
    {
        return Err("proof has expired (exp)".into());
    }
    if claims["nbf"]
        .as_i64()
        .is_some_and(|nbf| nbf > now + PROOF_MAX_SKEW)
    {
        return Err("proof is not valid yet (nbf)".into());
    }
    let aud_ok = match &claims["aud"] {
        Value::String(s) => s == aud,
        Value::Array(a) => a.iter().any(|x| x == aud),
        _ => false,
    };
    if !aud_ok {
        return Err(format!("proof aud must be {aud}"));
    }
    // OID4VCI 1.0 F.1: `iss` is the client_id of the client making the request. It is not
    // required (wallets in use leave it out, and an anonymous pre-authorized client has none),
    // but a proof that names another client, or names one when the token's client named none,
    // was made for someone else.
    match (&claims["iss"], client_id) {
        (Value::Null, _) => {}
        (Value::String(iss), Some(c)) if iss == c => {}
        (Value::String(_), Some(_)) => {
            return Err("proof iss is not the client_id the access token was issued to".into())
        }
        (Value::String(_), None) => {}
        _ => return Err("proof iss must be a string".into()),
    }
    let iat = claims["iat"].as_i64().ok_or("proof iat is missing")?;
    if iat < now - PROOF_MAX_AGE || iat > now + PROOF_MAX_SKEW {
        return Err("proof iat is outside the accepted window".into());
    }
    let nonce = claims["nonce"]
        .as_str()
        .ok_or("proof nonce is missing (get a c_nonce from the nonce endpoint)")?;
    let holder_did = kid.map(|k| k.split('#').next().unwrap_or(&k).to_string());
    // The subject's id is the DID as the wallet wrote it: one spelling per key (a P-256 did:key
    // may also be written uncompressed), so a holder is one subject id.
    if let Some(d) = holder_did.as_deref() {
        if d.starts_with("did:key:") && d != crate::crypto::did::did_key(&vk) {
            return Err("the proof's did:key is not its key's did:key form (compressed, as did:key specifies)".into());
        }
    }
    Ok((vk, holder_did, nonce.to_string()))
}

/// The proof JWTs of a request (`proofs.jwt`, or the draft `proof`): one to [`MAX_BATCH`].
pub(super) fn proof_jwts(req: &CredentialRequest) -> Result<Vec<String>, IssuerError> {
    let jwts: Vec<String> = match (&req.proofs, &req.proof) {
        (Some(p), None) => p.jwt.clone(),
        (None, Some(p)) if p.proof_type == "jwt" => p.jwt.clone().into_iter().collect(),
        (None, Some(p)) => {
            return Err(InvalidProof
                .because(format!("proof_type `{}` is not supported", p.proof_type))
                .into())
        }
        (Some(_), Some(_)) => {
            return Err(InvalidCredentialRequest
                .because("send proofs or proof, not both")
                .into())
        }
        (None, None) => Vec::new(),
    };
    if jwts.is_empty() {
        return Err(InvalidProof
            .because("a jwt proof of possession is required")
            .into());
    }
    if jwts.len() > MAX_BATCH {
        return Err(InvalidProof
            .because(format!("at most {MAX_BATCH} proofs per request"))
            .into());
    }
    Ok(jwts)
}
