//! Out-of-band 1.1 invitations: the reusable public one (created once, the same on every node)
//! and single-use ones an admin asks for; a handshake request spends them
//! ([`MediatorService::use_invitation`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::error::{bad_message, MediatorError, MediatorResult, OrInternal as _};
use super::message::DIDCOMM;
use super::model::ks;
use super::model::*;
use super::service::{endpoints, MediatorService};
use crate::clock::random_id;
use crate::store::Cas;

/// How long a single-use invitation waits for its handshake, and how long a used one is kept:
/// at least as long as the unused one could still be live. In a cluster a version lives only
/// until its own deadline, and a node away while the invitation was used still holds the unused
/// one until its deadline; a used mark that expired first let that node's copy come back, and
/// the invitation be used again (cluster review: used marks lived 1 day, unused invitations 7).
const SINGLE_USE_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 86400);
const USED_TTL: std::time::Duration = SINGLE_USE_TTL;
const _: () = assert!(USED_TTL.as_secs() >= SINGLE_USE_TTL.as_secs());
/// Compare-and-swap attempts on a reusable invitation's counter before answering `conflict`.
const COUNT_TRIES: u32 = 64;

/// The handshake protocols `handshake=` asks for (default both, DID exchange first).
fn handshake_protocols(wanted: Option<&str>) -> MediatorResult<Vec<String>> {
    let mut protocols = Vec::new();
    let wanted = wanted.unwrap_or("didexchange,connections");
    for p in wanted.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match p {
            "didexchange" => {
                protocols.push(format!("{DIDCOMM}didexchange/1.1"));
                protocols.push(format!("{DIDCOMM}didexchange/1.0"));
            }
            "connections" => protocols.push(format!("{DIDCOMM}connections/1.0")),
            other => return Err(MediatorError::UnknownHandshake(other.to_string())),
        }
    }
    Ok(protocols)
}

impl MediatorService {
    /// An out-of-band invitation: the public one, or a new single-use one.
    pub async fn invitation(&self, q: &InvitationQuery) -> MediatorResult<InvitationResponse> {
        let protocols = handshake_protocols(q.handshake.as_deref())?;
        let id = if q.single_use {
            self.single_use_invitation().await?
        } else {
            self.public_invitation_id().await?
        };
        let services: Vec<Value> = endpoints(&self.ctx)
            .into_iter()
            .enumerate()
            .map(|(i, ep)| {
                json!({
                    "id": format!("#inline-{i}"),
                    "type": "did-communication",
                    "recipientKeys": [self.did_key],
                    "routingKeys": [],
                    "serviceEndpoint": ep,
                })
            })
            .collect();
        let invitation = json!({
            "@type": format!("{DIDCOMM}out-of-band/1.1/invitation"),
            "@id": id,
            "label": self.cfg.label,
            "goal_code": "aries.vc.mediate",
            "goal": "Mediation",
            "accept": ["didcomm/aip1", "didcomm/aip2;env=rfc19"],
            "handshake_protocols": protocols,
            "services": services,
        });
        let invitation_url = format!(
            "{}/didcomm?oob={}",
            self.ctx.public_url,
            URL_SAFE_NO_PAD.encode(invitation.to_string())
        );
        Ok(InvitationResponse {
            invitation_url,
            invitation,
        })
    }

    /// A new single-use invitation's id (stored under [`single_use_key`]).
    async fn single_use_invitation(&self) -> MediatorResult<String> {
        let id = random_id();
        let key = single_use_key(&id);
        let rec = InvitationRecord {
            id: key.clone(),
            multi_use: false,
            used: false,
            connections: 0,
        };
        self.ctx
            .store
            .put_json(ks::INVITATIONS, &key, &rec, Some(SINGLE_USE_TTL))
            .await?;
        Ok(id)
    }

    /// The reusable invitation's id: created once, the same on every node and after restarts.
    async fn public_invitation_id(&self) -> MediatorResult<String> {
        const KEY: &str = "public";
        if let Some(rec) = self
            .ctx
            .store
            .get_json::<InvitationRecord>(ks::INVITATIONS, KEY)
            .await?
        {
            return Ok(rec.id);
        }
        let rec = InvitationRecord {
            id: random_id(),
            multi_use: true,
            used: false,
            connections: 0,
        };
        // The invitation record first, then the pointer to it: whoever reads the pointer (on any
        // node) finds the record. (The other order let a concurrent first caller hand out an id
        // whose record did not exist yet, and its DID exchange was refused.)
        self.ctx
            .store
            .put_json(ks::INVITATIONS, &rec.id, &rec, None)
            .await?;
        let bytes = serde_json::to_vec(&rec).or_internal()?;
        match self
            .ctx
            .store
            .compare_and_swap(ks::INVITATIONS, KEY, None, Some((bytes, None)))
            .await?
        {
            Cas::Swapped => Ok(rec.id),
            Cas::Conflict(Some(cur)) => {
                // another caller won: ours was never handed out
                self.ctx.store.delete(ks::INVITATIONS, &rec.id).await?;
                serde_json::from_slice::<InvitationRecord>(&cur)
                    .map(|r| r.id)
                    .or_internal()
            }
            Cas::Conflict(None) => {
                Err(MediatorError::Internal("public invitation vanished".into()))
            }
        }
    }

