//! Mediator transports and management API. Handlers only translate: bytes in, the service's
//! replies out.
//!
//! - `POST /didcomm`: one envelope per request; 202, or 200 with the return-routed reply.
//! - `GET /didcomm/ws`: WebSocket; every frame is an envelope, replies and live deliveries are
//!   binary frames. Pings every `ws_ping_seconds`; closed after `ws_idle_timeout_seconds` of
//!   silence; a frame declaring more than `max_message_bytes` closes the socket as soon as its
//!   header arrives ([`super::ws_limit`]); outgoing frames go through a bounded channel, so a
//!   client that does not read stops its own deliveries, nobody else's. When the node stops, its
//!   sockets close with 1001 (going away); when a rolling upgrade holds it back, with 1013 (try
//!   again later); new ones are refused with 503 meanwhile. Either way the client reconnects,
//!   through the balancer, to a node that serves.
//! - Implicit pickup (a message from a mediated connection asking for return-route `all` that has
//!   no reply of its own, e.g. credo's trust ping without response; never a pickup message): on a
//!   WebSocket the queue is then pushed as the forwarded envelopes themselves; on HTTP the
//!   response carries the oldest queued message.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{get, post, web, FromRequest as _, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use super::model::*;
use super::service::MediatorService;
use super::socket::{Outgoing, Socket};
use crate::error::{ApiError, ApiResult, Code, Problem};
use crate::http::auth::Admin;
use crate::http::ratelimit::SocketBudget;
use crate::readiness::Sessions;

type Svc = web::Data<MediatorService>;

pub const ENVELOPE_CT: &str = "application/didcomm-envelope-enc";
const ACCEPTED_CT: &[&str] = &[
    ENVELOPE_CT,
    "application/ssi-agent-wire",
    "application/json",
    "application/didcomm-encrypted+json",
];

/// Receive a DIDComm v1 message (RFC 0019 envelope).
#[utoipa::path(tag = "mediator", request_body(content = Object, content_type = "application/didcomm-envelope-enc"),
    responses(
        (status = 202, description = "Accepted (forwards: stored durably before this answer)"),
        (status = 200, description = "The return-routed reply envelope", content_type = "application/didcomm-envelope-enc"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 507, body = Problem, content_type = "application/problem+json")))]
#[post(
    "/didcomm",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::didcomm)"
)]
pub async fn inbound(
    req: HttpRequest,
    svc: Svc,
    mut payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if let Some(ct) = &ct {
        if !ACCEPTED_CT.contains(&ct.as_str()) {
            svc.count_refused(Code::UnsupportedMediaType);
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                format!("DIDComm messages are sent as {ENVELOPE_CT}, not {ct}"),
            ));
        }
    }
    let max = svc.max_message_bytes();
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            svc.count_refused(Code::BadRequest);
            ApiError::bad_request(format!("reading the body: {e}"))
        })?;
        if body.len() + chunk.len() > max {
            svc.count_refused(Code::PayloadTooLarge);
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                format!("DIDComm messages are limited to {max} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(match svc.answer_http(&body).await? {
        Some(reply) => HttpResponse::Ok().content_type(ENVELOPE_CT).body(reply),
        None => HttpResponse::Accepted().finish(),
    })
}

/// Open the DIDComm WebSocket (pickup 2.0 live mode; any message with return-route).
#[utoipa::path(tag = "mediator", responses((status = 101, description = "Switching protocols"), (status = 400, description = "Not a WebSocket upgrade"), (status = 429, body = Problem, content_type = "application/problem+json", description = "Too many upgrades from this address, or it holds `server.rate_limit.didcomm_sockets_per_address` WebSockets already (`rate_limited`, Retry-After)"), (status = 503, body = Problem, content_type = "application/problem+json", description = "The node is stopping, or a rolling upgrade holds it back: connect again (the balancer picks a node that serves)")))]
#[get(
    "/didcomm/ws",
    wrap = "actix_web::middleware::from_fn(crate::http::ratelimit::didcomm)"
)]
pub async fn websocket(
    req: HttpRequest,
    svc: Svc,
    body: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let place = svc.accept_socket().map_err(ApiError::from)?;
    let budget = SocketBudget::for_upgrade(&req)?;
    let max = svc.max_message_bytes();
    // Frame lengths are checked as headers arrive, before actix-ws buffers a frame's payload.
    let limited: actix_web::dev::Payload = actix_web::dev::Payload::Stream {
        payload: Box::pin(super::ws_limit::FrameLimit::new(body, max)),
    };
    let body = web::Payload::from_request(&req, &mut { limited }).await?;
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let svc = svc.into_inner();
    actix_web::rt::spawn(async move {
        run_socket(svc, session, stream, budget).await;
        drop(place);
    });
    Ok(response)
}

