//! Wallet records and API shapes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::crypto::KeyType;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    /// In clear only in memory (and in records of earlier releases): the store keeps
    /// `sealed_email` ([`crate::roles::wallet::WalletService::get_account`] opens it) and an
    /// empty `email`, which an earlier release still reads (after a rollback).
    #[serde(default)]
    pub email: String,
    /// The email, sealed to the account's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_email: Option<String>,
    pub password_hash: String,
    pub created_at: i64,
    #[serde(default)]
    pub disabled: bool,
    /// The generation of its sessions: a session made under another one has ended. A password
    /// change and logging out everywhere move it on.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub session_epoch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccountView {
    pub id: String,
    pub email: String,
    pub created_at: i64,
    pub disabled: bool,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        Self {
            id: a.id.clone(),
            email: a.email.clone(),
            created_at: a.created_at,
            disabled: a.disabled,
        }
    }
}

/// Sign-up: an email and a password.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

/// `POST /wallet/auth/password`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub current_password: String,
    /// 8 to 256 characters.
    pub new_password: String,
}

impl std::fmt::Debug for ChangePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangePassword").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// Login: an email and a password, and the `device_token` an earlier login on this client
/// returned, if it kept one.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// The `device_token` of an earlier successful login of this account on this client. With
    /// it, failed logins are counted for this device alone, so wrong passwords tried by others
    /// (which lock the email) do not lock this client out. Optional.
    #[serde(default)]
    pub device_token: Option<String>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Serialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub token_type: &'static str,
    pub expires_at: i64,
    pub account: AccountView,
    /// Keep it and send it with this account's next login from this client (valid 90 days; a
    /// login may hand back a newer one). It is not a session and grants nothing without the
    /// password.
    pub device_token: String,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("expires_at", &self.expires_at)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoginFailures {
    pub failures: u32,
    pub locked_until: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub account: String,
    pub expires_at: i64,
    /// The account's `session_epoch` when it was made (0 in sessions of earlier releases).
    #[serde(default)]
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Viewer,
    Owner,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Wallet {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_did: Option<String>,
}

/// What the store keeps for a wallet (`wallet_wallets`): the wallet as the API shows it, and its
/// roster. Every read-modify-write of that keyspace goes through this type, so no update drops
/// the roster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalletRecord {
    #[serde(flatten)]
    pub wallet: Wallet,
    /// The wallet's members and their roles: the authority on who may use it, changed only by
    /// compare-and-swap of this record (see `members`). The `a/`/`w/` membership index is
    /// derived from it, for listing an account's wallets. `None` in records written before
    /// rosters existed: their index is the authority until the first change builds the roster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roster: Option<BTreeMap<String, MemberRole>>,
    /// Pending invitations by invitee account (see `invitations`): a share takes effect only
    /// when the invitee accepts it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub invitations: BTreeMap<String, Invitation>,
}

/// An owner's invitation of an account to a wallet, pending until accepted, declined, revoked
/// or expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// The invitee's email, as the owners named it: in clear only in records written by
    /// releases before `sealed_emails`; written empty (a release before it still reads the
    /// record after a rollback, and shows no email).
    #[serde(default)]
    pub email: String,
    pub role: MemberRole,
    /// The inviting owner's account: the invitation lapses when it is no longer an owner.
    pub invited_by: String,
    /// Its email, shown to the invitee: in clear only in records of earlier releases, as above.
    #[serde(default)]
    pub invited_by_email: String,
    /// `[email, invited_by_email]`, sealed to this wallet and invitee (base64url): the wallet
    /// record must not give a store reader its members' emails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_emails: Option<String>,
    pub expires_at: i64,
}

impl Invitation {
    /// Whether it can still be accepted: unexpired, and its inviter still an owner in `roster`.
    pub fn is_live(&self, roster: &BTreeMap<String, MemberRole>, now: i64) -> bool {
        self.expires_at > now && roster.get(&self.invited_by) == Some(&MemberRole::Owner)
    }
}

/// A pending invitation, as the wallet's owners see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InvitationView {
    pub email: String,
    pub role: MemberRole,
    pub invited_by_email: String,
    pub expires_at: i64,
}

/// A pending invitation, as the invitee sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReceivedInvitation {
    pub wallet: String,
    pub wallet_name: String,
    pub role: MemberRole,
    pub invited_by_email: String,
    pub expires_at: i64,
}

/// The invitation `POST /wallet/wallets/{w}/members` made for a non-member (202).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Invited {
    pub email: String,
    pub role: MemberRole,
    pub expires_at: i64,
}

