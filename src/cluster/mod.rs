//! Cluster mode (feature `cluster`): several nodes behind a plain load balancer act as one.
//!
//! - Membership and failure detection: chitchat (UDP scuttlebutt gossip, phi-accrual). Each node
//!   gossips its RPC address, roles, `caught_up` and `ready` flags — small values only.
//! - Data: [`store::ClusterStore`] implements [`crate::store::Store`] over the local sled store, so
//!   roles need no change. Every record carries a version (hybrid logical clock + node id; last
//!   writer wins; deletes are tombstones). Every node holds every record (full replication); a
//!   write returns after `replication_factor - 1` peers acknowledged it, the other peers get it
//!   asynchronously. Reads are local, with a fall-back to the peers for a record not here yet.
//! - Single-use transitions: compare-and-swap runs at the key's primary, the first live member
//!   in rendezvous-hash order, so two concurrent attempts on different nodes serialise there;
//!   when the primary is down the next one takes over (after pulling the key's newest version).
//! - Anti-entropy: periodically, and before a (re)started node reports ready, each node compares
//!   per-keyspace digests with every live peer and pulls what it is missing.
//! - Events: [`bus::ClusterBus`] delivers every published event on every live node.
//! - Internal RPC: its own HTTP listener, each request signed (HMAC-SHA256, timestamp, nonce) for
//!   the target node's incarnation, each response signed over the request's nonce.
//! - Gossip datagrams are sealed (HMAC-SHA256, timestamp, nonce) under a key derived from the
//!   cluster secret: a process without it cannot join or inject membership state ([`gossip`]).
//!
//! See docs/cluster.md for the consistency model (what holds during a partition and what not).

pub mod auth;
pub mod ring;
pub mod version;

#[cfg(feature = "cluster")]
pub mod api;
#[cfg(feature = "cluster")]
pub mod bus;
#[cfg(feature = "cluster")]
pub mod gossip;
#[cfg(feature = "cluster")]
pub mod node;
#[cfg(feature = "cluster")]
pub mod offline;
#[cfg(feature = "cluster")]
pub mod replica;
#[cfg(feature = "cluster")]
pub mod rpc;
#[cfg(feature = "cluster")]
pub mod store;
#[cfg(feature = "cluster")]
pub mod wire;

