//! Compare-and-swap at the key's primary: forwarded there, or executed here — one write and its
//! replication, or, for a keyspace under `cluster.single_use` / `updates` = `consistent`, two
//! rounds under a majority (majority read, prepare, decide) — and the settled read before one.

use super::*;

/// A forwarded consistent compare-and-swap waits this many RPC timeouts for its primary's
/// answer: the executor reads the key from every live peer not suspect and awaits its decision
/// at each of them (one timeout each at most, for a peer stalled since it last answered); its
/// prepare returns once a majority has it.
const FORWARDED_TRANSITION_TIMEOUTS: u32 = 2;

/// How many times an executor makes a consistent transition again after every peer it was sent
/// to answered and refused it (a competing transition, or a newer version, there: membership
/// views that disagree for a moment make two nodes execute transitions of one key), within one
/// RPC timeout of the first attempt, before it answers 503.
const COMPETING_RETRIES: u32 = 5;

/// A consistent transition that was not made: why, and whether it is **held nowhere** — refused
/// by this node, or by every peer it was sent to (each holding a competing transition), so no
/// node ever prepared it and it can never be committed: it may be made again at once.
pub(super) struct Unmade {
    pub(super) error: StoreError,
    pub(super) held_nowhere: bool,
}

impl From<StoreError> for Unmade {
    fn from(error: StoreError) -> Self {
        Unmade {
            error,
            held_nowhere: false,
        }
    }
}

impl Node {
    /// Whether this compare-and-swap updates (replaces or deletes) an existing replicated record
    /// under a majority: a single-use transition with `cluster.single_use = "consistent"`, any
    /// other update with `cluster.updates = "consistent"`, and so does an insert (`expected` =
    /// absent) in [`EXCLUSIVE_INSERT_KEYSPACES`]; never the `system` keyspace's leases and
    /// markers: a lone restarted node must still start (and release its init lease).
    pub(super) fn needs_majority(&self, ks: &str, expected: &Option<Vec<u8>>) -> bool {
        (expected.is_some() || EXCLUSIVE_INSERT_KEYSPACES.contains(&ks))
            && !is_local_keyspace(ks)
            // leases (init, jobs) and markers: taken with an insert and released or renewed with
            // an update, which a node restarted alone must still be able to do
            && ks != crate::store::keyspaces::SYSTEM
            && if SINGLE_USE_KEYSPACES.contains(&ks) {
                self.settings.single_use_consistent
            } else {
                self.settings.updates_consistent
            }
    }

    /// Whether updates of the keyspace's existing records (a delete among them) need a majority.
    pub fn fences_updates(&self, ks: &str) -> bool {
        self.needs_majority(ks, &Some(Vec::new()))
    }

    pub(super) fn no_majority(&self, reached: usize) -> StoreError {
        StoreError::Unavailable(format!(
            "update refused: cluster.single_use / cluster.updates = \"consistent\" needs {} of {} configured nodes, this node reaches {reached}; retry",
            self.majority(),
            self.configured_nodes()
        ))
    }

