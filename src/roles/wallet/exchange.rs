//! The exchanges: OpenID4VCI (show an offer, accept it with the wallet's DID key and store what
//! the issuer sends) and OpenID4VP (resolve a request and match it against held credentials,
//! present the chosen ones disclosing only what is chosen). Accepting and presenting sign with
//! the wallet's keys: they take an [`Owner`] and hold a tenant session only while they read the
//! keys and sign, never during a call to the issuer or the verifier.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::access::{Owner, Viewer};
use super::credentials::{Binding, HeldCredential};
use super::error::{WalletError, WalletResult};
use super::ks;
use super::mdoc;
use super::model::*;
use super::service::{WalletService, WalletSession};
use crate::client::oid4vci::{self, Holder};
use crate::client::oid4vp::{self, Held, ResolvedRequest};
use crate::clock::random_id;
use crate::crypto::{did, SigningKey};
use crate::dcql::{self, CredentialView};

impl WalletService {
    /// What an offer contains (issuer display, offered credentials, grants), without accepting.
    pub async fn resolve_offer(&self, _viewer: &Viewer, offer: &str) -> WalletResult<Value> {
        let r = oid4vci::resolve_offer(&self.ctx.http, offer).await?;
        let configs = &r.issuer_metadata["credential_configurations_supported"];
        let offered: Vec<Value> = r
            .config_ids()
            .iter()
            .map(|id| {
                let c = &configs[id];
                let display = c["credential_metadata"]["display"]
                    .as_array()
                    .or(c["display"].as_array())
                    .cloned()
                    .unwrap_or_default();
                json!({"id": id, "format": c["format"], "display": safe_display(Value::Array(display))})
            })
            .collect();
        Ok(json!({
            "credential_issuer": r.issuer(),
            "display": safe_display(r.issuer_metadata["display"].clone()),
            "credentials": offered,
            "tx_code": r.tx_code(),
            "grants": r.offer["grants"].as_object().map(|g| g.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
        }))
    }

    /// Runs the OpenID4VCI flow with the wallet's DID key and stores every credential received.
    pub async fn accept_offer(
        &self,
        o: &Owner,
        input: OfferInput,
    ) -> WalletResult<Vec<CredentialSummary>> {
        let http = &self.ctx.http;
        let r = oid4vci::resolve_offer(http, &input.offer).await?;
        let is_mdoc = |c: &str| {
            r.issuer_metadata["credential_configurations_supported"][c]["format"] == mdoc::FORMAT
        };
        // mdocs get a device key each; the others are bound to a DID of the wallet
        let did_holder = if r.config_ids().iter().all(|c| is_mdoc(c)) {
            None
        } else {
            Some(self.holder(o, input.did.as_deref()).await?)
        };
        let token = oid4vci::token(http, &r, input.tx_code.as_deref()).await?;
        let mut stored = Vec::new();
        for config_id in r.config_ids() {
            let Some((key, didrec)) = did_holder.as_ref().filter(|_| !is_mdoc(&config_id)) else {
                stored.extend(self.receive_mdoc(o, &r, &token, &config_id).await?);
                continue;
            };
            // did:web cannot be resolved by every issuer offline: name the key by JWK then.
            let kid = (didrec.method != DidMethod::Web).then(|| didrec.verification_method.clone());
            let holder = Holder { key, kid };
            let received =
                oid4vci::credential(http, &r, &token, &config_id, &holder, self.now()).await?;
            let binding = Binding::of_config(
                &r.issuer_metadata["credential_configurations_supported"][&config_id],
            );
            for rc in received {
                let summary = self
                    .store_credential(
                        o,
                        (&key.verifying_key(), &didrec.did),
                        &didrec.key_id,
                        (&config_id, binding),
                        &rc.format,
                        &rc.credential,
                    )
                    .await?;
                stored.push(summary);
            }
        }
        let entry = HistoryEntry {
            at: self.now(),
            kind: "receive".into(),
            counterparty: r.issuer().to_string(),
            credential_ids: stored.iter().map(|c| c.id.clone()).collect(),
            outcome: "received".into(),
        };
        self.record(o, entry).await?;
        Ok(stored)
    }

    /// The holder key for an exchange: the named DID, the default DID, or a new Ed25519 did:key.
    /// The key is read through a tenant session held for that alone.
    async fn holder(
        &self,
        o: &Owner,
        did_name: Option<&str>,
    ) -> WalletResult<(Arc<SigningKey>, DidRecord)> {
        let dids = self.list_dids(o).await?;
        let chosen = match did_name {
            Some(d) => dids
                .into_iter()
                .find(|r| r.did == d)
                .ok_or_else(|| WalletError::not_found("no such DID in this wallet"))?,
            None => match dids.into_iter().find(|d| d.is_default) {
                Some(d) => d,
                None => {
                    let new = CreateDid {
                        method: Some(DidMethod::Key),
                        key_id: None,
                    };
                    self.create_did(o, new).await?
                }
            },
        };
        let session = self.session_for(o).await?;
        let key = self.signing_key(&session, &chosen.key_id).await?;
        Ok((key, chosen))
    }

    /// Resolves an OpenID4VP request (verifying a signed one) and lists, per query, the held
    /// credentials that answer it, with the `request_digest` that binds a later `present` to
    /// exactly this request.
    pub async fn resolve_request(&self, viewer: &Viewer, request: &str) -> WalletResult<Value> {
        let req = oid4vp::resolve_request(&self.ctx.http, request, self.now()).await?;
        self.keep_resolved(viewer, request, &req).await?;
        let held = self.held(viewer).await?;
        // matching is bounded work on this thread (no await inside)
        let (matches, satisfiable) = dcql::bounded(dcql::MATCH_WORK, || {
            let mut matches = Map::new();
            // with credential_sets: whether every required set has an option this wallet answers
            let mut asks = Asks::of(&req);
            let mut satisfiable = match asks.as_mut() {
                Some(a) if a.sets.is_some() => a.narrow_to_sets(&held, &Map::new()).is_ok(),
                _ => true,
            };
            let by_sets = asks.as_ref().is_some_and(|a| a.sets.is_some());
            for ask in Asks::of(&req).map(|a| a.list).unwrap_or_default() {
                let ids: Vec<Value> = held
                    .iter()
                    .filter(|(_, _, v)| ask.matches(v))
                    .map(|(r, _, _)| json!(r.id))
                    .collect();
                satisfiable &= by_sets || !ids.is_empty();
                matches.insert(ask.id.to_string(), Value::Array(ids));
            }
            (matches, satisfiable)
        })
        .map_err(too_costly)?;
        Ok(json!({
            "request_digest": request_digest(&req),
            "client_id": req.client_id,
            "verified_signer": req.signed_by,
            // the name the verifier gives itself: nothing vouches for it (show client_id)
            "client_name_unverified": req.params["client_metadata"]["client_name"],
            "response_mode": req.params["response_mode"],
            "dcql_query": req.params.get("dcql_query"),
            "presentation_definition": req.params.get("presentation_definition"),
            "matches": matches,
            "satisfiable": satisfiable,
        }))
    }

    /// Builds the vp_token from the chosen credentials (disclosing only what is chosen), posts
    /// it to the verifier and records the outcome in the history either way.
    pub async fn present(&self, o: &Owner, input: RequestInput) -> WalletResult<Value> {
        check_choices(&input)?;
        let http = &self.ctx.http;
        // the request as resolve-request fetched it (what the user was shown), else fetched now
        let kept = self
            .get_sealed::<ResolvedRequest>(ks::RESOLVED, &resolved_key(o, &input.request))
            .await
            .unwrap_or_else(|e| {
                // (damaged, or sealed under another master key): fetched again below
                tracing::warn!(wallet = %o.id(), error = %e, "a resolved request does not open");
                None
            });
        let req = match kept {
            Some(req) => req,
            None => oid4vp::resolve_request(http, &input.request, self.now()).await?,
        };
        if let Some(shown) = &input.request_digest {
            if *shown != request_digest(&req) {
                return Err(WalletError::conflict(
                    "the verifier's request is not the one resolved before (it changed since it was shown); resolve it again",
                ));
            }
        }
        let held = self.held(o).await?;
        let now = self.now();
        let mut asks = Asks::of(&req).ok_or_else(|| {
            WalletError::invalid(
                "the request carries neither dcql_query nor presentation_definition",
            )
        })?;
        // what answers each query, and what it discloses: bounded work on this thread
        let picked = dcql::bounded(dcql::MATCH_WORK, || -> WalletResult<Vec<_>> {
            asks.narrow_to_sets(&held, &input.selections)
                .map_err(WalletError::invalid)?;
            asks.list
                .iter()
                .map(|ask| {
                    let h = &held[pick(&input, &held, ask)?];
                    Ok((h, disclose_for(&input, ask.id, ask.claim_names(&h.2))))
                })
                .collect()
        })
        .map_err(too_costly)??;
        let mut chosen = Vec::new();
        let mut tokens = Vec::new();
        // The keys are needed for signing only: the session ends before the verifier is called.
        let session = self.session_for(o).await?;
        for (h, names) in picked {
            tokens.push(self.present_one(o, &session, &req, h, &names, now).await?);
            chosen.push(h);
        }
        drop(session);
        // answered: the next presentation of this link fetches it again
        self.ctx
            .store
            .delete(ks::RESOLVED, &resolved_key(o, &input.request))
            .await?;
        let used: Vec<String> = chosen.iter().map(|(r, _, _)| r.id.clone()).collect();
        let (vp_token, submission) = asks.vp_token(tokens, &chosen);
        // the unsealed wallet (and its place) is not kept while the verifier answers
        drop(chosen);
        drop(held);
        let result = oid4vp::submit(http, &req, vp_token, submission).await;
        let outcome = match &result {
            Ok(_) => "accepted".to_string(),
            Err(e) => format!("rejected: {e}"),
        };
        let entry = HistoryEntry {
            at: now,
            kind: "present".into(),
            counterparty: req.client_id.clone(),
            credential_ids: used.clone(),
            outcome,
        };
        self.record(o, entry).await?;
        // A summary (status, redirect_uri) from oid4vp::submit, never the verifier's raw body.
        let answer = result?;
        Ok(
            json!({"presented": used, "verifier_response": answer, "redirect_uri": answer.get("redirect_uri")}),
        )
    }

    /// One credential's presentation, signed with the key it is bound to.
    async fn present_one(
        &self,
        o: &Owner,
        session: &WalletSession,
        req: &ResolvedRequest,
        h: &HeldCredential,
        names: &[String],
        now: i64,
    ) -> WalletResult<Value> {
        let (rec, raw, view) = h;
        let key = match self.device_key(o.id(), rec)? {
            Some(device) => Arc::new(device),
            None => self.signing_key(session, &rec.key_id).await?,
        };
        let kid = view.root["credentialSubject"]["id"]
            .as_str()
            .filter(|d| d.starts_with("did:key:") || d.starts_with("did:jwk:"))
            .map(did::verification_method);
        if rec.format == "ldp_vc" {
            // Data Integrity signing is CPU-heavy: off the async workers.
            let (req, raw, view, names, format, id) = (
                req.clone(),
                raw.clone(),
                view.clone(),
                names.to_vec(),
                rec.format.clone(),
                rec.id.clone(),
            );
            // Data Integrity signing is CPU-heavy: off the async workers, in one of the
            // JSON-LD slots verifications share
            let presented = crate::crypto::di::run_in_slot(move || {
                let held = Held {
                    id,
                    format,
                    raw,
                    view,
                    key: &key,
                    kid,
                };
                oid4vp::presentation(&req, &held, &names, now)
            })
            .await
            .map_err(|e| match e {
                crate::crypto::CryptoError::Busy(_) => WalletError::Busy {
                    detail: "every JSON-LD slot is busy; try again",
                    retry_after: 1,
                },
                // a held credential over the JSON-LD limits is the input's, not ours: 422
                e @ (crate::crypto::CryptoError::TooComplex(_)
                | crate::crypto::CryptoError::OutOfTime(_)) => {
                    WalletError::invalid(format!("cannot sign this presentation: {e}"))
                }
                other => WalletError::Internal(other.to_string()),
            })?;
            return Ok(presented?);
        }
        let held = Held {
            id: rec.id.clone(),
            format: rec.format.clone(),
            raw: raw.clone(),
            view: view.clone(),
            key: &key,
            kid,
        };
        Ok(oid4vp::presentation(req, &held, names, now)?)
    }
}

/// What a request asks for: DCQL credential queries, or a presentation definition's input
/// descriptors (PEX), in the request's order.
struct Asks<'a> {
    list: Vec<Ask<'a>>,
    /// The presentation definition, when the request uses PEX.
    pex: Option<&'a Value>,
    /// DCQL `credential_sets`, when the query has them.
    sets: Option<&'a Vec<Value>>,
}

