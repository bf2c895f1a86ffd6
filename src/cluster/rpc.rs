//! The internal RPC listener (`cluster.rpc_addr`): a small actix server of its own, up before the
//! roles initialise (peers need it while they bootstrap), every request HMAC-authenticated, and
//! every answer to a signed request signed over that request's nonce ([`sign_responses`]), so a
//! process without the cluster secret can neither call a node nor answer in a peer's place.

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth;
use super::node::Node;
use super::replica::{intern, is_local_keyspace};
use super::wire::*;
use crate::bus::Event;

/// Largest RPC body (a batch of records, or a chunk of anti-entropy fetches).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn problem(status: actix_web::http::StatusCode, detail: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .json(serde_json::json!({
            "type": format!("{}cluster_rpc", crate::error::PROBLEM_TYPE_BASE),
            "title": "cluster RPC refused",
            "status": status.as_u16(),
            "detail": detail,
            "code": "cluster_rpc",
        }))
}

/// Authenticates and decodes a request body.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per refusal
fn open<T: DeserializeOwned>(
    node: &Node,
    req: &HttpRequest,
    body: &[u8],
) -> Result<T, HttpResponse> {
    node.verifier
        .verify(
            node.now_ms(),
            req.method().as_str(),
            req.path(),
            header(req, auth::HEADER_TS),
            header(req, auth::HEADER_NONCE),
            header(req, auth::HEADER_SIG),
            body,
        )
        .map_err(|e| {
            tracing::warn!(peer = ?req.peer_addr(), error = %e, "cluster RPC refused");
            problem(actix_web::http::StatusCode::UNAUTHORIZED, &e.to_string())
        })?;
    serde_json::from_slice(body)
        .map_err(|e| problem(actix_web::http::StatusCode::BAD_REQUEST, &e.to_string()))
}

/// [`open`] for a request about one keyspace (`ks_of` names it): the request and the keyspace
/// interned (a bad peer cannot grow the table: [`intern`] caps it).
#[allow(clippy::result_large_err)] // as `open`
fn open_in<T: DeserializeOwned>(
    node: &Node,
    req: &HttpRequest,
    body: &[u8],
    ks_of: fn(&T) -> &str,
) -> Result<(T, &'static str), HttpResponse> {
    let r: T = open(node, req, body)?;
    let ks = intern(ks_of(&r)).map_err(err)?;
    Ok((r, ks))
}

fn ok<T: Serialize>(v: &T) -> HttpResponse {
    HttpResponse::Ok().json(v)
}

fn err(e: impl std::fmt::Display) -> HttpResponse {
    tracing::warn!(error = %e, "cluster RPC failed");
    problem(
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        "store error",
    )
}

type NodeData = web::Data<Arc<Node>>;

/// Signs every answer to a request that carried a nonce (accepted or refused alike): the caller
/// checks the signature before believing the answer ([`Node::call`]).
async fn sign_responses(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let node = req.app_data::<NodeData>().cloned();
    let nonce = req
        .headers()
        .get(auth::HEADER_NONCE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = req.path().to_string();
    let res = next.call(req).await?;
    let (req, res) = res.into_parts();
    let status = res.status();
    let (mut head, body) = res.into_parts();
    let bytes = actix_web::body::to_bytes(body)
        .await
        .map_err(|_| actix_web::error::ErrorInternalServerError("cluster RPC body"))?;
    if let (Some(node), Some(nonce)) = (node, nonce) {
        let sig = node.sign_response(&path, &nonce, status.as_u16(), &bytes);
        if let Ok(v) = HeaderValue::from_str(&sig) {
            head.headers_mut()
                .insert(HeaderName::from_static(auth::HEADER_RESP_SIG), v);
        }
    }
    Ok(ServiceResponse::new(
        req,
        head.set_body(bytes).map_into_boxed_body(),
    ))
}

async fn apply(node: NodeData, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let r: ApplyReq = match open(&node, &req, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let (mut applied, mut rejected) = (0, 0);
    #[cfg(test)]
    let stall = if r.records.iter().any(|r| r.if_version.is_some()) {
        node.stall_prepares_ms
            .load(std::sync::atomic::Ordering::SeqCst)
    } else {
        0
    };
    for rec in r.records {
        let ks = match intern(&rec.ks) {
            Ok(ks) => ks,
            Err(e) => return err(e),
        };
        let res = match &rec.if_version {
            None => node.replica.merge(ks, &rec.key, &rec.rec).await,
            Some(base) => match node.replica.prepare(ks, &rec.key, &rec.rec, base).await {
                Ok(false) => {
                    rejected += 1;
                    Ok(false)
                }
                other => other,
            },
        };
        match res {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(e) => return err(e),
        }
    }
    #[cfg(test)]
    if stall > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(stall)).await;
    }
    ok(&ApplyResp { applied, rejected })
}

async fn get(node: NodeData, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let (r, ks) = match open_in(&node, &req, &body, |r: &KeyReq| &r.ks) {
        Ok(opened) => opened,
        Err(resp) => return resp,
    };
    // the provisional copy first: a commit writes the record before dropping it, so a reader
    // never misses a transition that is between the two
    let provisional = node.replica.provisional_of(ks, &r.key);
    match node.replica.read(ks, &r.key).await {
        Ok(record) => ok(&GetResp {
            record,
            provisional,
        }),
        Err(e) => err(e),
    }
}