/// The cluster's data protocol: how nodes use the records they share, and their RPC. A release
/// that changes either bumps it; a node then **holds back** while a live node of a lower protocol
/// serves: it replicates, but waits before it serves (and, if an older node comes back later, is
/// not ready and refuses its own writes), so a rolling upgrade never mixes the two ways of using
/// one record (docs/cluster.md, "Upgrades"). Nodes of releases before it was gossiped count as 0.
///
/// 1: an access token's use is its offer's `issued_configs` (before, the token record was
/// consumed first); the first release that gossips its protocol.
/// 2: an offer record keeps its credential offer sealed (`sealed_offer`) and its tx_code as an
/// HMAC (`mac`); a protocol-1 node cannot read such a record (no `credential_offer`, no tx_code
/// `hash`), while a protocol-2 node still reads the old form until those offers expire. And
/// every RPC request carries a head signature ([`auth::HEADER_HEAD_SIG`]), checked before its
/// body is read; a request without one is refused unless it names a live member of protocol 1 or
/// older (a rolling upgrade: see `rpc::older_caller`). Both request MACs of a protocol-2 request
/// name the target node ([`auth::sign`]); a protocol-1 peer gets and sends the unbound form. And
/// a c_nonce is a MAC whose use is a marker record (a protocol-1 node knows only stored nonces and
/// would refuse it).
/// 3: both request MACs also name the target's incarnation (its chitchat generation, sent in
/// [`auth::HEADER_GENERATION`]), so a request captured before the target restarted is refused
/// after it (the replay cache is in memory); a node answers a request signed for another of its
/// incarnations with its current generation and the caller retries once. A protocol-2 node
/// cannot check that form: it gets and sends the form bound to the node only, taken only from a
/// live member of protocol 2 (`rpc::older_caller`). And a wallet's members are its record's
/// roster (`WalletRecord::roster`), changed by compare-and-swap of that record, with its pending
/// invitations; the `wallet_members` index is derived from it. A protocol-2 node changes the
/// index alone and rewrites the record without the roster. And in `consistent` mode an insert in
/// [`node::EXCLUSIVE_INSERT_KEYSPACES`] takes the prepare round on "no version" (a protocol-2
/// executor makes it one write at the primary).
/// 4: an issuer's status counter created since carries its index order (`{next, order}`; a
/// protocol-3 node reads only a bare number and could not issue); a used authorization code
/// leaves a mark in its place (a protocol-3 node would take it for a broken grant); a verifier
/// session's encryption key is sealed to its verifier and session (a protocol-3 node cannot open
/// it), and so are its disclosed claims (a protocol-3 node would show none); an offer's claims
/// are sealed (a protocol-3 node cannot read the record); a peer key's connection is an
/// exclusive insert.
/// 5: a tenant's signing key is stored in a record of its own, `{tenant}/{fingerprint}` (a
/// protocol-4 node reads only `{tenant}` and could neither sign for a tenant created since nor
/// start with one); a single-use mediator invitation is stored under the digest of its id (a
/// protocol-4 node would not find it).
/// 6: a wallet account's email is sealed and indexed by its HMAC, and so are the login failure
/// counters (a protocol-5 node finds no account for an email registered since, counts failures
/// apart, and could register that email again); the wallet history and resolved requests are
/// sealed (a protocol-5 node cannot read them); a verifier session's response code is sealed (a
/// protocol-5 node would show none); an issued credential names its holder key by an HMAC (a
/// protocol-5 node would not resend it).
/// 7: a wallet password hash made or renewed since is keyed with a master-key subkey (a
/// protocol-6 node refuses the account's password); a pending wallet invitation's emails, a
/// wallet credential's summary, a verifier session's webhook and success redirect and an
/// issuer's webhook URL are sealed (a protocol-6 node shows no emails, issuers or types, sends
/// no webhook and no redirect). Every RPC answer carries its signed length
/// ([`auth::HEADER_RESP_LEN`]): one without it, from a node that gossips 7 or later, is read to
/// 64 KiB at most.
pub const DATA_PROTOCOL: u32 = 7;

#[cfg(feature = "cluster")]
mod start;
#[cfg(feature = "cluster")]
pub use start::{start, Cluster, StoppedBeforeServing};

/// What the application state holds about the cluster (`AppState::cluster`).
#[cfg(feature = "cluster")]
pub type Handle = std::sync::Arc<Cluster>;

/// Without the `cluster` feature there is never a cluster handle.
#[cfg(not(feature = "cluster"))]
#[derive(Debug)]
pub enum Disabled {}
#[cfg(not(feature = "cluster"))]
pub type Handle = std::sync::Arc<Disabled>;

pub use crate::store::seal::derive_master_key;

/// The key internal RPC is signed with.
pub fn derive_rpc_key(cluster_secret: &str, cluster_id: &str) -> [u8; 32] {
    auth::derive_key(cluster_secret.as_bytes(), cluster_id, "rpc")
}

/// The key every gossip datagram is sealed with ([`gossip`]).
pub fn derive_gossip_key(cluster_secret: &str, cluster_id: &str) -> [u8; 32] {
    auth::derive_key(cluster_secret.as_bytes(), cluster_id, "gossip")
}

#[cfg(test)]
mod tests {
    #[test]
    fn derived_keys_depend_on_secret_cluster_and_purpose() {
        let a = super::derive_master_key("secret-one-0123456789", "idstack");
        assert_eq!(
            a,
            super::derive_master_key("secret-one-0123456789", "idstack")
        );
        assert_ne!(
            a,
            super::derive_master_key("secret-two-0123456789", "idstack")
        );
        assert_ne!(
            a,
            super::derive_master_key("secret-one-0123456789", "other")
        );
        assert_ne!(a, super::derive_rpc_key("secret-one-0123456789", "idstack"));
        assert_ne!(
            super::derive_gossip_key("secret-one-0123456789", "idstack"),
            super::derive_rpc_key("secret-one-0123456789", "idstack")
        );
    }
}
