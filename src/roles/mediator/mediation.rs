//! Coordinate-mediation 1.0 (RFC 0211): a connection asks for mediation (granted, or denied when
//! `grant_requires_single_use_invitation` and it came through the public invitation), then
//! registers and removes the recipient keys it wants forwards for. A key belongs to one connection
//! (claimed by compare-and-swap); the connection record counts its keys, so the cap
//! (`max_keys_per_connection`) is checked in O(1).

use serde_json::{json, Value};

use super::error::MediatorResult;
use super::model::ks;
use super::model::Connection;
use super::protocols::ConnMessage;
use super::service::{endpoints, MediatorService};
use crate::didcomm::peer;
use crate::store::Cas;

/// Most keys a `keylist-query` reads.
const KEYLIST_LIMIT: usize = 10_000;

/// Updates one `keylist-update` may carry (wallets send one per key they add or remove).
const MAX_KEYLIST_UPDATES: usize = 100;

/// A keylist update's places: reserved and not yet used (`room`), and keys removed.
#[derive(Default)]
struct Tally {
    room: u64,
    removed: u64,
}

impl MediatorService {
    /// `mediate-request`: a `mediate-grant` with our endpoint and routing key, or a
    /// `mediate-deny`.
    pub(super) async fn mediate_request(&self, m: &ConnMessage<'_>) -> MediatorResult<Value> {
        if self.cfg.grant_requires_single_use_invitation && !m.conn.via_single_use {
            return Ok(m.reply("coordinate-mediation/1.0/mediate-deny", json!({})));
        }
        self.update_connection(&m.conn.id, |c| c.mediation = "granted".into())
            .await?;
        Ok(m.reply(
            "coordinate-mediation/1.0/mediate-grant",
            json!({
                "endpoint": endpoints(&self.ctx).into_iter().next().unwrap_or_default(),
                "routing_keys": [self.did_key],
            }),
        ))
    }

    /// `keylist-update`: each update's result (`success`, `no_change`, `client_error`), as the
    /// body of the `keylist-update-response`.
    pub(super) async fn keylist_update(
        &self,
        conn: &Connection,
        msg: &Value,
    ) -> MediatorResult<Value> {
        let updates = msg
            .get("updates")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // each update is up to two store writes: one message may not ask for thousands
        if updates.len() > MAX_KEYLIST_UPDATES {
            return Err(self.refuse(format!(
                "keylist-update carries more than {MAX_KEYLIST_UPDATES} updates"
            )));
        }
        // Room for the adds is reserved on the connection's count first (compare-and-swap), so
        // concurrent updates cannot each pass the cap on one stale count and write their keys
        // (attacker review: 200 at once, each adding 100, all passed and went uncounted when
        // the count's update gave up); what is not used, and what is removed, is given back.
        let start = self.key_count(conn).await?;
        let wanted = updates
            .iter()
            .filter(|u| u.get("action").and_then(Value::as_str) == Some("add"))
            .count() as u64;
        let max = self.cfg.max_keys_per_connection;
        let granted = std::sync::atomic::AtomicU64::new(0);
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        if wanted > 0 && conn.mediation == "granted" {
            self.update_connection(&conn.id, |c| {
                let cur = c.keys.unwrap_or(start);
                let room = wanted.min(max.saturating_sub(cur));
                granted.store(room, relaxed);
                c.keys = Some(cur + room);
            })
            .await?;
        }
        let mut tally = Tally {
            room: granted.load(relaxed),
            ..Tally::default()
        };
        let mut updated = Vec::new();
        for u in updates {
            let given = u
                .get("recipient_key")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let action = u.get("action").and_then(Value::as_str).unwrap_or_default();
            let result = self.keylist_change(conn, given, action, &mut tally).await;
            let result = match result {
                Ok(r) => r,
                Err(e) => {
                    self.give_back(conn, start, tally.room + tally.removed)
                        .await;
                    return Err(e);
                }
            };
            updated.push(json!({"recipient_key": given, "action": action, "result": result}));
        }
        let back = tally.room + tally.removed;
        if back > 0 || conn.keys.is_none() {
            self.update_connection(&conn.id, |c| {
                c.keys = Some(c.keys.unwrap_or(start).saturating_sub(back));
            })
            .await?;
        }
        Ok(json!({"updated": updated}))
    }

