//! Verifier management API (`/api/verifiers...`, admin token): tenants, sessions, results, SSE.

use std::time::Duration;

use actix_web::{delete, get, post, put, web, HttpResponse};
use futures_util::stream;

use super::model::*;
use super::service::VerifierService;
use crate::error::{ApiResult, Problem};
use crate::http::auth::Admin;

type Svc = web::Data<VerifierService>;

/// Create a verifier (optionally with a signing key for signed request objects).
#[utoipa::path(tag = "verifier", security(("admin_token" = [])), request_body = CreateVerifier, responses((status = 201, body = Verifier), (status = 409, body = Problem), (status = 422, body = Problem)))]
#[post("/api/verifiers")]
pub async fn create_verifier(
    _a: Admin,
    svc: Svc,
    body: web::Json<CreateVerifier>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Created().json(svc.create_verifier(body.into_inner()).await?))
}

/// List verifiers.
#[utoipa::path(tag = "verifier", security(("admin_token" = [])), responses((status = 200, body = Vec<Verifier>)))]
#[get("/api/verifiers")]
pub async fn list_verifiers(_a: Admin, svc: Svc) -> ApiResult<web::Json<Vec<Verifier>>> {
    Ok(web::Json(svc.list_verifiers().await?))
}

/// Get a verifier.
#[utoipa::path(tag = "verifier", security(("admin_token" = [])), params(("verifier" = String, Path)), responses((status = 200, body = Verifier), (status = 404, body = Problem)))]
#[get("/api/verifiers/{verifier}")]
pub async fn get_verifier(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<web::Json<Verifier>> {
    Ok(web::Json(svc.get_verifier(&path).await?))
}

/// The key of this verifier's own webhook signature (`X-Idstack-Tenant-Signature`): give it to
/// a receiver that serves this verifier alone.
#[utoipa::path(tag = "verifier", security(("admin_token" = [])), params(("verifier" = String, Path)), responses((status = 200, body = crate::http::webhook::WebhookSecret), (status = 404, body = Problem)))]
#[get("/api/verifiers/{verifier}/webhook-secret")]
pub async fn verifier_webhook_secret(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<web::Json<crate::http::webhook::WebhookSecret>> {
    let verifier = svc.get_verifier(&path).await?;
    Ok(web::Json(svc.webhook_secret(&verifier)))
}

/// Update a verifier's display name or trusted issuers.
#[utoipa::path(tag = "verifier", security(("admin_token" = [])), params(("verifier" = String, Path)), request_body = UpdateVerifier, responses((status = 200, body = Verifier), (status = 404, body = Problem)))]
#[put("/api/verifiers/{verifier}")]
pub async fn update_verifier(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
    body: web::Json<UpdateVerifier>,
) -> ApiResult<web::Json<Verifier>> {
    Ok(web::Json(
        svc.update_verifier(&path, body.into_inner()).await?,
    ))
}

/// Delete a verifier.
#[utoipa::path(tag = "verifier", security(("admin_token" = [])), params(("verifier" = String, Path)), responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
#[delete("/api/verifiers/{verifier}")]
pub async fn delete_verifier(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    svc.delete_verifier(&path).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Create a verification session from a DCQL query or a presentation definition.
#[utoipa::path(tag = "verifier", security(("admin_token" = [])), params(("verifier" = String, Path)), request_body = CreateSessionRequest, responses((status = 201, body = SessionCreated), (status = 404, body = Problem), (status = 422, body = Problem)))]
#[post("/api/verifiers/{verifier}/sessions")]
pub async fn create_session(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
    body: web::Json<CreateSession>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Created().json(svc.create_session(&path, body.into_inner()).await?))
}

/// Sessions of a verifier with their state.
#[utoipa::path(tag = "verifier", security(("admin_token" = [])), params(("verifier" = String, Path)), responses((status = 200, body = Vec<SessionView>), (status = 404, body = Problem)))]
#[get("/api/verifiers/{verifier}/sessions")]
pub async fn list_sessions(
    _a: Admin,
    svc: Svc,
    path: web::Path<String>,
) -> ApiResult<web::Json<Vec<SessionView>>> {
    Ok(web::Json(svc.list_sessions(&path).await?))
}

/// A session's result: state, verified, per-policy results, disclosed claims per credential query.
#[utoipa::path(tag = "verifier", security(("admin_token" = [])), params(("verifier" = String, Path), ("id" = String, Path)), responses((status = 200, body = SessionView), (status = 404, body = Problem)))]
#[get("/api/verifiers/{verifier}/sessions/{id}")]
pub async fn get_session(
    _a: Admin,
    svc: Svc,
    path: web::Path<(String, String)>,
) -> ApiResult<web::Json<SessionView>> {
    let (v, id) = path.into_inner();
    Ok(web::Json(svc.session_view(&v, &id).await?))
}

/// Server-sent events: the session view now and at every change, until it is finished or expired
/// (or the node stops serving: reconnect, the balancer picks a node that serves).
#[utoipa::path(tag = "verifier", security(("admin_token" = [])), params(("verifier" = String, Path), ("id" = String, Path)), responses((status = 200, content_type = "text/event-stream", body = String), (status = 404, body = Problem), (status = 503, body = Problem, description = "The node is stopping or held back: connect again")))]
#[get("/api/verifiers/{verifier}/sessions/{id}/events")]
pub async fn session_events(
    _a: Admin,
    svc: Svc,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (v, id) = path.into_inner();
    if !svc.streams_open() {
        return Err(crate::error::ApiError::unavailable(
            "this node is stopping or does not serve now; connect again (to another node)",
            1,
        ));
    }
    let first = svc.session_view(&v, &id).await?;
    let rx = svc.subscribe();
    // State: (service, ids, receiver, the view to send now, the last frame sent, finished).
    // A frame is sent only when the view differs from the last one sent.
    let init = (svc.clone(), v, id, rx, Some(first), String::new(), false);
    let events = stream::unfold(
        init,
        |(svc, v, id, mut rx, pending, last, done)| async move {
            if done || !svc.streams_open() {
                return None;
            }
            let (view, data) = match pending {
                Some(view) => {
                    let data = serde_json::to_string(&view).unwrap_or_default();
                    (view, data)
                }
                None => loop {
                    // wake on a local change for this session, or re-read every second (other nodes)
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        loop {
                            match rx.recv().await {
                                Ok(changed) if changed == id => break,
                                Ok(_) => continue,
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                                Err(_) => {
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                    break;
                                }
                            }
                        }
                    })
                    .await;
                    if !svc.streams_open() {
                        return None;
                    }
                    match svc.session_view(&v, &id).await {
                        Ok(view) => {
                            let data = serde_json::to_string(&view).unwrap_or_default();
                            if data != last {
                                break (view, data);
                            }
                        }
                        Err(_) => return None,
                    }
                },
            };
            let finished = view.state != SessionState::Pending;
            let frame = web::Bytes::from(format!("event: session\ndata: {data}\n\n"));
            Some((
                Ok::<_, actix_web::Error>(frame),
                (svc, v, id, rx, None, data, finished),
            ))
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(events))
}

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(create_verifier)
        .service(list_verifiers)
        .service(get_verifier)
        .service(verifier_webhook_secret)
        .service(update_verifier)
        .service(delete_verifier)
        .service(create_session)
        .service(list_sessions)
        .service(get_session)
        .service(session_events);
}
