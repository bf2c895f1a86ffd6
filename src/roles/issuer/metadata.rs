//! What wallets read before they start: credential issuer and authorization server metadata,
//! the did:web document.

use serde_json::{json, Map, Value};

use super::error::*;
use super::model::*;
use super::service::*;
use crate::crypto::did;

impl IssuerService {
    pub fn vct(&self, issuer: &Issuer, config: &CredentialConfig) -> String {
        config.vct.clone().unwrap_or_else(|| {
            format!(
                "{}/vct/{}",
                self.issuer_url(&issuer.id),
                config.credential_type
            )
        })
    }

    pub fn credential_issuer_metadata(&self, issuer: &Issuer) -> Value {
        let base = self.issuer_url(&issuer.id);
        let mut configs = Map::new();
        for (id, c) in &issuer.credential_configurations {
            let claims: Vec<Value> = c
                .claims
                .iter()
                .map(|cl| {
                    let mut v = json!({"path": [cl.name], "mandatory": cl.mandatory});
                    if let Some(n) = &cl.display_name {
                        v["display"] = json!([{"name": n, "locale": "en-US"}]);
                    }
                    v
                })
                .collect();
            let display: Vec<Value> = if c.display.is_empty() {
                vec![json!({"name": c.credential_type, "locale": "en-US"})]
            } else {
                c.display.iter().map(|d| json!(d)).collect()
            };
            let mut entry = json!({
                "format": c.format.as_str(),
                "scope": id,
                "cryptographic_binding_methods_supported": ["jwk", "did:key", "did:jwk"],
                "credential_signing_alg_values_supported": [issuer.key_type.alg()],
                "proof_types_supported": {"jwt": {"proof_signing_alg_values_supported": ["EdDSA", "ES256", "ES256K"]}},
                "credential_metadata": {"display": display, "claims": claims},
                // pre-1.0 wallets read these at the top level
                "display": display,
            });
            match c.format {
                Format::SdJwt => {
                    entry["vct"] = json!(self.vct(issuer, c));
                    entry["cryptographic_binding_methods_supported"] = json!(["jwk"]);
                }
                Format::JwtVcJson => {
                    entry["credential_definition"] =
                        json!({"type": ["VerifiableCredential", c.credential_type]});
                }
                Format::MsoMdoc => {
                    let (doctype, ns) = c.mdoc_names().unwrap_or_default();
                    let claims: Vec<_> = c
                        .claims
                        .iter()
                        .map(|cl| (cl.name.clone(), cl.mandatory, cl.display_name.clone()))
                        .collect();
                    let m = super::mdoc::metadata(doctype, &ns, &claims);
                    for k in [
                        "doctype",
                        "cryptographic_binding_methods_supported",
                        "credential_signing_alg_values_supported",
                        "proof_types_supported",
                    ] {
                        entry[k] = m[k].clone();
                    }
                    entry["credential_metadata"]["claims"] = m["claims"].clone();
                }
                Format::LdpVc => {
                    entry["cryptographic_binding_methods_supported"] =
                        json!(["did:key", "did:jwk"]);
                    entry["credential_definition"] = json!({
                        "@context": crate::crypto::di::credential_contexts(),
                        "type": ["VerifiableCredential", c.credential_type],
                    });
                }
            }
            configs.insert(id.clone(), entry);
        }
        json!({
            "credential_issuer": base,
            "credential_endpoint": format!("{base}/credential"),
            "nonce_endpoint": format!("{base}/nonce"),
            "batch_credential_issuance": {"batch_size": MAX_BATCH},
            "display": [{"name": issuer.display_name, "locale": "en-US"}],
            "credential_configurations_supported": configs,
        })
    }

    pub fn authorization_server_metadata(&self, issuer: &Issuer) -> Value {
        let base = self.issuer_url(&issuer.id);
        let mut m = json!({
            "issuer": base,
            "token_endpoint": format!("{base}/token"),
            "grant_types_supported": [PRE_AUTH_GRANT],
            "token_endpoint_auth_methods_supported": ["none"],
            "pre-authorized_grant_anonymous_access_supported": true,
            "scopes_supported": issuer.credential_configurations.keys().collect::<Vec<_>>(),
            "authorization_details_types_supported": ["openid_credential"],
        });
        // the authorization code grant only when some redirect URI is allowed
        if self.redirect_uris().any_allowed() {
            m["authorization_endpoint"] = json!(format!("{base}/authorize"));
            m["grant_types_supported"] = json!(["authorization_code", PRE_AUTH_GRANT]);
            m["response_types_supported"] = json!(["code"]);
            m["code_challenge_methods_supported"] = json!(["S256"]);
            m["authorization_response_iss_parameter_supported"] = json!(true);
        }
        m
    }

    pub async fn did_document(&self, id: &str) -> Result<Value, IssuerError> {
        let issuer = self.get_issuer(id).await?;
        if issuer.did_method != DidMethod::Web {
            return Err(IssuerError::NotDidWeb(id.to_string()));
        }
        let key = self.signing_key(&issuer).await?;
        Ok(did::did_web_document(&issuer.did, &key.verifying_key()))
    }
}
