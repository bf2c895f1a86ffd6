//! The internal RPC listener (`cluster.rpc_addr`): a small actix server of its own, up before the
//! roles initialise (peers need it while they bootstrap), every request HMAC-authenticated, and
//! every answer to a signed request signed over that request's nonce ([`sign_responses`]), so a
//! process without the cluster secret can neither call a node nor answer in a peer's place.
//!
//! A request's head is judged before any body byte is read ([`admit`]): a head signature without
//! the body, then the declared length against [`BODY_LIMIT`]; the body then has
//! `cluster.rpc_timeout_ms` to arrive. So a process without the secret cannot make a node buffer
//! bodies it will refuse, and a stalled body does not hold memory forever.

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{self as http_header, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpMessage, HttpRequest, HttpResponse, HttpServer};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth;
use super::node::{Member, Node};
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
    // taken out: one admission (and its nonce reservation) serves one full check
    let Some(admission) = req.extensions_mut().remove::<auth::Admission>() else {
        // every RPC route is wrapped in `admit`; without its mark the request was never judged
        tracing::warn!(peer = ?req.peer_addr(), "cluster RPC refused: not admitted");
        return Err(problem(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "request not admitted",
        ));
    };
    node.verifier
        .verify(
            node.now_ms(),
            admission,
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

/// The data protocol of the live member `caller` (the unauthenticated node-id header) names, if
/// it is one from before incarnation-bound requests ([`auth::GENERATION_SINCE_PROTOCOL`]): during
/// a rolling upgrade the newer nodes, held back, still take the older ones' replication and
/// compare-and-swap calls, signed in the older forms. A protocol-2 caller's requests are checked
/// in its form (bound to this node, not its incarnation: [`auth::Form::Node`]); a protocol-1
/// caller's carry no head and get the old treatment (body read under the limit and deadline, then
/// the full legacy signature checked). Anyone else must sign in the current form. Gossip is
/// authenticated, so the member list is the cluster's; only the header could be spoofed, and only
/// while an older node lives (then a request an older node signed can be replayed to a restarted
/// node, as before: the older form names no incarnation).
fn older_caller(members: &[Member], me: &str, caller: Option<&str>) -> Option<u32> {
    let caller = caller.filter(|caller| *caller != me)?;
    members
        .iter()
        .find(|m| {
            m.node_id == caller
                && m.state == "alive"
                && m.protocol < auth::GENERATION_SINCE_PROTOCOL
        })
        .map(|m| m.protocol)
}

/// The answer to a head refused by [`auth::Verifier::verify_head`]: 401, and for a head signed
/// for another incarnation of this node, its current generation (code
/// [`auth::OTHER_INCARNATION_CODE`]), so a caller whose gossip view is stale retries once signed
/// for it. Signed over the request's nonce like every answer ([`sign_responses`]): the caller
/// believes it only as the answer to its own request. Telling it costs nothing: the head's MAC
/// verified (only a key holder gets this answer), and generations are in gossip anyway.
fn refused_head(e: &auth::AuthError) -> HttpResponse {
    match e {
        auth::AuthError::OtherIncarnation { current } => HttpResponse::Unauthorized()
            .content_type("application/problem+json")
            .json(serde_json::json!({
                "type": format!("{}cluster_rpc", crate::error::PROBLEM_TYPE_BASE),
                "title": "cluster RPC refused",
                "status": 401,
                "detail": e.to_string(),
                "code": auth::OTHER_INCARNATION_CODE,
                "generation": current,
            })),
        e => problem(StatusCode::UNAUTHORIZED, &e.to_string()),
    }
}

/// The body as it arrives, cut off with an error at `timeout` after the head: actix bounds the
/// head (`client_request_timeout`) but not the body. A stream rather than a buffer, so the
/// handler's `web::Bytes` stays the only copy of a large batch.
fn with_deadline(
    payload: Payload,
    timeout: std::time::Duration,
) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<web::Bytes, PayloadError>>>> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = futures_util::stream::unfold(Some(payload), move |state| async move {
        let mut payload = state?;
        match tokio::time::timeout_at(deadline, payload.next()).await {
            Ok(Some(item)) => Some((item, Some(payload))),
            Ok(None) => None,
            // the error ends the stream: the extractor refuses the request, the connection closes
            Err(_) => Some((
                Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the cluster RPC body did not arrive within {} ms",
                        timeout.as_millis()
                    ),
                ))),
                None,
            )),
        }
    });
    Box::pin(stream)
}

