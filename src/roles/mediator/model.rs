//! Mediator records (what the store holds, and in which keyspace) and the public API shapes.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The mediator's keyspaces.
pub mod ks {
    pub const KEYS: &str = "mediator_keys";
    pub const INVITATIONS: &str = "mediator_invitations";
    pub const CONNECTIONS: &str = "mediator_connections";
    /// Peer verkey → connection id.
    pub const BY_KEY: &str = "mediator_conn_by_key";
    /// Registered recipient key → connection id (coordinate-mediation keylist).
    pub const ROUTES: &str = "mediator_routes";
    /// `{connection}/{key}` → empty, for keylist queries.
    pub const ROUTE_BY_CONN: &str = "mediator_route_by_conn";
    /// `{connection}/{message id}` → queued message (ids sort by arrival).
    pub const QUEUE: &str = "mediator_queue";
}

/// A DIDComm connection with an agent (a mediation recipient, or anyone who connected).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Connection {
    pub id: String,
    pub their_did: String,
    /// Base58 Ed25519 verkey the peer authcrypts with.
    pub their_verkey: String,
    /// The peer's DIDComm endpoint (`didcomm:transport/queue` for agents without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub their_endpoint: Option<String>,
    #[serde(default)]
    pub their_label: String,
    /// `didexchange/1.1`, `didexchange/1.0` or `connections/1.0`.
    pub protocol: String,
    /// `response-sent` → `completed`.
    pub state: String,
    /// `none` or `granted`.
    pub mediation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation_id: Option<String>,
    /// Made through a single-use invitation (one an admin created for this agent).
    #[serde(default)]
    pub via_single_use: bool,
    /// Recipient keys registered (coordinate-mediation keylist); absent on records written before
    /// it was counted (then counted once from the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    pub created_at_ms: i64,
}

/// A message waiting for its recipient: the forwarded envelope, untouched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedMessage {
    pub id: String,
    /// The recipient key the sender addressed (base58).
    pub recipient_key: String,
    pub received_at_ms: i64,
    pub msg: Value,
}

/// An out-of-band invitation we issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvitationRecord {
    pub id: String,
    pub multi_use: bool,
    pub used: bool,
    /// Connections made through it.
    #[serde(default)]
    pub connections: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationResponse {
    /// Out-of-band 1.1 invitation URL (`…/didcomm?oob=<base64url(invitation)>`).
    pub invitation_url: String,
    #[schema(value_type = Object)]
    pub invitation: Value,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct InvitationQuery {
    /// `true` for a single-use invitation; default is the reusable public invitation.
    #[serde(default)]
    pub single_use: bool,
    /// Handshake protocols to offer, comma-separated: `didexchange`, `connections`
    /// (default both, DID exchange first).
    #[serde(default)]
    pub handshake: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MediatorStats {
    /// Mediator DID (did:peer:2) and its key (did:key).
    pub did: String,
    pub routing_key: String,
    pub connections: u64,
    pub mediations_granted: u64,
    pub registered_keys: u64,
    pub live_sockets: u64,
    pub open_sockets: u64,
    pub queued_messages: u64,
    pub forwarded_total: u64,
    pub delivered_total: u64,
    pub acknowledged_total: u64,
}