    /// Accepts a handshake on invitation `pthid`: reusable ones up to
    /// `max_connections_per_invitation` connections (one compare-and-swap on a counter), single-use
    /// ones once. Returns (invitation id, single-use).
    pub(super) async fn use_invitation(
        &self,
        pthid: Option<&str>,
    ) -> MediatorResult<(String, bool)> {
        let pthid = pthid.ok_or_else(|| {
            bad_message("handshake request without ~thread.pthid naming our invitation")
        })?;
        let unknown = || bad_message("the invitation this request answers is unknown or expired");
        let mut tries = 0;
        loop {
            // a single-use invitation by the digest of its id; the reusable one (and a single-use
            // one stored before digests) by the id itself
            let hashed = single_use_key(pthid);
            let (key, raw) = match self.ctx.store.get(ks::INVITATIONS, &hashed).await? {
                Some(raw) => (hashed.as_str(), raw),
                // (a digest read from a copy of the store is no id)
                None if pthid.starts_with("sha256:") => return Err(unknown()),
                None => match self.ctx.store.get(ks::INVITATIONS, pthid).await? {
                    Some(raw) => (pthid, raw),
                    None => return Err(unknown()),
                },
            };
            let rec: InvitationRecord = serde_json::from_slice(&raw).or_internal()?;
            // Only an invitation's own record: the `public` pointer holds a copy of the public
            // invitation, and answering it by that name would count a second, separate set of
            // connections (twice `max_connections_per_invitation`).
            if rec.id != key {
                return Err(unknown());
            }
            if !rec.multi_use {
                // the connection names the id the admin handed out, not its digest
                let (_, single) = self.spend_single_use(key, raw, rec).await?;
                return Ok((pthid.to_string(), single));
            }
            if let Some(id) = self.count_connection(key, raw, rec).await? {
                return Ok((id, false));
            }
            tries += 1;
            if tries >= COUNT_TRIES {
                return Err(MediatorError::Contended(
                    "too many connections on this invitation at once; retry",
                ));
            }
        }
    }

    /// One compare-and-swap adding a connection to reusable invitation `rec` (stored as `raw`):
    /// its id when it took, `None` when the record changed meanwhile.
    async fn count_connection(
        &self,
        pthid: &str,
        raw: Vec<u8>,
        mut rec: InvitationRecord,
    ) -> MediatorResult<Option<String>> {
        let max = self.cfg.max_connections_per_invitation;
        if rec.connections >= max {
            return Err(MediatorError::InvitationFull(max));
        }
        rec.connections += 1;
        let new = serde_json::to_vec(&rec).or_internal()?;
        let swapped = self
            .ctx
            .store
            .compare_and_swap(ks::INVITATIONS, pthid, Some(raw), Some((new, None)))
            .await?
            == Cas::Swapped;
        Ok(swapped.then_some(rec.id))
    }

    /// Marks single-use invitation `rec` (stored as `raw`) used, once.
    async fn spend_single_use(
        &self,
        pthid: &str,
        raw: Vec<u8>,
        mut rec: InvitationRecord,
    ) -> MediatorResult<(String, bool)> {
        if rec.used {
            return Err(MediatorError::InvitationUsed);
        }
        rec.used = true;
        rec.connections = 1;
        let new = serde_json::to_vec(&rec).or_internal()?;
        match self
            .ctx
            .store
            .compare_and_swap(
                ks::INVITATIONS,
                pthid,
                Some(raw),
                Some((new, Some(USED_TTL))),
            )
            .await?
        {
            Cas::Swapped => Ok((rec.id, true)),
            Cas::Conflict(_) => Err(MediatorError::InvitationUsed),
        }
    }
}

/// Where a single-use invitation is stored: under a digest of its id, never the id itself
/// (secrets review: with `grant_requires_single_use_invitation`, the id alone is what gets a
/// mediation granted, and a copy of the store held every unused one for 7 days).
fn single_use_key(id: &str) -> String {
    format!("sha256:{}", crate::crypto::sha256_hex(id))
}