async fn run_socket(
    svc: Arc<MediatorService>,
    mut session: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    budget: SocketBudget,
) {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(64);
    let socket = svc.new_socket(tx);
    let (ping_every, idle) = svc.ws_timers();
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let mut last_seen = tokio::time::Instant::now();
    let mut sessions = svc.sessions();
    // a closed watch (no node state behind it, as in unit tests) never asks to close
    let mut watching = true;
    sessions.mark_changed();
    // Inbound frames are handled one at a time, in order, so a client's flood only delays itself.
    // A frame over its address's budget is held, and the socket not read, until the budget has
    // room for it (TCP then pushes back on the client); deliveries and pings go on meanwhile.
    let mut held: Option<(actix_ws::AggregatedMessage, tokio::time::Instant)> = None;
    let close_reason = loop {
        let pump_at = socket.pump_deadline();
        tokio::select! {
            // The node stops or is held back: the client reconnects, through the balancer, to a
            // node that serves; what this socket was handed and did not acknowledge stays queued.
            changed = sessions.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let now = *sessions.borrow_and_update();
                match now {
                    Sessions::Open => {}
                    Sessions::Stopping => break Some(actix_ws::CloseReason { code: actix_ws::CloseCode::Away, description: Some("server stopping".into()) }),
                    Sessions::HeldBack => break Some(actix_ws::CloseReason { code: actix_ws::CloseCode::Again, description: Some("not serving during a rolling upgrade".into()) }),
                }
            }
            _ = async { if let Some((_, until)) = &held { tokio::time::sleep_until(*until).await } }, if held.is_some() => {
                let Some((frame, _)) = held.take() else { continue };
                last_seen = tokio::time::Instant::now();
                match budget.take() {
                    Ok(()) => if let Some(end) = handle_frame(&svc, &mut session, &socket, frame, idle).await { break end },
                    Err(wait) => held = Some((frame, tokio::time::Instant::now() + wait)),
                }
            }
            frame = stream.recv(), if held.is_none() => {
                let Some(frame) = frame else { break None };
                last_seen = tokio::time::Instant::now();
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => {
                        let too_large = is_size_error(&e);
                        if too_large {
                            svc.count_refused(Code::PayloadTooLarge);
                        }
                        break Some(actix_ws::CloseReason {
                            code: if too_large { actix_ws::CloseCode::Size } else { actix_ws::CloseCode::Protocol },
                            description: Some(format!("{e}")),
                        })
                    }
                };
                match budget.take() {
                    Ok(()) => if let Some(end) = handle_frame(&svc, &mut session, &socket, frame, idle).await { break end },
                    Err(wait) => held = Some((frame, tokio::time::Instant::now() + wait)),
                }
            }
            out = rx.recv() => {
                let Some(out) = out else { break None };
                if !written(session.binary(out.frame), idle).await { break None }
                if let Some((conn, id)) = out.implicit {
                    if let Err(e) = svc.implicit_written(&conn, id, &socket).await {
                        tracing::warn!(error = %ApiError::from(e), "implicit pickup: could not dequeue a sent message");
                    }
                }
            }
            _ = socket.wake.notified() => {
                if let Err(e) = Box::pin(svc.pump(&socket)).await {
                    tracing::warn!(error = %ApiError::from(e), "live delivery failed");
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > idle {
                    break Some(actix_ws::CloseReason { code: actix_ws::CloseCode::Away, description: Some("idle".into()) });
                }
                if !written(session.ping(b""), idle).await { break None }
            }
            // A delivery held back waiting for `messages-received` goes out after a short wait
            // even without it; messages an HTTP pickup leased come back when the lease ends.
            _ = async { if let Some(d) = pump_at { tokio::time::sleep_until(d.into()).await } }, if pump_at.is_some() => {
                if let Err(e) = Box::pin(svc.pump(&socket)).await {
                    tracing::warn!(error = %ApiError::from(e), "live delivery failed");
                }
            }
        }
    };
    svc.close_socket(&socket);
    // its address's socket place is given back now, and the close frame is given a second: a
    // client that stopped reading fills the channel the close waits on, and this task held its
    // places for ever (connections review)
    drop(budget);
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        session.close(close_reason),
    )
    .await;
}

/// Whether a write to the socket finished within `within`: a client that stops reading fills the
/// socket's outgoing buffer, and its task must not wait on it for ever (holding its leases and its
/// address's place) — it is closed instead.
async fn written(
    write: impl std::future::Future<Output = Result<(), actix_ws::Closed>>,
    within: std::time::Duration,
) -> bool {
    matches!(tokio::time::timeout(within, write).await, Ok(Ok(())))
}

/// What one received frame does: `None` when the socket goes on, else how it ends (the close
/// reason, if any).
async fn handle_frame(
    svc: &MediatorService,
    session: &mut actix_ws::Session,
    socket: &Arc<Socket>,
    frame: actix_ws::AggregatedMessage,
    within: std::time::Duration,
) -> Option<Option<actix_ws::CloseReason>> {
    let bytes = match frame {
        actix_ws::AggregatedMessage::Binary(b) => b.to_vec(),
        actix_ws::AggregatedMessage::Text(t) => t.as_bytes().to_vec(),
        actix_ws::AggregatedMessage::Ping(p) => {
            return (!written(session.pong(&p), within).await).then_some(None)
        }
        actix_ws::AggregatedMessage::Pong(_) => return None,
        actix_ws::AggregatedMessage::Close(_) => return Some(None),
    };
    (!answer_frame(svc, session, socket, &bytes, within).await).then_some(None)
}

