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

use actix_web::body::MessageBody;
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
    req.method() == actix_web::http::Method::GET
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
        req.path().starts_with("/cluster/v1/")
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

pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(server) = req.app_data::<web::Data<ServerConfig>>() else {
        return next.call(req).await;
    };
    let (timeout_ms, limit) = (server.body_read_timeout_ms, server.body_limit_bytes);
    if is_websocket_handshake(&req) || is_cluster_rpc(&req) {
        return next.call(req).await;
    }
    // actix hands a request with any other `Upgrade` the rest of the connection as its body,
    // announced or not: read under the deadline like any body (attacker review: `Upgrade: h2c`
    // on a POST kept a dripping body open for ever)
    if !has_body(&req) && !req.headers().contains_key(header::UPGRADE) {
        return next.call(req).await;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let path = req.path().to_string();
    if declared.is_some_and(|n| n > limit as u64) {
        let e = ApiError::new(
            Code::PayloadTooLarge,
            format!("the request body is larger than {limit} bytes"),
        );
        return Err(crate::http::oauth::middleware_error(&path, e));
    }
    let mut payload = req.take_payload();
    let read = async move {
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
        Ok(Err(e)) => return Err(crate::http::oauth::middleware_error(&path, e)),
        Err(_) => {
            let e = ApiError::new(
                Code::RequestTimeout,
                format!("the request body did not arrive within {timeout_ms} ms"),
            );
            return Err(crate::http::oauth::middleware_error(&path, e));
        }
    };
    let stream: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>>>,
    > = Box::pin(futures_util::stream::once(async move { Ok(body) }));
    req.set_payload(Payload::Stream { payload: stream });
    next.call(req).await
}