    /// The executor-side lock of one key's consistent transitions.
    pub(super) async fn transition_lock(
        &self,
        ks: &'static str,
        key: &str,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .transitions
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let k = (ks, key.to_string());
            match locks.get(&k).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    if locks.len() >= 1024 && locks.len() >= locks.capacity() {
                        // the map is full: sweep out keys nobody holds or waits for any more
                        // before it grows; if most are still in use, grow it anyway, so the
                        // next sweep comes only after as many new keys again (amortized O(1)
                        // per key, not a scan per new key while many are held)
                        locks.retain(|_, l| l.strong_count() > 0);
                        if locks.len() > locks.capacity() / 2 {
                            let held = locks.len();
                            locks.reserve(held);
                        }
                    }
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(k, Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }

    /// The key's newest version from a majority of the configured nodes (this one included),
    /// merged locally: every transition a majority acknowledged is seen. Fails (nothing
    /// written) when fewer than a majority answer.
    pub(super) async fn quorum_read(&self, ks: &'static str, key: &str) -> StoreResult<()> {
        let need = self.majority().saturating_sub(1);
        let peers: Vec<_> = self.live_peers();
        if peers.len() < need {
            return Err(self.no_majority(1 + peers.len()));
        }
        let req = KeyReq {
            ks: ks.to_string(),
            key: key.to_string(),
        };
        // every live peer that answers in time, not the first majority: a transition whose
        // decision reached only its executor (the peers' decide calls lost, a prepared copy
        // forgotten by a restart) is seen as long as that executor answers (attacker review).
        // A suspect peer is waited for only while the others are not a majority: one whose
        // RPC hangs (gossip still calling it alive) would cost every transition a timeout.
        let (trusted, suspects) = self.split_by_trust(peers);
        let mut trusted_left = trusted.len();
        let flagged = trusted.iter().map(|p| (p, false));
        let mut calls: FuturesUnordered<_> = flagged
            .chain(suspects.iter().map(|p| (p, true)))
            .map(|((id, addr), suspect)| {
                let req = &req;
                async move {
                    (
                        suspect,
                        self.call::<_, GetResp>(id, addr, PATH_GET, req).await,
                    )
                }
            })
            .collect();
        let mut newest: Option<Versioned> = None;
        let mut answered = 0usize;
        // A peer holding a transition undecided: its executor (perhaps a suspect, whose decision
        // to that peer is still on its way) may have committed it and answered its client —
        // then every peer is waited for, as before suspects were skipped (attacker review).
        let mut undecided = false;
        while let Some((suspect, r)) = calls.next().await {
            if !suspect {
                trusted_left -= 1;
            }
            if let Ok(r) = r {
                answered += 1;
                undecided |= r.provisional.is_some();
                if let Some(rec) = r.record {
                    if newest.as_ref().is_none_or(|n| rec.version > n.version) {
                        newest = Some(rec);
                    }
                }
            }
            if trusted_left == 0 && answered >= need && !undecided {
                break;
            }
        }
        if answered < need {
            return Err(self.no_majority(1 + answered));
        }
        if let Some(rec) = &newest {
            self.replica.merge(ks, key, rec).await?;
        }
        Ok(())
    }

    /// Sends the executor's decision on a prepared transition to every live peer (the ones that
    /// prepared it among them), waiting for the answers of those not suspect (bounded by the RPC
    /// timeout); a suspect gets it in the background. A peer the decision does not reach asks
    /// this node later ([`Node::resolve_provisionals`]); until then a majority read that meets
    /// its undecided copy waits for every peer, this one included ([`Node::quorum_read`]).
    pub(super) async fn decide(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
        rec: &Versioned,
        commit: bool,
    ) {
        let req = DecideReq {
            ks: ks.to_string(),
            key: key.to_string(),
            rec: rec.clone(),
            commit,
        };
        self.tell_live_peers(PATH_DECIDE, Arc::new(req)).await;
    }

    /// Compare-and-swap executed at the key's current primary (forwarded if that is another node).
    pub async fn cas(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> StoreResult<Cas> {
        let order = self.primary_order(ks, key);
        // a consistent transition's executor may take its own RPC rounds (majority read, a
        // wait for another transition of the key, prepare, decide) before it answers: a
        // forwarder that gave up after one RPC timeout would suspect a live primary and report
        // the outcome unknown for a transition that is still being made
        let consistent = self.needs_majority(ks, &expected);
        let timeout = if consistent {
            self.settings.rpc_timeout * FORWARDED_TRANSITION_TIMEOUTS
        } else {
            self.settings.rpc_timeout
        };
        let mut last_err = None;
        for (id, addr) in order {
            if id == self.id() {
                break;
            }
            if self.is_suspect(&id) {
                continue;
            }
            self.metrics.cas_forwarded.inc();
            let req = CasReq {
                ks: ks.to_string(),
                key: key.to_string(),
                expected: expected.clone(),
                new: new.as_ref().map(|(v, _)| v.clone()),
                ttl_ms: new
                    .as_ref()
                    .and_then(|(_, t)| t.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))),
            };
            match self
                .call_within::<_, CasResp>(&id, &addr, PATH_CAS, &req, timeout)
                .await
            {
                Ok(resp) => {
                    if let Some(cur) = &resp.current {
                        self.replica.merge(ks, key, cur).await?;
                    }
                    if !resp.swapped && last_err.is_some() {
                        // an earlier candidate may have executed this very call and not answered
                        // in time: the conflict may be our own transition. Unknown outcome: 503.
                        // (node ids and peers' errors go to the log, not to clients)
                        tracing::warn!(lost = %last_err.unwrap_or_default(), "compare-and-swap: the primary did not answer and the next one reports a conflict");
                        return Err(StoreError::Unavailable(
                            "compare-and-swap: the primary did not answer and the next one reports a conflict; the outcome is unknown, retry".into(),
                        ));
                    }
                    return Ok(if resp.swapped {
                        Cas::Swapped
                    } else {
                        Cas::Conflict(resp.current.and_then(|c| c.value))
                    });
                }
                Err(RpcError::Unsent(e)) => {
                    // the primary never got it: the next in line decides, and its answer holds
                    tracing::warn!(primary = %id, error = %e, "primary unreachable; next replica takes over");
                }
                Err(RpcError::Transport(e)) if consistent => {
                    // the primary got it and may still be deciding it: a transition of our own
                    // here would compete with it (and outlast the balancer's read timeout)
                    tracing::warn!(primary = %id, error = %e, "compare-and-swap: the primary did not answer");
                    return Err(StoreError::Unavailable(
                        "compare-and-swap: the primary did not answer; the outcome is unknown, retry"
                            .into(),
                    ));
                }
                Err(RpcError::Transport(e)) => {
                    tracing::warn!(primary = %id, error = %e, "primary did not answer; next replica takes over");
                    last_err = Some(e);
                }
                Err(RpcError::Remote(e)) => {
                    tracing::warn!(primary = %id, error = %e, lost = ?last_err, "compare-and-swap failed at the primary");
                    return Err(StoreError::Unavailable(match last_err {
                        // the earlier candidate may have executed it: whatever this one says
                        Some(_) => "compare-and-swap: the primary did not answer and the next one failed; the outcome is unknown, retry".into(),
                        None => "compare-and-swap failed at the key's primary; retry".into(),
                    }));
                }
            }
        }
        // this node is next in line (or every node ranked above it was suspect)
        let got = self.cas_local(ks, key, expected, new).await.map(|(c, _)| c);
        match (got, last_err) {
            (Ok(Cas::Conflict(_)), Some(e)) => {
                tracing::warn!(lost = %e, "compare-and-swap: the primary did not answer and this node reports a conflict");
                Err(StoreError::Unavailable(
                    "compare-and-swap: the primary did not answer and this node reports a conflict; the outcome is unknown, retry".into(),
                ))
            }
            // (not consistent: that returned at the lost forward) e.g. a write no replica
            // acknowledged here, after the primary may have made it
            (Err(StoreError::Unavailable(why)), Some(e)) => {
                tracing::warn!(lost = %e, why = %why, "compare-and-swap: the primary did not answer and this node could not decide");
                Err(StoreError::Unavailable(
                    "compare-and-swap: the primary did not answer and this node could not decide; the outcome is unknown, retry".into(),
                ))
            }
            (got, _) => got,
        }
    }