/// Judges a request before its body is read (inside [`sign_responses`], so refusals are signed
/// like every answer): the head signature for this node's incarnation (in the form of the
/// caller's protocol), reserving its nonce (401: bad, signed for another incarnation — with the
/// current generation, see [`refused_head`] — or the nonce already reserved or used), the
/// declared length (413), then hands the body on under the read deadline. The full signature over the body is checked afterwards ([`open`]), against the
/// reservation this leaves in the request's extensions: so a captured head gets one body read,
/// not one per connection.
async fn admit(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(node) = req.app_data::<NodeData>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    // a node listed in `cluster.retired_nodes` that still runs (its operator stopped it later,
    // or it came back) is no member: none of its calls is taken, so it can neither vote in
    // this node's transitions nor execute its own with this node's acknowledgement (cluster
    // review: counted out of the majority but still voting, two sides of a partition each had
    // one). The header is the caller's own word; a retired node that tells the truth is the case
    // this stops, not a key holder that lies.
    if let Some(caller) = header(req.request(), auth::HEADER_NODE)
        .filter(|c| *c != node.id() && node.settings.retired.contains(*c))
    {
        tracing::warn!(
            caller,
            "cluster RPC refused: the caller is a retired node (cluster.retired_nodes)"
        );
        return Ok(unread_and_closed(
            req,
            problem(StatusCode::FORBIDDEN, "this node id is retired"),
        ));
    }
    let head_sig = req
        .headers()
        .get(auth::HEADER_HEAD_SIG)
        .and_then(|v| v.to_str().ok());
    let generation = header(req.request(), auth::HEADER_GENERATION);
    let older = older_caller(
        &node.members(),
        node.id(),
        header(req.request(), auth::HEADER_NODE),
    );
    let admission = if head_sig.is_none()
        && older.is_some_and(|p| p < auth::HEAD_SIG_SINCE_PROTOCOL)
    {
        auth::Admission::Legacy
    } else {
        // a live protocol-2 caller signs for this node, not its incarnation, and names none; so
        // does a current caller whose view of this node is stale (it still lists this node's
        // protocol-2 incarnation) — checked in that form too, see below
        let form = if generation.is_none() {
            auth::Form::Node
        } else {
            auth::Form::Incarnation
        };
        let verdict = node.verifier.verify_head(
            node.now_ms(),
            form,
            req.method().as_str(),
            req.path(),
            header(req.request(), auth::HEADER_TS),
            header(req.request(), auth::HEADER_NONCE),
            generation,
            head_sig,
        );
        // The node form is accepted only from a live older member, and the caller header that
        // says who that is carries no MAC. A head that verifies in it from anyone else keeps its
        // nonce reserved, never used — a replay of it under a spoofed caller header is a replay
        // — and is answered with this incarnation's generation, so a current caller whose view
        // was stale retries once in the current form. (Refusing it with nothing reserved let
        // its replay, re-labelled as from an older member, run a request its caller saw fail.)
        let verdict = match verdict {
            Ok(_) if form == auth::Form::Node && older.is_none() => {
                Err(auth::AuthError::OtherIncarnation {
                    current: node.settings.generation,
                })
            }
            v => v,
        };
        match verdict {
            Ok(reservation) => auth::Admission::Head(reservation),
            Err(e) => {
                if matches!(e, auth::AuthError::OtherIncarnation { .. }) {
                    // a peer that has not yet heard of this restart (it retries), or a replay
                    // of a request captured before it
                    tracing::info!(peer = ?req.peer_addr(), error = %e, "cluster RPC refused before its body");
                } else {
                    tracing::warn!(peer = ?req.peer_addr(), error = %e, "cluster RPC refused before its body");
                }
                return Ok(unread_and_closed(req, refused_head(&e)));
            }
        }
    };
    // how the full check in the handler (`open`) judges this request: the nonce its head
    // reserved, or the legacy form
    req.extensions_mut().insert(admission);
    let declared = req
        .headers()
        .get(http_header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Ok(unread_and_closed(
            req,
            problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than {BODY_LIMIT} bytes"),
            ),
        ));
    }
    let payload = req.take_payload();
    req.set_payload(Payload::Stream {
        payload: with_deadline(payload, node.settings.rpc_timeout),
    });
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// A request's unread body, held by its refusal until [`sign_responses`] has signed it and it is
/// written (`body_deadline::closing`).
struct Unread(Payload);

