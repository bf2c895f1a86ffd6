//! One inbound envelope: unpack it (RFC 0019), dispatch the message it carries by `@type` (the
//! legacy `did:sov:…;spec/` prefix mapped) and route the replies: back on the same transport when
//! the sender asked for a return route, else to the peer's endpoint or its queue. Forwards go to
//! [`super::queue`], handshakes to [`super::handshake`], everything on an established connection
//! to [`super::protocols`].

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::error::{MediatorError, MediatorResult, OrInternal as _};
use super::message::{
    normalize_type, thread_id, wants_return_route, wants_return_route_all, DIDCOMM,
};
use super::service::{MediatorService, OrRefused as _, Required as _};
use super::socket::{Mode, Socket};
use crate::clock::random_id;
use crate::didcomm::envelope;
use crate::error::{Code, ErrorCode as _};

/// What a message asked of the transport it came on.
#[derive(Debug, Default)]
pub struct Replies {
    /// Packed envelopes to return on the same transport (`~transport.return_route`).
    pub envelopes: Vec<Vec<u8>>,
    /// Implicit pickup over HTTP: the message asked for return-route `all`, came from a mediated
    /// connection (this one) and has no reply, so the response may carry a queued message.
    pub implicit_for: Option<String>,
}

/// What one message produced: its reply to the sender, and whether it opens implicit pickup
/// for a connection.
struct Handled {
    reply: Option<Value>,
    implicit: Option<String>,
}

impl MediatorService {
    /// Handles one inbound envelope. `socket` is set when it came on a WebSocket. Every
    /// refusal of the message (a 4xx, or a full queue's 507) is counted here, once, by its code
    /// (`mediator_rejected_total`); the mediator's own failures (a store unavailable, an internal
    /// error) are not refusals and show in the HTTP metrics and logs instead.
    pub(super) async fn receive(
        &self,
        body: &[u8],
        socket: Option<&Arc<Socket>>,
    ) -> MediatorResult<Replies> {
        let out = self.handle(body, socket).await;
        if let Err(e) = &out {
            let code = e.error_code();
            if !matches!(code, Code::Internal | Code::Unavailable) {
                self.count_refused(code);
            }
        }
        out
    }

    async fn handle(&self, body: &[u8], socket: Option<&Arc<Socket>>) -> MediatorResult<Replies> {
        let (msg, typ, sender, recipients) = self.open(body)?;
        let ty = typ.strip_prefix(DIDCOMM).unwrap_or(&typ);
        if ty == "routing/1.0/forward" {
            self.forward(&msg).await?;
            return Ok(Replies::default());
        }
        let Some(sender) = sender else {
            return Err(self.refuse(
                "only forward messages may be anoncrypted; everything else must be authcrypted",
            ));
        };
        // every recipient of an envelope can re-encrypt any message as its sender (RFC 0019): a
        // message that acts on the sender's connection names the mediator alone, or another
        // recipient could speak for the sender (remove its keys, take its messages). This is a
        // partial defence only: nothing binds the recipient list to the key boxes, so a
        // co-recipient of any envelope the sender's connection key authcrypted to the mediator
        // and to it can cut the list down to the mediator's entry (attacker review). Agents in
        // use keep one key per connection, which never meets a third party; the sound fix is a
        // mediator key per connection (left for planning: see the closing notes).
        if recipients != 1 {
            return Err(self
                .refuse("a message to the mediator must name the mediator as its only recipient"));
        }
        let handled = self.dispatch(&msg, ty, &sender, socket).await?;
        let mut out = Replies::default();
        if let Some(reply) = handled.reply {
            let packed = self.pack_for(&reply, &sender)?;
            if wants_return_route(&msg) {
                out.envelopes.push(packed);
            } else {
                self.send_to_peer(&sender, packed, is_handshake(ty)).await?;
            }
        }
        if let Some(conn_id) = handled.implicit {
            match socket {
                Some(s) => {
                    if !s.is_pickup_client() && s.mode().is_none() {
                        self.set_mode(&conn_id, s, Some(Mode::Implicit));
                    }
                }
                None => out.implicit_for = Some(conn_id),
            }
        }
        if let Some(s) = socket {
            if s.mode().is_some() {
                s.wake.notify_one();
            }
        }
        Ok(out)
    }