/// One DCQL credential query or one PEX input descriptor.
struct Ask<'a> {
    id: &'a str,
    query: &'a Value,
    /// PEX: the presentation definition the descriptor belongs to.
    pex: Option<&'a Value>,
    /// PEX: the descriptor's required filters, compiled once for every credential held
    /// ([`pex_filters`]).
    filters: Vec<Option<PexFilter>>,
}

impl<'a> Ask<'a> {
    fn new(query: &'a Value, pex: Option<&'a Value>) -> Self {
        Ask {
            id: query["id"].as_str().unwrap_or_default(),
            query,
            pex,
            filters: if pex.is_some() {
                pex_filters(query)
            } else {
                Vec::new()
            },
        }
    }
}

impl<'a> Asks<'a> {
    /// DCQL when the request has a `dcql_query`, else PEX, else nothing to answer.
    fn of(req: &'a ResolvedRequest) -> Option<Self> {
        let (items, pex, sets) = if let Some(q) = req.dcql() {
            (&q["credentials"], None, q["credential_sets"].as_array())
        } else {
            let pd = req.params.get("presentation_definition")?;
            (&pd["input_descriptors"], Some(pd), None)
        };
        let list = items
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|query| Ask::new(query, pex))
            .collect();
        Some(Self { list, pex, sets })
    }

    /// DCQL `credential_sets` (OpenID4VP 1.0 §6.2): only the credential queries of one option
    /// per required set are answered — the first option whose every query the caller selected a
    /// credential for, else the first whose every query a held credential answers — and an
    /// optional set only when the caller selected credentials for one of its options entirely.
    /// Without `credential_sets` every query is answered. Err: a required set no option of
    /// which can be answered.
    fn narrow_to_sets(
        &mut self,
        held: &[HeldCredential],
        selections: &Map<String, Value>,
    ) -> Result<(), String> {
        let Some(sets) = self.sets else {
            return Ok(());
        };
        let answerable = |id: &str| {
            self.list
                .iter()
                .find(|a| a.id == id)
                .is_some_and(|a| held.iter().any(|(_, _, v)| a.matches(v)))
        };
        let mut wanted: Vec<String> = Vec::new();
        for (n, set) in sets.iter().enumerate() {
            let options: Vec<Vec<&str>> = set["options"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| {
                    o.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect()
                })
                .collect();
            let selected = options
                .iter()
                .find(|o| o.iter().all(|id| selections.contains_key(*id)));
            let chosen = if set["required"] == Value::Bool(false) {
                selected
            } else {
                let first = options.iter().find(|o| o.iter().all(|id| answerable(id)));
                Some(selected.or(first).ok_or_else(|| {
                    format!(
                        "no option of required credential set {n} can be answered from this wallet"
                    )
                })?)
            };
            wanted.extend(chosen.into_iter().flatten().map(|id| id.to_string()));
        }
        self.list.retain(|a| wanted.iter().any(|w| w == a.id));
        Ok(())
    }

    /// The vp_token (and, for PEX, the presentation submission) from one presentation per ask.
    fn vp_token(
        &self,
        mut tokens: Vec<Value>,
        chosen: &[&HeldCredential],
    ) -> (Value, Option<Value>) {
        let Some(pd) = self.pex else {
            let mut token = Map::new();
            for (ask, t) in self.list.iter().zip(tokens) {
                token.insert(ask.id.to_string(), json!([t]));
            }
            return (Value::Object(token), None);
        };
        let n_asks = self.list.len();
        let map: Vec<Value> = self
            .list
            .iter()
            .zip(chosen)
            .enumerate()
            .map(|(n, (ask, (rec, _, _)))| {
                let format = match rec.format.as_str() {
                    "dc+sd-jwt" => "vc+sd-jwt",
                    "ldp_vc" => "ldp_vp",
                    "mso_mdoc" => "mso_mdoc",
                    _ => "jwt_vp_json",
                };
                let path = if n_asks == 1 {
                    "$".to_string()
                } else {
                    format!("$[{n}]")
                };
                json!({"id": ask.id, "format": format, "path": path})
            })
            .collect();
        let token = if tokens.len() == 1 {
            tokens.remove(0)
        } else {
            Value::Array(tokens)
        };
        let submission =
            json!({"id": random_id(), "definition_id": pd["id"], "descriptor_map": map});
        (token, Some(submission))
    }
}

