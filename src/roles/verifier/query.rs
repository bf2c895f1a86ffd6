//! Running a response through verification and matching it against the session's DCQL query or
//! presentation definition (`query_match`).

use serde_json::Value;

use super::verify::{self, Checked, Ctx, Outcome};
use crate::crypto::mdoc::clip;
use crate::dcql::{mismatch, resolve_path, CredentialView};
use crate::pex_filter::Filter;

/// Verifies every presentation in `vp_token` and checks the query is satisfied.
pub async fn evaluate(ctx: &Ctx<'_>, vp_token: &Value, submission: Option<&Value>) -> Outcome {
    let mut out = Outcome::default();
    if let Some(q) = ctx.dcql_query {
        dcql(ctx, &mut out, q, vp_token).await;
    } else if let Some(pd) = ctx.presentation_definition {
        pex(ctx, &mut out, pd, vp_token, submission).await;
    }
    out
}

/// `holder_binding`: the query requires cryptographic holder binding (DCQL
/// `require_cryptographic_holder_binding`, default true; always true for presentation_definition).
async fn verify_one(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    query_id: &str,
    format: &str,
    p: &Value,
    holder_binding: bool,
) -> Vec<Checked> {
    if format == "ldp_vc" || format == "ldp_vp" {
        let vp = match p {
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            other => other.clone(),
        };
        return verify::ldp_vp(ctx, out, query_id, vp).await;
    }
    let Some(s) = p.as_str() else {
        out.fail(
            "signature",
            format!("{query_id}: only string presentations (JWT, SD-JWT) are supported"),
        );
        return Vec::new();
    };
    match format {
        "dc+sd-jwt" | "vc+sd-jwt" => verify::sd_jwt(ctx, out, query_id, s, holder_binding)
            .await
            .into_iter()
            .collect(),
        "jwt_vc_json" | "jwt_vp" | "jwt_vp_json" | "jwt_vc" => {
            verify::jwt_vp(ctx, out, query_id, s, holder_binding).await
        }
        "mso_mdoc" => verify::mdoc(ctx, out, query_id, s).await,
        other => {
            out.fail(
                "signature",
                format!("{query_id}: format {other} cannot be verified by this build"),
            );
            Vec::new()
        }
    }
}

fn view(c: &Checked) -> CredentialView {
    CredentialView {
        format: c.format.clone(),
        root: c.root.clone(),
        vct: c.vct.clone(),
        doctype: c.doctype.clone(),
        types: c.types.clone(),
    }
}