    /// The key's record as its primary holds it once transitions in flight on it are decided
    /// ([`crate::store::Store::get_settled`]): read at the first candidate of
    /// [`Node::primary_order`] that answers (suspect ones skipped, the next in line when one
    /// cannot be reached, this node when it is next in line), which settles the key first as a
    /// compare-and-swap there would ([`Node::read_settled_local`]). The record is merged here.
    /// `None`: no record at all there (a tombstone comes back as one).
    pub async fn get_settled(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
    ) -> StoreResult<Option<Versioned>> {
        for (id, addr) in self.primary_order(ks, key) {
            if id == self.id() {
                break;
            }
            if self.is_suspect(&id) {
                continue;
            }
            let req = KeyReq {
                ks: ks.to_string(),
                key: key.to_string(),
            };
            match self
                .call::<_, GetResp>(&id, &addr, PATH_GET_SETTLED, &req)
                .await
            {
                Ok(resp) => {
                    if let Some(rec) = &resp.record {
                        self.replica.merge(ks, key, rec).await?;
                    }
                    return Ok(resp.record);
                }
                // a read has no outcome to lose: the next in line answers
                Err(RpcError::Transport(e) | RpcError::Unsent(e)) => {
                    tracing::warn!(primary = %id, error = %e, "primary unreachable; next replica answers the read");
                }
                Err(RpcError::Remote(e)) => {
                    tracing::warn!(primary = %id, error = %e, "read failed at the primary");
                    return Err(StoreError::Unavailable(
                        "read failed at the key's primary; retry".into(),
                    ));
                }
            }
        }
        // this node is next in line (or every node ranked above it was suspect)
        self.read_settled_local(ks, key).await
    }

