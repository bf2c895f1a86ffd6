//! The policy bookkeeping ([`Outcome`]) and the checks every format shares: the validity window
//! and the issuer allow-list.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Ctx;
use crate::roles::verifier::model::{PolicyResult, PresentedCredential, ALL_POLICIES};

/// Clock skew accepted on every time check, in seconds.
pub(super) const SKEW: i64 = 60;
/// How old a key-binding JWT (`iat`) may be, in seconds.
pub(super) const KB_MAX_AGE: i64 = 300;

/// The longest reason a failed policy keeps, in characters.
pub const MAX_REASON_CHARS: usize = 512;
/// The most reasons one policy keeps (then "and more").
pub const MAX_REASONS: usize = 16;

/// `reason` cut to [`MAX_REASON_CHARS`] characters.
pub fn clip_reason(reason: String) -> String {
    if reason.len() <= MAX_REASON_CHARS {
        return reason;
    }
    crate::crypto::mdoc::clip_to(&reason, MAX_REASON_CHARS)
}

/// Accumulates policy outcomes: a policy passes when it ran and nothing failed it.
#[derive(Default)]
pub struct Outcome {
    failures: BTreeMap<&'static str, Vec<String>>,
    ran: std::collections::BTreeSet<&'static str>,
    pub credentials: Vec<PresentedCredential>,
    /// Set when a JSON-LD verification hit a resource limit (too complex, or no free slot): the
    /// input was not judged, and VC-API answers with that error rather than a verdict.
    pub limit: Option<crate::crypto::CryptoError>,
}

pub(super) fn over_limit(out: &mut Outcome, e: &crate::crypto::CryptoError) {
    use crate::crypto::CryptoError;
    if matches!(
        e,
        CryptoError::TooComplex(_) | CryptoError::OutOfTime(_) | CryptoError::Busy(_)
    ) {
        out.limit = Some(e.clone());
    }
}

impl Outcome {
    pub fn pass(&mut self, policy: &'static str) {
        self.ran.insert(policy);
    }
    /// Records why `policy` failed. Reasons quote what the presentation says (a `kid`, a type,
    /// an issuer) and are stored with the session and answered to the wallet: each is cut to
    /// [`MAX_REASON_CHARS`] and a policy keeps [`MAX_REASONS`] of them (attacker review: a
    /// 700 KB `kid`, refused before any signature check, was stored twice per attempt).
    pub fn fail(&mut self, policy: &'static str, reason: impl Into<String>) {
        self.ran.insert(policy);
        let reasons = self.failures.entry(policy).or_default();
        match reasons.len() {
            n if n < MAX_REASONS => reasons.push(clip_reason(reason.into())),
            n if n == MAX_REASONS => reasons.push("and more".into()),
            _ => {}
        }
    }
    pub fn results(&self, enabled: &[String]) -> Vec<PolicyResult> {
        ALL_POLICIES
            .iter()
            .filter(|p| enabled.iter().any(|e| e == *p))
            .map(|p| match self.failures.get(p) {
                Some(reasons) => PolicyResult {
                    name: p.to_string(),
                    passed: false,
                    reason: Some(reasons.join("; ")),
                },
                None if self.ran.contains(p) => PolicyResult {
                    name: p.to_string(),
                    passed: true,
                    reason: None,
                },
                None => PolicyResult {
                    name: p.to_string(),
                    passed: false,
                    reason: Some("not evaluated: no credential reached this check".into()),
                },
            })
            .collect()
    }
}

/// Parses an RFC 3339 / XML Schema dateTime; `Err` for a present but unparseable value.
pub(super) fn date(v: &Value, name: &str) -> Result<Option<i64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|d| Some(d.timestamp()))
            .map_err(|_| format!("{name} `{s}` is not a valid date-time")),
        other => Err(format!("{name} {other} is not a date-time string")),
    }
}

