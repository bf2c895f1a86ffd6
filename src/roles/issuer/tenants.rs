//! Issuer tenants: the issuer record as a [`Tenant`] (its DID per `did_method`, its credential
//! configurations and webhook checked on create and update); the CRUD itself is the shared
//! [`crate::roles::tenants::Tenants`].

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::IssuerError;
use super::ks;
use super::model::*;
use super::service::IssuerService;
use crate::crypto::{did, KeyType, SigningKey, VerifyingKey};
use crate::roles::tenants::{purge_tenant_records, Creation, Tenant, TenantError};
use crate::store::{BatchOp, Sealer, StoreError};

impl Tenant for Issuer {
    const KIND: &'static str = "issuer";
    type Create = CreateIssuer;
    type Update = UpdateIssuer;

    fn id(&self) -> &str {
        &self.id
    }
    fn key_fingerprint(&self) -> Option<&str> {
        Some(&self.key_fingerprint)
    }
    fn requested_id(req: &CreateIssuer) -> &str {
        &req.id
    }
    fn requested_key(req: &CreateIssuer) -> Option<KeyType> {
        Some(req.key_type.unwrap_or(KeyType::Ed25519))
    }
    fn check_create(req: &CreateIssuer) -> Result<(), String> {
        let key_type = req.key_type.unwrap_or(KeyType::Ed25519);
        let did_method = req.did_method.unwrap_or(DidMethod::Key);
        validate_configs(key_type, did_method, &req.credential_configurations)?;
        req.webhook_url
            .as_deref()
            .map_or(Ok(()), crate::http::webhook::check_target)
    }
    fn build(
        req: CreateIssuer,
        key: Option<&VerifyingKey>,
        at: &Creation<'_>,
    ) -> Result<Self, String> {
        let vk = key.ok_or("an issuer needs a signing key")?;
        let did_method = req.did_method.unwrap_or(DidMethod::Key);
        let did = match did_method {
            DidMethod::Key => did::did_key(vk),
            DidMethod::Jwk => did::did_jwk(vk),
            DidMethod::Web => did::did_web(at.public_url, &format!("issuers/{}", req.id)),
        };
        Ok(Issuer {
            verification_method: did::verification_method(&did),
            did,
            display_name: req.display_name.unwrap_or_else(|| req.id.clone()),
            id: req.id,
            key_type: req.key_type.unwrap_or(KeyType::Ed25519),
            did_method,
            key_fingerprint: vk.thumbprint(),
            credential_configurations: req.credential_configurations,
            webhook_url: req.webhook_url,
            sealed_webhook_url: None,
            created_at: at.now,
        })
    }
    fn check_update(&self, req: &UpdateIssuer) -> Result<(), String> {
        if let Some(c) = &req.credential_configurations {
            validate_configs(self.key_type, self.did_method, c)?;
        }
        match req.webhook_url.as_deref().filter(|w| !w.is_empty()) {
            Some(w) => crate::http::webhook::check_target(w),
            None => Ok(()),
        }
    }
    fn apply(&mut self, req: &UpdateIssuer) {
        if let Some(n) = &req.display_name {
            self.display_name = n.clone();
        }
        if let Some(c) = &req.credential_configurations {
            self.credential_configurations = c.clone();
        }
        if let Some(w) = &req.webhook_url {
            self.webhook_url = (!w.is_empty()).then(|| w.clone());
            // a new value (or none) replaces one that did not open
            self.sealed_webhook_url = None;
        }
    }
    /// A sealed URL that did not open stays as it was (an update of another field must not
    /// erase what a node with the right master key still opens).
    fn seal(&mut self, sealer: &Sealer) -> Result<(), StoreError> {
        if let Some(url) = self.webhook_url.take() {
            self.sealed_webhook_url = Some(crate::crypto::b64url(
                sealer.seal(webhook_aad(&self.id).as_bytes(), url.as_bytes())?,
            ));
        }
        Ok(())
    }
    fn open(&mut self, sealer: &Sealer) {
        let Some(sealed) = &self.sealed_webhook_url else {
            return;
        };
        let opened = crate::crypto::b64url_decode(sealed)
            .map_err(|e| e.to_string())
            .and_then(|raw| {
                sealer
                    .open(webhook_aad(&self.id).as_bytes(), &raw)
                    .map_err(|e| e.to_string())
            })
            .and_then(|plain| String::from_utf8(plain.to_vec()).map_err(|e| e.to_string()));
        match opened {
            Ok(url) => {
                self.webhook_url = Some(url);
                self.sealed_webhook_url = None;
            }
            // (every read of the issuer comes here: a warning, not an error per request)
            Err(e) => {
                tracing::warn!(issuer = %self.id, error = %e, "the issuer's webhook URL does not open: no webhook is sent until it is set again")
            }
        }
    }
}

/// What an issuer's webhook URL is sealed to: its keyspace, issuer and field.
fn webhook_aad(issuer: &str) -> String {
    format!("{}/{issuer}/webhook_url", ks::TENANTS)
}

