//! Slow bodies (slowloris): a request body must arrive whole within `server.body_read_timeout_ms`
//! of the request head, or the client gets 408 problem+json `request_timeout` and the connection
//! is closed. actix's own `client_request_timeout` covers the head; nothing in actix bounds the
//! body, so this middleware reads it (at most `server.body_limit_bytes`, else 413) under that
//! deadline and hands the handler the buffered bytes. WebSocket upgrades and body-less requests
//! pass through untouched, and so does the internal cluster RPC when it shares this listener
//! (`cluster.rpc_addr` = the HTTP address): its routes authenticate the head before reading a
//! body, allow batches far above the public limit and answer with signed refusals
//! (`cluster::rpc::admit`); a 413 or 408 from here would be unsigned, which a peer takes for a
//! forged answer (and a batch above 1 MiB would never replicate).

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::HttpMessage;
use futures_util::StreamExt;

use crate::config::ServerConfig;
use crate::error::{ApiError, Code};

/// Whether the request announces a body (a non-zero Content-Length or any Transfer-Encoding).
fn has_body(req: &ServiceRequest) -> bool {
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// A WebSocket opening handshake (RFC 6455 §4.1: a GET with `Upgrade: websocket`): the socket
/// handlers bound what comes after it themselves.
fn is_websocket_handshake(req: &ServiceRequest) -> bool {
    // a handshake has no body of its own: one that announces one (a chunked GET carrying
    // `Upgrade: websocket` to any route skipped the deadline) is read under it like any other
    req.method() == actix_web::http::Method::GET
        && !has_body(req)
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// The request is for the cluster RPC routes this app mounts (see the module doc).
fn is_cluster_rpc(req: &ServiceRequest) -> bool {
    #[cfg(feature = "cluster")]
    {
        crate::cluster::wire::PATHS.contains(&req.path())
            && req
                .app_data::<web::Data<crate::cluster::Cluster>>()
                .is_some_and(|c| c.rpc_on_http)
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = req;
        false
    }
}

/// The refusal of a body that was not read to its end, on a connection that is then closed
/// (connections review: with the rest of a chunked body unread, actix kept the connection to
/// drain it, with no timer left, for ever). The unread `payload` is held by the refusal's body
/// until it has been written: actix closes a connection whose payload is unread then, and
/// drains (for ever) one whose payload was dropped before.
fn refuse_and_close<B>(
    req: ServiceRequest,
    e: actix_web::Error,
    payload: Payload,
) -> ServiceResponse<EitherBody<B>> {
    req.into_response(closing(e.error_response(), payload))
        .map_into_right_body()
}

/// `resp` on a connection closed after it, holding the request's unread `payload` until the
/// response is written (see [`refuse_and_close`]): for any refusal that leaves a body unread.
pub(crate) fn closing(
    mut resp: actix_web::HttpResponse,
    payload: Payload,
) -> actix_web::HttpResponse {
    resp.head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    resp.map_body(|_, body| {
        actix_web::body::BoxBody::new(Holding {
            body,
            _payload: payload,
        })
    })
}

/// A response body that holds the request's unread payload until it is dropped.
struct Holding {
    body: actix_web::body::BoxBody,
    _payload: Payload,
}

impl MessageBody for Holding {
    type Error = <actix_web::body::BoxBody as MessageBody>::Error;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_next(cx)
    }
}

pub async fn body_deadline<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let pass = |r: ServiceResponse<B>| r.map_into_left_body();
    let Some(server) = req.app_data::<web::Data<ServerConfig>>() else {
        return next.call(req).await.map(pass);
    };
    let (timeout_ms, limit) = (server.body_read_timeout_ms, server.body_limit_bytes);
    if is_websocket_handshake(&req) || is_cluster_rpc(&req) {
        return next.call(req).await.map(pass);
    }
    // actix hands a request with any other `Upgrade` the rest of the connection as its body,
    // announced or not: read under the deadline like any body (attacker review: `Upgrade: h2c`
    // on a POST kept a dripping body open for ever)
    if !has_body(&req) && !req.headers().contains_key(header::UPGRADE) {
        return next.call(req).await.map(pass);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let path = crate::http::routed_path(&req).to_string();
    // a compressed body is refused before it is read: the body limit bounds what arrives, not
    // what it would unpack to (attacker review: with actix's `compress-gzip`, now off, a 1 MiB
    // gzip body unpacked to 1 GiB in the extractor, unauthenticated, before its limit applied)
    if let Some(coding) = req.headers().get(header::CONTENT_ENCODING).filter(|v| {
        !v.to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"))
    }) {
        let e = ApiError::new(
            Code::UnsupportedMediaType,
            format!(
                "request bodies are not accepted compressed (Content-Encoding: {})",
                String::from_utf8_lossy(coding.as_bytes())
                    .chars()
                    .take(32)
                    .filter(|c| !c.is_control())
                    .collect::<String>()
            ),
        );
        let payload = req.take_payload();
        return Ok(refuse_and_close(
            req,
            crate::http::oauth::middleware_error(&path, e),
            payload,
        ));
    }
    if declared.is_some_and(|n| n > limit as u64) {
        let e = ApiError::new(
            Code::PayloadTooLarge,
            format!("the request body is larger than {limit} bytes"),
        );
        let payload = req.take_payload();
        return Ok(refuse_and_close(
            req,
            crate::http::oauth::middleware_error(&path, e),
            payload,
        ));
    }
    let mut payload = req.take_payload();
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::new(Code::BadRequest, format!("request body: {e}")))?;
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::new(
                    Code::PayloadTooLarge,
                    format!("the request body is larger than {limit} bytes"),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok::<Bytes, ApiError>(buf.freeze())
    };
    let body = match tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), read).await
    {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            return Ok(refuse_and_close(
                req,
                crate::http::oauth::middleware_error(&path, e),
                payload,
            ))
        }
        Err(_) => {
            let e = ApiError::new(
                Code::RequestTimeout,
                format!("the request body did not arrive within {timeout_ms} ms"),
            );
            return Ok(refuse_and_close(
                req,
                crate::http::oauth::middleware_error(&path, e),
                payload,
            ));
        }
    };
    // JSON (or a form, whose fields may carry it) that would cost far more parsed than its
    // bytes: refused before any handler builds it (see `json_cost`). Every body, whatever its
    // Content-Type says: handlers parse forms and envelopes from the bytes (review: a response
    // posted without a form type skipped the check)
    // (at least 8× the body limit: an operator who raised the limit for large envelopes, which
    // cost about their length, keeps them)
    let max_cost = crate::json_cost::INBOUND_MAX.max(limit.saturating_mul(8));
    if let Err(why) = crate::json_cost::check(&body, max_cost) {
        let e = ApiError::new(Code::PayloadTooLarge, format!("the request body: {why}"));
        return Ok(refuse_and_close(
            req,
            crate::http::oauth::middleware_error(&path, e),
            payload,
        ));
    }
    let stream: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>>>,
    > = Box::pin(futures_util::stream::once(async move { Ok(body) }));
    req.set_payload(Payload::Stream { payload: stream });
    next.call(req).await.map(pass)
}