    /// [`Node::get_settled`] executed here, as the key's primary: the key is brought to where a
    /// compare-and-swap executed here would compare — with `cluster.single_use` / `updates`
    /// consistent for the keyspace, this node's own transitions of the key decided (their
    /// per-key lock), the newest version a majority holds read, and a transition another
    /// executor prepared here waited for or settled; otherwise, a node standing in for the
    /// primary or not caught up pulls the key from the peers first, as does one that holds no
    /// record of it at all — then its record is returned. A transition still undecided after
    /// the wait, or no majority: 503 (its outcome is not known).
    pub async fn read_settled_local(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
    ) -> StoreResult<Option<Versioned>> {
        self.check_standing();
        if self.fences_updates(ks) {
            if self.live_count() < self.majority() {
                return Err(self.no_majority(self.live_count()));
            }
            let _serial = self.transition_lock(ks, key).await;
            self.quorum_read(ks, key).await?;
            if !self.await_provisional(ks, key).await {
                return Err(StoreError::Unavailable(
                    "read refused: a transition of this key is still being decided; retry".into(),
                ));
            }
            return self.replica.read(ks, key).await;
        }
        let pulled = self.standing_in(ks, key);
        if pulled {
            self.fetch_from_peers(ks, key).await?;
        }
        match self.replica.read(ks, key).await? {
            Some(rec) => Ok(Some(rec)),
            // written while this node was cut off, not pulled yet: the peers' copy
            None if !pulled => self.fetch_from_peers(ks, key).await,
            None => Ok(None),
        }
    }

