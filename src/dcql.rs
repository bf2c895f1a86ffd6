//! DCQL (OpenID4VP 1.0 §6) matching shared by the verifier (does a presentation satisfy the query?)
//! and the wallet (which held credentials can answer it?).

use serde_json::{Map, Value};

/// What a credential looks like to a query.
#[derive(Debug, Clone)]
pub struct CredentialView {
    pub format: String,
    /// Claim paths resolve against this (SD-JWT: the claims; W3C: the credential object).
    pub root: Value,
    pub vct: Option<String>,
    pub types: Vec<String>,
    /// mso_mdoc: the document type (DCQL `meta.doctype_value`).
    pub doctype: Option<String>,
}

/// Most credential queries, claims per query, claim sets per query (and claim ids per set),
/// credential sets (and options per set, ids per option), values per claim and path segments a
/// query may have: a query comes from whoever a wallet talks to, and the wallet matches it
/// against every credential it holds (attacker review: 14,000 claims × 39,000 claim sets, one
/// unsigned request, cost ~5×10⁸ comparisons per held credential on the worker).
pub const MAX_QUERIES: usize = 32;
pub const MAX_CLAIMS: usize = 128;
pub const MAX_SETS: usize = 32;
pub const MAX_VALUES: usize = 64;
pub const MAX_PATH: usize = 16;

/// Work one request's matching may do (claim nodes visited, values compared, types compared,
/// PEX filter steps: [`spend`]), well past what real queries over a full wallet take. The bounds
/// above limit a query's size, not what it costs against what is held (attacker review: a
/// claim `[..., null]` with 64 `values` over a 120,000-element array, in 128 claims named by 32
/// claim sets of 4 queries, was ~10¹¹ comparisons per credential held, on the event loop).
pub const MATCH_WORK: u64 = 20_000_000;

/// Matching ran out of [`MATCH_WORK`]: its answers were cut short, so none may be relied on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooCostly;

impl std::fmt::Display for TooCostly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "matching this query needs more than {MATCH_WORK} steps (claims visited, values compared)"
        )
    }
}

thread_local! {
    /// Work left for the matching running on this thread ([`bounded`]); `None`: unbounded.
    static WORK_LEFT: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
    /// Whether that matching ran out.
    static WORK_OUT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Spends `units` of this thread's matching work ([`bounded`]): false once it has run out, and
/// the caller then answers "no match" (which [`bounded`] turns into [`TooCostly`]).
pub fn spend(units: u64) -> bool {
    WORK_LEFT.with(|left| match left.get() {
        None => true,
        Some(l) if l >= units => {
            left.set(Some(l - units));
            true
        }
        Some(_) => {
            left.set(Some(0));
            WORK_OUT.with(|o| o.set(true));
            false
        }
    })
}

/// Runs the matching `f` with at most `units` of work ([`spend`]): `Err(TooCostly)` when it ran
/// out, since its answers were then cut short. `f` must not await: the budget is the thread's.
pub fn bounded<T>(units: u64, f: impl FnOnce() -> T) -> Result<T, TooCostly> {
    /// Puts back the budget around this one (also when `f` panics).
    struct Restore(Option<u64>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            WORK_LEFT.with(|l| l.set(self.0));
            WORK_OUT.with(|o| o.set(self.1));
        }
    }
    let _restore = Restore(
        WORK_LEFT.with(|l| l.replace(Some(units))),
        WORK_OUT.with(|o| o.replace(false)),
    );
    let answer = f();
    if WORK_OUT.with(|o| o.get()) {
        Err(TooCostly)
    } else {
        Ok(answer)
    }
}

/// Refuses a query over the bounds above, or of a shape whose constraints matching could not
/// enforce (before anything is matched against it): [`check_shape`].
pub fn check_query(q: &Value) -> Result<(), String> {
    check_bounds(q)?;
    check_shape(q)
}