// Over 80 lines: DCQL's matching in order (each query id, its format, claims and
// credential sets) over one shared outcome.
async fn dcql(ctx: &Ctx<'_>, out: &mut Outcome, query: &Value, vp_token: &Value) {
    let Some(map) = vp_token.as_object() else {
        out.fail(
            "query_match",
            "vp_token must be a JSON object keyed by credential query id (DCQL)",
        );
        return;
    };
    let queries = query["credentials"].as_array().cloned().unwrap_or_default();
    let mut satisfied: Vec<String> = Vec::new();
    for (qid, pres) in map {
        let Some(cq) = queries
            .iter()
            .find(|q| q["id"].as_str() == Some(qid.as_str()))
        else {
            out.fail(
                "query_match",
                format!("{}: not a credential query of this request", clip(qid)),
            );
            continue;
        };
        let list: Vec<Value> = match pres {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        let format = cq["format"].as_str().unwrap_or_default().to_string();
        let binding = cq["require_cryptographic_holder_binding"].as_bool() != Some(false);
        // counted before anything is verified: each presentation costs signature checks and
        // status list fetches
        if let Some(why) = too_many(cq, qid, list.len(), 0) {
            out.fail("query_match", why);
            continue;
        }
        let mut all_ok = !list.is_empty();
        let mut documents = 0;
        for p in &list {
            let checked = verify_one(ctx, out, qid, &format, p, binding).await;
            if checked.is_empty() {
                all_ok = false;
            }
            documents += checked.len();
            for c in &checked {
                // bounded work: the credential's content is the presenter's
                let matched =
                    crate::dcql::bounded(crate::dcql::MATCH_WORK, || mismatch(&view(c), cq))
                        .unwrap_or_else(|e| Some(format!("{}: {e}", clip(qid))));
                if let Some(why) = matched.or_else(|| untrusted_authority(c, cq)) {
                    out.fail("query_match", why);
                    all_ok = false;
                }
            }
        }
        if let Some(why) = too_many(cq, qid, list.len(), documents) {
            out.fail("query_match", why);
            all_ok = false;
        }
        if all_ok {
            satisfied.push(qid.clone());
        }
    }
    // Which queries are required: credential_sets (required ones, any option) or all of them.
    let missing: Vec<String> = match query["credential_sets"].as_array() {
        Some(sets) => sets
            .iter()
            .filter(|s| s["required"].as_bool() != Some(false))
            .filter(|s| {
                !s["options"].as_array().is_some_and(|opts| {
                    opts.iter().any(|o| {
                        o.as_array().is_some_and(|ids| {
                            !ids.is_empty()
                                && ids.iter().all(|id| {
                                    id.as_str()
                                        .is_some_and(|id| satisfied.iter().any(|x| x == id))
                                })
                        })
                    })
                })
            })
            .map(|s| format!("credential set {}", s["options"]))
            .collect(),
        None => queries
            .iter()
            .filter_map(|q| q["id"].as_str())
            .filter(|id| !satisfied.iter().any(|s| s == id))
            .map(str::to_string)
            .collect(),
    };
    if missing.is_empty() {
        out.pass("query_match");
    } else {
        out.fail(
            "query_match",
            format!("not satisfied: {}", missing.join(", ")),
        );
    }
}

/// Most presentations for one credential query with `multiple: true`.
pub const MAX_PRESENTATIONS_PER_QUERY: usize = 10;

/// DCQL `multiple` (default false): a single-credential query is answered by one credential,
/// however it comes — one presentation, and one document in an mdoc DeviceResponse; a query
/// with `multiple` by at most [`MAX_PRESENTATIONS_PER_QUERY`] presentations.
fn too_many(cq: &Value, qid: &str, presentations: usize, documents: usize) -> Option<String> {
    if cq["multiple"].as_bool() == Some(true) {
        return (presentations > MAX_PRESENTATIONS_PER_QUERY).then(|| {
            format!("{qid}: {presentations} presentations; at most {MAX_PRESENTATIONS_PER_QUERY} are verified for one query")
        });
    }
    if presentations > 1 {
        return Some(format!(
            "{qid}: several presentations for a single-credential query"
        ));
    }
    (documents > 1).then(|| {
        format!("{qid}: {documents} credentials (documents) for a single-credential query")
    })
}

/// DCQL `trusted_authorities` (type `aki`, the only one session creation accepts): the
/// credential must be issued under one of the named authorities (mso_mdoc: a key identifier over
/// its document signer).
fn untrusted_authority(c: &Checked, cq: &Value) -> Option<String> {
    let authorities = cq["trusted_authorities"].as_array()?;
    let mut named = authorities
        .iter()
        .filter(|a| a["type"] == "aki")
        .filter_map(|a| a["values"].as_array())
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|v| crate::crypto::b64url_decode(v).ok());
    if named.any(|k| c.authorities.contains(&k)) {
        return None;
    }
    Some(format!(
        "{}: not issued under any of the query's trusted_authorities",
        c.query_id
    ))
}

/// Formats verified the same way: a PEX `format` key and a descriptor_map `format` may name the
/// credential or the presentation around it.
pub(super) fn format_family(format: &str) -> Option<&'static str> {
    match format {
        "dc+sd-jwt" | "vc+sd-jwt" => Some("sd-jwt"),
        "jwt_vc_json" | "jwt_vp" | "jwt_vp_json" | "jwt_vc" => Some("jwt"),
        "ldp_vc" | "ldp_vp" | "ldp" => Some("ldp"),
        "mso_mdoc" => Some("mso_mdoc"),
        _ => None,
    }
}

