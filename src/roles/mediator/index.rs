//! What one node knows about each connection's queue without reading the store: an index of the
//! queued messages (id, size, recipient key, arrival), so status, queue caps and acknowledgement
//! cost O(1) or O(batch) instead of a scan and parse of the whole queue.
//!
//! The store stays the source of truth. An index is built by one scan the first time a connection
//! is asked about and kept current by this node's own enqueues and acknowledgements and by the
//! changes other nodes announce on the bus. Bus events are best effort: once another node is
//! known to change queues, an index older than 10 s is rebuilt on next use, and all are dropped
//! when events were missed.

use std::collections::{BTreeMap, HashSet};

/// One queued message, as the index remembers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Bytes of the stored record.
    pub bytes: u64,
    /// The recipient key the sender addressed (base58).
    pub recipient: String,
    pub at_ms: i64,
}

/// A connection's queue. Ids sort by arrival (they start with the arrival time).
#[derive(Debug, Default)]
pub struct ConnQueue {
    entries: BTreeMap<String, Entry>,
    bytes: u64,
}

/// `status` numbers: what waits, not counting what is handed out and not yet acknowledged.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub count: u64,
    pub bytes: u64,
    pub oldest_ms: Option<i64>,
}

/// A change to apply to an index; recorded while the index is being built from the store, and
/// carried on the bus to the other nodes' indexes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Add(String, Entry),
    Remove(String),
}

impl ConnQueue {
    pub fn from_entries(rows: impl IntoIterator<Item = (String, Entry)>) -> Self {
        let mut q = Self::default();
        for (id, e) in rows {
            q.add(id, e);
        }
        q
    }

    pub fn apply(&mut self, c: Change) {
        match c {
            Change::Add(id, e) => self.add(id, e),
            Change::Remove(id) => {
                self.remove(&id);
            }
        }
    }

    /// Adds `id` unless present (adding twice is harmless: a scan and a local enqueue may both see it).
    pub fn add(&mut self, id: String, e: Entry) {
        if let std::collections::btree_map::Entry::Vacant(v) = self.entries.entry(id) {
            self.bytes += e.bytes;
            v.insert(e);
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let e = self.entries.remove(id)?;
        self.bytes -= e.bytes;
        Some(e)
    }

    /// Forgets messages that arrived before `before_ms` (the store expires them by TTL).
    pub fn expire(&mut self, before_ms: i64) {
        while let Some(e) = self.entries.first_entry() {
            if e.get().at_ms >= before_ms {
                break;
            }
            let (_, gone) = e.remove_entry();
            self.bytes -= gone.bytes;
        }
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// The queued messages, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What waits, leaving out `leased`. Without a recipient filter it costs O(|leased|); with one,
    /// a walk over the index in memory (no store reads).
    pub fn summary(&self, leased: &HashSet<&str>, recipient: Option<&str>) -> Summary {
        match recipient {
            None => {
                let mut s = Summary {
                    count: self.len(),
                    bytes: self.bytes,
                    oldest_ms: None,
                };
                for id in leased {
                    if let Some(e) = self.entries.get(*id) {
                        s.count -= 1;
                        s.bytes -= e.bytes;
                    }
                }
                s.oldest_ms = self
                    .entries
                    .iter()
                    .find(|(id, _)| !leased.contains(id.as_str()))
                    .map(|(_, e)| e.at_ms);
                s
            }
            Some(r) => {
                let mut s = Summary::default();
                for (id, e) in &self.entries {
                    if e.recipient != r || leased.contains(id.as_str()) {
                        continue;
                    }
                    s.count += 1;
                    s.bytes += e.bytes;
                    s.oldest_ms.get_or_insert(e.at_ms);
                }
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(bytes: u64, r: &str, at: i64) -> Entry {
        Entry {
            bytes,
            recipient: r.into(),
            at_ms: at,
        }
    }

    #[test]
    fn counts_bytes_and_oldest_leave_out_leased_messages() {
        let mut q = ConnQueue::from_entries([
            ("001".to_string(), e(10, "a", 1)),
            ("002".to_string(), e(20, "b", 2)),
            ("003".to_string(), e(30, "a", 3)),
        ]);
        q.add("002".into(), e(20, "b", 2)); // seen twice: counted once
        assert_eq!((q.len(), q.bytes()), (3, 60));
        let leased: HashSet<&str> = ["001", "999"].into_iter().collect();
        assert_eq!(
            q.summary(&leased, None),
            Summary {
                count: 2,
                bytes: 50,
                oldest_ms: Some(2)
            }
        );
        assert_eq!(
            q.summary(&leased, Some("a")),
            Summary {
                count: 1,
                bytes: 30,
                oldest_ms: Some(3)
            }
        );
        q.apply(Change::Remove("002".into()));
        q.apply(Change::Remove("002".into()));
        assert_eq!((q.len(), q.bytes()), (2, 40));
        q.expire(3);
        assert_eq!((q.len(), q.bytes()), (1, 30));
        q.apply(Change::Add("004".into(), e(5, "a", 4)));
        assert_eq!(q.summary(&HashSet::new(), None).count, 2);
    }
}