impl WalletRecord {
    /// `account`'s role as the roster has it; `None` in the roster's absence too (ask the index).
    pub fn role_of(&self, account: &str) -> Option<MemberRole> {
        self.roster.as_ref()?.get(account).copied()
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WalletView {
    #[serde(flatten)]
    pub wallet: Wallet,
    pub role: MemberRole,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WalletName {
    pub name: String,
}

/// A member of a wallet.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MemberView {
    pub account: String,
    pub email: String,
    pub role: MemberRole,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub email: String,
    pub role: MemberRole,
}

/// A key; the private part is sealed in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub key_type: KeyType,
    #[serde(default)]
    pub public_jwk: Value,
    pub sealed: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub key_type: KeyType,
    #[schema(value_type = Object)]
    pub public_jwk: Value,
    pub created_at: i64,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateKey {
    pub key_type: Option<KeyType>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportKey {
    /// A private JWK (OKP Ed25519, EC P-256 or secp256k1 with `d`).
    #[schema(value_type = Object)]
    pub jwk: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DidMethod {
    Key,
    Jwk,
    Web,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DidRecord {
    pub did: String,
    pub method: DidMethod,
    pub key_id: String,
    pub verification_method: String,
    pub created_at: i64,
    #[serde(default)]
    pub is_default: bool,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDid {
    pub method: Option<DidMethod>,
    /// An existing key; a new Ed25519 key is generated when absent.
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDefaultDid {
    pub did: String,
}

/// A stored credential: the raw credential is sealed; the summary drives listing and matching.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub id: String,
    pub format: String,
    pub sealed: String,
    /// In clear only in records written by releases before `sealed_summary`; written with its
    /// id, format and arrival alone (a release before it still lists the credential after a
    /// rollback, without issuer or type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<CredentialSummary>,
    /// The summary (issuer, type, dates), sealed to the credential's place (base64url): which
    /// credentials a user holds is personal data (a health or benefits credential says more
    /// than its claims), and the store must not list it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_summary: Option<String>,
    pub key_id: String,
    pub received_at: i64,
    /// mso_mdoc: the credential's own P-256 device key (private JWK), sealed; `key_id` is its
    /// thumbprint. Never leaves the store unsealed except to sign a DeviceResponse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialSummary {
    pub id: String,
    pub format: String,
    pub issuer: String,
    /// `vct` (SD-JWT) or the most specific W3C type.
    pub credential_type: String,
    pub configuration_id: Option<String>,
    pub issued_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub received_at: i64,
    /// mso_mdoc: the doc type and the issuer-signed elements per namespace. Read from the sealed
    /// credential when listed; never stored in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdoc: Option<MdocContents>,
}

/// What an mdoc holds (ISO 18013-5 `IssuerSigned`), as JSON: byte strings base64url, dates as
/// their text.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MdocContents {
    /// e.g. `org.iso.18013.5.1.mDL`.
    pub doctype: String,
    /// Namespace → element identifier → value.
    #[schema(value_type = Object)]
    pub namespaces: std::collections::BTreeMap<String, Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CredentialDetail {
    #[serde(flatten)]
    pub summary: CredentialSummary,
    /// All claims the credential carries (SD-JWT: including the selectively disclosable ones;
    /// mso_mdoc: namespace → element → value).
    #[schema(value_type = Object)]
    pub claims: Map<String, Value>,
    /// SD-JWT: the claim names that can be withheld; mso_mdoc: every `namespace/element`.
    pub disclosable: Vec<String>,
    /// The credential as received (JWT, SD-JWT or JSON-LD).
    #[schema(value_type = Object)]
    pub raw: Value,
}

#[derive(Debug, Clone, Deserialize, ToSchema, Default)]
pub struct CredentialFilter {
    #[serde(rename = "type")]
    pub credential_type: Option<String>,
    pub issuer: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    pub at: i64,
    /// `receive` or `present`.
    pub kind: String,
    pub counterparty: String,
    pub credential_ids: Vec<String>,
    pub outcome: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfferInput {
    /// `openid-credential-offer://...` (by value or reference), or the offer JSON.
    pub offer: String,
    pub tx_code: Option<String>,
    /// Bind the credentials to this DID of the wallet (default: the wallet's default DID).
    /// mso_mdoc credentials are bound to a new P-256 device key each instead.
    pub did: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    /// `openid4vp://...` authorization request (by value or with `request_uri`).
    pub request: String,
    /// Chosen credential id (a string) per credential query id (default: the first match; an
    /// optional DCQL credential set is answered only when one of its queries is selected).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub selections: Map<String, Value>,
    /// Claims to disclose per query id (default: what the query asks for, down to its claim
    /// paths: `["address", "country"]` discloses that member of `address`, not the whole
    /// address): an array of SD-JWT claim names or claim paths (arrays of names, indexes and
    /// null), mso_mdoc `namespace/element`. Other shapes of either member are refused (422).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub disclose: Map<String, Value>,
    /// `present` only: the `request_digest` that `resolve-request` returned for what was shown
    /// to the user. `present` answers the request as `resolve-request` fetched it (kept 10
    /// minutes for the same request text), else fetches it; if that is not the request this
    /// digest names, the presentation is refused (409) instead of answering a request nobody
    /// saw.
    #[serde(default)]
    pub request_digest: Option<String>,
}
