//! Connection records: stored with an index from the peer's verkey (so an authcrypted message
//! finds its connection), changed by compare-and-swap; and the management API's listing and
//! statistics.

use std::sync::atomic::Ordering;

use super::error::{MediatorError, MediatorResult, OrInternal as _};
use super::model::ks;
use super::model::*;
use super::service::MediatorService;
use crate::store::Cas;

/// Compare-and-swap attempts on a connection record before answering `conflict`.
const UPDATE_TRIES: usize = 16;

impl MediatorService {
    /// Stores a new connection and claims its peer's verkey for it. A key has one connection:
    /// a second connection from the same key is refused, not made the key's connection (which
    /// cut the agent off from its mediated inbox: its pickups read the new, empty queue while
    /// forwards kept filling the old one, and its routing keys stayed the old one's; a request
    /// replayed from a captured envelope did the same). The record is written first and is
    /// unreachable until the claim; a lost claim deletes it.
    pub(super) async fn save_connection(&self, conn: &Connection) -> MediatorResult<()> {
        let bytes = serde_json::to_vec(conn).or_internal()?;
        let store = &self.ctx.store;
        store.put(ks::CONNECTIONS, &conn.id, bytes, None).await?;
        let claim = Some((conn.id.clone().into_bytes(), None));
        if store
            .compare_and_swap(ks::BY_KEY, &conn.their_verkey, None, claim)
            .await?
            != Cas::Swapped
        {
            store.delete(ks::CONNECTIONS, &conn.id).await?;
            return Err(key_taken(self));
        }
        Ok(())
    }

    /// Whether `verkey` already has a connection, to `did`: then a handshake request is that
    /// connection's own, asked again (its answer was lost, or it is a replay), and is answered
    /// again without a new connection or a place of an invitation. A key connected to another
    /// DID is refused before the request spends an invitation ([`Self::save_connection`]
    /// decides; this only spares the invitation).
    pub(super) async fn already_connected(&self, verkey: &str, did: &str) -> MediatorResult<bool> {
        if self.ctx.store.get(ks::BY_KEY, verkey).await?.is_none() {
            return Ok(false);
        }
        match self.connection_by_key(verkey).await {
            Ok(c) if c.their_did == did => Ok(true),
            Ok(_) | Err(MediatorError::NoConnection(_)) => Err(key_taken(self)),
            // (a store outage says so, not "taken")
            Err(e) => Err(e),
        }
    }

    /// The connection whose peer authcrypts with `verkey` (a refusal when none).
    pub(super) async fn connection_by_key(&self, verkey: &str) -> MediatorResult<Connection> {
        let id = self
            .ctx
            .store
            .get(ks::BY_KEY, verkey)
            .await?
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(MediatorError::NoConnection(
                "no connection with the sender's key: connect through our invitation first",
            ))?;
        self.ctx
            .store
            .get_json::<Connection>(ks::CONNECTIONS, &id)
            .await?
            .ok_or(MediatorError::NoConnection(
                "the sender's connection was removed",
            ))
    }

    /// Applies `f` to connection `id` by compare-and-swap; the record as written.
    pub(super) async fn update_connection(
        &self,
        id: &str,
        f: impl Fn(&mut Connection),
    ) -> MediatorResult<Connection> {
        let store = &self.ctx.store;
        for _ in 0..UPDATE_TRIES {
            let Some(raw) = store.get(ks::CONNECTIONS, id).await? else {
                return Err(MediatorError::NoConnection("connection removed"));
            };
            let mut c: Connection = serde_json::from_slice(&raw).or_internal()?;
            f(&mut c);
            let new = serde_json::to_vec(&c).or_internal()?;
            if store
                .compare_and_swap(ks::CONNECTIONS, id, Some(raw), Some((new, None)))
                .await?
                == Cas::Swapped
            {
                return Ok(c);
            }
        }
        Err(MediatorError::Contended(
            "connection record kept changing; retry",
        ))
    }

    /// The first `limit` connections (management API).
    pub async fn connections(&self, limit: usize) -> MediatorResult<Vec<Connection>> {
        Ok(self
            .ctx
            .store
            .scan_prefix(ks::CONNECTIONS, "", limit)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// Connections, sockets, queue and this node's delivery counters (management API).
    pub async fn stats(&self) -> MediatorResult<MediatorStats> {
        let store = &self.ctx.store;
        let conns = store.scan_prefix(ks::CONNECTIONS, "", usize::MAX).await?;
        let granted = conns
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice::<Connection>(v).ok())
            .filter(|c| c.mediation == "granted")
            .count();
        let live = self
            .live
            .lock()
            .map(|l| l.values().filter(|w| w.strong_count() > 0).count())
            .unwrap_or(0);
        let registered_keys = store.count_prefix(ks::ROUTES, "", usize::MAX).await? as u64;
        let open_sockets = self.open_sockets.load(Ordering::Relaxed);
        let queued_messages = store.count_prefix(ks::QUEUE, "", usize::MAX).await? as u64;
        let (forwarded, delivered, acknowledged) = self.counters.totals();
        Ok(MediatorStats {
            did: self.did.clone(),
            routing_key: self.did_key.clone(),
            connections: conns.len() as u64,
            mediations_granted: granted as u64,
            registered_keys,
            live_sockets: live as u64,
            open_sockets,
            queued_messages,
            forwarded_total: forwarded,
            delivered_total: delivered,
            acknowledged_total: acknowledged,
        })
    }
}

fn key_taken(svc: &MediatorService) -> MediatorError {
    svc.refuse(
        "a connection with this key exists: keep using it (out-of-band handshake-reuse), or connect with a new key",
    )
}