/// Why the holder's `submitted` format cannot answer input descriptor `d`: the descriptor's
/// `format` (else the definition's), when it names formats, must allow it. The format is the
/// holder's word in descriptor_map; only the descriptor decides what answers it.
fn format_refusal(pd: &Value, d: &Value, submitted: &str) -> Option<String> {
    let allowed = d["format"]
        .as_object()
        .or_else(|| pd["format"].as_object())
        .filter(|f| !f.is_empty())?;
    let ok = format_family(submitted)
        .is_some_and(|fam| allowed.keys().any(|k| format_family(k) == Some(fam)));
    (!ok).then(|| {
        let names: Vec<&str> = allowed.keys().map(String::as_str).collect();
        format!(
            "{}: format {} does not answer a descriptor for {}",
            clip(d["id"].as_str().unwrap_or_default()),
            clip(submitted),
            clip(&names.join(", "))
        )
    })
}

/// Why credential `c`, submitted as `submitted`, does not meet the algorithm restrictions of the
/// descriptor's `format` (else the definition's) for its format family: `alg` (a JWT VC's issuer
/// signature, a JWT presentation's holder signature for `jwt_vp*` entries, mdoc's issuerAuth),
/// `sd-jwt_alg_values` / `kb-jwt_alg_values` (an SD-JWT's issuer JWT and KB-JWT), `proof_type`
/// (Data Integrity: `DataIntegrityProof`, the only one verified). Entries of one family and one
/// level (the credential's, or the presentation's: `jwt_vp*`, `ldp_vp`) are alternatives
/// (`jwt_vc` or `jwt_vc_json`): one whose restrictions all hold is enough. Session creation
/// accepts no other restriction.
fn restriction_refusal(pd: &Value, d: &Value, submitted: &str, c: &Checked) -> Option<String> {
    let allowed = d["format"]
        .as_object()
        .or_else(|| pd["format"].as_object())?;
    let family = format_family(submitted)?;
    let id = clip(d["id"].as_str().unwrap_or_default());
    let mut why = None;
    for presentation_level in [false, true] {
        let entries: Vec<(&String, &Value)> = allowed
            .iter()
            .filter(|(name, _)| format_family(name) == Some(family))
            .filter(|(name, _)| {
                (name.starts_with("jwt_vp") || name.starts_with("ldp_vp")) == presentation_level
            })
            .collect();
        // a credential presented bare has no presentation for those entries to restrict
        if entries.is_empty() || (presentation_level && family == "jwt" && c.holder_alg.is_none()) {
            continue;
        }
        let refusals: Vec<String> = entries
            .iter()
            .filter_map(|(name, restrictions)| {
                entry_refusal(family, presentation_level, name, restrictions, c)
            })
            .collect();
        if refusals.len() == entries.len() {
            why = Some(format!("{id}: {}", refusals.join("; ")));
        }
    }
    why
}

/// Why `c` does not meet every restriction of one `format` entry `name`.
fn entry_refusal(
    family: &str,
    presentation_level: bool,
    name: &str,
    restrictions: &Value,
    c: &Checked,
) -> Option<String> {
    for (r, listed) in restrictions.as_object().into_iter().flatten() {
        let used: Option<&str> = match (family, r.as_str()) {
            ("jwt", "alg") if presentation_level => c.holder_alg.as_deref(),
            ("jwt" | "mso_mdoc", "alg") | ("sd-jwt", "sd-jwt_alg_values") => {
                c.issuer_alg.as_deref()
            }
            ("sd-jwt", "kb-jwt_alg_values") => c.holder_alg.as_deref(),
            ("ldp", "proof_type") => Some("DataIntegrityProof"),
            _ => None,
        };
        let ok = used.is_some_and(|u| {
            listed
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(u)))
        });
        if !ok {
            return Some(format!(
                "signed with {}, which format `{}` {} does not list",
                used.unwrap_or("nothing that can be told"),
                clip(name),
                clip(r)
            ));
        }
    }
    None
}