/// The shapes OpenID4VP 1.0 §6 allows wherever a constraint hangs on them, so that none is
/// silently skipped (attacker review: `"values": true` matched any value, an empty claim set or
/// credential set option was satisfied by nothing): `claims` a non-empty array of claims, each
/// with a non-empty `path` of strings, nulls and indexes and, if any, non-empty `values` of
/// strings, numbers and booleans; `claim_sets` non-empty arrays naming claims by `id`;
/// `credential_sets` with non-empty `options` naming credential queries by `id`, `required` a
/// boolean.
fn check_shape(q: &Value) -> Result<(), String> {
    let ids = |v: &Value| -> Option<Vec<String>> {
        let a = v.as_array().filter(|a| !a.is_empty())?;
        a.iter()
            .map(|x| x.as_str().filter(|s| !s.is_empty()).map(str::to_string))
            .collect()
    };
    let query_ids: Vec<&str> = q["credentials"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["id"].as_str())
        .collect();
    // the vp_token is keyed by these ids: a second query of one id would go unanswered
    if let Some(dup) = query_ids
        .iter()
        .enumerate()
        .find_map(|(i, id)| query_ids[..i].contains(id).then_some(id))
    {
        return Err(format!("dcql_query: duplicate credential query id `{dup}`"));
    }
    for cq in q["credentials"].as_array().into_iter().flatten() {
        let id = cq["id"].as_str().unwrap_or("?");
        let bad = |what: &str| format!("dcql_query: credential query `{id}`: {what}");
        // meta: the constraints matching reads, each of the shape it can enforce
        let meta = &cq["meta"];
        if meta.get("vct_values").is_some() && ids(&meta["vct_values"]).is_none() {
            return Err(bad("meta.vct_values must be a non-empty array of strings"));
        }
        if let Some(sets) = meta.get("type_values") {
            let ok = sets
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(|set| ids(set).is_some()));
            if !ok {
                return Err(bad(
                    "meta.type_values must be a non-empty array of non-empty arrays of strings",
                ));
            }
        }
        if meta
            .get("doctype_value")
            .is_some_and(|d| d.as_str().is_none_or(str::is_empty))
        {
            return Err(bad("meta.doctype_value must be a non-empty string"));
        }
        let mut claim_ids: Vec<&str> = Vec::new();
        if let Some(claims) = cq.get("claims") {
            let claims = claims
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| bad("claims must be a non-empty array"))?;
            for cl in claims {
                let path_ok = cl["path"].as_array().is_some_and(|p| {
                    !p.is_empty()
                        && p.iter()
                            .all(|s| s.is_string() || s.is_null() || s.as_u64().is_some())
                });
                if !path_ok {
                    return Err(bad(
                        "every claim needs a non-empty path of strings, nulls and non-negative integers",
                    ));
                }
                if let Some(values) = cl.get("values") {
                    let ok = values.as_array().is_some_and(|v| {
                        !v.is_empty()
                            && v.iter()
                                .all(|x| x.is_string() || x.is_number() || x.is_boolean())
                    });
                    if !ok {
                        return Err(bad(
                            "a claim's values must be a non-empty array of strings, numbers and booleans",
                        ));
                    }
                }
                if let Some(cid) = cl.get("id") {
                    let cid = cid
                        .as_str()
                        .filter(|c| !c.is_empty())
                        .ok_or_else(|| bad("a claim id must be a non-empty string"))?;
                    if claim_ids.contains(&cid) {
                        return Err(bad(&format!("duplicate claim id `{cid}`")));
                    }
                    claim_ids.push(cid);
                }
            }
        }
        if let Some(sets) = cq.get("claim_sets") {
            let sets = sets
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| bad("claim_sets must be a non-empty array"))?;
            for set in sets {
                let named = ids(set)
                    .ok_or_else(|| bad("each claim set must be a non-empty array of claim ids"))?;
                if let Some(unknown) = named.iter().find(|n| !claim_ids.contains(&n.as_str())) {
                    return Err(bad(&format!("claim set names no claim `{unknown}`")));
                }
                if let Some(twice) = named
                    .iter()
                    .enumerate()
                    .find_map(|(i, n)| named[..i].contains(n).then_some(n))
                {
                    return Err(bad(&format!("a claim set names claim `{twice}` twice")));
                }
            }
        }
    }
    if let Some(sets) = q.get("credential_sets") {
        let sets = sets
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| "dcql_query: credential_sets must be a non-empty array".to_string())?;
        for set in sets {
            if set.get("required").is_some_and(|r| !r.is_boolean()) {
                return Err("dcql_query: a credential set's required must be a boolean".into());
            }
            let options = set["options"]
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| {
                    "dcql_query: a credential set needs a non-empty array of options".to_string()
                })?;
            for option in options {
                let named = ids(option).ok_or_else(|| {
                    "dcql_query: each credential set option must be a non-empty array of credential query ids"
                        .to_string()
                })?;
                if let Some(unknown) = named.iter().find(|n| !query_ids.contains(&n.as_str())) {
                    return Err(format!(
                        "dcql_query: a credential set option names no credential query `{unknown}`"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Refuses a query over the bounds above.
fn check_bounds(q: &Value) -> Result<(), String> {
    let len = |v: &Value| v.as_array().map_or(0, Vec::len);
    let over = |what: &str, n: usize, max: usize| {
        (n > max).then(|| format!("dcql_query: {n} {what} (at most {max})"))
    };
    let mut problems = vec![over(
        "credential queries",
        len(&q["credentials"]),
        MAX_QUERIES,
    )];
    for set in q["credential_sets"].as_array().into_iter().flatten() {
        problems.push(over(
            "credential sets",
            len(&q["credential_sets"]),
            MAX_SETS,
        ));
        problems.push(over(
            "options in a credential set",
            len(&set["options"]),
            MAX_SETS,
        ));
        for option in set["options"].as_array().into_iter().flatten() {
            problems.push(over(
                "ids in a credential set option",
                len(option),
                MAX_QUERIES,
            ));
        }
    }
    for cq in q["credentials"].as_array().into_iter().flatten() {
        problems.push(over(
            "claims in a credential query",
            len(&cq["claims"]),
            MAX_CLAIMS,
        ));
        problems.push(over(
            "claim sets in a credential query",
            len(&cq["claim_sets"]),
            MAX_SETS,
        ));
        for set in cq["claim_sets"].as_array().into_iter().flatten() {
            problems.push(over("claim ids in a claim set", len(set), MAX_CLAIMS));
        }
        for claim in cq["claims"].as_array().into_iter().flatten() {
            problems.push(over(
                "segments in a claim path",
                len(&claim["path"]),
                MAX_PATH,
            ));
            problems.push(over("values of a claim", len(&claim["values"]), MAX_VALUES));
        }
        // meta.vct_values and meta.type_values are compared with every held credential too
        let meta = &cq["meta"];
        problems.push(over("vct_values", len(&meta["vct_values"]), MAX_VALUES));
        problems.push(over(
            "type_values sets",
            len(&meta["type_values"]),
            MAX_SETS,
        ));
        for set in meta["type_values"].as_array().into_iter().flatten() {
            problems.push(over("types in a type_values set", len(set), MAX_VALUES));
        }
    }
    problems.into_iter().flatten().next().map_or(Ok(()), Err)
}

/// Whether each claim of a credential query (by `id`) holds for one credential, each evaluated
/// once however many claim sets name it.
struct ClaimResults<'q> {
    by_id: std::collections::HashMap<&'q str, &'q Value>,
    known: std::collections::HashMap<&'q str, bool>,
}

impl<'q> ClaimResults<'q> {
    fn new(cq: &'q Value) -> Self {
        Self {
            by_id: claims_by_id(cq),
            known: std::collections::HashMap::new(),
        }
    }

    /// Whether claim `id` holds for `c` (an id no claim has: no).
    fn ok(&mut self, c: &CredentialView, id: &str) -> bool {
        let Some((&key, &claim)) = self.by_id.get_key_value(id) else {
            return false;
        };
        *self.known.entry(key).or_insert_with(|| claim_ok(c, claim))
    }
}

/// A credential query's claims by their `id`.
fn claims_by_id(cq: &Value) -> std::collections::HashMap<&str, &Value> {
    cq["claims"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|cl| Some((cl["id"].as_str()?, cl)))
        .fold(std::collections::HashMap::new(), |mut m, (id, cl)| {
            m.entry(id).or_insert(cl); // the first of equal ids, as a scan would find it
            m
        })
}

/// Resolves a claims path (strings = keys, numbers = indexes, null = every element).
/// Each node reached costs a unit of matching work ([`spend`]); none is found once it ran out.
pub fn resolve_path<'v>(root: &'v Value, path: &[Value]) -> Vec<&'v Value> {
    let mut current = vec![root];
    for seg in path {
        if !spend(current.len() as u64) {
            return Vec::new();
        }
        let mut next = Vec::new();
        for v in current {
            match seg {
                Value::String(k) => next.extend(v.get(k)),
                Value::Number(n) => next.extend(n.as_u64().and_then(|i| v.get(i as usize))),
                Value::Null => {
                    if let Some(a) = v.as_array() {
                        if !spend(a.len() as u64) {
                            return Vec::new();
                        }
                        next.extend(a.iter());
                    }
                }
                _ => {}
            }
        }
        current = next;
    }
    current
}

fn claim_ok(c: &CredentialView, claim: &Value) -> bool {
    let Some(path) = claim["path"].as_array() else {
        return false;
    };
    let found = resolve_path(&c.root, path);
    // values of another shape than an array constrain nothing a match could check: no match
    // (check_query refuses such a query first)
    !found.is_empty()
        && match claim.get("values") {
            None => true,
            Some(allowed) => allowed.as_array().is_some_and(|allowed| {
                spend((found.len() * allowed.len()) as u64)
                    && found.iter().any(|v| allowed.contains(v))
            }),
        }
}

/// The IRI a W3C credential's type term expands to under its `@context`, where idstack can
/// tell without expanding: a term idstack's context defines (`IdentityCredential`), under a
/// context list of nothing but that context and the VCDM / Data Integrity contexts (which define
/// no such term and set no `@vocab`). Anything else — another context, whose terms win over
/// idstack's `@vocab` in the signed RDF, an inline `@vocab`, a term idstack's context leaves to
/// its `@vocab` (a VCDM context may define it) — is not known (`None`: only the short name
/// matches; attacker review: a reordered or appended context made a type match another
/// namespace's type of the same short name). Terms that are already IRIs stand for themselves.
fn expanded_type(term: &str, root: &Value) -> Option<String> {
    if term.contains(':') {
        return Some(term.to_string());
    }
    if matches!(term, "VerifiableCredential" | "VerifiablePresentation") {
        return Some(format!("https://www.w3.org/2018/credentials#{term}"));
    }
    let contexts: Vec<&Value> = match &root["@context"] {
        Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    let mut idstack = false;
    for c in contexts {
        match c.as_str() {
            Some(url) if crate::crypto::di::is_idstack_context(url) => idstack = true,
            Some(
                crate::crypto::di::VCDM2_CONTEXT
                | "https://www.w3.org/2018/credentials/v1"
                | "https://w3id.org/security/data-integrity/v2",
            ) => {}
            _ => return None,
        }
    }
    (idstack && crate::crypto::di::idstack_context_defines(term))
        .then(|| format!("https://w3id.org/idstack/vocab#{term}"))
}

/// Whether the credential has type `wanted`: the same term, or the IRI it expands to (OID4VP 1.0
/// Appendix B.1.1 asks for fully expanded type IRIs; short names stay accepted for older wallets).
fn has_type(c: &CredentialView, wanted: &str) -> bool {
    spend(c.types.len() as u64 + 1)
        && c.types
            .iter()
            .any(|x| x == wanted || expanded_type(x, &c.root).as_deref() == Some(wanted))
}

/// Whether credential query `cq` constrains nothing but the format (no claims, no `vct_values`,
/// `type_values` or `doctype_value`): any credential of that format answers it.
pub fn names_nothing(cq: &Value) -> bool {
    cq.get("claims").is_none()
        && ["vct_values", "type_values", "doctype_value"]
            .iter()
            .all(|k| cq["meta"].get(*k).is_none())
}

/// `None` when `c` satisfies credential query `cq`, else why not.
pub fn mismatch(c: &CredentialView, cq: &Value) -> Option<String> {
    let id = cq["id"].as_str().unwrap_or("?");
    let format = cq["format"].as_str().unwrap_or_default();
    let same_format = format == c.format || (format == "vc+sd-jwt" && c.format == "dc+sd-jwt");
    if !same_format {
        return Some(format!(
            "{id}: format {} but {format} was requested",
            c.format
        ));
    }
    if let Some(vcts) = cq["meta"].get("vct_values") {
        // (of another shape than an array: no match; check_query refuses it first)
        let listed = vcts.as_array().into_iter().flatten();
        if !listed
            .into_iter()
            .any(|v| v.as_str().is_some() && v.as_str() == c.vct.as_deref())
        {
            return Some(format!("{id}: vct {:?} not among the requested", c.vct));
        }
    }
    if let Some(dt) = cq["meta"].get("doctype_value") {
        if dt.as_str() != c.doctype.as_deref() {
            // the doc type comes from the presented mdoc: quoted cut, never as Debug output
            let got = c.doctype.as_deref().map(crate::crypto::mdoc::clip);
            return Some(format!(
                "{id}: doctype {} is not the requested {dt}",
                got.as_deref().unwrap_or("(none)")
            ));
        }
    }
    if let Some(sets) = cq["meta"].get("type_values") {
        let ok = sets.as_array().into_iter().flatten().any(|set| {
            set.as_array().is_some_and(|ts| {
                !ts.is_empty()
                    && ts
                        .iter()
                        .all(|t| t.as_str().is_some_and(|t| has_type(c, t)))
            })
        });
        if !ok {
            return Some(format!("{id}: credential types {:?} do not match", c.types));
        }
    }
    match cq["claim_sets"].as_array() {
        Some(sets) => {
            let mut ok_by_id = ClaimResults::new(cq);
            let ok = sets.iter().any(|set| {
                set.as_array().is_some_and(|ids| {
                    !ids.is_empty()
                        && ids
                            .iter()
                            .all(|cid| cid.as_str().is_some_and(|cid| ok_by_id.ok(c, cid)))
                })
            });
            (!ok).then(|| format!("{id}: no claim set is satisfied"))
        }
        None => cq["claims"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|cl| !claim_ok(c, cl))
            .map(|cl| {
                format!(
                    "{id}: requested claim {} missing or not an allowed value",
                    cl["path"]
                )
            }),
    }
}

/// The first-level claim names a credential query asks `c` to disclose (what an SD-JWT must
/// disclose): with `claim_sets`, only those of the first set `c` satisfies (OpenID4VP 1.0
/// §6.4.1 — never the union of every set).
pub fn requested_claim_names(c: &CredentialView, cq: &Value) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for cl in selected_claims(c, cq) {
        if let Some(n) = cl["path"][0].as_str() {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
    }
    names
}

/// The full claim paths a credential query asks `c` to disclose, each as JSON array text (what
/// [`crate::crypto::sdjwt::select_paths`] discloses: the parts of a claim on the path, not the
/// whole first-level claim), chosen as in [`requested_claim_names`].
pub fn requested_claim_paths(c: &CredentialView, cq: &Value) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    for cl in selected_claims(c, cq) {
        if let Some(p) = cl["path"].as_array().filter(|p| !p.is_empty()) {
            let text = Value::Array(p.clone()).to_string();
            if !paths.contains(&text) {
                paths.push(text);
            }
        }
    }
    paths
}

/// The claim queries of `cq` to answer from `c`: those of the first claim set `c` satisfies
/// (OpenID4VP 1.0 §6.4.1: only what one set needs), else all of them.
pub fn selected_claims<'q>(c: &CredentialView, cq: &'q Value) -> Vec<&'q Value> {
    let claims: Vec<&Value> = cq["claims"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let Some(sets) = cq["claim_sets"].as_array() else {
        return claims;
    };
    let by_id = claims_by_id(cq);
    let mut results = ClaimResults::new(cq);
    let set_claims = |set: &'q Value| -> Option<Vec<&'q Value>> {
        set.as_array()?
            .iter()
            .map(|cid| by_id.get(cid.as_str()?).copied())
            .collect()
    };
    let chosen = sets.iter().find(|set| {
        set_claims(set).is_some()
            && set.as_array().is_some_and(|ids| {
                ids.iter()
                    .all(|cid| cid.as_str().is_some_and(|cid| results.ok(c, cid)))
            })
    });
    chosen.and_then(set_claims).unwrap_or(claims)
}