    /// Unpacks an envelope for the mediator key: the plaintext message, its `@type` (legacy
    /// prefix mapped), the authcrypt sender's verkey (`None`: anoncrypted) and how many
    /// recipients the envelope names.
    fn open(&self, body: &[u8]) -> MediatorResult<(Value, String, Option<String>, usize)> {
        if body.len() > self.cfg.max_message_bytes {
            return Err(MediatorError::TooLarge);
        }
        let key = &self.key;
        let own = &self.verkey;
        let unpacked = envelope::unpack(body, |kid| (kid == own).then(|| key.clone()))
            .map_err(MediatorError::Unpack)?;
        let msg: Value = serde_json::from_slice(&unpacked.message)
            .or_refused_in(self, "plaintext is not JSON")?;
        let typ = msg
            .get("@type")
            .and_then(Value::as_str)
            .map(normalize_type)
            .required(self, "message has no @type")?;
        tracing::debug!(%typ, sender = ?unpacked.sender_verkey, "didcomm message");
        Ok((msg, typ, unpacked.sender_verkey, unpacked.recipients))
    }

    /// Runs message `msg` of type `ty` (`<protocol>/<version>/<name>`) from `sender`.
    async fn dispatch(
        &self,
        msg: &Value,
        ty: &str,
        sender: &str,
        socket: Option<&Arc<Socket>>,
    ) -> MediatorResult<Handled> {
        let proto = ty.rsplit_once('/').map(|(p, _)| p).unwrap_or(ty);
        let name = ty.rsplit('/').next().unwrap_or(ty);
        if let Some(s) = socket.filter(|_| is_handshake(ty)) {
            if !s.count_handshake() {
                return Err(super::error::bad_message(format!(
                    "a socket opens at most {} connections: open another socket",
                    super::socket::MAX_HANDSHAKES_PER_SOCKET
                )));
            }
        }
        let reply = match (proto, name) {
            ("didexchange/1.1" | "didexchange/1.0", "request") => {
                let v = if proto.ends_with("1.1") { "1.1" } else { "1.0" };
                self.didexchange_request(msg, sender, v).await?
            }
            ("connections/1.0", "request") => self.connections_request(msg, sender).await?,
            ("out-of-band/1.1" | "out-of-band/1.0", "handshake-reuse") => {
                self.connection_by_key(sender).await?;
                json!({
                    "@type": format!("{DIDCOMM}{proto}/handshake-reuse-accepted"),
                    "@id": random_id(),
                    "~thread": {"thid": thread_id(msg), "pthid": msg.pointer("/~thread/pthid")},
                })
            }
            _ => return self.on_established(msg, proto, name, sender, socket).await,
        };
        Ok(Handled {
            reply: Some(reply),
            implicit: None,
        })
    }

    /// A message on an established connection (the sender's).
    async fn on_established(
        &self,
        msg: &Value,
        proto: &str,
        name: &str,
        sender: &str,
        socket: Option<&Arc<Socket>>,
    ) -> MediatorResult<Handled> {
        let conn = self.connection_by_key(sender).await?;
        let pickup = proto.starts_with("messagepickup/");
        if pickup {
            if let Some(s) = socket {
                s.spoke_pickup();
            }
        }
        let reply = self.on_connection(&conn, proto, name, msg, socket).await?;
        // Implicit pickup: a message that asks for return-route `all`, has nothing of its own to
        // return (credo's implicit mode opens with a ping that wants no response) and comes from
        // a mediated connection leaves the route to its queue.
        let implicit = (reply.is_none()
            && !pickup
            && conn.mediation == "granted"
            && wants_return_route_all(msg))
        .then(|| conn.id.clone());
        Ok(Handled { reply, implicit })
    }