/// A refusal before the body was read, on a connection closed after it (attacker review: a
/// refused chunked request whose body never came kept its connection open for ever, actix
/// draining the dropped payload with no timer; thousands of them, unauthenticated, exhausted
/// the RPC listener).
fn unread_and_closed(mut req: ServiceRequest, mut resp: HttpResponse) -> ServiceResponse<BoxBody> {
    resp.head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    resp.extensions_mut().insert(Unread(req.take_payload()));
    req.into_response(resp).map_into_boxed_body()
}

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
        // (a test node of an earlier protocol answers as that protocol did)
        if node.settings.protocol >= auth::RESP_LEN_SINCE_PROTOCOL {
            let len = node.sign_response_len(&path, &nonce, status.as_u16(), bytes.len() as u64);
            if let Ok(v) = HeaderValue::from_str(&len) {
                head.headers_mut()
                    .insert(HeaderName::from_static(auth::HEADER_RESP_LEN), v);
            }
        }
    }
    let unread = head.extensions_mut().remove::<Unread>();
    let resp = head.set_body(bytes).map_into_boxed_body();
    let resp = match unread {
        Some(Unread(payload)) => crate::http::body_deadline::closing(resp, payload),
        None => resp,
    };
    Ok(ServiceResponse::new(req, resp))
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
    if is_local_keyspace(ks) {
        // this node's own bookkeeping (its generation, prepared copies): nobody else's to read
        return problem(
            actix_web::http::StatusCode::BAD_REQUEST,
            "a node-local keyspace is not replicated",
        );
    }
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
        node.replica.abort(ks, &r.key, &r.rec.version).await;
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
    let (entries, next) = match r.limit {
        Some(limit) => {
            node.replica
                .versions_page(&r.ks, r.after.as_deref(), limit.clamp(1, MAX_VERSIONS_PAGE))
        }
        None => (node.replica.versions(&r.ks), None),
    };
    ok(&VersionsResp { entries, next })
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
                // `admit` inside `sign_responses`: its refusals are signed too
                .wrap(from_fn(admit))
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
            // (the body of a request to no route is never read: held, and the connection closed)
            .default_service(web::to(|payload: web::Payload| async move {
                crate::http::body_deadline::closing(
                    problem(
                        actix_web::http::StatusCode::NOT_FOUND,
                        "no such cluster RPC",
                    ),
                    payload.into_inner(),
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

#[cfg(test)]
mod tests {
    use super::{older_caller, refused_head};
    use crate::cluster::auth::{self, AuthError};
    use crate::cluster::node::tests::member;

    #[test]
    fn only_a_live_older_member_may_call_in_an_older_form() {
        let members = [
            member("me", "alive", 3),
            member("old", "alive", 1),
            member("two", "alive", 2),
            member("gone", "dead", 1),
            member("gone2", "dead", 2),
            member("new", "alive", 3),
        ];
        assert_eq!(older_caller(&members, "me", Some("old")), Some(1));
        assert_eq!(older_caller(&members, "me", Some("two")), Some(2));
        // a dead older node, a current one, an unknown name, no name, this node's own name
        for caller in [
            Some("gone"),
            Some("gone2"),
            Some("new"),
            Some("stranger"),
            None,
        ] {
            assert_eq!(older_caller(&members, "me", caller), None, "{caller:?}");
        }
        assert_eq!(
            older_caller(&[member("me", "alive", 1)], "me", Some("me")),
            None
        );
    }

    #[actix_web::test]
    async fn a_head_for_another_incarnation_is_answered_with_the_current_generation() {
        async fn body(e: &AuthError) -> actix_web::web::Bytes {
            let res = refused_head(e);
            assert_eq!(res.status(), 401);
            actix_web::body::to_bytes(res.into_body()).await.unwrap()
        }
        let other = body(&AuthError::OtherIncarnation { current: 77 }).await;
        assert_eq!(auth::other_incarnation(&other), Some(77));
        for e in [AuthError::BadSignature, AuthError::Replay, AuthError::Stale] {
            assert_eq!(auth::other_incarnation(&body(&e).await), None);
        }
    }
}