/// A read at this node as the key's primary, after transitions in flight on it are decided
/// ([`Node::read_settled_local`]). Bounded like [`get`]: one key of a known (or internable)
/// keyspace; a node-local keyspace is nobody else's to read.
async fn get_settled(node: NodeData, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let (r, ks) = match open_in(&node, &req, &body, |r: &KeyReq| &r.ks) {
        Ok(opened) => opened,
        Err(resp) => return resp,
    };
    if is_local_keyspace(ks) {
        return problem(
            actix_web::http::StatusCode::BAD_REQUEST,
            "a node-local keyspace is not replicated",
        );
    }
    match node.read_settled_local(ks, &r.key).await {
        Ok(record) => ok(&GetResp {
            record,
            provisional: None,
        }),
        Err(e) => err(e),
    }
}

async fn decide(node: NodeData, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let (r, ks) = match open_in(&node, &req, &body, |r: &DecideReq| &r.ks) {
        Ok(opened) => opened,
        Err(resp) => return resp,
    };
    if r.commit {
        if let Err(e) = node.replica.commit(ks, &r.key, &r.rec).await {
            return err(e);
        }
    } else {
        node.replica.abort(ks, &r.key, &r.rec.version);
    }
    ok(&Empty {})
}

async fn cas(node: NodeData, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let (r, ks) = match open_in(&node, &req, &body, |r: &CasReq| &r.ks) {
        Ok(opened) => opened,
        Err(resp) => return resp,
    };
    let new = r
        .new
        .map(|v| (v, r.ttl_ms.map(std::time::Duration::from_millis)));
    match node.cas_local(ks, &r.key, r.expected, new).await {
        Ok((outcome, current)) => ok(&CasResp {
            swapped: outcome == crate::store::Cas::Swapped,
            current,
        }),
        Err(e) => err(e),
    }
}

async fn digest(node: NodeData, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if let Err(resp) = open::<Empty>(&node, &req, &body) {
        return resp;
    }
    ok(&DigestResp {
        keyspaces: node.replica.digest(),
    })
}

async fn versions(node: NodeData, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let r: VersionsReq = match open(&node, &req, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    ok(&VersionsResp {
        entries: node.replica.versions(&r.ks),
    })
}

async fn fetch(node: NodeData, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let (r, ks) = match open_in(&node, &req, &body, |r: &FetchReq| &r.ks) {
        Ok(opened) => opened,
        Err(resp) => return resp,
    };
    let mut records = Vec::with_capacity(r.keys.len());
    for key in r.keys.into_iter().take(1024) {
        match node.replica.read(ks, &key).await {
            Ok(Some(rec)) => records.push(Record {
                ks: r.ks.clone(),
                key,
                rec,
                if_version: None,
            }),
            Ok(None) => {}
            Err(e) => return err(e),
        }
    }
    ok(&FetchResp { records })
}

async fn publish(node: NodeData, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let r: PublishReq = match open(&node, &req, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    node.local_bus.deliver_local(Event {
        topic: r.topic,
        payload: r.payload,
    });
    ok(&Empty {})
}

/// Registers the RPC routes (each with the RPC body limit) on an app: the RPC server's own, or the
/// public server's when `cluster.rpc_addr` is the HTTP listener.
pub fn configure(cfg: &mut web::ServiceConfig, node: Arc<Node>) {
    let data = web::Data::new(node);
    type MakeRoute = fn() -> actix_web::Route;
    let routes: [(&str, MakeRoute); 9] = [
        (PATH_APPLY, || web::post().to(apply)),
        (PATH_GET, || web::post().to(get)),
        (PATH_GET_SETTLED, || web::post().to(get_settled)),
        (PATH_CAS, || web::post().to(cas)),
        (PATH_DIGEST, || web::post().to(digest)),
        (PATH_VERSIONS, || web::post().to(versions)),
        (PATH_FETCH, || web::post().to(fetch)),
        (PATH_PUBLISH, || web::post().to(publish)),
        (PATH_DECIDE, || web::post().to(decide)),
    ];
    for (path, route) in routes {
        cfg.service(
            web::resource(path)
                .wrap(from_fn(sign_responses))
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(BODY_LIMIT))
                .route(route()),
        );
    }
}

/// Binds the RPC listener and returns the running server (spawn it, stop it through its handle).
pub fn server(
    node: Arc<Node>,
    listener: std::net::TcpListener,
) -> std::io::Result<actix_web::dev::Server> {
    Ok(HttpServer::new(move || {
        App::new()
            .configure(|cfg| configure(cfg, node.clone()))
            .default_service(web::to(|| async {
                problem(
                    actix_web::http::StatusCode::NOT_FOUND,
                    "no such cluster RPC",
                )
            }))
    })
    .workers(2)
    .tcp_nodelay(true)
    // Longer than the RPC client's pool idle timeout (20 s), so the server never closes a
    // connection the client is about to reuse.
    .keep_alive(std::time::Duration::from_secs(60))
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listener)?
    .run())
}