/// mso_mdoc: the elements a credential query asks `c` to disclose, as `namespace/element`
/// (claim paths `[namespace, element]`). No `claims`: nothing beyond the mandatory structure.
pub fn requested_mdoc_elements(c: &CredentialView, cq: &Value) -> Vec<String> {
    selected_claims(c, cq)
        .iter()
        .filter_map(
            |cl| match (cl["path"][0].as_str(), cl["path"][1].as_str()) {
                // (a `/` in either part would make the joined name ambiguous)
                (Some(ns), Some(element)) if !ns.contains('/') && !element.contains('/') => {
                    Some(format!("{ns}/{element}"))
                }
                _ => None,
            },
        )
        .collect()
}

/// The (unverified) payload of a JWT or of an SD-JWT's issuer JWT.
pub fn jwt_payload(format: &str, raw: &str) -> Value {
    let jwt = if format.ends_with("sd-jwt") {
        raw.split('~').next().unwrap_or_default()
    } else {
        raw
    };
    crate::crypto::jws::decode_unverified(jwt)
        .map(|(_, p, _, _)| p)
        .unwrap_or(Value::Null)
}

/// How a held credential looks to queries, and (SD-JWT) which claims can be withheld.
// Over 80 lines: one arm per credential format, each building that format's view.
pub fn credential_view(format: &str, raw: &str) -> (CredentialView, Vec<String>) {
    match format {
        "dc+sd-jwt" | "vc+sd-jwt" => {
            // the holder's own credential, every disclosure in its place (nested ones too)
            let (root, disclosable) = crate::crypto::sdjwt::parse(raw)
                .and_then(|p| {
                    let (_, payload, _, _) = crate::crypto::jws::decode_unverified(&p.jwt)?;
                    let payload = payload.as_object().cloned().unwrap_or_default();
                    crate::crypto::sdjwt::reveal(payload, &p.disclosures)
                })
                .unwrap_or_default();
            let vct = root.get("vct").and_then(Value::as_str).map(str::to_string);
            (
                CredentialView {
                    format: "dc+sd-jwt".into(),
                    root: Value::Object(root),
                    vct,
                    types: Vec::new(),
                    doctype: None,
                },
                disclosable,
            )
        }
        "mso_mdoc" => {
            // the base64url IssuerSigned: claims as {namespace: {element: value}}, every element
            // disclosable (a DeviceResponse carries only the ones a query asks for)
            let parsed = crate::crypto::b64url_decode(raw)
                .ok()
                .and_then(|b| crate::crypto::mdoc::verify::parse_unverified(&b).ok());
            let (doctype, claims) = parsed.unwrap_or_default();
            let mut root = Map::new();
            let mut disclosable = Vec::new();
            for (ns, elements) in claims {
                for name in elements.keys() {
                    disclosable.push(format!("{ns}/{name}"));
                }
                root.insert(ns, Value::Object(elements));
            }
            (
                CredentialView {
                    format: "mso_mdoc".into(),
                    root: Value::Object(root),
                    vct: None,
                    types: Vec::new(),
                    doctype: Some(doctype).filter(|d| !d.is_empty()),
                },
                disclosable,
            )
        }
        "ldp_vc" => {
            // as a verifier reads it: without what no proof signs (the holder's wallet must not
            // offer a credential for a claim the verifier will not find)
            let mut v: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
            crate::crypto::di::strip_unsigned(&mut v);
            let types = v["type"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (
                CredentialView {
                    format: "ldp_vc".into(),
                    root: v,
                    vct: None,
                    doctype: None,
                    types,
                },
                Vec::new(),
            )
        }
        _ => {
            let p = jwt_payload(format, raw);
            let mut vc = p["vc"].clone();
            // VC-JWT (VCDM 1.1) decoding: `sub` is credentialSubject.id, `iss` is issuer.
            if vc["credentialSubject"].get("id").is_none() {
                if let (Some(sub), Some(cs)) = (
                    p["sub"].as_str(),
                    vc.get_mut("credentialSubject")
                        .and_then(Value::as_object_mut),
                ) {
                    cs.insert("id".into(), serde_json::json!(sub));
                }
            }
            let types = vc["type"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (
                CredentialView {
                    format: format.to_string(),
                    root: vc,
                    vct: None,
                    doctype: None,
                    types,
                },
                Vec::new(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Matching is bounded work however large what is held (attacker review: a claim over a
    /// 120,000-element array with 64 values, named by 32 claim sets of 4 queries, was ~10¹¹
    /// comparisons per credential on the event loop): each claim is evaluated once per
    /// credential whatever the sets name, a set may not name a claim twice, and running out of
    /// work is an answer of its own, not a silent "no match".
    #[test]
    fn matching_is_bounded_work() {
        let mut big = vec![json!(0); 120_000];
        big.push(json!(1));
        let held = CredentialView {
            format: "jwt_vc_json".into(),
            root: json!({"credentialSubject": {"a": big, "name": "Erika"}}),
            vct: None,
            types: vec![],
            doctype: None,
        };
        let values: Vec<Value> = (2..65).map(|n| json!(n)).chain([json!(1)]).collect();
        let query = |sets: Value| {
            json!({"id": "q", "format": "jwt_vc_json", "claims": [
                {"id": "t", "path": ["credentialSubject", "a", null], "values": values},
                {"id": "n", "path": ["credentialSubject", "name"]},
                {"id": "f", "path": ["nope"]},
            ], "claim_sets": sets})
        };
        // a set naming one claim twice is refused
        let twice = query(json!([["t", "t", "f"]]));
        assert!(check_query(&json!({"credentials": [twice]}))
            .unwrap_err()
            .contains("twice"));
        // one evaluation of `t` costs 121,001 × 64 comparisons plus the nodes visited: over a
        // small budget it is TooCostly, not "no claim set is satisfied"
        let heavy = query(json!([["t", "f"], ["n", "f"], ["t", "n"]]));
        check_query(&json!({"credentials": [heavy.clone()]})).unwrap();
        assert_eq!(
            bounded(1_000_000, || mismatch(&held, &heavy)),
            Err(TooCostly)
        );
        // within the real budget it matches (the third set), `t` evaluated once for three sets
        let work = |f: &dyn Fn() -> Option<String>| {
            bounded(u64::MAX, || {
                let answer = f();
                (answer, u64::MAX - WORK_LEFT.with(|l| l.get().unwrap()))
            })
            .unwrap()
        };
        let (answer, all_sets) = work(&|| mismatch(&held, &heavy));
        assert_eq!(answer, None);
        assert!(all_sets < MATCH_WORK, "{all_sets}");
        let once = query(json!([["t", "n"]]));
        let (_, one_set) = work(&|| mismatch(&held, &once));
        assert!(all_sets < one_set + 1_000, "{all_sets} vs {one_set}");
        // the claims a presentation discloses are chosen with the same single evaluation
        let (paths, _) = work(&|| Some(requested_claim_paths(&held, &heavy).join(" ")));
        assert_eq!(
            paths.unwrap(),
            r#"["credentialSubject","a",null] ["credentialSubject","name"]"#
        );
        // without a budget (as before any request set one) nothing is cut short
        assert_eq!(mismatch(&held, &heavy), None);
    }

    /// A query whose constraint matching could not enforce is refused, not matched loosely
    /// (attacker review: `"values": true` let `age_over_18: false` answer an age check; an empty
    /// claim set or credential set option was satisfied by nothing); the matcher fails closed on
    /// such shapes too.
    #[test]
    fn queries_whose_constraints_cannot_be_enforced_are_refused() {
        let adult = CredentialView {
            format: "dc+sd-jwt".into(),
            root: json!({"age_over_18": false, "given_name": "A"}),
            vct: Some("urn:eu.europa.ec.eudi:pid:1".into()),
            types: Vec::new(),
            doctype: None,
        };
        let with = |cq: Value| json!({"credentials": [cq]});
        let base = json!({"id": "pid", "format": "dc+sd-jwt", "meta": {}});
        let cq = |extra: Value| {
            let mut q = base.clone();
            for (k, v) in extra.as_object().unwrap() {
                q[k] = v.clone();
            }
            q
        };
        let good = cq(
            json!({"claims": [{"id": "a", "path": ["age_over_18"], "values": [true]},
                                          {"id": "n", "path": ["given_name"]}],
                             "claim_sets": [["a"], ["n"]]}),
        );
        check_query(&with(good.clone())).unwrap();
        for bad in [
            cq(json!({"claims": [{"path": ["age_over_18"], "values": true}]})),
            cq(json!({"claims": [{"path": ["age_over_18"], "values": []}]})),
            cq(json!({"claims": [{"path": ["age_over_18"], "values": [{"x": 1}]}]})),
            cq(json!({"claims": [{"path": ["a", -1]}]})),
            cq(json!({"claims": [{"path": ["a", {"k": 1}]}]})),
            cq(json!({"claims": []})),
            cq(json!({"claims": {"path": ["a"]}})),
            cq(json!({"claims": [{"id": "a", "path": ["a"]}], "claim_sets": [[]]})),
            cq(json!({"claims": [{"id": "a", "path": ["a"]}], "claim_sets": [["b"]]})),
            cq(json!({"claims": [{"id": "a", "path": ["a"]}, {"id": "a", "path": ["b"]}]})),
            cq(json!({"claims": [{"id": "a", "path": ["a"]}], "claim_sets": "a"})),
            cq(json!({"meta": {"vct_values": vec!["v"; MAX_VALUES + 1]}})),
            cq(json!({"meta": {"type_values": vec![vec!["T"]; MAX_SETS + 1]}})),
            cq(json!({"meta": {"vct_values": "urn:eu.europa.ec.eudi:pid:1"}})),
            cq(json!({"meta": {"vct_values": []}})),
            cq(json!({"meta": {"type_values": [[]]}})),
            cq(json!({"meta": {"type_values": ["VerifiableCredential"]}})),
            cq(json!({"meta": {"doctype_value": 1}})),
        ] {
            assert!(check_query(&with(bad.clone())).is_err(), "{bad}");
        }
        for sets in [
            json!([]),
            json!([{"options": []}]),
            json!([{"options": [[]]}]),
            json!([{"options": [["other"]]}]),
            json!([{"options": [["pid"]], "required": "yes"}]),
        ] {
            let q = json!({"credentials": [good], "credential_sets": sets});
            assert!(check_query(&q).is_err(), "{sets}");
        }
        check_query(&json!({"credentials": [good], "credential_sets": [{"options": [["pid"]]}]}))
            .unwrap();

        // the matcher fails closed on what check_query refuses
        let values_true = cq(json!({"claims": [{"path": ["age_over_18"], "values": true}]}));
        assert!(mismatch(&adult, &values_true).is_some());
        let empty_set = cq(json!({"claims": [{"id": "a", "path": ["nope"]}], "claim_sets": [[]]}));
        assert!(mismatch(&adult, &empty_set).is_some());
        assert!(mismatch(&adult, &good).is_none());
        for meta in [
            json!({"vct_values": "urn:eu.europa.ec.eudi:pid:1"}),
            json!({"type_values": [[]]}),
            json!({"type_values": "VerifiableCredential"}),
        ] {
            assert!(
                mismatch(&adult, &cq(json!({"meta": meta}))).is_some(),
                "{meta}"
            );
        }
    }

    #[test]
    fn type_values_match_short_names_and_expanded_iris() {
        let c = CredentialView {
            format: "jwt_vc_json".into(),
            root: json!({"@context": ["https://www.w3.org/2018/credentials/v1", crate::crypto::di::IDSTACK_CONTEXT_URL], "type": ["VerifiableCredential", "IdentityCredential"]}),
            vct: None,
            doctype: None,
            types: vec!["VerifiableCredential".into(), "IdentityCredential".into()],
        };
        let q = |sets: Value| json!({"id": "q", "format": "jwt_vc_json", "meta": {"type_values": sets}});
        assert!(mismatch(
            &c,
            &q(json!([["VerifiableCredential", "IdentityCredential"]]))
        )
        .is_none());
        assert!(mismatch(
            &c,
            &q(json!([[
                "https://www.w3.org/2018/credentials#VerifiableCredential",
                "https://w3id.org/idstack/vocab#IdentityCredential"
            ]]))
        )
        .is_none());
        // a look-alike IRI from another vocabulary does not match
        assert!(mismatch(
            &c,
            &q(json!([["https://evil.example/vocab#IdentityCredential"]]))
        )
        .is_some());
        // attacker review: with the contexts reordered (the same RDF: the bundled VCDM 2.0
        // context sets no @vocab) the type was taken for an issuer-dependent one
        let reordered = CredentialView {
            root: json!({"@context": [crate::crypto::di::IDSTACK_CONTEXT_URL, crate::crypto::di::VCDM2_CONTEXT], "type": ["VerifiableCredential", "IdentityCredential"]}),
            ..c.clone()
        };
        let dependent = "https://www.w3.org/ns/credentials/issuer-dependent#IdentityCredential";
        assert!(mismatch(&reordered, &q(json!([[dependent]]))).is_some());
        assert!(mismatch(
            &reordered,
            &q(json!([[
                "https://w3id.org/idstack/vocab#IdentityCredential"
            ]]))
        )
        .is_none());
        // under an inline @vocab (which a defined term overrides in the signed RDF) and behind a
        // context of unknown vocabulary, only the short name matches
        let inline = CredentialView {
            root: json!({"@context": [crate::crypto::di::VCDM2_CONTEXT, crate::crypto::di::IDSTACK_CONTEXT_URL, {"@vocab": "https://gov.example/#"}], "type": ["VerifiableCredential", "IdentityCredential"]}),
            ..c.clone()
        };
        let gov = "https://gov.example/#IdentityCredential";
        assert!(mismatch(&inline, &q(json!([[gov]]))).is_some());
        assert!(mismatch(&inline, &q(json!([["IdentityCredential"]]))).is_none());
        // a context between VCDM and idstack's whose terms win over idstack's @vocab
        let vdl = CredentialView {
            root: json!({"@context": [crate::crypto::di::VCDM2_CONTEXT, "https://w3id.org/vdl/v1", crate::crypto::di::IDSTACK_CONTEXT_URL], "type": ["VerifiableCredential", "Iso18013DriversLicenseCredential"]}),
            types: vec![
                "VerifiableCredential".into(),
                "Iso18013DriversLicenseCredential".into(),
            ],
            ..c.clone()
        };
        let as_idstack = "https://w3id.org/idstack/vocab#Iso18013DriversLicenseCredential";
        assert!(mismatch(&vdl, &q(json!([[as_idstack]]))).is_some());
        let unknown = CredentialView {
            root: json!({"@context": [crate::crypto::di::VCDM2_CONTEXT, "https://schema.org/"], "type": ["VerifiableCredential", "IdentityCredential"]}),
            ..c.clone()
        };
        assert!(mismatch(&unknown, &q(json!([[dependent]]))).is_some());
        assert!(mismatch(&unknown, &q(json!([["IdentityCredential"]]))).is_none());
    }

    /// t_issuer_crafted (mso-other-doctype): the presented doc type is quoted cut, not as Debug.
    #[test]
    fn a_wrong_doctype_is_quoted_short() {
        let c = CredentialView {
            format: "mso_mdoc".into(),
            root: json!({}),
            vct: None,
            doctype: Some("X".repeat(10_000)),
            types: vec![],
        };
        let q = json!({"id": "q", "format": "mso_mdoc", "meta": {"doctype_value": "org.iso.18013.5.1.mDL"}});
        let why = mismatch(&c, &q).unwrap();
        assert!(why.len() < 400 && !why.contains("Some("), "{why}");
    }

    #[test]
    fn claims_claim_sets_values_and_meta() {
        let c = CredentialView {
            format: "dc+sd-jwt".into(),
            root: json!({"given_name": "E", "age": 40}),
            vct: Some("urn:x".into()),
            doctype: None,
            types: vec![],
        };
        let base = json!({"id": "q", "format": "dc+sd-jwt", "meta": {"vct_values": ["urn:x"]}, "claims": [{"id": "a", "path": ["given_name"]}, {"id": "b", "path": ["email"]}]});
        assert!(mismatch(&c, &base).is_some(), "email missing");
        let mut sets = base.clone();
        sets["claim_sets"] = json!([["b"], ["a"]]);
        assert!(mismatch(&c, &sets).is_none());
        let mut vct = base.clone();
        vct["meta"]["vct_values"] = json!(["urn:y"]);
        vct["claims"] = json!([{"path": ["given_name"]}]);
        assert!(mismatch(&c, &vct).is_some());
        assert!(mismatch(&c, &json!({"id": "q", "format": "dc+sd-jwt", "claims": [{"path": ["age"], "values": [40, 41]}]})).is_none());
        assert!(mismatch(&c, &json!({"id": "q", "format": "dc+sd-jwt", "claims": [{"path": ["age"], "values": [18]}]})).is_some());
        assert!(mismatch(&c, &json!({"id": "q", "format": "jwt_vc_json"})).is_some());
        assert_eq!(
            requested_claim_names(&c, &base),
            vec!["given_name", "email"]
        );
        // with claim sets, only the first satisfied set is disclosed, not every claim asked
        let mut either = base.clone();
        either["claims"] = json!([{"id": "a", "path": ["given_name"]}, {"id": "g", "path": ["age"]}, {"id": "b", "path": ["email"]}]);
        either["claim_sets"] = json!([["b"], ["g"], ["a", "g"]]);
        assert_eq!(requested_claim_names(&c, &either), vec!["age"]);
        assert_eq!(requested_claim_paths(&c, &either), vec![r#"["age"]"#]);
    }

    /// An mdoc query discloses `namespace/element` per claim path; with claim sets, only the
    /// first set the credential satisfies; without claims, nothing.
    #[test]
    fn mdoc_elements_follow_paths_and_the_first_satisfied_claim_set() {
        let c = CredentialView {
            format: "mso_mdoc".into(),
            root: json!({"org.iso.18013.5.1": {"family_name": "M", "age_over_18": true, "birth_date": "1984-01-26"}}),
            vct: None,
            doctype: Some("org.iso.18013.5.1.mDL".into()),
            types: vec![],
        };
        let ns = "org.iso.18013.5.1";
        let q = json!({"id": "m", "format": "mso_mdoc", "meta": {"doctype_value": "org.iso.18013.5.1.mDL"},
            "claims": [{"id": "a", "path": [ns, "age_over_21"]}, {"id": "b", "path": [ns, "age_over_18"]}, {"id": "f", "path": [ns, "family_name"]}]});
        assert!(mismatch(&c, &q).is_some(), "age_over_21 is not held");
        let mut sets = q.clone();
        sets["claim_sets"] = json!([["a", "f"], ["b", "f"], ["f"]]);
        assert!(mismatch(&c, &sets).is_none());
        assert_eq!(
            requested_mdoc_elements(&c, &sets),
            vec![format!("{ns}/age_over_18"), format!("{ns}/family_name")]
        );
        let none = json!({"id": "m", "format": "mso_mdoc", "meta": {"doctype_value": "org.iso.18013.5.1.mDL"}});
        assert!(mismatch(&c, &none).is_none());
        assert!(requested_mdoc_elements(&c, &none).is_empty());
        // a `/` inside a namespace or element would make `namespace/element` name two elements
        // (`ns` + `x/y`, `ns/x` + `y`): such a path asks for nothing (sealing review)
        let slashed = CredentialView {
            root: json!({"ns": {"x/y": 1}, "ns/x": {"y": 2}}),
            ..c.clone()
        };
        let q = json!({"id": "m", "format": "mso_mdoc", "meta": {"doctype_value": "org.iso.18013.5.1.mDL"},
            "claims": [{"path": ["ns", "x/y"]}, {"path": ["ns/x", "y"]}]});
        assert!(requested_mdoc_elements(&slashed, &q).is_empty());
        let mut other = none.clone();
        other["meta"]["doctype_value"] = json!("eu.europa.ec.eudi.pid.1");
        assert!(mismatch(&c, &other).is_some());
    }
}