/// Whether the WebSocket stream failed on a frame or message above `max_message_bytes` (refused
/// at its header by [`super::ws_limit`], or by actix-ws's own frame and continuation caps), not
/// on a broken connection or a protocol error.
fn is_size_error(e: &actix_ws::ProtocolError) -> bool {
    match e {
        actix_ws::ProtocolError::Overflow => true,
        actix_ws::ProtocolError::Io(io) => {
            io.get_ref().is_some_and(|inner| {
                matches!(
                    inner.downcast_ref::<actix_web::error::PayloadError>(),
                    Some(actix_web::error::PayloadError::Overflow)
                )
            }) || io.to_string() == "Exceeded maximum continuation size"
        }
        _ => false,
    }
}

/// Runs one inbound frame through the engine and writes its replies on `session`. An error has
/// no return channel on a socket but a text frame with the problem document; the socket stays
/// open for the next message. False when the socket is gone.
async fn answer_frame(
    svc: &MediatorService,
    session: &mut actix_ws::Session,
    socket: &Arc<Socket>,
    bytes: &[u8],
    within: std::time::Duration,
) -> bool {
    // Boxed: the engine's futures are large, and inlined they would make every idle socket's
    // task as big as the deepest message handler.
    match Box::pin(svc.receive(bytes, Some(socket))).await {
        Ok(replies) => {
            for r in replies.envelopes {
                if !written(session.binary(r), within).await {
                    return false;
                }
            }
            true
        }
        Err(e) => written(session.text(refusal(ApiError::from(e))), within).await,
    }
}

/// Logs a message refused on a WebSocket and gives the problem document sent back in its place.
/// The detail is clipped as on HTTP (it may quote the sender's input: a 256 KiB frame of control
/// characters was a 1.5 MiB log line; attacker review); an internal error's detail goes to the
/// log only.
fn refusal(e: ApiError) -> String {
    let clipped = crate::error::outward_detail(&e.detail);
    let detail = if e.code == Code::Internal {
        tracing::error!(code = e.code.as_str(), detail = %clipped, "DIDComm message failed on WebSocket");
        None
    } else {
        tracing::info!(code = e.code.as_str(), detail = %clipped, "DIDComm message refused on WebSocket");
        Some(clipped.as_str())
    };
    serde_json::json!({
        "type": format!("{}{}", crate::error::PROBLEM_TYPE_BASE, e.code.as_str()),
        "code": e.code.as_str(),
        "status": e.code.status().as_u16(),
        "detail": detail,
    })
    .to_string()
}

/// Get the mediator's out-of-band invitation.
#[utoipa::path(tag = "mediator", security(("admin_token" = [])), params(InvitationQuery), responses((status = 200, body = InvitationResponse), (status = 401, body = Problem)))]
#[get("/api/mediator/invitation")]
pub async fn invitation(
    _a: Admin,
    svc: Svc,
    q: web::Query<InvitationQuery>,
) -> ApiResult<web::Json<InvitationResponse>> {
    Ok(web::Json(svc.invitation(&q).await?))
}

/// Mediator statistics: connections, live sockets, queue, delivery counters.
#[utoipa::path(tag = "mediator", security(("admin_token" = [])), responses((status = 200, body = MediatorStats), (status = 401, body = Problem)))]
#[get("/api/mediator/stats")]
pub async fn stats(_a: Admin, svc: Svc) -> ApiResult<web::Json<MediatorStats>> {
    Ok(web::Json(svc.stats().await?))
}

/// List connections (first 1,000).
#[utoipa::path(tag = "mediator", security(("admin_token" = [])), responses((status = 200, body = Vec<Connection>), (status = 401, body = Problem)))]
#[get("/api/mediator/connections")]
pub async fn connections(_a: Admin, svc: Svc) -> ApiResult<web::Json<Vec<Connection>>> {
    Ok(web::Json(svc.connections(1000).await?))
}

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(inbound)
        .service(websocket)
        .service(invitation)
        .service(stats)
        .service(connections);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A refusal that quotes 200 KiB of the sender's control characters is logged and answered
    /// clipped, not escaped whole into the log.
    #[test]
    fn a_refusal_on_a_websocket_is_logged_clipped() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .finish();
        let quoted = "\u{1}".repeat(200 * 1024);
        let frame = tracing::subscriber::with_default(subscriber, || {
            refusal(ApiError::new(
                Code::BadRequest,
                format!("not a JSON JWE: invalid type: string {quoted:?}"),
            ))
        });
        let logged = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            logged.contains("DIDComm message refused on WebSocket"),
            "{logged}"
        );
        assert!(
            logged.len() < 2 * crate::error::MAX_DETAIL_CHARS + 500,
            "{}",
            logged.len()
        );
        let problem: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(problem["code"], Code::BadRequest.as_str());
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.chars().count() <= crate::error::MAX_DETAIL_CHARS + 1);
    }
}