    /// What `POST /didcomm` answers for `body`: its first reply (further ones wait in the
    /// sender's queue), else with implicit pickup the oldest queued message, else nothing (202).
    /// Once [`Self::receive`] has handled the message, nothing fails the request: an error would
    /// make the client send the same message again, and the mediator handle it twice. A queued
    /// message whose dequeue failed is handed out all the same (and again when its lease ends, if
    /// the delete did not land); a further reply that could not be queued is logged.
    pub async fn answer_http(&self, body: &[u8]) -> MediatorResult<Option<Vec<u8>>> {
        let replies = self.receive(body, None).await?;
        let mut it = replies.envelopes.into_iter();
        let Some(first) = it.next() else {
            let Some(conn) = &replies.implicit_for else {
                return Ok(None);
            };
            return Ok(self.take_implicit(conn).await.unwrap_or_else(|e| {
                tracing::warn!(error = %crate::error::ApiError::from(e), "implicit pickup over HTTP: nothing handed out");
                None
            }));
        };
        for extra in it {
            if let Err(e) = self.queue_reply_for_sender(&extra).await {
                tracing::warn!(error = %crate::error::ApiError::from(e), "a further reply to an HTTP message could not be queued; it is dropped");
            }
        }
        Ok(Some(first))
    }

    /// Implicit pickup over HTTP: the oldest message of `conn_id` not handed out elsewhere, as the
    /// forwarded envelope itself, deleted from the queue as it goes into the response (there is no
    /// acknowledgement in implicit pickup; ACA-Py does the same).
    async fn take_implicit(&self, conn_id: &str) -> MediatorResult<Option<Vec<u8>>> {
        let Some(m) = self.claim(conn_id, None, 1, None).await?.into_iter().next() else {
            return Ok(None);
        };
        let bytes = serde_json::to_vec(&m.msg).or_internal()?;
        // Handed out even when its dequeue fails: the delete may have landed (an unknown outcome
        // in a cluster), and holding the message back would lose it then. If it did not land,
        // the message comes again once its lease ends: at least once, never lost.
        if let Err(e) = self
            .acknowledge(conn_id, std::slice::from_ref(&m.id), None)
            .await
        {
            tracing::warn!(error = %crate::error::ApiError::from(e), "implicit pickup over HTTP: dequeue failed; the message may come again");
        }
        Ok(Some(bytes))
    }

    /// A reply that cannot go back on the inbound transport: POSTed to an http(s) endpoint, else
    /// queued for the peer's own pickup.
    /// `handshake`: the reply to a handshake request, which may take a reserved place.
    async fn send_to_peer(
        &self,
        verkey: &str,
        packed: Vec<u8>,
        handshake: bool,
    ) -> MediatorResult<()> {
        let conn = self.connection_by_key(verkey).await.ok();
        let endpoint = conn.as_ref().and_then(|c| c.their_endpoint.clone());
        // a POST holds a connection and a task for up to the outbound timeout: past the bounds
        // the reply waits in the peer's queue instead
        let slot = conn
            .as_ref()
            .and_then(|c| self.reply_posts.take(&c.id, handshake));
        match (endpoint, slot) {
            (Some(ep), Some(slot)) if ep.starts_with("http://") || ep.starts_with("https://") => {
                let http = self.ctx.http.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    // bounded by `reply_posts` itself, outside the node's outbound places
                    let res = crate::http::outbound::send_own_bound(
                        http.post(&ep)
                            .header("content-type", "application/didcomm-envelope-enc")
                            .body(packed),
                    )
                    .await;
                    if let Err(e) = res {
                        // the origin only: an endpoint is the peer's to choose (its length, a
                        // secret in its path)
                        let origin = crate::http::webhook::origin_of(&ep);
                        tracing::warn!(endpoint = %origin, error = %e, "could not deliver a DIDComm reply");
                    }
                });
                Ok(())
            }
            (_, slot) => match conn {
                Some(c) => {
                    drop(slot);
                    let msg: Value = serde_json::from_slice(&packed).or_internal()?;
                    self.enqueue(&c.id, &c.their_verkey, msg).await
                }
                None => Ok(()),
            },
        }
    }

    /// Queues a reply that could not travel back on HTTP for the pickup of its recipient.
    async fn queue_reply_for_sender(&self, packed: &[u8]) -> MediatorResult<()> {
        let v: Value = serde_json::from_slice(packed).or_internal()?;
        let kid = v
            .get("protected")
            .and_then(Value::as_str)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|h| {
                h.pointer("/recipients/0/header/kid")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        if let Some(kid) = kid {
            if let Ok(c) = self.connection_by_key(&kid).await {
                self.enqueue(&c.id, &c.their_verkey, v).await?;
            }
        }
        Ok(())
    }
}

