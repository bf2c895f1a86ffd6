//! Verifier tenants: the verifier record as a [`Tenant`] (with an optional did:key signing key);
//! the CRUD itself is the shared [`crate::roles::tenants::Tenants`]. Also the issuers a verifier
//! trusts.

use serde_json::Value;

use super::error::VerifierError;
use super::model::*;
use super::service::VerifierService;
use super::verify::Trust;
use crate::crypto::{did, KeyType, VerifyingKey};
use crate::roles::tenants::{Creation, Tenant};

impl Tenant for Verifier {
    const KIND: &'static str = "verifier";
    type Create = CreateVerifier;
    type Update = UpdateVerifier;

    fn id(&self) -> &str {
        &self.id
    }
    fn key_fingerprint(&self) -> Option<&str> {
        self.key_fingerprint.as_deref()
    }
    fn requested_id(req: &CreateVerifier) -> &str {
        &req.id
    }
    fn requested_key(req: &CreateVerifier) -> Option<KeyType> {
        req.signing_key_type
    }
    fn build(
        req: CreateVerifier,
        key: Option<&VerifyingKey>,
        at: &Creation<'_>,
    ) -> Result<Self, String> {
        let did = key.map(did::did_key);
        Ok(Verifier {
            display_name: req.display_name.unwrap_or_else(|| req.id.clone()),
            id: req.id,
            key_type: key.and(req.signing_key_type),
            verification_method: did.as_deref().map(did::verification_method),
            did,
            key_fingerprint: key.map(VerifyingKey::thumbprint),
            trusted_issuers: req.trusted_issuers,
            created_at: at.now,
        })
    }
    fn apply(&mut self, req: &UpdateVerifier) {
        if let Some(n) = &req.display_name {
            self.display_name = n.clone();
        }
        if let Some(t) = &req.trusted_issuers {
            self.trusted_issuers = t.clone();
        }
    }
}

impl VerifierService {
    pub async fn get_verifier(&self, id: &str) -> Result<Verifier, VerifierError> {
        Ok(self.tenants.get(id).await?)
    }

    pub async fn list_verifiers(&self) -> Result<Vec<Verifier>, VerifierError> {
        Ok(self.tenants.list().await?)
    }

    pub async fn create_verifier(&self, req: CreateVerifier) -> Result<Verifier, VerifierError> {
        Ok(self.tenants.create(req).await?)
    }

    pub async fn update_verifier(
        &self,
        id: &str,
        req: UpdateVerifier,
    ) -> Result<Verifier, VerifierError> {
        Ok(self.tenants.update(id, req).await?)
    }

    /// Deletes the tenant, its key and its sessions: they are keyed by the verifier's id, so a
    /// verifier created later under the same id would otherwise take the wallet responses to the
    /// old one's pending sessions (judged by its own policies, sent to its own webhook) and list
    /// the old one's results, presented personal data included. Finished sessions go too, for that
    /// last reason; they would expire a day after their session anyway.
    /// Like the issuer's, the purge also runs when the tenant is already gone, so deleting again
    /// (404) finishes a purge that failed half way.
    pub async fn delete_verifier(&self, id: &str) -> Result<(), VerifierError> {
        let (deleted, purge) = self.tenants.delete_to_purge(id).await?;
        if !purge {
            return Ok(deleted?);
        }
        crate::roles::tenants::purge_tenant_records(&self.ctx, super::ks::SESSIONS, id, |_, _| {
            Vec::new()
        })
        .await?;
        Ok(deleted?)
    }

    pub async fn init(&self) -> anyhow::Result<()> {
        if self.cfg.trust == crate::config::VerifierTrust::Any {
            tracing::warn!("verifier.trust = \"any\": every issuer whose signature verifies is trusted; for conformance suites and development only");
        }
        // Signed request objects by default: wallets (e.g. the Animo client) refuse unsigned
        // request objects fetched by reference.
        let default = CreateVerifier {
            id: crate::roles::tenants::DEFAULT.into(),
            display_name: Some("idstack sandbox verifier".into()),
            signing_key_type: Some(KeyType::Ed25519),
            trusted_issuers: Vec::new(),
        };
        self.tenants.init(default).await
    }

    /// The issuers `v` trusts: its `trusted_issuers` when it lists any (an explicit list is the
    /// whole truth); when it lists none, in sandbox mode this node's own issuer tenants (read from
    /// the issuer role's records, whichever node wrote them, and for mdocs the sandbox IACA as
    /// `aki:…`) and in production no one; everything when `verifier.trust = "any"`.
    pub(super) async fn trusted(&self, v: &Verifier) -> Result<Trust, VerifierError> {
        if self.cfg.trust == crate::config::VerifierTrust::Any {
            return Ok(Trust::Any);
        }
        let mut list = v.trusted_issuers.clone();
        if list.is_empty() && self.ctx.mode == crate::config::Mode::Sandbox {
            // The issuer role's tenant records (keyspace `issuer_tenants`); read as data so a
            // verifier-only build needs no issuer code.
            for (_, issuer) in self
                .ctx
                .store
                .scan_json::<Value>("issuer_tenants", "", 10_000)
                .await?
            {
                if let Some(did) = issuer["did"].as_str() {
                    if !list.iter().any(|t| t == did) {
                        list.push(did.to_string());
                    }
                }
            }
            // and the sandbox IACA its issuers' mdoc document signers are under
            if let Some(der) = crate::roles::mdoc_pki::sandbox_anchor(&self.ctx).await {
                use x509_cert::der::Decode;
                let ski = x509_cert::Certificate::from_der(&der)
                    .ok()
                    .and_then(|c| crate::crypto::x509::subject_key_id(&c));
                list.extend(ski.map(|k| super::verify::aki_entry(&k)));
            }
        }
        Ok(Trust::Only(list))
    }
}