impl Ask<'_> {
    fn matches(&self, v: &CredentialView) -> bool {
        if let Some(pd) = self.pex {
            pex_match(v, self.query, pd, &self.filters)
        } else {
            dcql::mismatch(v, self.query).is_none()
        }
    }

    /// The claims `v` discloses when the caller does not choose (mso_mdoc: `namespace/element`).
    fn claim_names(&self, v: &CredentialView) -> Vec<String> {
        match (self.pex.is_some(), v.format == mdoc::FORMAT) {
            (true, _) => pex_disclosure(self.query),
            (false, true) => dcql::requested_mdoc_elements(v, self.query),
            (false, false) => dcql::requested_claim_paths(v, self.query),
        }
    }
}

/// A request whose matching ran out of [`dcql::MATCH_WORK`] against this wallet: 422, since its
/// queries (or what they ask of what is held) cost more than any real request does.
fn too_costly(e: dcql::TooCostly) -> WalletError {
    WalletError::invalid(format!("the verifier's request: {e}"))
}

/// The caller's choices are refused unless well-formed: a selection is a credential id (a
/// string), a disclosure list an array of claim names (strings) or claim paths (arrays of names,
/// indexes and null). Anything else was read as no choice, and no choice answers an optional
/// credential set with the first match, or discloses every claim asked for (attacker review: a
/// client writing `null` for "not selected" presented it).
fn check_choices(input: &RequestInput) -> WalletResult<()> {
    if let Some((qid, _)) = input.selections.iter().find(|(_, v)| !v.is_string()) {
        return Err(WalletError::invalid(format!(
            "selections.{qid}: a credential id (a string)"
        )));
    }
    let path_step = |v: &Value| v.is_string() || v.is_u64() || v.is_null();
    let claim = |v: &Value| match v {
        Value::String(_) => true,
        Value::Array(steps) => !steps.is_empty() && steps.iter().all(path_step),
        _ => false,
    };
    let listed = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(claim));
    if let Some((qid, _)) = input.disclose.iter().find(|(_, v)| !listed(v)) {
        return Err(WalletError::invalid(format!(
            "disclose.{qid}: an array of claim names or claim paths (arrays)"
        )));
    }
    Ok(())
}