/// A NumericDate claim (`exp`, `nbf`, `iat`); `Err` for a present but non-numeric value.
pub(super) fn numeric(v: &Value, name: &str) -> Result<Option<i64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or_else(|| format!("{name} is not a NumericDate")),
        _ => Err(format!("{name} is not a NumericDate")),
    }
}

/// The validity window a credential states: JWT `nbf`/`exp` and the W3C `validFrom`/`validUntil`
/// (VCDM 2.0) or `issuanceDate`/`expirationDate` (VCDM 1.1) of `vc` — the strictest of them.
pub(super) fn window(jwt: &Value, vc: &Value) -> Result<(Option<i64>, Option<i64>), String> {
    let mut from = numeric(&jwt["nbf"], "nbf")?;
    let mut until = numeric(&jwt["exp"], "exp")?;
    for (k, is_from) in [
        ("validFrom", true),
        ("issuanceDate", true),
        ("validUntil", false),
        ("expirationDate", false),
    ] {
        if let Some(t) = date(&vc[k], k)? {
            if is_from {
                from = Some(from.map_or(t, |f| f.max(t)));
            } else {
                until = Some(until.map_or(t, |u| u.min(t)));
            }
        }
    }
    Ok((from, until))
}

/// The `validity` policy for one credential (or presentation).
pub(super) fn check_time(out: &mut Outcome, jwt: &Value, vc: &Value, now: i64, what: &str) {
    match window(jwt, vc) {
        Err(e) => out.fail("validity", format!("{what}: {e}")),
        Ok((_, Some(until))) if until + SKEW <= now => {
            out.fail("validity", format!("{what} expired at {until}"))
        }
        Ok((Some(from), _)) if from - SKEW > now => {
            out.fail("validity", format!("{what} not valid before {from}"))
        }
        Ok(_) => out.pass("validity"),
    }
}

/// The issuers a verification trusts (`issuer_allowlist`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// `verifier.trust = "any"`: every issuer whose key binding and signature verify.
    Any,
    /// Exactly these issuer identifiers; an empty list trusts no one.
    Only(Vec<String>),
}

/// The `issuer_allowlist` policy; whether the issuer is trusted.
pub(super) fn check_issuer(out: &mut Outcome, ctx: &Ctx<'_>, iss: &str) -> bool {
    match ctx.trust {
        Trust::Any => out.pass("issuer_allowlist"),
        Trust::Only(list) if list.iter().any(|t| t == iss) => out.pass("issuer_allowlist"),
        Trust::Only(list) if list.is_empty() => {
            out.fail(
                "issuer_allowlist",
                format!("issuer {iss}: this verifier trusts no issuer (set trusted_issuers)"),
            );
            return false;
        }
        Trust::Only(_) => {
            out.fail("issuer_allowlist", format!("issuer {iss} is not trusted"));
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a presentation says is quoted in its failure reasons, which are stored with the
    /// session and answered to the wallet: a huge `kid` or a thousand failing credentials leave
    /// bounded reasons (attacker review: a 700 KB `kid` was stored twice per attempt).
    #[test]
    fn failure_reasons_are_bounded() {
        let mut out = Outcome::default();
        out.fail(
            "signature",
            format!("kid {} is not the issuer's", "k".repeat(700_000)),
        );
        for i in 0..1000 {
            out.fail("query_match", format!("credential {i} does not match"));
        }
        let results = out.results(&["signature".to_string(), "query_match".to_string()]);
        let reason = |name: &str| {
            results
                .iter()
                .find(|r| r.name == name)
                .and_then(|r| r.reason.clone())
                .unwrap()
        };
        assert!(reason("signature").chars().count() <= MAX_REASON_CHARS + 1);
        assert!(reason("signature").ends_with('…'));
        let matches = reason("query_match");
        assert_eq!(matches.split("; ").count(), MAX_REASONS + 1);
        assert!(matches.ends_with("and more"), "{matches}");
        assert!(results.iter().all(|r| !r.passed));
    }
}
