//! What one node knows about each connection's queue without reading the store: an index of the
//! queued messages (id, size, recipient key, arrival), so status, queue caps and acknowledgement
//! cost O(1) or O(batch) instead of a scan and parse of the whole queue.
//!
//! The store stays the source of truth. An index is built by one scan the first time a connection
//! is asked about and kept current by this node's own enqueues and acknowledgements and by the
//! changes other nodes announce on the bus. Bus events are best effort: once another node is
//! known to change queues, an index older than 10 s is rebuilt on next use, and all are dropped
//! when events were missed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// One queued message, as the index remembers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Bytes of the stored record.
    pub bytes: u64,
    /// The recipient key the sender addressed (base58).
    pub recipient: String,
    pub at_ms: i64,
}

/// A connection's queue. Ids sort by arrival (they start with the arrival time). Kept per
/// recipient key too, so a pickup or a status filtered by one key walks that key's messages, not
/// the whole queue (a queue of up to 10,000 messages under the node's index lock).
#[derive(Debug, Default)]
pub struct ConnQueue {
    entries: BTreeMap<String, Entry>,
    bytes: u64,
    by_recipient: HashMap<String, Recipient>,
}

/// The messages of one recipient key in a queue.
#[derive(Debug, Default)]
struct Recipient {
    ids: BTreeSet<String>,
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
        if let std::collections::btree_map::Entry::Vacant(v) = self.entries.entry(id.clone()) {
            self.bytes += e.bytes;
            let r = self.by_recipient.entry(e.recipient.clone()).or_default();
            r.ids.insert(id);
            r.bytes += e.bytes;
            v.insert(e);
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let e = self.entries.remove(id)?;
        self.bytes -= e.bytes;
        self.unlist(id, &e);
        Some(e)
    }

    /// Takes a removed message out of its recipient's list.
    fn unlist(&mut self, id: &str, e: &Entry) {
        if let Some(r) = self.by_recipient.get_mut(&e.recipient) {
            r.ids.remove(id);
            r.bytes -= e.bytes;
            if r.ids.is_empty() {
                self.by_recipient.remove(&e.recipient);
            }
        }
    }

    /// Forgets messages that arrived before `before_ms` (the store expires them by TTL).
    pub fn expire(&mut self, before_ms: i64) {
        while let Some(e) = self.entries.first_entry() {
            if e.get().at_ms >= before_ms {
                break;
            }
            let (id, gone) = e.remove_entry();
            self.bytes -= gone.bytes;
            self.unlist(&id, &gone);
        }
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// The queued messages, oldest first.
    #[cfg(test)]
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// The queued messages for `recipient` (all of them when `None`), oldest first: with a
    /// recipient, a walk of that key's messages only.
    pub fn entries_for<'a>(
        &'a self,
        recipient: Option<&str>,
    ) -> Box<dyn Iterator<Item = (&'a String, &'a Entry)> + 'a> {
        match recipient {
            None => Box::new(self.entries.iter()),
            Some(r) => Box::new(
                self.by_recipient
                    .get(r)
                    .into_iter()
                    .flat_map(|r| r.ids.iter())
                    .filter_map(|id| self.entries.get_key_value(id)),
            ),
        }
    }

    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What waits, leaving out `leased`: O(|leased|), with a recipient filter or without.
    pub fn summary(&self, leased: &HashSet<&str>, recipient: Option<&str>) -> Summary {
        let (count, bytes) = match recipient {
            None => (self.len(), self.bytes),
            Some(r) => self
                .by_recipient
                .get(r)
                .map_or((0, 0), |r| (r.ids.len() as u64, r.bytes)),
        };
        let mut s = Summary {
            count,
            bytes,
            oldest_ms: None,
        };
        for id in leased {
            match self.entries.get(*id) {
                Some(e) if recipient.is_none_or(|r| r == e.recipient) => {
                    s.count -= 1;
                    s.bytes -= e.bytes;
                }
                _ => {}
            }
        }
        s.oldest_ms = self
            .entries_for(recipient)
            .find(|(id, _)| !leased.contains(id.as_str()))
            .map(|(_, e)| e.at_ms);
        s
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

    /// The per-recipient lists agree with a walk of the whole queue through adds, removes and
    /// expiry, for status and for the order pickups take messages in.
    #[test]
    fn the_per_recipient_lists_agree_with_the_queue() {
        let mut q = ConnQueue::default();
        let keys = ["a", "b", "c"];
        for i in 0..300u64 {
            q.add(
                format!("{i:05}"),
                e(i % 7 + 1, keys[(i % 3) as usize], i as i64),
            );
        }
        for i in (0..300u64).step_by(4) {
            q.apply(Change::Remove(format!("{i:05}")));
        }
        q.expire(50);
        q.add("00100".into(), e(99, "c", 100)); // present already: ignored
        let leased: HashSet<&str> = ["00101", "00102", "00250", "99999"].into_iter().collect();
        for r in keys {
            let walked: Vec<&String> = q
                .entries()
                .filter(|(_, x)| x.recipient == r)
                .map(|(id, _)| id)
                .collect();
            let listed: Vec<&String> = q.entries_for(Some(r)).map(|(id, _)| id).collect();
            assert_eq!(walked, listed, "{r}");
            let mut want = Summary::default();
            for (id, x) in q.entries().filter(|(_, x)| x.recipient == r) {
                if !leased.contains(id.as_str()) {
                    want.count += 1;
                    want.bytes += x.bytes;
                    want.oldest_ms.get_or_insert(x.at_ms);
                }
            }
            assert_eq!(q.summary(&leased, Some(r)), want, "{r}");
        }
        assert_eq!(q.entries_for(Some("nobody")).count(), 0);
        assert_eq!(q.summary(&leased, Some("nobody")), Summary::default());
        // emptied recipients leave no list behind
        for id in q.entries().map(|(id, _)| id.clone()).collect::<Vec<_>>() {
            q.remove(&id);
        }
        assert!(q.by_recipient.is_empty());
        assert_eq!((q.len(), q.bytes()), (0, 0));
    }
}
