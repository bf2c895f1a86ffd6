//! Liveness, readiness and metrics.

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::server::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Live {
    status: &'static str,
    version: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ready` or `not_ready`.
    status: &'static str,
    roles: Vec<&'static str>,
    /// Components that are not ready, with the reason.
    failing: Vec<Failing>,
}

#[derive(Serialize, ToSchema)]
pub struct Failing {
    component: String,
    /// Why, for a caller with the metrics token (`metrics.token`; without one: anyone in sandbox
    /// mode, no one in production): the reasons name peers, keys and store errors, which are not
    /// for every client.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Liveness: the process is up and serving HTTP. Checks no dependency.
#[utoipa::path(tag = "system", responses((status = 200, body = Live)))]
#[get("/health/live")]
pub async fn live() -> web::Json<Live> {
    web::Json(Live {
        status: "live",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Readiness: 200 when a store write probe passes, every enabled role is ready, (in a cluster)
/// this node is caught up, not paused, reaches a replica for writes and holds the cluster's keys,
/// and (on Redis) the store still holds its first-start state; else 503 naming the failing
/// components. Load balancers route on this. The reasons are shown only with the metrics token
/// (`metrics.token`) when one is set: they name peers, keys and store errors.
#[utoipa::path(tag = "system", responses(
    (status = 200, body = Ready), (status = 503, body = Ready)))]
#[get("/health/ready")]
pub async fn ready(req: actix_web::HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let mut failing: Vec<(String, String)> = state.readiness.failing();
    // In a cluster: not while paused/stalled or catching up, while writes cannot reach a replica,
    // or while a key record this node holds in memory was replaced (docs/cluster.md).
    #[cfg(feature = "cluster")]
    if let Some(c) = &state.cluster {
        failing.extend(
            c.node
                .health()
                .into_iter()
                .map(|reason| ("cluster".to_string(), reason)),
        );
    }
    let stall = state.settings.raw.server.worker_stall_ms;
    if stall > 0 {
        let (stalled, longest) = state.workers.stalled(Duration::from_millis(stall));
        if stalled > 0 {
            failing.push((
                "http_workers".into(),
                format!(
                    "{stalled} HTTP worker(s) stalled: an event loop has not run for {} ms (a blocked handler)",
                    longest.as_millis()
                ),
            ));
        }
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store.probe()).await {
        // A store every node shares (Redis) that lost its first-start state (restarted without
        // persistence): not ready from the first request that sees it, before the guard reacts
        // (src/server/first_start.rs).
        Ok(Ok(())) if state.store.shared_by_nodes() => {
            if let Ok(false) = crate::server::first_start::present(state.store.as_ref()).await {
                if !failing
                    .iter()
                    .any(|(c, _)| c == crate::server::first_start::COMPONENT)
                {
                    failing.push((
                        crate::server::first_start::COMPONENT.into(),
                        crate::server::first_start::missing_reason(state.settings.raw.server.mode)
                            .into(),
                    ));
                }
            }
        }
        Ok(Ok(())) => {}
        Ok(Err(e)) => failing.push(("store".into(), e.to_string())),
        Err(_) => failing.push(("store".into(), "write probe timed out".into())),
    }
    // The reasons go to whoever holds the metrics token (without one: to anyone in sandbox
    // mode, to no one in production); the rest see which components fail.
    let detailed = match state.settings.metrics_token.as_ref() {
        Some(token) => crate::http::metrics::authorize(&req, Some(token)).is_ok(),
        None => state.settings.raw.server.mode == crate::config::Mode::Sandbox,
    };
    let failing: Vec<Failing> = failing
        .into_iter()
        .map(|(component, reason)| Failing {
            component,
            reason: detailed.then_some(reason),
        })
        .collect();
    let body = Ready {
        status: if failing.is_empty() {
            "ready"
        } else {
            "not_ready"
        },
        roles: state.roles.iter().map(|r| r.as_str()).collect(),
        failing,
    };
    if body.failing.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}

/// Prometheus metrics in text exposition format.
#[utoipa::path(tag = "system", responses((status = 200, content_type = "text/plain", body = String), (status = 401, body = crate::error::Problem)))]
#[get("/metrics")]
pub async fn metrics(req: actix_web::HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(e) = crate::http::metrics::authorize(&req, state.settings.metrics_token.as_ref()) {
        return actix_web::ResponseError::error_response(&e);
    }
    if let Ok(stats) = state.store.stats().await {
        state
            .metrics
            .store_size_bytes
            .set(i64::try_from(stats.size_on_disk_bytes).unwrap_or(i64::MAX));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig) {
    cfg.service(live)
        .service(ready)
        .service(metrics)
        .service(super::system::system_info)
        .service(super::system::webhook_secret);
    #[cfg(feature = "cluster")]
    cfg.service(crate::cluster::api::cluster_info);
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, App};
    use std::sync::Arc;

    /// Why a node is not ready names peers, keys and store errors: with a metrics token set, only
    /// its holder reads the reasons; anyone still sees the status and the failing components.
    #[actix_web::test]
    async fn readiness_reasons_need_the_metrics_token_when_one_is_set() {
        let token = "metrics-token-0123456789";
        let mut state = AppState::for_tests(crate::clock::FakeClock::new(1_700_000_000_000));
        let mut cfg = crate::config::Config::default();
        cfg.metrics.token = crate::config::Secret::new(token);
        state.settings = Arc::new(cfg.finish().unwrap());
        state.readiness.set_not_ready(
            "cluster",
            "held back: peer n2 at 10.0.0.7:7946 answered late",
        );
        let app =
            test::init_service(App::new().app_data(web::Data::new(state)).service(ready)).await;
        let get = |auth: Option<&str>| {
            let mut r = test::TestRequest::get().uri("/health/ready");
            if let Some(t) = auth {
                r = r.insert_header(("Authorization", format!("Bearer {t}")));
            }
            r.to_request()
        };
        for auth in [None, Some("metrics-token-0123456780")] {
            let r = test::call_service(&app, get(auth)).await;
            assert_eq!(r.status(), 503);
            let body: serde_json::Value = test::read_body_json(r).await;
            assert_eq!(body["failing"][0]["component"], "cluster", "{body}");
            assert!(!body.to_string().contains("10.0.0.7"), "{body}");
            assert!(body["failing"][0].get("reason").is_none(), "{body}");
        }
        let r = test::call_service(&app, get(Some(token))).await;
        assert_eq!(r.status(), 503);
        let body: serde_json::Value = test::read_body_json(r).await;
        assert!(body["failing"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("10.0.0.7"));
        // production without a metrics token: nobody reads them
        let mut state = AppState::for_tests(crate::clock::FakeClock::new(1_700_000_000_000));
        let mut cfg = crate::config::Config::default();
        cfg.server.mode = crate::config::Mode::Production;
        cfg.admin.tokens = vec![crate::config::Secret::new("admin-token-0123456789abcdef")];
        cfg.store.master_key = crate::config::Secret::new("m".repeat(32));
        state.settings = Arc::new(cfg.finish().unwrap());
        state
            .readiness
            .set_not_ready("store", "redis: 10.0.3.7:6379 refused");
        let app =
            test::init_service(App::new().app_data(web::Data::new(state)).service(ready)).await;
        let r = test::call_service(&app, get(None)).await;
        let body: serde_json::Value = test::read_body_json(r).await;
        assert_eq!(body["failing"][0]["component"], "store", "{body}");
        assert!(body["failing"][0].get("reason").is_none(), "{body}");
    }
}
