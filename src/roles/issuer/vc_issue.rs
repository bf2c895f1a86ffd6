//! VC-API issue as a step of the issuer (its HTTP adapter is `vc_api.rs`): a caller-supplied
//! credential, checked against the VC Data Model (`vc_input`), signed with the key of the issuer
//! it names (`credential.issuer`, required) through the same formats as OpenID4VCI issuance: a
//! Data Integrity proof (eddsa-rdfc-2022, [`crate::crypto::di`]) or a JWT ([`formats::vc_jwt`]).

use serde_json::{json, Map, Value};

use super::error::IssuerError;
use super::formats;
use super::model::Issuer;
use super::service::IssuerService;
use super::vc_input::{self, Model, VCDM1_CONTEXT};
use crate::crypto::CryptoError;

const DATA_INTEGRITY_CONTEXT: &str = "https://w3id.org/security/data-integrity/v2";

impl IssuerService {
    /// `format`: `ldp` (VCDM 2.0 + eddsa-rdfc-2022), `jwt` (VCDM 1.1 `vc` claim when the context
    /// is v1, else VC-JOSE `vc+jwt` with the credential as payload) or `enveloped` (VCDM 2.0 only:
    /// that `vc+jwt` as an `EnvelopedVerifiableCredential`). Returns the secured credential.
    pub async fn vc_api_issue(
        &self,
        credential: Value,
        format: &str,
    ) -> Result<Value, IssuerError> {
        let Value::Object(mut vc) = credential else {
            return Err(malformed("credential must be a JSON object"));
        };
        let model = vc_input::check(&vc).map_err(|e| malformed(format!("credential: {e}")))?;
        let issuer = self.named_issuer(&vc).await?;
        if model == Model::V1 {
            // VCDM 1.1 input is secured with eddsa-rdfc-2022: its terms come from the Data
            // Integrity context, which VCDM 1.1 does not include (the spec allows adding it).
            if let Some(Value::Array(ctx)) = vc.get_mut("@context") {
                if !ctx.iter().any(|c| c == DATA_INTEGRITY_CONTEXT) {
                    ctx.push(json!(DATA_INTEGRITY_CONTEXT));
                }
            }
        }
        let key = self.signing_key(&issuer).await?;
        let now = self.ctx.clock.now_secs();
        match format {
            "ldp" => {
                let vm = issuer.verification_method.clone();
                crate::crypto::di::issue_credential_bounded(key, vm, vc, now)
                    .await
                    .map_err(|e| {
                        let detail = format!("cannot secure this credential: {e}");
                        match e {
                            CryptoError::Busy(_) => IssuerError::Busy(detail),
                            CryptoError::TooComplex(_) | CryptoError::OutOfTime(_) => {
                                IssuerError::TooComplex(detail)
                            }
                            _ => malformed(detail),
                        }
                    })
            }
            "jwt" | "enveloped" => {
                let v1 = vc["@context"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(Value::as_str)
                    == Some(VCDM1_CONTEXT);
                let claims = if v1 {
                    Some(vc_jwt_claims(&issuer, &mut vc, now))
                } else {
                    vc.entry("validFrom")
                        .or_insert_with(|| json!(crate::crypto::rfc3339(now)));
                    None
                };
                let jwt =
                    formats::vc_jwt(&key, &issuer.verification_method, Value::Object(vc), claims);
                match (format, v1) {
                    ("enveloped", true) => Err(malformed(
                        "options.format `enveloped` (VC-JOSE-COSE) secures VC Data Model 2.0 credentials; this one is 1.1",
                    )),
                    ("enveloped", false) => Ok(crate::crypto::envelope::envelop_vc_jwt(&jwt)),
                    _ => Ok(Value::String(jwt)),
                }
            }
            other => Err(IssuerError::Invalid(format!(
                "options.format `{other}`: ldp, jwt or enveloped"
            ))),
        }
    }

    /// The tenant that signs: the issuer the credential names (an id, or an object with
    /// id/name/description). A credential must name one (VCDM `issuer` is required; VC-API).
    async fn named_issuer(&self, vc: &Map<String, Value>) -> Result<Issuer, IssuerError> {
        let Some(id) = vc_input::issuer_id(vc) else {
            return Err(malformed(
                "credential: issuer is required (the DID of an issuer this node holds)",
            ));
        };
        self.list_issuers()
            .await?
            .into_iter()
            .find(|i| i.did == id)
            .ok_or_else(|| {
                malformed(format!(
                    "credential.issuer {id} is not an issuer this node holds"
                ))
            })
    }
}

/// The VC-JWT 1.1 claims around a credential (`iss`, `nbf`, `sub` of its subject); gives `vc` an
/// `issuanceDate` when it has none.
fn vc_jwt_claims(issuer: &Issuer, vc: &mut Map<String, Value>, now: i64) -> Value {
    let mut p = Map::new();
    p.insert("iss".into(), json!(issuer.did));
    p.insert("nbf".into(), json!(now));
    if let Some(sub) = vc["credentialSubject"]["id"].as_str() {
        p.insert("sub".into(), json!(sub));
    }
    vc.entry("issuanceDate")
        .or_insert_with(|| json!(crate::crypto::rfc3339(now)));
    Value::Object(p)
}

fn malformed(detail: impl Into<String>) -> IssuerError {
    IssuerError::Malformed(detail.into())
}
