//! Management API authentication. Handlers that need it take an [`Admin`] argument: the only way
//! to obtain one is this extractor's decision, so a privileged handler cannot forget the check.
//! No configured token means the management API is off, never open.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::error::{ApiError, Code};

/// Accepted admin tokens, held as SHA-256 digests and compared in constant time.
pub struct AdminTokens {
    digests: Vec<[u8; 32]>,
}

impl AdminTokens {
    pub fn new(tokens: &[Secret]) -> Self {
        Self {
            digests: tokens
                .iter()
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.expose().as_bytes()).into())
                .collect(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    pub fn check(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Compare against every token so timing does not reveal which one matched.
        self.digests
            .iter()
            .fold(false, |acc, t| acc | bool::from(t.ct_eq(&d)))
    }
}

/// Proof that the request carried a valid admin bearer token.
#[derive(Debug, Clone, Copy)]
pub struct Admin(());

impl Admin {
    /// For code paths that are privileged by construction (CLI, startup). Named to stand out.
    pub fn unsafe_internal() -> Self {
        Admin(())
    }
}

pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(tokens) = req.app_data::<web::Data<AdminTokens>>() else {
            return ready(Err(ApiError::internal("admin tokens missing")));
        };
        if !tokens.is_enabled() {
            return ready(Err(ApiError::new(
                Code::AdminDisabled,
                "set admin.tokens (IDSTACK__ADMIN__TOKENS) to enable the management API",
            )));
        }
        if let Err(locked) = crate::http::ratelimit::tokens_locked(req) {
            return ready(Err(locked));
        }
        ready(match bearer_token(req) {
            None => Err(ApiError::new(
                Code::Unauthorized,
                "send Authorization: Bearer <admin token>",
            )),
            Some(t) if tokens.check(t) => Ok(Admin(())),
            Some(_) => Err(crate::http::ratelimit::charge_failed_token(req)
                .err()
                .unwrap_or_else(|| ApiError::new(Code::Unauthorized, "invalid admin token"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wrong admin tokens are charged to the client's `login` budget: past it every token from
    /// that address gets 429 until the budget refills, the right one too (were it let through,
    /// 429 against 200 would tell a guesser which token is right); other addresses are not
    /// affected.
    #[actix_web::test]
    async fn wrong_admin_tokens_are_rate_limited() {
        use actix_web::{test, App, HttpResponse};
        let cfg = crate::config::RateLimitConfig {
            login_per_minute: 1,
            login_burst: 3,
            ..crate::config::RateLimitConfig::default()
        };
        let limits = crate::http::ratelimit::RateLimits::new(&cfg).unwrap();
        let good = "the-right-admin-token-0123456789";
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(AdminTokens::new(&[Secret::new(good)])))
                .app_data(web::Data::new(limits))
                .route(
                    "/",
                    web::get().to(|_: Admin| async { HttpResponse::Ok().finish() }),
                ),
        )
        .await;
        let call = |token: &str| {
            test::TestRequest::get()
                .uri("/")
                .peer_addr("192.0.2.7:4000".parse().unwrap())
                .insert_header(("authorization", format!("Bearer {token}")))
                .to_request()
        };
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(
                test::call_service(&app, call("a-wrong-guess-0123456789"))
                    .await
                    .status()
                    .as_u16(),
            );
        }
        assert_eq!(statuses, [401, 401, 401, 429, 429]);
        assert_eq!(test::call_service(&app, call(good)).await.status(), 429);
        let elsewhere = test::TestRequest::get()
            .uri("/")
            .peer_addr("198.51.100.9:4000".parse().unwrap())
            .insert_header(("authorization", format!("Bearer {good}")))
            .to_request();
        assert_eq!(test::call_service(&app, elsewhere).await.status(), 200);
    }

    #[tokio::test]
    async fn a_token_lock_ends() {
        let limits =
            crate::http::ratelimit::RateLimits::new(&crate::config::RateLimitConfig::default())
                .unwrap();
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert!(limits.token_lock_left(ip).is_none());
        limits.lock_tokens(ip, std::time::Duration::from_millis(20));
        assert!(limits.token_lock_left(ip).is_some());
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        assert!(limits.token_lock_left(ip).is_none());
    }

    #[test]
    fn tokens_match_exactly() {
        let t = AdminTokens::new(&[
            Secret::new("token-one-0123456789"),
            Secret::new("token-two-0123456789"),
        ]);
        assert!(t.is_enabled());
        assert!(t.check("token-two-0123456789"));
        assert!(!t.check("token-two-012345678"));
        assert!(!t.check(""));
        assert!(!AdminTokens::new(&[]).is_enabled());
    }
}
