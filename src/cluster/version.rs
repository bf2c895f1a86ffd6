//! Record versions and the envelope every replicated record is stored in.
//!
//! A version is a hybrid logical clock stamp (wall-clock milliseconds in the high 48 bits, a counter
//! in the low 16) plus the id of the node that wrote it as a tie-breaker, so every two versions
//! of a record compare and every node picks the same winner (last writer wins). Deletes are
//! tombstones that carry a version too, so a node that missed a delete cannot bring the record back.

use std::cmp::Ordering;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A hybrid-logical-clock stamp plus the writer's node id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Version {
    pub hlc: u64,
    pub node: String,
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.hlc
            .cmp(&other.hlc)
            .then_with(|| self.node.cmp(&other.node))
    }
}

/// The node's hybrid logical clock: monotonic, never behind wall time, never behind what it saw.
#[derive(Debug, Default)]
pub struct Hlc {
    last: Mutex<u64>,
}

const COUNTER_BITS: u32 = 16;

impl Hlc {
    /// A new stamp, greater than every stamp this clock issued or observed.
    pub fn tick(&self, now_ms: i64) -> u64 {
        let wall = (u64::try_from(now_ms).unwrap_or(0)) << COUNTER_BITS;
        match self.last.lock() {
            Ok(mut last) => {
                *last = (*last + 1).max(wall);
                *last
            }
            Err(_) => wall,
        }
    }

    /// Moves the clock past a stamp seen from another node.
    pub fn observe(&self, seen: u64) {
        if let Ok(mut last) = self.last.lock() {
            *last = (*last).max(seen);
        }
    }

    /// Milliseconds of wall time a stamp stands for.
    pub fn millis(stamp: u64) -> i64 {
        i64::try_from(stamp >> COUNTER_BITS).unwrap_or(i64::MAX)
    }
}

/// A record as the cluster layer sees it: value or tombstone, version, absolute deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub version: Version,
    /// `None` = tombstone (deleted).
    #[serde(with = "b64opt", default)]
    pub value: Option<Vec<u8>>,
    /// Unix milliseconds after which the record is absent everywhere; `None` = no expiry.
    #[serde(default)]
    pub deadline_ms: Option<i64>,
    /// Unix milliseconds until which this version is remembered as a tombstone once its deadline
    /// has passed: the end of a longer-lived version it replaced. A node that was away holding
    /// that version cannot bring it back when this one expires first (cluster review: an update
    /// with an earlier deadline was undone that way). Not part of the on-disk envelope: a node
    /// keeps it as a fence of its own ([`crate::cluster::replica`]). `None`: the deadline is the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_until_ms: Option<i64>,
}

impl Versioned {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// Envelope on disk: magic, hlc, deadline (0 = none), tombstone flag, node id length + bytes, value.
const MAGIC: &[u8; 4] = b"IDC1";

pub fn encode(v: &Versioned) -> Vec<u8> {
    let node = v.version.node.as_bytes();
    let node_len = node.len().min(255);
    let value = v.value.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(4 + 8 + 8 + 1 + 1 + node_len + value.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&v.version.hlc.to_be_bytes());
    out.extend_from_slice(&v.deadline_ms.unwrap_or(0).to_be_bytes());
    out.push(u8::from(v.value.is_none()));
    out.push(node_len as u8);
    out.extend_from_slice(&node[..node_len]);
    out.extend_from_slice(value);
    out
}

/// Decodes an envelope. A record written before cluster mode was turned on has no envelope: it is
/// read as the value itself with the lowest version, so any replicated write supersedes it.
pub fn decode(raw: &[u8]) -> Versioned {
    fn parse(raw: &[u8]) -> Option<Versioned> {
        let rest = raw.strip_prefix(MAGIC)?;
        let hlc = u64::from_be_bytes(rest.get(0..8)?.try_into().ok()?);
        let deadline = i64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
        let tomb = *rest.get(16)?;
        let node_len = usize::from(*rest.get(17)?);
        let node = rest.get(18..18 + node_len)?;
        let value = rest.get(18 + node_len..)?;
        Some(Versioned {
            version: Version {
                hlc,
                node: String::from_utf8_lossy(node).into_owned(),
            },
            value: (tomb == 0).then(|| value.to_vec()),
            deadline_ms: (deadline != 0).then_some(deadline),
            keep_until_ms: None,
        })
    }
    parse(raw).unwrap_or_else(|| Versioned {
        version: Version::default(),
        value: Some(raw.to_vec()),
        deadline_ms: None,
        keep_until_ms: None,
    })
}

mod b64opt {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v(hlc: u64, node: &str) -> Version {
        Version {
            hlc,
            node: node.into(),
        }
    }

    #[test]
    fn last_writer_wins_by_stamp_then_node_id() {
        assert!(v(2, "a") > v(1, "z"));
        assert!(v(1, "b") > v(1, "a"));
        assert_eq!(v(1, "a").cmp(&v(1, "a")), Ordering::Equal);
        assert!(v(0, "") < v(1, ""));
    }

    #[test]
    fn hlc_is_monotonic_and_jumps_past_observed_stamps() {
        let c = Hlc::default();
        let a = c.tick(1000);
        let b = c.tick(1000); // same millisecond: counter moves
        assert!(b > a);
        let back = c.tick(500); // wall clock went backwards: still moves forward
        assert!(back > b);
        c.observe(c.tick(1000) + 1_000_000);
        let after = c.tick(1000);
        assert!(after > a + 1_000_000);
        assert_eq!(Hlc::millis(Hlc::default().tick(1234)), 1234);
    }

    #[test]
    fn envelope_round_trips_values_tombstones_and_deadlines() {
        for rec in [
            Versioned {
                version: v(77, "node-1"),
                value: Some(b"{\"a\":1}".to_vec()),
                deadline_ms: Some(123),
                keep_until_ms: None,
            },
            Versioned {
                version: v(78, "n2"),
                value: None,
                deadline_ms: None,
                keep_until_ms: None,
            },
            Versioned {
                version: v(79, ""),
                value: Some(Vec::new()),
                deadline_ms: None,
                keep_until_ms: None,
            },
        ] {
            assert_eq!(decode(&encode(&rec)), rec);
        }
    }

    #[test]
    fn data_written_before_cluster_mode_reads_as_lowest_version() {
        let d = decode(b"{\"legacy\":true}");
        assert_eq!(d.version, Version::default());
        assert_eq!(d.value.as_deref(), Some(&b"{\"legacy\":true}"[..]));
        // truncated envelope: also read as a legacy value rather than a panic
        let d = decode(b"IDC1\0\0");
        assert_eq!(d.value.as_deref(), Some(&b"IDC1\0\0"[..]));
    }
}