/// The held credential answering `ask`: the caller's selection (which must answer it), else the
/// first that does.
fn pick(input: &RequestInput, held: &[HeldCredential], ask: &Ask<'_>) -> WalletResult<usize> {
    let qid = ask.id;
    match input.selections.get(qid).and_then(Value::as_str) {
        Some(chosen) => held
            .iter()
            .position(|(r, _, v)| r.id == chosen && ask.matches(v))
            .ok_or_else(|| {
                WalletError::invalid(format!("credential `{chosen}` does not answer `{qid}`"))
            }),
        // a PEX descriptor that names no field, or a DCQL query that constrains nothing but the
        // format, matches any credential: not one picked unasked (attacker review: the first
        // jwt_vc_json held was sent whole)
        None if ask.pex.is_some() && pex_claim_names(ask.query).is_empty() => {
            Err(WalletError::invalid(format!(
                "input descriptor `{qid}` names no field: select the credential to present"
            )))
        }
        None if ask.pex.is_none() && dcql::names_nothing(ask.query) => {
            Err(WalletError::invalid(format!(
                "credential query `{qid}` asks for no claim, type or doctype: select the credential to present"
            )))
        }
        None => held
            .iter()
            .position(|(_, _, v)| ask.matches(v))
            .ok_or_else(|| {
                WalletError::invalid(format!("no credential in this wallet answers `{qid}`"))
            }),
    }
}