/// Most reply POSTs in flight to peers' own endpoints, in all and per connection.
const MAX_REPLY_POSTS: usize = 256;
const MAX_REPLY_POSTS_PER_CONNECTION: usize = 4;
/// The last of the [`MAX_REPLY_POSTS`] places go only to handshake responses of connections with
/// nothing in flight: peers holding the others (trust pings to endpoints that never answer)
/// cannot make a new agent's handshake response wait in a queue it does not read yet.
const RESERVED_REPLY_POSTS: usize = 64;

/// Reply POSTs in flight ([`MAX_REPLY_POSTS`], [`MAX_REPLY_POSTS_PER_CONNECTION`]). Each holds a
/// connection and a task until its peer answers or the outbound timeout ends (attacker review: a
/// peer whose endpoint accepts and never answers, sent trust pings at socket speed, ran the node
/// out of file descriptors: 24,000 pings in 9 s, every role refused connections).
#[derive(Default)]
pub(super) struct ReplyPosts {
    in_flight: InFlight,
}

/// Reply POSTs in flight: in all, and per connection id.
type InFlight = Arc<std::sync::Mutex<(usize, std::collections::HashMap<String, usize>)>>;

/// One reply POST's place, given back when it is dropped.
pub(super) struct ReplyPost {
    in_flight: InFlight,
    conn: String,
}

impl ReplyPosts {
    /// A place for a POST to `conn`'s endpoint, if one is free (`handshake`: a handshake
    /// response, which may take one of the reserved places).
    pub(super) fn take(&self, conn: &str, handshake: bool) -> Option<ReplyPost> {
        let mut g = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *g;
        let mine = per.get(conn).copied().unwrap_or(0);
        let room = *total < MAX_REPLY_POSTS - RESERVED_REPLY_POSTS
            || (handshake && mine == 0 && *total < MAX_REPLY_POSTS);
        if !room || mine >= MAX_REPLY_POSTS_PER_CONNECTION {
            return None;
        }
        *total += 1;
        per.insert(conn.to_string(), mine + 1);
        Some(ReplyPost {
            in_flight: self.in_flight.clone(),
            conn: conn.to_string(),
        })
    }
}

impl Drop for ReplyPost {
    fn drop(&mut self) {
        let mut g = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *g;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.conn) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.conn);
            }
        }
    }
}

/// A handshake request (DID exchange, connections 1.0) of type `ty` (`<protocol>/<version>/<name>`).
fn is_handshake(ty: &str) -> bool {
    let proto = ty.rsplit_once('/').map(|(p, _)| p).unwrap_or(ty);
    let name = ty.rsplit('/').next().unwrap_or(ty);
    matches!(
        (proto, name),
        (
            "didexchange/1.1" | "didexchange/1.0" | "connections/1.0",
            "request"
        )
    )
}
