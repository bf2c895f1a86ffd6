//! The mediator role: a DIDComm v1 mediator (Aries RFC 0019 envelopes, out-of-band 1.1, DID
//! exchange 1.0/1.1 and connections 1.0, trust ping, coordinate-mediation 1.0, routing forward,
//! message pickup 2.0 with live mode and 1.0) over HTTP and WebSocket.
//!
//! `routes.rs` translates HTTP and WebSocket frames; the engine is [`MediatorService`]
//! (`service.rs`: the struct and what the steps share) with one file per step: `inbound.rs`
//! (unpack, dispatch by `@type`, replies), `invitations.rs`, `handshake.rs`, `connections.rs`,
//! `protocols.rs` (what an established connection may say), `mediation.rs`, `pickup.rs`,
//! `queue.rs` (forward, the stored queue, leases, acknowledgements, status), `live.rs`
//! (WebSocket delivery), `keys.rs` (the mediator key). Below them: `message.rs` (plaintext
//! messages), `socket.rs` (a WebSocket as the engine sees it), `book.rs` (queue indexes and
//! leases in memory), `index.rs` (one queue's index), `model.rs` (records, keyspaces, API
//! shapes) and `error.rs` ([`MediatorError`]).

mod book;
mod connections;
mod error;
mod handshake;
mod inbound;
mod index;
mod invitations;
mod keys;
mod live;
mod mediation;
mod message;
pub mod model;
mod pickup;
mod protocols;
mod queue;
pub mod routes;
mod service;
mod socket;
#[cfg(test)]
mod tests;
mod ws_limit;

use std::sync::Arc;

use actix_web::web;

pub use error::MediatorError;
pub use keys::StoredKey;
pub use service::MediatorService;

use crate::config::MediatorConfig;
use crate::roles::RoleContext;

pub async fn init(ctx: &RoleContext, cfg: &MediatorConfig) -> anyhow::Result<Arc<MediatorService>> {
    let key = keys::load_or_create(ctx).await?;
    let svc = Arc::new(MediatorService::new(ctx.clone(), cfg.clone(), key)?);
    // Bus events from any node wake the local socket holding that connection live.
    let mut rx = ctx.bus.subscribe();
    let weak = Arc::downgrade(&svc);
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev)
                    if ev.topic == queue::BUS_TOPIC
                        || ev.topic == queue::BUS_TOPIC_ACKED
                        || ev.topic == queue::BUS_TOPIC_ACK_ELSEWHERE =>
                {
                    match weak.upgrade() {
                        Some(svc) => svc.on_event(&ev.topic, &ev.payload),
                        None => break,
                    }
                }
                Ok(ev) if ev.topic != crate::bus::GAP_TOPIC => {}
                gap @ (Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    // Missed wake-ups: poke every live socket so none waits for the next event.
                    let missed = match gap {
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => n,
                        _ => 0,
                    };
                    tracing::warn!(missed, "mediator fell behind on bus events");
                    match weak.upgrade() {
                        Some(svc) => {
                            svc.forget_indexes();
                            svc.wake_all();
                        }
                        None => break,
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    tracing::info!(did = %svc.did, routing_key = %svc.did_key, "mediator ready");
    Ok(svc)
}

pub fn configure(
    cfg: &mut utoipa_actix_web::service_config::ServiceConfig,
    svc: &Arc<MediatorService>,
) {
    cfg.app_data(web::Data::from(svc.clone()));
    routes::configure(cfg);
}