/// The claims to disclose for a query: the caller's choice (names, or claim paths as arrays,
/// passed on as JSON array text), else `default`.
fn disclose_for(input: &RequestInput, qid: &str, default: Vec<String>) -> Vec<String> {
    input
        .disclose
        .get(qid)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(_) => Some(v.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or(default)
}

/// Presentation-definition input descriptor fields → first-level claim names.
fn pex_claim_names(d: &Value) -> Vec<String> {
    pex_field_names(d, false)
}

/// A descriptor field's path below the credential's claims, dotted (`$.vc.credentialSubject.a.b`
/// → `a.b`): what the wallet's PEX matching and disclosure read.
fn below_claims(path: &str) -> &str {
    path.trim_start_matches("$.")
        .trim_start_matches("vc.")
        .trim_start_matches("credentialSubject.")
}

/// What a descriptor discloses when the caller does not choose: each required field's claim
/// path down to the member it names (`$.address.country` → `["address","country"]`, passed on as
/// JSON array text), not the whole first-level claim, and no `optional` field (attacker review:
/// a field for the country disclosed the whole address, and optional fields went unasked). A
/// path of another form (brackets, wildcards) stays its first-level name.
fn pex_disclosure(d: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in d["constraints"]["fields"].as_array().into_iter().flatten() {
        if f["optional"] == json!(true) {
            continue;
        }
        let Some(p) = f["path"][0].as_str() else {
            continue;
        };
        let dotted = below_claims(p);
        let plain = |seg: &str| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        };
        let segments: Vec<&str> = dotted.split('.').collect();
        let claim = if p.starts_with("$.") && segments.iter().all(|s| plain(s)) {
            match segments.as_slice() {
                [one] => one.to_string(),
                many => json!(many).to_string(),
            }
        } else {
            match segments.first() {
                Some(first) => first.to_string(),
                None => continue,
            }
        };
        if !out.contains(&claim) {
            out.push(claim);
        }
    }
    out
}

