//! Provisional (prepared) transitions whose executor did not decide them in time: settled with
//! the executor, or by the peers' verdict when it cannot be asked.

use super::*;

/// What a peer holds of a provisional transition whose executor cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// Its record is the transition's: the executor committed it.
    Committed,
    /// A version newer than the transition's base, not the transition's: it can no longer apply.
    Replaced,
    /// The transition, prepared and undecided.
    Prepared,
    /// Another transition of the key, prepared and undecided: the executor may have aborted
    /// this one (its abort lost) and run that one since, perhaps answered "done".
    Competing,
    /// Neither: this peer did not prepare it (and now refuses to: it answered without it).
    Without,
}

impl Held {
    pub(super) fn of(
        resp: &GetResp,
        rec: &Versioned,
        base: &crate::cluster::version::Version,
    ) -> Self {
        // An insert is made on "no version" (its executor's majority read found nothing): a
        // tombstone older than it is a delete from before it — one the executor's read missed,
        // which it would have made the insert on anyway — not a competing transition.
        let before_insert = |r: &Versioned| {
            *base == crate::cluster::version::Version::default()
                && r.value.is_none()
                && r.version < rec.version
        };
        match &resp.record {
            Some(r) if r.version == rec.version => return Held::Committed,
            Some(r) if r.version > *base && !before_insert(r) => return Held::Replaced,
            _ => {}
        }
        match &resp.provisional {
            Some(v) if *v == rec.version => Held::Prepared,
            Some(_) => Held::Competing,
            None => Held::Without,
        }
    }
}

/// The peers' verdict on a provisional transition held by this node whose executor cannot be
/// asked (`answers`: the other peers that answered; `nodes`: the nodes a majority is counted
/// against, the executor included). `Some(true)`: commit — a peer holds it committed, or the
/// executor, this node and the peers that prepared it make a majority (the executor may have
/// committed and answered its client: the transition must stand) **and** no competing
/// transition can have been committed: none of the peers holds one, and the executor with the
/// peers not heard from is short of a majority. (An executor can abort a transition — its abort
/// lost on the way here — and then run another on the same base with other peers: committing
/// this one then would undo an answered one.) `Some(false)`: abort — another version replaced
/// its base, or so many nodes answered without it that it cannot have been prepared by a
/// majority (the executor aborted, or will: it answered nobody "done"). `None`: not known yet
/// (too few answers, or a competing transition to be decided first), kept.
pub(crate) fn peer_verdict(answers: &[Held], nodes: usize, majority: usize) -> Option<bool> {
    if answers.contains(&Held::Committed) {
        return Some(true);
    }
    if answers.contains(&Held::Replaced) {
        return Some(false);
    }
    let count = |h: Held| answers.iter().filter(|a| **a == h).count();
    let unheard = nodes.saturating_sub(2 + answers.len());
    // the executor prepares its own transition first; this node holds it
    if 2 + count(Held::Prepared) >= majority {
        let competing_possible = count(Held::Competing) > 0 || 1 + unheard >= majority;
        return if competing_possible { None } else { Some(true) };
    }
    if nodes.saturating_sub(count(Held::Without)) < majority {
        return Some(false);
    }
    None
}

impl Node {
    /// Provisional transitions held here longer than `older_than` whose decision did not arrive
    /// (lost, or the executor died) are settled ([`Node::settle_provisional`]); returns how many.
    pub async fn resolve_provisionals(self: &Arc<Self>, older_than: Duration) -> usize {
        let mut resolved = 0;
        for (ks, key, rec, base) in self.replica.stale_provisionals(older_than) {
            if self.settle_provisional(ks, &key, &rec, &base).await {
                resolved += 1;
            }
        }
        resolved
    }

    /// Settles one provisional transition held here (made on version `base`). The executor is
    /// asked first: still provisional there — pending, kept; otherwise its record decides (its
    /// version is the transition's: committed, written here; anything else: aborted, dropped,
    /// and the executor's record merged). An executor that cannot be asked (dead, gone from
    /// the membership, cut off from this node) no longer holds the key hostage: the other
    /// peers settle it among themselves ([`peer_verdict`]) — committed when a peer holds it
    /// committed or when enough nodes prepared it that the executor may have committed it;
    /// aborted when another version replaced `base` or when too few nodes can hold it for it
    /// ever to have been prepared by a majority; else kept until one of those is known. A
    /// provisional copy is dropped at the record's deadline at the latest. Returns whether it
    /// was settled.
    pub async fn settle_provisional(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
        rec: &Versioned,
        base: &crate::cluster::version::Version,
    ) -> bool {
        let executor = rec.version.node.clone();
        if executor == self.id() {
            // this node's own transitions are decided by the task executing them
            return false;
        }
        let req = KeyReq {
            ks: ks.to_string(),
            key: key.to_string(),
        };
        let members = self.members();
        let at_executor = match members
            .iter()
            .find(|m| m.node_id == executor && m.state == "alive")
        {
            Some(m) => self
                .call::<_, GetResp>(&executor, &m.rpc_addr, PATH_GET, &req)
                .await
                .ok(),
            None => None,
        };
        let commit = match at_executor {
            Some(resp) if resp.provisional.as_ref() == Some(&rec.version) => return false,
            Some(resp) => match resp.record {
                Some(r) if r.version == rec.version => true,
                Some(r) => {
                    self.replica.abort(ks, key, &rec.version).await;
                    if let Err(e) = self.replica.merge(ks, key, &r).await {
                        tracing::warn!(keyspace = ks, error = %e, "could not merge an aborted transition's record");
                    }
                    return true;
                }
                None => false,
            },
            None => {
                // the executor cannot say: what the other peers hold decides
                let peers: Vec<_> = self
                    .live_peers()
                    .into_iter()
                    .filter(|(id, _)| *id != executor)
                    .collect();
                let calls = peers
                    .iter()
                    .map(|(id, addr)| self.call::<_, GetResp>(id, addr, PATH_GET, &req));
                let resps: Vec<GetResp> = futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                let answers: Vec<Held> = resps.iter().map(|r| Held::of(r, rec, base)).collect();
                let executor_counted = members.iter().any(|m| m.node_id == executor);
                let nodes = self.configured_nodes() + usize::from(!executor_counted);
                let verdict = peer_verdict(&answers, nodes, self.majority());
                if verdict == Some(false) {
                    // what replaced `base` (or its newest copy) comes with the abort
                    for r in resps.iter().filter_map(|r| r.record.as_ref()) {
                        if r.version != rec.version {
                            let _ = self.replica.merge(ks, key, r).await;
                        }
                    }
                }
                match verdict {
                    Some(commit) => {
                        tracing::warn!(
                            keyspace = ks,
                            executor = %executor,
                            commit,
                            "a transition whose executor cannot be reached was settled by its peers"
                        );
                        commit
                    }
                    None => return false,
                }
            }
        };
        let outcome = if commit {
            let committed = self.replica.commit(ks, key, rec).await;
            if committed.is_ok() {
                // told to the peers at once, not left to anti-entropy: one that did not prepare
                // it would otherwise miss it, and a later transition of the key made with it
                // (its majority read not reaching this node) could win over it
                let (node, key, rec) = (self.clone(), key.to_string(), rec.clone());
                tokio::spawn(async move { node.decide(ks, &key, &rec, true).await });
            }
            committed
        } else {
            self.replica.abort(ks, key, &rec.version).await;
            Ok(())
        };
        match outcome {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(keyspace = ks, error = %e, "could not resolve a provisional transition");
                false
            }
        }
    }
}