impl IssuerService {
    pub async fn get_issuer(&self, id: &str) -> Result<Issuer, IssuerError> {
        Ok(self.tenants.get(id).await?)
    }

    pub async fn list_issuers(&self) -> Result<Vec<Issuer>, IssuerError> {
        Ok(self.tenants.list().await?)
    }

    pub async fn create_issuer(&self, req: CreateIssuer) -> Result<Issuer, IssuerError> {
        Ok(self.tenants.create(req).await?)
    }

    pub async fn update_issuer(&self, id: &str, req: UpdateIssuer) -> Result<Issuer, IssuerError> {
        Ok(self.tenants.update(id, req).await?)
    }

    /// Deletes the tenant, its key, its mdoc document signer and everything redeemable it left
    /// (a tenant created later under the same id starts without any of them): its offers, with
    /// the pre-authorized codes and access tokens they name, and its c_nonces. Every code and
    /// token leads to its offer record (pre-authorized codes, issuer_state and authorization codes
    /// name the offer's key; a token works only while its offer names it), so without the offers
    /// the ones that cannot be found from here (issuer_state, authorization codes — stored by the
    /// hash of a secret we do not keep) redeem nothing and expire with their TTL.
    ///
    /// Kept: issued-credential records, status lists and the status index counter. They are
    /// history and status, not redeemable. Keeping them is the safer choice for a recreated id:
    /// the old credentials name these status lists by URL, and a purge would let the new tenant
    /// start list 1 afresh, turning the old revoked credentials' bits back to "valid" and handing
    /// their indices to new credentials. (Old credentials carry the deleted key's signature, so
    /// they do not verify as the new tenant's anyway.)
    ///
    /// The purge runs after the tenant record is gone, so no new offer or nonce can be made for it
    /// meanwhile (short of a request that read the record just before), and also when the tenant
    /// is already gone: a delete whose purge failed half way is finished by deleting again (404).
    pub async fn delete_issuer(&self, id: &str) -> Result<(), IssuerError> {
        let (deleted, purge) = self.tenants.delete_to_purge(id).await?;
        if !purge {
            return Ok(deleted?);
        }
        crate::roles::mdoc_pki::forget_document_signer(&self.ctx, id).await?;
        purge_tenant_records(&self.ctx, ks::OFFERS, id, |key, value| {
            let mut ops = Vec::new();
            match serde_json::from_slice::<Offer>(value) {
                Ok(o) => {
                    ops.push(BatchOp::Delete {
                        keyspace: ks::CODES,
                        key: format!("pre/{}", o.pre_auth_code_hash),
                    });
                    if let Some(t) = o.token_hash {
                        ops.push(BatchOp::Delete {
                            keyspace: ks::TOKENS,
                            key: t,
                        });
                    }
                }
                // An unreadable offer redeems nothing either; it goes, and so does its place.
                Err(e) => tracing::warn!(key, "deleting an unreadable offer record: {e}"),
            }
            ops
        })
        .await?;
        purge_tenant_records(&self.ctx, ks::NONCES, id, |_, _| Vec::new()).await?;
        Ok(deleted?)
    }

    /// The tenant's signing key, unsealed once and cached; its fingerprint must match the record.
    pub async fn signing_key(&self, issuer: &Issuer) -> Result<Arc<SigningKey>, IssuerError> {
        self.tenants
            .signing_key(issuer)
            .await
            .map_err(TenantError::from)?
            .ok_or_else(|| IssuerError::NoKey(issuer.id.clone()))
    }

    /// Startup: the default issuer exists, and every issuer's key opens and matches its fingerprint.
    pub async fn init(&self) -> anyhow::Result<()> {
        self.tenants.init(default_issuer_request()).await
    }
}

/// Longest credential configuration id (they appear in offers, metadata and every credential
/// request).
const MAX_CONFIG_ID: usize = 128;