/// Whether the matcher evaluates JSONPath `p` as written: `$`, names (`.a`, `['a']`), indexes
/// and `[*]`. Recursive descent (`..`), `.*`, filter and script expressions parse into segments
/// that select nothing, which would quietly drop an optional field's filter: refused when a
/// session is created.
pub(super) fn json_path_supported(p: &str) -> bool {
    parse_json_path(p).is_some_and(|segs| {
        segs.iter().all(|s| match s.as_str() {
            Some(name) => !name.is_empty() && name != "*" && !name.starts_with(['?', '(']),
            None => true,
        })
    })
}

/// `$`, `$[0]`, `$.a.b`, `$['a']` → path segments.
pub(super) fn parse_json_path(p: &str) -> Option<Vec<Value>> {
    let rest = p.strip_prefix('$')?;
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if n == '.' || n == '[' {
                        break;
                    }
                    name.push(n);
                    chars.next();
                }
                out.push(Value::String(name));
            }
            '[' => {
                let mut inner = String::new();
                for n in chars.by_ref() {
                    if n == ']' {
                        break;
                    }
                    inner.push(n);
                }
                let inner = inner.trim_matches(|c| c == '\'' || c == '"');
                out.push(match inner.parse::<u64>() {
                    Ok(i) => Value::from(i),
                    Err(_) if inner == "*" => Value::Null,
                    Err(_) => Value::String(inner.to_string()),
                });
            }
            _ => return None,
        }
    }
    Some(out)
}

