//! Bodies of the internal RPC calls (JSON; values base64).

use serde::{Deserialize, Serialize};

use super::version::{Version, Versioned};

pub const PATH_APPLY: &str = "/cluster/v1/apply";
pub const PATH_GET: &str = "/cluster/v1/get";
pub const PATH_CAS: &str = "/cluster/v1/cas";
pub const PATH_DIGEST: &str = "/cluster/v1/digest";
pub const PATH_VERSIONS: &str = "/cluster/v1/versions";
pub const PATH_FETCH: &str = "/cluster/v1/fetch";
pub const PATH_PUBLISH: &str = "/cluster/v1/publish";
pub const PATH_DECIDE: &str = "/cluster/v1/decide";
/// A read at the key's primary once transitions in flight on it are decided
/// ([`crate::cluster::node::Node::read_settled_local`]): [`KeyReq`] → [`GetResp`] (no
/// `provisional`).
pub const PATH_GET_SETTLED: &str = "/cluster/v1/get-settled";

/// Every RPC route: the only paths the public listener leaves to the RPC's own checks when it
/// also serves them (`cluster.rpc_addr` = the HTTP address); any other `/cluster/v1/…` is an
/// ordinary public request, body deadline included.
pub const PATHS: [&str; 9] = [
    PATH_APPLY,
    PATH_GET,
    PATH_GET_SETTLED,
    PATH_CAS,
    PATH_DIGEST,
    PATH_VERSIONS,
    PATH_FETCH,
    PATH_PUBLISH,
    PATH_DECIDE,
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub ks: String,
    pub key: String,
    #[serde(flatten)]
    pub rec: Versioned,
    /// A consistent single-use transition made on this version of the record (its first round):
    /// the peer holds it as provisional until the executor's decision ([`DecideReq`]), and
    /// refuses it while holding a newer version or another provisional transition of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<Version>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyReq {
    pub records: Vec<Record>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyResp {
    pub applied: usize,
    /// Conditional records ([`Record::if_version`]) refused: not an acknowledgement.
    #[serde(default)]
    pub rejected: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyReq {
    pub ks: String,
    pub key: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GetResp {
    pub record: Option<Versioned>,
    /// The version of a provisional (prepared, undecided) transition of the key held there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisional: Option<Version>,
}

/// Second round of a consistent single-use transition: the executor's decision on a record it
/// sent with [`Record::if_version`]. `commit`: written; otherwise the provisional copy is dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecideReq {
    pub ks: String,
    pub key: String,
    #[serde(flatten)]
    pub rec: Versioned,
    pub commit: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CasReq {
    pub ks: String,
    pub key: String,
    #[serde(with = "b64", default)]
    pub expected: Option<Vec<u8>>,
    #[serde(with = "b64", default)]
    pub new: Option<Vec<u8>>,
    /// TTL of the new value in milliseconds.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CasResp {
    pub swapped: bool,
    /// What the primary holds after the call (for the caller to merge).
    pub current: Option<Versioned>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DigestResp {
    pub keyspaces: std::collections::BTreeMap<String, (u64, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VersionsReq {
    pub ks: String,
    /// Page: the keys after this one (in key order). A node of an earlier release reads neither
    /// field and answers the whole keyspace (with no `next`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Page: at most this many entries ([`MAX_VERSIONS_PAGE`] at most). `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Most entries one page of a `versions` listing holds.
pub const MAX_VERSIONS_PAGE: usize = 10_000;

#[derive(Debug, Serialize, Deserialize)]
pub struct VersionsResp {
    pub entries: Vec<(String, Version)>,
    /// The key to ask for the next page after; `None`: the listing is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FetchReq {
    pub ks: String,
    pub keys: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FetchResp {
    pub records: Vec<Record>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PublishReq {
    pub topic: String,
    pub payload: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Empty {}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&B64.encode(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| B64.decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