/// The first-level claim names of a descriptor's fields (`required_only`: not `optional` ones).
fn pex_field_names(d: &Value, required_only: bool) -> Vec<String> {
    d["constraints"]["fields"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter(|f| !required_only || f["optional"] != json!(true))
                .filter_map(|f| f["path"][0].as_str())
                .filter_map(|p| below_claims(p).split('.').next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a held credential has every required field of an input descriptor, in a format the
/// descriptor (else the definition) names when it names any, and its `filters` ([`pex_filters`]
/// of the descriptor) hold.
fn pex_match(v: &CredentialView, d: &Value, pd: &Value, filters: &[Option<PexFilter>]) -> bool {
    let formats = d.get("format").or_else(|| pd.get("format"));
    if let Some(named) = formats.and_then(Value::as_object) {
        if !named
            .keys()
            .any(|k| pex_formats(&v.format).contains(&k.as_str()))
        {
            return false;
        }
    }
    let root = if v.format == "dc+sd-jwt" {
        &v.root
    } else {
        &v.root["credentialSubject"]
    };
    pex_field_names(d, true)
        .iter()
        .all(|name| root.get(name).is_some())
        && filters.iter().all(|f| {
            f.as_ref().is_some_and(|(dotted, filter)| {
                dotted
                    .split('.')
                    .try_fold(root, |node, seg| node.get(seg))
                    .is_some_and(|value| filter.accepts(value))
            })
        })
}

/// A required field's filter and the dotted path below the credential's claims it applies to.
type PexFilter = (String, crate::pex_filter::Filter);

/// The required field filters of a descriptor, each compiled once per request, not once per
/// credential held (attacker review: a verifier's hundreds of `pattern`s, recompiled for each
/// of 500 credentials, held a worker for minutes). `None`: a filter that cannot be compiled or
/// names no path, which no credential answers (the verifier would refuse the answer anyway).
fn pex_filters(d: &Value) -> Vec<Option<PexFilter>> {
    d["constraints"]["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f.get("filter").is_some() && f["optional"] != json!(true))
        .map(|f| {
            let path = f["path"][0].as_str()?;
            let filter = crate::pex_filter::Filter::compile(&f["filter"]).ok()?;
            Some((below_claims(path).to_string(), filter))
        })
        .collect()
}

/// An issuer's `display` entries as a front-end may render them (console review: they came
/// from the outsider's metadata as they were): a logo or background image only at an `https`
/// URI, colours only as `#` and 3 to 8 hex digits; everything else as sent (text is text).
fn safe_display(mut display: Value) -> Value {
    let colour = |v: &Value| {
        v.as_str().is_some_and(|c| {
            c.strip_prefix('#').is_some_and(|h| {
                (3..=8).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit())
            })
        })
    };
    for d in display.as_array_mut().into_iter().flatten() {
        let Some(d) = d.as_object_mut() else { continue };
        for image in ["logo", "background_image"] {
            let Some(given) = d.remove(image) else {
                continue;
            };
            // rebuilt from what is known to be safe: `uri` (https only) and `alt_text`; a
            // draft's `url`, a bare string or anything else is left out
            let mut kept = serde_json::Map::new();
            if let Some(u) = given["uri"].as_str() {
                if u.len() <= 2048 && u.starts_with("https://") {
                    kept.insert("uri".into(), u.into());
                }
            }
            if let Some(a) = given["alt_text"].as_str() {
                kept.insert("alt_text".into(), a.into());
            }
            d.insert(image.into(), Value::Object(kept));
        }
        for key in ["background_color", "text_color"] {
            if d.get(key).is_some_and(|c| !colour(c)) {
                d.remove(key);
            }
        }
    }
    display
}

/// Where a wallet keeps a request it resolved: by a digest of the request text the caller sent.
/// Where the request `viewer` resolved is kept: under the wallet and the member, so one member's
/// resolutions neither fill another's places nor replace the request another was shown
/// (attacker review: a viewer could keep the owner's present from its own resolutions).
fn resolved_key(viewer: &Viewer, request: &str) -> String {
    format!(
        "{}{}",
        resolved_prefix(viewer),
        crate::crypto::sha256_hex(request.trim())
    )
}

fn resolved_prefix(viewer: &Viewer) -> String {
    format!("{}/{}/", viewer.id(), viewer.member())
}

/// How long a resolved request is kept for present, in seconds.
const RESOLVED_TTL_SECS: u64 = 600;
/// Most resolved requests a member of a wallet keeps at once.
const MAX_RESOLVED: usize = 32;

impl WalletService {
    /// Keeps `req` as resolve-request fetched it for `request` ([`RESOLVED_TTL_SECS`]): present
    /// answers exactly what was shown, without fetching the request again. A verifier could
    /// otherwise answer its `request_uri` with a harmless query to resolve-request and another
    /// one to present (attacker review); and a `request_uri` some verifiers serve only once still
    /// works.
    async fn keep_resolved(
        &self,
        viewer: &Viewer,
        request: &str,
        req: &ResolvedRequest,
    ) -> WalletResult<()> {
        let store = &self.ctx.store;
        let full = || {
            WalletError::Busy {
            detail: "you have 32 resolved requests in this wallet waiting to be answered (each is kept 10 minutes); present or wait",
            retry_after: 60,
        }
        };
        let held = store
            .count_prefix(ks::RESOLVED, &resolved_prefix(viewer), MAX_RESOLVED)
            .await?;
        // full: refused rather than not kept (present would then fetch the request again)
        if held >= MAX_RESOLVED {
            return Err(full());
        }
        // sealed: which verifier asked what (and its `state`, with which anyone could answer
        // the request with an error) is kept only sealed
        let key = resolved_key(viewer, request);
        self.put_sealed(
            ks::RESOLVED,
            &key,
            req,
            Some(std::time::Duration::from_secs(RESOLVED_TTL_SECS)),
        )
        .await?;
        // counted again once written: requests resolved at once each counted the others out
        // (attacker review: concurrent 64 KB requests went past the 32 per member)
        let now_held = store
            .count_prefix(ks::RESOLVED, &resolved_prefix(viewer), MAX_RESOLVED + 1)
            .await?;
        if now_held > MAX_RESOLVED {
            store.delete(ks::RESOLVED, &key).await?;
            return Err(full());
        }
        Ok(())
    }
}

/// The PEX format names (of credentials and of their presentations) a held format answers.
fn pex_formats(format: &str) -> &'static [&'static str] {
    match format {
        "dc+sd-jwt" | "vc+sd-jwt" => &["vc+sd-jwt", "dc+sd-jwt"],
        "jwt_vc_json" => &["jwt_vc_json", "jwt_vc", "jwt_vp_json", "jwt_vp"],
        "ldp_vc" => &["ldp_vc", "ldp_vp", "ldp"],
        "mso_mdoc" => &["mso_mdoc"],
        _ => &[],
    }
}

/// What binds a presentation to the request a user was shown: SHA-256 over who asks
/// (`client_id`), where the answer goes (`response_uri` / `redirect_uri`, `response_mode`) and
/// what it asks for (`dcql_query` / `presentation_definition`). Fields a verifier may renew on
/// every fetch of its request object (`iat`, `exp`, `jti`, client metadata) are left out, so an
/// honest verifier's request keeps its digest.
fn request_digest(req: &oid4vp::ResolvedRequest) -> String {
    let p = &req.params;
    let bound = json!([
        req.client_id,
        p.get("response_uri"),
        p.get("redirect_uri"),
        p.get("response_mode"),
        p.get("dcql_query"),
        p.get("presentation_definition"),
    ]);
    crate::crypto::sha256_hex(bound.to_string().as_bytes())
}

#[cfg(test)]
mod pex_tests {
    use super::*;

    fn view(format: &str, root: Value) -> CredentialView {
        CredentialView {
            format: format.into(),
            root,
            vct: None,
            types: vec![],
            doctype: None,
        }
    }

    /// A PEX descriptor is answered only in a format it (or its definition) names, and one
    /// that names no field is never answered by a credential picked unasked (wallet review:
    /// format and fields were ignored, so the first credential held went out whole).
    #[test]
    fn pex_descriptors_are_matched_by_format_and_fields() {
        let sd = view("dc+sd-jwt", json!({"family_name": "M"}));
        let jwt = view(
            "jwt_vc_json",
            json!({"credentialSubject": {"family_name": "M"}}),
        );
        let fields = json!({"fields": [{"path": ["$.family_name"]}]});
        let pd = json!({"id": "pd"});
        let d = json!({"id": "in", "format": {"vc+sd-jwt": {}}, "constraints": fields});
        let pex_match =
            |v: &CredentialView, d: &Value, pd: &Value| pex_match(v, d, pd, &pex_filters(d));
        assert!(pex_match(&sd, &d, &pd));
        assert!(!pex_match(&jwt, &d, &pd), "another format");
        let pd_jwt = json!({"id": "pd", "format": {"jwt_vc_json": {}}});
        let any = json!({"id": "in", "constraints": fields});
        assert!(pex_match(&jwt, &any, &pd_jwt));
        assert!(!pex_match(&sd, &any, &pd_jwt), "the definition's format");
        // a field's filter must hold for the value
        let filtered = |f: Value| json!({"id": "in", "constraints": {"fields": [{"path": ["$.family_name"], "filter": f}]}});
        assert!(pex_match(
            &sd,
            &filtered(json!({"type": "string", "const": "M"})),
            &pd
        ));
        assert!(!pex_match(&sd, &filtered(json!({"const": "X"})), &pd));
        assert!(
            !pex_match(&sd, &filtered(json!({"no_such_keyword": 1})), &pd),
            "unenforceable"
        );
        let nested = json!({"id": "in", "constraints": {"fields": [{"path": ["$.credentialSubject.address.country"], "filter": {"const": "DE"}}]}});
        let w3c = view(
            "jwt_vc_json",
            json!({"credentialSubject": {"address": {"country": "DE"}}}),
        );
        assert!(pex_match(&w3c, &nested, &pd));
        // no field: listed as matching, never picked unasked
        let bare = json!({"id": "in"});
        assert!(pex_match(&sd, &bare, &pd));
        let ask = Ask::new(&bare, Some(&pd));
        let input: RequestInput = serde_json::from_value(json!({"request": "x"})).unwrap();
        assert!(pick(&input, &[], &ask).is_err());
        // nor is a DCQL query that names nothing but a format (attacker review: the first
        // jwt_vc_json held was sent whole); one that names a claim is
        let rec: CredentialRecord = serde_json::from_value(json!({"id": "c1",
            "format": "jwt_vc_json", "sealed": "", "key_id": "k", "received_at": 0}))
        .unwrap();
        let held = vec![(rec, String::new(), w3c.clone())];
        let only_format = json!({"id": "q", "format": "jwt_vc_json", "meta": {}});
        let ask = Ask::new(&only_format, None);
        assert!(ask.matches(&w3c), "listed as matching");
        let refused = pick(&input, &held, &ask).unwrap_err().to_string();
        assert!(refused.contains("select the credential"), "{refused}");
        let chosen: RequestInput =
            serde_json::from_value(json!({"request": "x", "selections": {"q": "c1"}})).unwrap();
        assert_eq!(pick(&chosen, &held, &ask).unwrap(), 0);
        let named = json!({"id": "q", "format": "jwt_vc_json", "meta": {},
            "claims": [{"path": ["credentialSubject", "address", "country"]}]});
        assert_eq!(pick(&input, &held, &Ask::new(&named, None)).unwrap(), 0);
    }

    /// Issuer display metadata reaches the wallet's API only in forms a front-end can render
    /// safely: no `javascript:` logo, no CSS in a colour.
    #[test]
    fn issuer_display_is_cleaned_for_front_ends() {
        let d = safe_display(json!([
            {"name": "<b>ok</b>", "logo": {"uri": "javascript:alert(1)", "alt_text": "x"},
             "background_color": "red;background:url(https://t.example)", "text_color": "#FFF"},
            {"logo": {"uri": "https://issuer.example/logo.png", "url": "javascript:x", "onload": "x"}, "background_image": {"uri": "data:image/svg+xml,<svg/>"},
             "background_color": "#12345678"},
            {"logo": "javascript:alert(1)"},
            "not an object"
        ]));
        assert_eq!(
            d,
            json!([
                {"name": "<b>ok</b>", "logo": {"alt_text": "x"}, "text_color": "#FFF"},
                {"logo": {"uri": "https://issuer.example/logo.png"}, "background_image": {}, "background_color": "#12345678"},
                {"logo": {}},
                "not an object"
            ])
        );
    }

    /// A PEX answer discloses what the required fields name, down to the member (attacker
    /// review: `$.address.country` disclosed the whole address, and optional fields were
    /// disclosed unasked).
    #[test]
    fn a_descriptor_discloses_the_members_its_required_fields_name() {
        let d = json!({"id": "in", "constraints": {"fields": [
            {"path": ["$.address.country"]},
            {"path": ["$.vct"], "filter": {"const": "urn:pid"}},
            {"path": ["$.credentialSubject.given_name"]},
            {"path": ["$.birthdate"], "optional": true},
            {"path": ["$.address.country", "$.country"]},
        ]}});
        assert_eq!(
            pex_disclosure(&d),
            vec![r#"["address","country"]"#, "vct", "given_name"]
        );
        let pd = json!({"id": "pd", "input_descriptors": [d.clone()]});
        let ask = Ask::new(&pd["input_descriptors"][0], Some(&pd));
        assert_eq!(
            ask.claim_names(&view("dc+sd-jwt", json!({}))),
            pex_disclosure(&d)
        );
    }

    /// A descriptor's filters cost matching work per value they inspect (attacker review: an
    /// `items` `enum` of hundreds of choices over a credential's 100,000-element array, for
    /// every credential held): past [`dcql::MATCH_WORK`] the match is TooCostly (422), not a
    /// worker held for minutes.
    #[test]
    fn filters_over_large_arrays_are_bounded_work() {
        let choices: Vec<Value> = (0..300).map(|n| json!(format!("c{n}"))).collect();
        let pd = json!({"id": "pd", "input_descriptors": [{"id": "in", "constraints": {"fields": [
            {"path": ["$.a"], "filter": {"type": "array", "items": {"enum": choices}}},
        ]}}]});
        let ask = Ask::new(&pd["input_descriptors"][0], Some(&pd));
        let held = |n: usize| view("dc+sd-jwt", json!({"a": vec![json!("c299"); n]}));
        assert_eq!(
            dcql::bounded(dcql::MATCH_WORK, || ask.matches(&held(10))),
            Ok(true)
        );
        assert_eq!(
            dcql::bounded(dcql::MATCH_WORK, || ask.matches(&held(100_000))),
            Err(dcql::TooCostly)
        );
    }

    /// A descriptor's filters are compiled once per request, however many credentials the
    /// wallet holds (attacker review: recompiled per credential, a verifier's patterns held a
    /// worker for minutes).
    #[test]
    fn a_descriptors_filters_are_compiled_once_not_per_credential_held() {
        let pd = json!({"id": "pd", "input_descriptors": [{"id": "in", "constraints": {"fields": [
            {"path": ["$.vct"], "filter": {"type": "string", "pattern": "^urn:a"}},
            {"path": ["$.family_name"], "filter": {"type": "string"}},
            {"path": ["$.nickname"], "filter": {"pattern": "x"}, "optional": true},
        ]}}]});
        let compiled = || crate::pex_filter::COMPILED.with(|n| n.get());
        let before = compiled();
        let ask = Ask::new(&pd["input_descriptors"][0], Some(&pd));
        let matched = (0..50)
            .filter(|i| {
                let vct = if i % 2 == 0 { "urn:a" } else { "urn:b" };
                ask.matches(&view("dc+sd-jwt", json!({"vct": vct, "family_name": "M"})))
            })
            .count();
        assert_eq!(matched, 25);
        assert_eq!(
            compiled() - before,
            2,
            "the two required filters, once each"
        );
    }
}