// Over 80 lines: Presentation Exchange's matching in order (submission, descriptor map,
// each descriptor's format, path and constraints) over one shared outcome.
async fn pex(
    ctx: &Ctx<'_>,
    out: &mut Outcome,
    pd: &Value,
    vp_token: &Value,
    submission: Option<&Value>,
) {
    let Some(sub) = submission else {
        out.fail("query_match", "presentation_submission is missing");
        return;
    };
    let descriptors = pd["input_descriptors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let map = sub["descriptor_map"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut missing = Vec::new();
    for d in &descriptors {
        let id = d["id"].as_str().unwrap_or_default();
        let Some(entry) = map.iter().find(|m| m["id"].as_str() == Some(id)) else {
            missing.push(id.to_string());
            continue;
        };
        let path = parse_json_path(entry["path"].as_str().unwrap_or("$")).unwrap_or_default();
        let found = crate::dcql::bounded(crate::dcql::MATCH_WORK, || {
            resolve_path(vp_token, &path).first().cloned().cloned()
        });
        let Some(p) = found.ok().flatten() else {
            out.fail(
                "query_match",
                format!("{id}: descriptor path does not resolve in vp_token"),
            );
            continue;
        };
        let format = entry["format"].as_str().unwrap_or_default();
        if let Some(why) = format_refusal(pd, d, format) {
            out.fail("query_match", why);
            missing.push(id.to_string());
            continue;
        }
        let checked = verify_one(ctx, out, id, format, &p, true).await;
        if checked.is_empty() {
            missing.push(id.to_string());
            continue;
        }
        if checked.len() > 1 {
            out.fail(
                "query_match",
                format!(
                    "{id}: {} credentials (documents) for one input descriptor",
                    checked.len()
                ),
            );
        }
        for c in checked {
            if let Some(why) = restriction_refusal(pd, d, format, &c) {
                out.fail("query_match", why);
            }
            // ISO 18013-7 Annex B: an mso_mdoc input descriptor's id is the doc type it asks for
            if let Some(doctype) = c.doctype.as_deref().filter(|dt| *dt != id) {
                out.fail(
                    "query_match",
                    format!(
                        "{id}: an mdoc of doc type {} does not answer this descriptor",
                        clip(doctype)
                    ),
                );
            }
            let fields = d["constraints"]["fields"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            // bounded work: the credential's content is the presenter's
            let unmet = crate::dcql::bounded(crate::dcql::MATCH_WORK, || {
                fields
                    .iter()
                    .filter(|f| !field_ok(f, &c.root))
                    .map(|f| format!("{id}: field {} not satisfied", f["path"]))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|e| vec![format!("{id}: {e}")]);
            for why in unmet {
                out.fail("query_match", why);
            }
        }
    }
    if missing.is_empty() {
        out.pass("query_match");
    } else {
        out.fail(
            "query_match",
            format!("input descriptors not satisfied: {}", missing.join(", ")),
        );
    }
}

/// One input descriptor field against a credential (PE 2.0 §Input Evaluation): the first of its
/// `path`s that selects anything is the field's value — later paths are alternatives for other
/// credential shapes, not second chances for a value that fails the filter. A path with a
/// wildcard selects several values; the field asks that one of them satisfies the filter
/// (`$.type[*]` with `const`). An `optional` field may be absent, but a value that is present
/// must still satisfy the filter (PE 2.0 §Input Descriptor Object).
fn field_ok(f: &Value, root: &Value) -> bool {
    let paths = f["path"].as_array().map(Vec::as_slice).unwrap_or_default();
    let selected = paths
        .iter()
        .filter_map(Value::as_str)
        .filter_map(parse_json_path)
        .map(|segs| {
            // W3C paths may be written against the JWT payload ($.vc...) or the VC itself.
            let segs = match segs.first().and_then(Value::as_str) {
                Some("vc") => &segs[1..],
                _ => &segs[..],
            };
            resolve_path(root, segs)
        })
        .find(|vals| !vals.is_empty());
    match (selected, f.get("filter")) {
        (None, _) => f["optional"].as_bool() == Some(true),
        (Some(_), None) => true,
        (Some(vals), Some(filter)) => filter_ok(filter, &vals),
    }
}

/// Whether one of `vals` satisfies `filter`. A filter session creation would have refused (an
/// unsupported keyword, e.g. in a session stored before filters were checked) is satisfied by
/// nothing: a condition of the relying party is never dropped.
fn filter_ok(filter: &Value, vals: &[&Value]) -> bool {
    match Filter::compile(filter) {
        Ok(f) => vals.iter().any(|v| f.accepts(v)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A `format` entry's algorithm restrictions are checked against what signed each
    /// credential: the issuer's signature (`alg` of a VC entry, `sd-jwt_alg_values`, mdoc), the
    /// holder's (`alg` of a `jwt_vp*` entry, `kb-jwt_alg_values`), the proof type (Data
    /// Integrity); an entry of another format family does not apply.
    #[test]
    fn algorithm_restrictions_are_checked_per_credential() {
        let checked = |format: &str, issuer_alg: Option<&str>, holder_alg: Option<&str>| Checked {
            query_id: "d".into(),
            format: format.into(),
            root: json!({}),
            vct: None,
            types: Vec::new(),
            doctype: None,
            issuer: None,
            authorities: Vec::new(),
            issuer_alg: issuer_alg.map(str::to_string),
            holder_alg: holder_alg.map(str::to_string),
        };
        let refused = |format: Value, submitted: &str, c: &Checked| {
            let d = json!({"id": "d", "format": format});
            restriction_refusal(&json!({}), &d, submitted, c)
        };
        let es256_by_eddsa = checked("jwt_vc_json", Some("ES256"), Some("EdDSA"));
        let vc = json!({"jwt_vc_json": {"alg": ["ES256"]}});
        assert!(refused(vc.clone(), "jwt_vp_json", &es256_by_eddsa).is_none());
        let eddsa = checked("jwt_vc_json", Some("EdDSA"), Some("EdDSA"));
        let why = refused(vc, "jwt_vp_json", &eddsa).unwrap();
        assert!(
            why.contains("EdDSA") && why.contains("jwt_vc_json"),
            "{why}"
        );
        let vp = json!({"jwt_vp_json": {"alg": ["ES256"]}});
        assert!(refused(vp.clone(), "jwt_vp_json", &es256_by_eddsa).is_some());
        // a bare credential has no presentation for a jwt_vp entry to restrict
        let bare = checked("jwt_vc_json", Some("ES256"), None);
        assert!(refused(vp, "jwt_vc_json", &bare).is_none());
        let sd =
            json!({"dc+sd-jwt": {"sd-jwt_alg_values": ["ES256"], "kb-jwt_alg_values": ["ES256"]}});
        assert!(refused(
            sd.clone(),
            "dc+sd-jwt",
            &checked("dc+sd-jwt", Some("ES256"), Some("ES256"))
        )
        .is_none());
        assert!(refused(
            sd.clone(),
            "dc+sd-jwt",
            &checked("dc+sd-jwt", Some("EdDSA"), Some("ES256"))
        )
        .is_some());
        assert!(refused(
            sd.clone(),
            "dc+sd-jwt",
            &checked("dc+sd-jwt", Some("ES256"), Some("ES256K"))
        )
        .is_some());
        // no key binding: a kb-jwt restriction is not met
        assert!(refused(sd, "dc+sd-jwt", &checked("dc+sd-jwt", Some("ES256"), None)).is_some());
        let mdoc = checked("mso_mdoc", Some("ES256"), Some("ES256"));
        assert!(refused(json!({"mso_mdoc": {"alg": ["ES256"]}}), "mso_mdoc", &mdoc).is_none());
        assert!(refused(json!({"mso_mdoc": {"alg": ["ES384"]}}), "mso_mdoc", &mdoc).is_some());
        let ldp = checked("ldp_vc", None, None);
        assert!(refused(
            json!({"ldp_vc": {"proof_type": ["DataIntegrityProof"]}}),
            "ldp_vc",
            &ldp
        )
        .is_none());
        assert!(refused(
            json!({"ldp_vc": {"proof_type": ["Ed25519Signature2018"]}}),
            "ldp_vc",
            &ldp
        )
        .is_some());
        // another family's entry does not apply
        assert!(refused(
            json!({"mso_mdoc": {"alg": ["ES384"]}}),
            "jwt_vp_json",
            &eddsa
        )
        .is_none());
        // entries of one family and level are alternatives: one that holds is enough
        let either = json!({"jwt_vc": {"alg": ["ES256"]}, "jwt_vc_json": {"alg": ["EdDSA"]}});
        assert!(refused(either.clone(), "jwt_vp_json", &eddsa).is_none());
        let es256k = checked("jwt_vc_json", Some("ES256K"), None);
        assert!(refused(either, "jwt_vp_json", &es256k).is_some());
    }

    #[test]
    fn json_paths() {
        assert_eq!(parse_json_path("$").unwrap(), Vec::<Value>::new());
        assert_eq!(parse_json_path("$[1]").unwrap(), vec![json!(1)]);
        assert_eq!(
            parse_json_path("$.vc.credentialSubject['given_name']").unwrap(),
            vec![json!("vc"), json!("credentialSubject"), json!("given_name")]
        );
        assert!(parse_json_path("vc").is_none());
    }

    /// t_pex_filter: the first path that selects a value decides (a later path is no second
    /// chance); a wildcard needs one value that satisfies the filter; an optional field may be
    /// absent but not wrong; a filter session creation refuses (stored before it did) is
    /// satisfied by nothing.
    #[test]
    fn a_field_is_its_first_selecting_path_filtered() {
        let vc = json!({"type": ["VerifiableCredential", "IdentityCredential"],
            "credentialSubject": {"age": 15, "nick": 21}});
        let adult = json!({"type": "number", "minimum": 18});
        let f = json!({"path": ["$.credentialSubject.age", "$.credentialSubject.nick"], "filter": adult});
        assert!(!field_ok(&f, &vc));
        let f = json!({"path": ["$.credentialSubject.missing", "$.vc.credentialSubject.nick"], "filter": adult});
        assert!(field_ok(&f, &vc));
        let f = json!({"path": ["$.type[*]"], "filter": {"const": "IdentityCredential"}});
        assert!(field_ok(&f, &vc));
        let f = json!({"path": ["$.type[*]"], "filter": {"const": "UniversityDegreeCredential"}});
        assert!(!field_ok(&f, &vc));
        let f = json!({"path": ["$.credentialSubject.age"], "filter": adult, "optional": true});
        assert!(!field_ok(&f, &vc));
        let f = json!({"path": ["$.credentialSubject.missing"], "filter": adult, "optional": true});
        assert!(field_ok(&f, &vc));
        let f = json!({"path": ["$.credentialSubject.missing"]});
        assert!(!field_ok(&f, &vc));
        let f = json!({"path": ["$.credentialSubject.age"]});
        assert!(field_ok(&f, &vc));
        let f = json!({"path": ["$.type"], "filter": {"type": "array", "maxContains": 5}});
        assert!(!field_ok(&f, &vc));
        let f = json!({"path": ["$.type"], "filter": "array"});
        assert!(!field_ok(&f, &vc));
    }

    /// t_twodocs: two people's mDLs in one DeviceResponse answer a single-credential query only
    /// when it says `multiple: true`.
    #[test]
    fn a_single_credential_query_takes_one_document() {
        let single = json!({"id": "mdl", "format": "mso_mdoc"});
        assert!(too_many(&single, "mdl", 1, 1).is_none());
        let why = too_many(&single, "mdl", 1, 2).unwrap();
        assert!(why.contains("2 credentials"), "{why}");
        assert!(too_many(&single, "mdl", 2, 2).is_some());
        let multiple = json!({"id": "mdl", "format": "mso_mdoc", "multiple": true});
        assert!(too_many(&multiple, "mdl", 1, 2).is_none());
    }

    /// t_pex_format: an input descriptor for an mDL (format mso_mdoc) is not answered by an
    /// SD-JWT the holder's descriptor_map calls dc+sd-jwt; the definition's `format` applies to
    /// descriptors without one; no `format` anywhere allows any.
    #[test]
    fn the_descriptor_decides_which_formats_answer_it() {
        let mdl =
            json!({"id": "org.iso.18013.5.1.mDL", "format": {"mso_mdoc": {"alg": ["ES256"]}}});
        let pd = json!({"input_descriptors": [mdl]});
        let why = format_refusal(&pd, &mdl, "dc+sd-jwt").unwrap();
        assert!(why.contains("format dc+sd-jwt does not answer"), "{why}");
        assert!(format_refusal(&pd, &mdl, "mso_mdoc").is_none());
        assert!(format_refusal(&pd, &mdl, "").is_some());
        let bare = json!({"id": "pid"});
        let sd = json!({"format": {"vc+sd-jwt": {}}});
        assert!(format_refusal(&sd, &bare, "dc+sd-jwt").is_none());
        assert!(format_refusal(&sd, &bare, "mso_mdoc").is_some());
        assert!(format_refusal(&json!({}), &bare, "jwt_vp").is_none());
        let jwt = json!({"id": "x", "format": {"jwt_vc_json": {}}});
        assert!(format_refusal(&pd, &jwt, "jwt_vp_json").is_none());
    }
}

#[cfg(test)]
mod json_path_tests {
    use super::json_path_supported;

    #[test]
    fn only_paths_the_matcher_evaluates_are_supported() {
        for ok in [
            "$",
            "$.type",
            "$.vc.credentialSubject.age",
            "$['given_name']",
            "$.type[*]",
            "$[0].a",
        ] {
            assert!(json_path_supported(ok), "{ok}");
        }
        for bad in [
            "$..age",
            "$.*",
            "$[?(@.age>18)]",
            "$[(@.length-1)]",
            "type",
            "$.a..b",
        ] {
            assert!(!json_path_supported(bad), "{bad}");
        }
    }
}