    /// Executes a CAS here, replicates it, and returns the outcome and the record now held.
    pub async fn cas_local(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> StoreResult<(Cas, Option<Versioned>)> {
        self.check_standing();
        if self.needs_majority(ks, &expected) {
            // consistent: refused (nothing written) unless a majority answers, and compared
            // against the newest version a majority holds; transitions of one key executed here
            // queue up behind each other's decision
            if self.live_count() < self.majority() {
                return Err(self.no_majority(self.live_count()));
            }
            // made again only within one RPC timeout of the first attempt: with the attempts'
            // own rounds that stays inside the forwarder's wait and the balancer's read timeout
            let (started, mut retries) = (Instant::now(), 0);
            loop {
                let serial = self.transition_lock(ks, key).await;
                self.quorum_read(ks, key).await?;
                match self
                    .cas_consistent(ks, key, expected.clone(), new.clone(), serial)
                    .await
                {
                    // a competing transition (another executor) holds the key: decided within a
                    // round trip or two; then this one is compared again, on what it left
                    Err(u)
                        if u.held_nowhere
                            && retries < COMPETING_RETRIES
                            && started.elapsed() < self.settings.rpc_timeout =>
                    {
                        retries += 1;
                        self.metrics.competing_retries.inc();
                        let jitter = 10 + rand::random::<u64>() % 40;
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                    }
                    other => return other.map_err(|u| u.error),
                }
            }
        }
        if self.standing_in(ks, key) {
            self.fetch_from_peers(ks, key).await?;
        }
        if expected.is_some() && self.replica.read(ks, key).await?.is_none() {
            // an update of a record this primary does not hold at all (written while it was
            // cut off, not pulled yet): the peers' copy, not a conflict
            self.fetch_from_peers(ks, key).await?;
        }
        let rec = {
            let _g = self.replica.lock([(ks, key)]).await;
            let cur = self.replica.read(ks, key).await?;
            let cur_value = cur.as_ref().and_then(|c| c.value.clone());
            if cur_value != expected {
                return Ok((Cas::Conflict(cur_value), cur));
            }
            let rec = self.new_record(ks, key, new);
            self.replica.write_locked(ks, key, &rec).await?;
            rec
        };
        self.replicate(vec![Record {
            ks: ks.to_string(),
            key: key.to_string(),
            rec: rec.clone(),
            if_version: None,
        }])
        .await?;
        Ok((Cas::Swapped, Some(rec)))
    }

    pub(super) fn new_record(
        &self,
        ks: &str,
        key: &str,
        new: Option<(Vec<u8>, Option<Duration>)>,
    ) -> Versioned {
        match new {
            Some((v, ttl)) => self.replica.record_of(ks, key, v, ttl),
            None => self.replica.tombstone_of(ks, key),
        }
    }

    /// Waits (briefly) for a transition of this key still being decided here — by another
    /// executor that prepared it here; this node's own are waited for by taking
    /// [`Node::transition_lock`] first — to be decided: it usually commits within milliseconds;
    /// one held past the RPC timeout is settled ([`Node::settle_provisional`]: its decision was
    /// lost, or its executor died). Returns whether none is left (false: still undecided after
    /// twice the RPC timeout).
    pub(super) async fn await_provisional(self: &Arc<Self>, ks: &'static str, key: &str) -> bool {
        let wait_until = Instant::now() + self.settings.rpc_timeout * 2;
        let mut settled = false;
        while let Some((rec, base, since)) = self.replica.provisional_entry(ks, key) {
            if Instant::now() >= wait_until {
                return false;
            }
            if !settled && since.elapsed() >= self.settings.rpc_timeout {
                settled = true;
                if self.settle_provisional(ks, key, &rec, &base).await {
                    continue;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// A consistent single-use transition, in two rounds (after the majority read): compared
    /// here and **prepared** — held as provisional, not written — here and on the peers
    /// ([`Replica::prepare`]); once a majority (this node included) prepared it, committed here
    /// and on the peers; otherwise aborted everywhere and answered 503. So a transition that
    /// fails leaves nothing behind on the peers that accepted it (no code burnt without a token,
    /// no refused session result winning later), and of two competing transitions made on one
    /// version at most one is prepared by a majority. The rounds run in a task of their own, so
    /// a caller that goes away (a client disconnect) cannot leave a transition undecided.
    pub(super) async fn cas_consistent(
        self: &Arc<Self>,
        ks: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<Duration>)>,
        serial: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<(Cas, Option<Versioned>), Unmade> {
        // false: another executor's transition of the key is still undecided here after the
        // wait (its executor cannot be asked): making this one again would only wait again
        let none_left = self.await_provisional(ks, key).await;
        let rec = {
            let _g = self.replica.lock([(ks, key)]).await;
            let cur = self.replica.read(ks, key).await?;
            let cur_value = cur.as_ref().and_then(|c| c.value.clone());
            if cur_value != expected {
                return Ok((Cas::Conflict(cur_value), cur));
            }
            // An insert where a majority holds nothing: made on "no version", the least of all,
            // so a peer holding any record of the key (or another provisional insert) refuses it.
            let base = cur.map(|c| c.version).unwrap_or_default();
            let rec = self.new_record(ks, key, new);
            if !self.replica.prepare_locked(ks, key, &rec, &base).await? {
                return Err(Unmade {
                    error: StoreError::Unavailable(
                        "transition refused: another transition of this key is being decided; retry"
                            .into(),
                    ),
                    held_nowhere: none_left,
                });
            }
            (rec, base)
        };
        let node = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            // held until the decision, also when the client has gone
            let _serial = serial;
            let (rec, base) = rec;
            let prepared = node
                .replicate_acked(
                    vec![Record {
                        ks: ks.to_string(),
                        key: key.clone(),
                        rec: rec.clone(),
                        if_version: Some(base),
                    }],
                    node.majority().saturating_sub(1),
                )
                .await;
            match prepared {
                Ok(()) => {
                    // the decision point: written here first (a peer that asks this node finds
                    // it), then on the peers
                    if let Err(e) = node.replica.commit(ks, &key, &rec).await {
                        node.replica.abort(ks, &key, &rec.version).await;
                        node.decide(ks, &key, &rec, false).await;
                        return Err(e.into());
                    }
                    node.decide(ks, &key, &rec, true).await;
                    Ok((Cas::Swapped, Some(rec)))
                }
                Err(u) => {
                    node.replica.abort(ks, &key, &rec.version).await;
                    node.decide(ks, &key, &rec, false).await;
                    tracing::warn!(
                        keyspace = ks,
                        error = %u.error,
                        held_nowhere = u.held_nowhere,
                        "single-use transition not prepared by a majority: aborted"
                    );
                    Err(u)
                }
            }
        })
        .await
        .map_err(|e| StoreError::Backend(format!("single-use transition task: {e}")))?
    }
}