    /// The keys `conn` has registered: the record's count, or (records from before the count
    /// was kept) counted once from the store, bounded by the cap.
    async fn key_count(&self, conn: &Connection) -> MediatorResult<u64> {
        if let Some(n) = conn.keys {
            return Ok(n);
        }
        let max = self.cfg.max_keys_per_connection;
        let n = self
            .ctx
            .store
            .count_prefix(
                ks::ROUTE_BY_CONN,
                &format!("{}/", conn.id),
                usize::try_from(max).unwrap_or(usize::MAX).saturating_add(1),
            )
            .await?;
        Ok(n as u64)
    }

    /// Gives `n` back to the connection's key count (best effort: a count left high only lowers
    /// what the connection may add).
    async fn give_back(&self, conn: &Connection, start: u64, n: u64) {
        if n == 0 {
            return;
        }
        let res = self
            .update_connection(&conn.id, |c| {
                c.keys = Some(c.keys.unwrap_or(start).saturating_sub(n));
            })
            .await;
        if let Err(e) = res {
            tracing::debug!(error = %e, "reserved key places not given back");
        }
    }

    /// One keylist update: `action` (`add` / `remove`) on key `given`, an add taking one of the
    /// places reserved in `tally`.
    async fn keylist_change(
        &self,
        conn: &Connection,
        given: &str,
        action: &str,
        tally: &mut Tally,
    ) -> MediatorResult<&'static str> {
        if conn.mediation != "granted" {
            return Ok("client_error");
        }
        Ok(match (peer::normalize_key(given), action) {
            (Err(_), _) => "client_error",
            // a place reserved, or one a remove in this message freed
            (Ok(_), "add") if tally.room == 0 && tally.removed == 0 => "client_error",
            (Ok(k), "add") => {
                let result = self.add_route(&conn.id, &k).await?;
                if result == "success" {
                    if tally.room > 0 {
                        tally.room -= 1;
                    } else {
                        tally.removed -= 1;
                    }
                }
                result
            }
            (Ok(k), "remove") => {
                if self.remove_route(&conn.id, &k).await? {
                    tally.removed += 1;
                    "success"
                } else {
                    "no_change"
                }
            }
            _ => "client_error",
        })
    }

    /// Claims key `k` for `conn_id`: `success`, `no_change` (ours already) or `client_error`
    /// (another connection's).
    async fn add_route(&self, conn_id: &str, k: &str) -> MediatorResult<&'static str> {
        let store = &self.ctx.store;
        let res = store
            .compare_and_swap(
                ks::ROUTES,
                k,
                None,
                Some((conn_id.as_bytes().to_vec(), None)),
            )
            .await?;
        let outcome = match res {
            Cas::Swapped => "success",
            Cas::Conflict(Some(owner)) if owner == conn_id.as_bytes() => "no_change",
            // Another connection registered this key: not ours to take.
            Cas::Conflict(_) => return Ok("client_error"),
        };
        // Ours either way: the index written on `no_change` too, since a claim can be applied
        // and still fail (answered 503 in a cluster, or the index write failed) and its retry
        // finds the key ours already.
        store
            .put(
                ks::ROUTE_BY_CONN,
                &format!("{conn_id}/{k}"),
                Vec::new(),
                None,
            )
            .await?;
        Ok(outcome)
    }

    /// Gives up key `k` if `conn_id` holds it; whether it did.
    async fn remove_route(&self, conn_id: &str, k: &str) -> MediatorResult<bool> {
        let store = &self.ctx.store;
        let res = store
            .compare_and_swap(ks::ROUTES, k, Some(conn_id.as_bytes().to_vec()), None)
            .await?;
        if res != Cas::Swapped {
            return Ok(false);
        }
        store
            .delete(ks::ROUTE_BY_CONN, &format!("{conn_id}/{k}"))
            .await?;
        Ok(true)
    }

    /// `keylist-query`: every key `conn` registered, as `did:key`s.
    pub(super) async fn keylist_query(&self, m: &ConnMessage<'_>) -> MediatorResult<Value> {
        let keys: Vec<Value> = self
            .keys_of(&m.conn.id)
            .await?
            .iter()
            .filter_map(|k| peer::did_key_of(k).ok())
            .map(|k| json!({"recipient_key": k}))
            .collect();
        let n = keys.len();
        Ok(m.reply(
            "coordinate-mediation/1.0/keylist",
            json!({"keys": keys, "pagination": {"count": n, "offset": 0, "remaining": 0}}),
        ))
    }

    async fn keys_of(&self, conn_id: &str) -> MediatorResult<Vec<String>> {
        let prefix = format!("{conn_id}/");
        Ok(self
            .ctx
            .store
            .scan_prefix(ks::ROUTE_BY_CONN, &prefix, KEYLIST_LIMIT)
            .await?
            .into_iter()
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect())
    }
}
