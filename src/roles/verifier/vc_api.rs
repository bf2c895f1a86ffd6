//! W3C VC-API verification: `POST /vc-api/credentials/verify` and `/vc-api/presentations/verify`
//! for JWT (VCDM 1.1 `vc`/`vp` claims and VC-JOSE) and Data Integrity (eddsa-rdfc-2022).

use actix_web::{post, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::service::VerifierService;
use crate::crypto::{did, jws};
use crate::error::ApiResult;

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyCredential {
    #[serde(rename = "verifiableCredential")]
    #[schema(value_type = Object)]
    pub verifiable_credential: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyPresentation {
    #[serde(rename = "verifiablePresentation")]
    #[schema(value_type = Object)]
    pub verifiable_presentation: Value,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub options: Value,
}

#[derive(Debug, Serialize, ToSchema, Default)]
pub struct VerifyResult {
    pub verified: bool,
    pub checks: Vec<String>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

impl VerifyResult {
    fn check(&mut self, name: &str, r: Result<(), String>) {
        match r {
            Ok(()) => self.checks.push(name.to_string()),
            Err(e) => self.errors.push(format!("{name}: {e}")),
        }
    }
    fn done(mut self) -> Self {
        self.verified = self.errors.is_empty() && !self.checks.is_empty();
        self
    }
}

async fn verify_vc(svc: &VerifierService, vc: &Value, now: i64, out: &mut VerifyResult) {
    match vc {
        Value::String(jwt) => {
            let header = match jws::decode_unverified(jwt) {
                Ok((h, _, _, _)) => h,
                Err(e) => return out.check("proof", Err(e.to_string())),
            };
            let kid = header["kid"].as_str().unwrap_or_default();
            let key = match did::resolve(kid, &svc.state.http).await {
                Ok(k) => k,
                Err(e) => return out.check("proof", Err(format!("issuer key: {e}"))),
            };
            match jws::verify(jwt, &key) {
                Ok((_, p)) => {
                    out.check("proof", Ok(()));
                    let exp = p["exp"].as_i64();
                    out.check(
                        "expiration",
                        if exp.is_some_and(|e| e <= now) {
                            Err("expired".into())
                        } else {
                            Ok(())
                        },
                    );
                }
                Err(e) => out.check("proof", Err(e.to_string())),
            }
        }
        Value::Object(_) => {
            let v = vc.clone();
            let r =
                tokio::task::spawn_blocking(move || crate::crypto::di::verify_credential(&v, now))
                    .await;
            out.check(
                "proof",
                match r {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
            );
            let until = vc["validUntil"]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|d| d.timestamp());
            out.check(
                "expiration",
                if until.is_some_and(|u| u <= now) {
                    Err("expired".into())
                } else {
                    Ok(())
                },
            );
        }
        _ => out.check(
            "proof",
            Err("a verifiable credential is a JWT string or a JSON-LD object".into()),
        ),
    }
}

/// Verify a credential (VC-API).
#[utoipa::path(tag = "verifier", request_body = VerifyCredential, responses((status = 200, body = VerifyResult), (status = 400, body = crate::error::Problem)))]
#[post("/vc-api/credentials/verify")]
pub async fn verify_credential(
    svc: web::Data<VerifierService>,
    body: web::Json<VerifyCredential>,
) -> ApiResult<web::Json<VerifyResult>> {
    let mut out = VerifyResult::default();
    verify_vc(
        &svc,
        &body.verifiable_credential,
        svc.state.clock.now_secs(),
        &mut out,
    )
    .await;
    Ok(web::Json(out.done()))
}

/// Verify a presentation and the credentials in it (VC-API). `options.challenge` / `options.domain`
/// are checked against the proof (Data Integrity) or `nonce` / `aud` (JWT).
#[utoipa::path(tag = "verifier", request_body = VerifyPresentation, responses((status = 200, body = VerifyResult), (status = 400, body = crate::error::Problem)))]
#[post("/vc-api/presentations/verify")]
pub async fn verify_presentation(
    svc: web::Data<VerifierService>,
    body: web::Json<VerifyPresentation>,
) -> ApiResult<web::Json<VerifyResult>> {
    let now = svc.state.clock.now_secs();
    let challenge = body.options["challenge"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let domain = body.options["domain"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut out = VerifyResult::default();
    let vp = body.verifiable_presentation.clone();
    let credentials: Vec<Value> = match &vp {
        Value::String(jwt) => match jws::decode_unverified(jwt) {
            Ok((h, p, _, _)) => {
                let key = match h["kid"].as_str().filter(|k| k.starts_with("did:")) {
                    Some(kid) => did::resolve(kid, &svc.state.http)
                        .await
                        .map_err(|e| e.to_string()),
                    None => jws::header_key(&h)
                        .map(|(k, _)| k)
                        .map_err(|e| e.to_string()),
                };
                out.check(
                    "proof",
                    key.and_then(|k| jws::verify(jwt, &k).map(|_| ()).map_err(|e| e.to_string())),
                );
                if !challenge.is_empty() {
                    out.check(
                        "challenge",
                        if p["nonce"].as_str() == Some(challenge.as_str()) {
                            Ok(())
                        } else {
                            Err("nonce does not match".into())
                        },
                    );
                }
                if !domain.is_empty() {
                    let aud_ok = p["aud"].as_str() == Some(domain.as_str())
                        || p["aud"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(domain.as_str())));
                    out.check(
                        "domain",
                        if aud_ok {
                            Ok(())
                        } else {
                            Err("aud does not match".into())
                        },
                    );
                }
                match &p["vp"]["verifiableCredential"] {
                    Value::Array(a) => a.clone(),
                    Value::Null => Vec::new(),
                    other => vec![other.clone()],
                }
            }
            Err(e) => {
                out.check("proof", Err(e.to_string()));
                Vec::new()
            }
        },
        Value::Object(_) => {
            let (v, c, d) = (vp.clone(), challenge.clone(), domain.clone());
            let r = tokio::task::spawn_blocking(move || {
                crate::crypto::di::verify_presentation(&v, &c, &d, now)
            })
            .await;
            out.check(
                "proof",
                match r {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
            );
            match &vp["verifiableCredential"] {
                Value::Array(a) => a.clone(),
                Value::Null => Vec::new(),
                other => vec![other.clone()],
            }
        }
        _ => {
            out.check(
                "proof",
                Err("a verifiable presentation is a JWT string or a JSON-LD object".into()),
            );
            Vec::new()
        }
    };
    for vc in credentials {
        verify_vc(&svc, &vc, now, &mut out).await;
    }
    Ok(web::Json(out.done()))
}