fn validate_configs(
    key_type: KeyType,
    did_method: DidMethod,
    configs: &BTreeMap<String, CredentialConfig>,
) -> Result<(), String> {
    for (id, c) in configs {
        let plain = (1..=MAX_CONFIG_ID).contains(&id.len())
            && id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '.');
        if !plain {
            return Err(format!(
                "credential configuration id `{id}`: 1 to {MAX_CONFIG_ID} letters, digits, ., - and _"
            ));
        }
        if c.format == Format::LdpVc
            && (key_type != KeyType::Ed25519 || did_method == DidMethod::Web)
        {
            return Err(format!(
                "credential configuration `{id}`: ldp_vc (eddsa-rdfc-2022) needs an Ed25519 key with did:key or did:jwk"
            ));
        }
        if c.format == Format::LdpVc {
            // what JSON-LD expansion refuses or reads as a keyword or an IRI: such a credential
            // could never be signed (the offer's values are tried when an offer is made)
            let term = |t: &str| {
                !t.is_empty()
                    && !t.starts_with('@')
                    && !t.chars().any(|ch| ch.is_whitespace() || ch.is_control())
            };
            if !term(&c.credential_type) {
                return Err(format!(
                    "credential configuration `{id}`: an ldp_vc credential_type is a JSON-LD term (no spaces, not starting with @)"
                ));
            }
            if let Some(cl) = c
                .claims
                .iter()
                .find(|cl| !term(&cl.name) || cl.name.contains([':', '#', '/']) || cl.name == "id")
            {
                return Err(format!(
                    "credential configuration `{id}`: ldp_vc claim `{}` is not a plain JSON-LD term (no spaces, :, #, /, leading @, nor `id`, which is the holder's)",
                    cl.name
                ));
            }
        }
        if c.format == Format::MsoMdoc && c.doctype.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "credential configuration `{id}`: mso_mdoc needs a doctype (e.g. org.iso.18013.5.1.mDL)"
            ));
        }
        if c.credential_type.is_empty() || c.claims.is_empty() {
            return Err(format!(
                "credential configuration `{id}` needs credential_type and claims"
            ));
        }
        if c.validity_seconds
            .is_some_and(|v| v == 0 || v > super::offers::MAX_VALIDITY_SECS)
        {
            return Err(format!(
                "credential configuration `{id}`: validity_seconds must be 1..={}",
                super::offers::MAX_VALIDITY_SECS
            ));
        }
        if c.format == Format::SdJwt {
            if let Some(cl) = c
                .claims
                .iter()
                .find(|cl| super::formats::SD_JWT_RESERVED.contains(&cl.name.as_str()))
            {
                return Err(format!(
                    "credential configuration `{id}`: claim `{}` is set by the issuer in an SD-JWT VC",
                    cl.name
                ));
            }
        }
    }
    Ok(())
}

/// The built-in mdoc configurations: the ISO mDL and the EUDI PID.
fn mdoc_configs() -> Vec<(String, CredentialConfig)> {
    use super::mdoc::{MDL_DOCTYPE, MDL_ELEMENTS, PID_DOCTYPE, PID_ELEMENTS};
    [
        (
            "org.iso.18013.5.1.mDL",
            "mDL",
            MDL_DOCTYPE,
            MDL_ELEMENTS,
            "Mobile Driving Licence",
        ),
        (
            "eu.europa.ec.eudi.pid.1",
            "PID",
            PID_DOCTYPE,
            PID_ELEMENTS,
            "Person Identification Data",
        ),
    ]
    .into_iter()
    .map(|(id, ty, doctype, elements, name)| {
        let config = CredentialConfig {
            format: Format::MsoMdoc,
            credential_type: ty.into(),
            vct: None,
            claims: elements
                .iter()
                .map(|(n, mandatory)| ClaimSpec {
                    name: (*n).to_string(),
                    mandatory: *mandatory,
                    selectively_disclosable: true,
                    display_name: Some(n.replace('_', " ")),
                })
                .collect(),
            display: vec![Display {
                name: name.into(),
                locale: Some("en-US".into()),
                description: None,
            }],
            validity_seconds: Some(365 * 86_400),
            doctype: Some(doctype.into()),
            namespace: None,
        };
        (id.to_string(), config)
    })
    .collect()
}

/// The sandbox's default issuer: Ed25519, did:key, an IdentityCredential in each available format.
pub fn default_issuer_request() -> CreateIssuer {
    let claims = |sd: bool| {
        ["given_name", "family_name", "birthdate", "email"]
            .iter()
            .map(|n| ClaimSpec {
                name: (*n).to_string(),
                mandatory: false,
                selectively_disclosable: sd,
                display_name: Some(n.replace('_', " ")),
            })
            .collect::<Vec<_>>()
    };
    let display = vec![Display {
        name: "Identity Credential".into(),
        locale: Some("en-US".into()),
        description: None,
    }];
    let configs: BTreeMap<String, CredentialConfig> = [
        ("IdentityCredential_jwt_vc_json", Format::JwtVcJson, false),
        ("IdentityCredential_ldp_vc", Format::LdpVc, false),
        ("IdentityCredential_dc_sd_jwt", Format::SdJwt, true),
    ]
    .into_iter()
    .map(|(id, format, sd)| {
        let config = CredentialConfig {
            format,
            credential_type: "IdentityCredential".into(),
            vct: None,
            claims: claims(sd),
            display: display.clone(),
            validity_seconds: Some(365 * 86_400),
            doctype: None,
            namespace: None,
        };
        (id.to_string(), config)
    })
    .chain(mdoc_configs())
    .collect();
    CreateIssuer {
        id: "default".into(),
        display_name: Some("idstack sandbox issuer".into()),
        key_type: Some(KeyType::Ed25519),
        did_method: Some(DidMethod::Key),
        credential_configurations: configs,
        webhook_url: None,
    }
}
