//! Replication of writes to the key's replicas, reads pulled from peers, and anti-entropy.

use super::*;

/// Entries asked for per page of a peer's `versions` listing: far inside one RPC timeout.
const VERSIONS_PAGE: usize = 5_000;

impl Node {
    pub(super) fn replication_factor(&self, live: usize) -> usize {
        match self.settings.replication_factor {
            0 => live.min(3),
            n => n.min(live),
        }
    }

    /// Sends records to every live peer; returns once `replication_factor - 1` of them
    /// acknowledged, or fewer when some are suspect: every peer not suspect, at least one (the
    /// others finish in the background, a suspect's within [`MAX_BACKGROUND_TO_SUSPECT`]). Fails
    /// when peers exist but none acknowledged: the write is then only on this node.
    pub async fn replicate(self: &Arc<Self>, records: Vec<Record>) -> StoreResult<()> {
        self.replicate_acked(records, 0).await.map_err(|u| u.error)
    }

    /// [`Node::replicate`], failing unless at least `min_acks` peers acknowledged; with
    /// `min_acks` > 0 (a prepare) it returns as soon as that many did, not `replication_factor - 1`.
    pub(super) async fn replicate_acked(
        self: &Arc<Self>,
        records: Vec<Record>,
        min_acks: usize,
    ) -> Result<(), Unmade> {
        let records: Vec<Record> = records
            .into_iter()
            .filter(|r| !is_local_keyspace(&r.ks))
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        let peers = self.live_peers();
        if peers.len() < min_acks {
            return Err(self.no_majority(1 + peers.len()).into());
        }
        if peers.is_empty() {
            return Ok(());
        }
        // a plain write waits for its replicas; a prepare for a majority (the others get it,
        // or the decision, in the background: a stalled peer does not hold the transition up)
        // (a plain write does not wait for suspect peers beyond one acknowledgement: they get it
        // in the background like any replica past the factor)
        let live = peers.len();
        let (trusted, suspects) = self.split_by_trust(peers);
        let need = if min_acks > 0 {
            min_acks
        } else {
            self.replication_factor(live + 1)
                .saturating_sub(1)
                .min(trusted.len().max(1))
        };
        // a suspect's call is capped only when the others can give what this waits for
        let capped = trusted.len() >= need;
        let started = Instant::now();
        let req = Arc::new(ApplyReq { records });
        let suspects = suspects.into_iter().filter_map(|p| match capped {
            true => self.suspect_slot(&p.0).map(|slot| (p, Some(slot))),
            false => Some((p, None)),
        });
        let mut pending: FuturesUnordered<_> = trusted
            .into_iter()
            .map(|p| (p, None))
            .chain(suspects)
            .map(|((id, addr), slot)| {
                let req = req.clone();
                let node = self.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    // Some(true): acknowledged; Some(false): answered but refused a conditional
                    // record (a competing transition); None: no answer
                    node.call::<_, ApplyResp>(&id, &addr, PATH_APPLY, &*req)
                        .await
                        .ok()
                        .map(|r| r.rejected == 0)
                })
            })
            .collect();
        let mut acks = 0usize;
        let mut answered = 0usize;
        let mut refused = 0usize;
        while acks < need {
            match pending.next().await {
                Some(Ok(Some(true))) => acks += 1,
                Some(Ok(Some(false))) => refused += 1,
                Some(_) => answered += 1,
                None => break,
            }
        }
        // the rest keep running detached (a dropped JoinHandle does not cancel its task)
        drop(pending);
        self.metrics
            .replication_seconds
            .observe(started.elapsed().as_secs_f64());
        if refused > 0 && acks < min_acks {
            return Err(Unmade {
                error: StoreError::Unavailable(format!(
                    "single-use transition refused by {refused} node(s) holding a competing one; retry"
                )),
                // every call answered, none with an acknowledgement (the loop runs them all out
                // unless enough acknowledged)
                held_nowhere: acks == 0 && answered == 0,
            });
        }
        if need > 0 && acks == 0 {
            self.set_write_block(Some(format!(
                "writes cannot reach their replicas: a write was acknowledged by none of the live peers ({answered} failed)"
            )));
            return Err(StoreError::Unavailable(format!(
                "write not acknowledged by any other live node ({answered} failed); retry"
            ))
            .into());
        }
        self.set_write_block(None);
        if acks < min_acks {
            return Err(self.no_majority(1 + acks).into());
        }
        Ok(())
    }

    /// Newest version of a key among the live peers (merged locally), for reads this node misses.
    pub async fn fetch_from_peers(
        &self,
        ks: &'static str,
        key: &str,
    ) -> StoreResult<Option<Versioned>> {
        // the peers that answer; every live one when all are suspect (suspicion lasts until a
        // call succeeds: this one may be it)
        let (mut peers, suspects) = self.split_by_trust(self.live_peers());
        if peers.is_empty() {
            peers = suspects;
        }
        if peers.is_empty() {
            return Ok(None);
        }
        let req = KeyReq {
            ks: ks.to_string(),
            key: key.to_string(),
        };
        let calls = peers
            .iter()
            .map(|(id, addr)| self.call::<_, GetResp>(id, addr, PATH_GET, &req));
        let mut newest: Option<Versioned> = None;
        for r in futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
        {
            if let Some(rec) = r.record {
                if newest.as_ref().is_none_or(|n| rec.version > n.version) {
                    newest = Some(rec);
                }
            }
        }
        if let Some(rec) = &newest {
            self.replica.merge(ks, key, rec).await?;
        }
        Ok(newest)
    }

    /// Pulls from one peer what this node misses or holds older; returns records repaired. A
    /// keyspace that fails is passed over for the next (a peer that cannot be reached at all ends
    /// the round), and the round fails once all were tried
    /// (cluster review: the first keyspace whose listing outgrew the RPC timeout ended every
    /// round there, and no keyspace after it in name order was ever repaired from that peer).
    pub async fn sync_with(&self, id: &str, addr: &str) -> Result<u64, RpcError> {
        let theirs: DigestResp = self.call(id, addr, PATH_DIGEST, &Empty {}).await?;
        let mine = self.replica.digest();
        let mut repaired = 0u64;
        let mut failed = None;
        for (ks, d) in theirs.keyspaces {
            if mine.get(&ks) == Some(&d) || is_local_keyspace(&ks) {
                continue;
            }
            let Ok(ks_static) = intern(&ks) else { continue };
            match self.sync_keyspace(id, addr, &ks, ks_static).await {
                Ok(n) => repaired += n,
                // the peer gone (no connection could be made): the rest of the round would cost
                // a connect timeout per keyspace, so it ends here. Not on a timeout: one slow
                // keyspace (a fetch of large records) would keep every keyspace after it from
                // being repaired (review)
                Err(e @ RpcError::Unsent(_)) => {
                    failed = Some(e);
                    break;
                }
                Err(e) => {
                    tracing::warn!(peer = id, keyspace = %ks, error = %e, "anti-entropy could not repair a keyspace from this peer");
                    failed = Some(e);
                }
            }
        }
        self.metrics.repairs.inc_by(repaired);
        if repaired > 0 {
            tracing::info!(peer = id, repaired, "anti-entropy repaired records");
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let now = self.now_ms();
        if let Ok(mut m) = self.sync.lock() {
            m.insert(
                id.to_string(),
                PeerSync {
                    last_sync_ms: Some(now),
                    last_repaired: repaired,
                },
            );
        }
        Ok(repaired)
    }

    /// [`Node::sync_with`] of one keyspace whose digest differs: records repaired.
    async fn sync_keyspace(
        &self,
        id: &str,
        addr: &str,
        ks: &str,
        ks_static: &'static str,
    ) -> Result<u64, RpcError> {
        let mut repaired = 0u64;
        let mut after = None;
        loop {
            let v: VersionsResp = self
                .call(
                    id,
                    addr,
                    PATH_VERSIONS,
                    &VersionsReq {
                        ks: ks.to_string(),
                        after: after.take(),
                        limit: Some(VERSIONS_PAGE),
                    },
                )
                .await?;
            let next = v.next.clone();
            repaired += self.repair_page(id, addr, ks, ks_static, v).await?;
            match next {
                Some(n) => after = Some(n),
                None => return Ok(repaired),
            }
        }
    }

    /// Pulls the entries of one page of a peer's `versions` listing that this node misses or
    /// holds older: records repaired.
    async fn repair_page(
        &self,
        id: &str,
        addr: &str,
        ks: &str,
        ks_static: &'static str,
        v: VersionsResp,
    ) -> Result<u64, RpcError> {
        let mut repaired = 0u64;
        let want: Vec<String> = v
            .entries
            .into_iter()
            .filter(|(k, ver)| {
                // key records: any other version, so the first-created one reaches the
                // node that holds a later one (see `replica::replaces`)
                self.replica
                    .version_of(ks, k)
                    .is_none_or(|mine| *ver > mine || (is_insert_only(ks, k) && *ver != mine))
            })
            .map(|(k, _)| k)
            .collect();
        for chunk in want.chunks(256) {
            let f: FetchResp = self
                .call(
                    id,
                    addr,
                    PATH_FETCH,
                    &FetchReq {
                        ks: ks.to_string(),
                        keys: chunk.to_vec(),
                    },
                )
                .await?;
            for r in f.records {
                if r.ks != ks {
                    continue;
                }
                if self
                    .replica
                    .merge(ks_static, &r.key, &r.rec)
                    .await
                    .map_err(|e| RpcError::Remote(e.to_string()))?
                {
                    repaired += 1;
                }
            }
        }
        Ok(repaired)
    }

    /// One anti-entropy round with every live peer; true when every peer answered.
    pub async fn anti_entropy_round(&self) -> bool {
        let mut all_ok = true;
        for (id, addr) in self.live_peers() {
            if let Err(e) = self.sync_with(&id, &addr).await {
                tracing::debug!(peer = %id, error = %e, "anti-entropy round failed");
                all_ok = false;
            }
        }
        all_ok
    }

    /// An event to every live peer (best effort, [`Node::tell_live_peers`]: a peer whose RPC
    /// hung while its gossip went on added an RPC timeout to every mediator forward and
    /// acknowledgement, and held a connection per message; cluster review).
    pub async fn broadcast(self: &Arc<Self>, topic: &str, payload: &str) {
        let req = PublishReq {
            topic: topic.to_string(),
            payload: payload.to_string(),
        };
        self.tell_live_peers(PATH_PUBLISH, Arc::new(req)).await;
    }
}
