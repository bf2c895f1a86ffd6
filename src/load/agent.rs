//! `idstack agent --stdio`: a holder agent speaking the Aries Akrida agent.js protocol — one JSON
//! command per stdin line, exactly one `{"error":0|1,"result":...}` line per command on stdout,
//! logs on stderr only. OpenID4VC commands (`receiveOffer`, `presentRequest`) run the same clients
//! as the wallet. DIDComm commands (`start` with `withMediation`, `ping_mediator`,
//! `receiveInvitation`) run the DIDComm client the load harness uses: the mediator invitation comes
//! from the command's `mediatorUrl` or, as in Akrida, the `MEDIATION_URL` environment variable.
//! A mediated agent (`start` with `withMediation`) connects to other agents (`receiveInvitation`
//! of an issuer's out-of-band invitation) with DID exchange 1.1 and a `did:peer:2` that names its
//! mediator, so the issuer's messages reach it through the mediator's live WebSocket, as in Akrida.
//! `receiveCredential` then takes the next issue-credential 2.0 offer (W3C JSON-LD credentials,
//! `aries/ld-proof-vc-detail@v1.0`), requests it, checks the credential issued against the request,
//! keeps it and acknowledges it. DIDComm present-proof (`presentationExchange`) is not implemented:
//! it answers `error: 1`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::client::{oid4vci, oid4vp};
use crate::crypto::{did, KeyType, SigningKey};
use crate::dcql::{self, CredentialView};
use crate::didcomm::client::{
    didexchange_request, new_message, parse_invitation, pickup, AgentKey, MediatorConnection,
    PeerConnection, WsConnection,
};
use crate::didcomm::peer;

const LD_DETAIL: &str = "aries/ld-proof-vc-detail@v1.0";
const LD_VC: &str = "aries/ld-proof-vc@v1.0";

struct Held {
    format: String,
    raw: String,
    view: CredentialView,
}

struct Agent {
    http: reqwest::Client,
    key: Option<Arc<SigningKey>>,
    held: Vec<Held>,
    mediator: Option<Mediated>,
    connections: Vec<MediatorConnection>,
    /// Connections to other agents, made through the mediator.
    peers: Vec<PeerConnection>,
    /// Our keys on those connections (and on one being made).
    peer_keys: Vec<AgentKey>,
    /// Messages from peers that arrived while another command was waiting.
    inbox: VecDeque<Inbound>,
}

/// A message a peer sent us through the mediator.
struct Inbound {
    msg: Value,
    /// Our verkey it was addressed to (names the connection).
    to: String,
}

fn typ(m: &Value) -> &str {
    m["@type"].as_str().unwrap_or_default()
}

fn thread_id(m: &Value) -> &str {
    m.pointer("/~thread/thid")
        .and_then(Value::as_str)
        .or_else(|| m["@id"].as_str())
        .unwrap_or_default()
}

fn timeout_of(cmd: &Value) -> Duration {
    Duration::from_millis(cmd["timeoutMs"].as_u64().unwrap_or(30_000))
}

/// The mediator connection and its live WebSocket.
struct Mediated {
    conn: MediatorConnection,
    ws: WsConnection,
    recipient: AgentKey,
}

fn now() -> i64 {
    crate::clock::Clock::now_secs(&crate::clock::SystemClock)
}

impl Agent {
    // Over 80 lines: the dispatcher of the agent protocol: one short arm per command.
    async fn handle(&mut self, cmd: &Value) -> Result<Value, String> {
        match cmd["cmd"].as_str().unwrap_or_default() {
            "start" => {
                self.key = Some(Arc::new(SigningKey::generate(KeyType::Ed25519)));
                if cmd["withMediation"].as_bool() == Some(true) {
                    let url = cmd["mediatorUrl"]
                        .as_str()
                        .map(str::to_string)
                        .or_else(|| std::env::var("MEDIATION_URL").ok())
                        .ok_or("withMediation needs mediatorUrl or MEDIATION_URL (the mediator's invitation URL)")?;
                    self.mediator = Some(self.mediate(&url).await.map_err(|e| e.to_string())?);
                }
                Ok(json!("Initialized agent..."))
            }
            "shutdown" => {
                if let Some(m) = self.mediator.take() {
                    m.ws.close().await;
                }
                Ok(json!("Shutting down agent"))
            }
            "ping_mediator" => {
                let m = self.mediator.as_mut().ok_or("start with withMediation first")?;
                let t = std::time::Instant::now();
                let (_, others) = m
                    .ws
                    .call(pickup::ping(), "ping_response", Duration::from_secs(30))
                    .await
                    .map_err(|e| e.to_string())?;
                // deliveries that arrived meanwhile are kept for the commands that wait for them
                for d in others {
                    self.take_delivery(&d).await.map_err(|e| e.to_string())?;
                }
                Ok(json!({"ping_ms": t.elapsed().as_secs_f64() * 1000.0}))
            }
            "info" => Ok(match &self.mediator {
                Some(m) => json!({
                    "mediated": true,
                    "recipient_key": m.recipient.did_key(),
                    "routing_keys": m.conn.routing_keys,
                    "endpoint": m.conn.invitation.http_endpoint,
                    "connections": self.connections.len() + self.peers.len(),
                }),
                None => json!({"mediated": false, "connections": self.connections.len() + self.peers.len()}),
            }),
            "receiveInvitation" => {
                let url = cmd["invitationUrl"].as_str().ok_or("invitationUrl is required")?;
                if self.mediator.is_some() {
                    let c = self
                        .connect_routed(url, timeout_of(cmd))
                        .await
                        .map_err(|e| e.to_string())?;
                    return Ok(json!({"connection": c}));
                }
                // Unmediated, the agent has no endpoint: only agents that answer on the same
                // HTTP request (return route, as mediators do) can be connected to.
                let c = MediatorConnection::connect(self.http.clone(), url, "idstack-agent")
                    .await
                    .map_err(|e| e.to_string())?;
                let their = crate::didcomm::envelope::verkey_b58(&c.mediator_key);
                self.connections.push(c);
                Ok(json!({"connection": their}))
            }
            "receiveCredential" => self
                .receive_credential(timeout_of(cmd))
                .await
                .map_err(|e| e.to_string()),
            "presentationExchange" => Err(
                "presentationExchange (DIDComm present-proof) is not implemented by this agent; use presentRequest (OID4VP)"
                    .to_string(),
            ),
            "receiveOffer" => {
                let key = self.key.clone().ok_or("send start first")?;
                let offer = cmd["offerUrl"].as_str().ok_or("offerUrl is required")?;
                let r = oid4vci::resolve_offer(&self.http, offer)
                    .await
                    .map_err(|e| e.to_string())?;
                let token = oid4vci::token(&self.http, &r, cmd["txCode"].as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let kid = did::verification_method(&did::did_key(&key.verifying_key()));
                let holder = oid4vci::Holder {
                    key: &key,
                    kid: Some(kid),
                };
                let mut out = Vec::new();
                for config in r.config_ids() {
                    for rc in oid4vci::credential(&self.http, &r, &token, &config, &holder, now())
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        let raw = match &rc.credential {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        out.push(
                            json!({"credential_configuration_id": config, "format": rc.format}),
                        );
                        self.held.push(Held {
                            view: dcql::credential_view(&rc.format, &raw).0,
                            format: rc.format,
                            raw,
                        });
                    }
                }
                Ok(json!(out))
            }
            "presentRequest" => {
                let key = self.key.clone().ok_or("send start first")?;
                let uri = cmd["requestUrl"].as_str().ok_or("requestUrl is required")?;
                let req = oid4vp::resolve_request(&self.http, uri, now())
                    .await
                    .map_err(|e| e.to_string())?;
                let query = req
                    .dcql()
                    .cloned()
                    .ok_or("only DCQL requests are supported by the agent")?;
                let mut token = serde_json::Map::new();
                for cq in query["credentials"].as_array().cloned().unwrap_or_default() {
                    let h = self
                        .held
                        .iter()
                        .find(|h| dcql::mismatch(&h.view, &cq).is_none())
                        .ok_or_else(|| format!("no held credential answers {}", cq["id"]))?;
                    let kid = Some(did::verification_method(&did::did_key(
                        &key.verifying_key(),
                    )));
                    let held = oid4vp::Held {
                        id: String::new(),
                        format: h.format.clone(),
                        raw: h.raw.clone(),
                        view: h.view.clone(),
                        key: &key,
                        kid,
                    };
                    let p =
                        oid4vp::presentation(
                        &req,
                        &held,
                        &dcql::requested_claim_names(&h.view, &cq),
                        now(),
                    )
                            .map_err(|e| e.to_string())?;
                    token.insert(
                        cq["id"].as_str().unwrap_or_default().to_string(),
                        json!([p]),
                    );
                }
                oid4vp::submit(&self.http, &req, Value::Object(token), None)
                    .await
                    .map_err(|e| e.to_string())
            }
            other => Err(format!("unknown command `{other}`")),
        }
    }
}

impl Agent {
    /// The next message a peer sent us: from the inbox, else from the mediator's live WebSocket
    /// (each delivery opened with our connection keys, and acknowledged).
    async fn next_inbound(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<Inbound> {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(m);
            }
            let m = self
                .mediator
                .as_mut()
                .ok_or_else(|| anyhow::anyhow!("start with withMediation first"))?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                anyhow::bail!("nothing arrived in time");
            }
            let d = m.ws.recv(left).await?;
            self.take_delivery(&d).await?;
        }
    }

    /// Opens the envelopes of a pickup `delivery` into the inbox and acknowledges them (what no
    /// key of ours opens is acknowledged too: it can never be read).
    async fn take_delivery(&mut self, d: &Value) -> anyhow::Result<()> {
        if !typ(d).ends_with("messagepickup/2.0/delivery") {
            return Ok(());
        }
        let mut ids = Vec::new();
        for (id, env) in pickup::attachments(d) {
            match AgentKey::unpack_any(&self.peer_keys, env.to_string().as_bytes()) {
                Ok((msg, to, _)) => self.inbox.push_back(Inbound { msg, to }),
                Err(e) => eprintln!("agent: dropping a delivery no key of ours opens: {e}"),
            }
            ids.push(id);
        }
        if let Some(m) = self.mediator.as_mut() {
            m.ws.ack(&ids).await?;
        }
        Ok(())
    }

    /// Waits for a peer message matching `want`; others stay in the inbox, in order.
    async fn wait_for(
        &mut self,
        timeout: Duration,
        want: impl Fn(&Inbound) -> bool,
    ) -> anyhow::Result<Inbound> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut skipped = VecDeque::new();
        let found = loop {
            match self.next_inbound(deadline).await {
                Ok(m) if want(&m) => break Ok(m),
                Ok(m) => skipped.push_back(m),
                Err(e) => break Err(e),
            }
        };
        skipped.append(&mut self.inbox);
        self.inbox = skipped;
        found
    }

    /// DID exchange with the inviter of `url`, reachable for it through our mediator: a fresh
    /// key registered with the mediator, a `did:peer:2` with the mediator's endpoint and routing
    /// keys; the response arrives over the mediator. Returns the inviter's DID.
    async fn connect_routed(&mut self, url: &str, timeout: Duration) -> anyhow::Result<String> {
        let inv = parse_invitation(url)?;
        let m = self
            .mediator
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("start with withMediation first"))?;
        let key = AgentKey::generate();
        let r = m.conn.keylist_update(&key.verkey, "add").await?;
        if r != "success" {
            anyhow::bail!("keylist-update: {r}");
        }
        let did = peer::did_peer_2(
            &key.verkey_bytes(),
            std::slice::from_ref(&m.conn.invitation.http_endpoint),
            &m.conn.routing_keys,
        )
        .map_err(anyhow::Error::msg)?;
        let mut req = didexchange_request("idstack-agent", &did, &inv.id);
        // An inviter that answers on the same request (a mediator does) may; any other answers
        // through our mediator.
        req["~transport"] = json!({"return_route": "all"});
        self.peer_keys.push(key.clone());
        let thid = req["@id"].as_str().unwrap_or_default().to_string();
        let direct = crate::didcomm::client::post_envelope_for_reply(
            &self.http,
            &inv.http_endpoint,
            key.pack(&req, &inv.recipient_key)?,
        )
        .await?;
        let resp = match direct {
            Some(env) => {
                let (msg, to, _) = AgentKey::unpack_any(std::slice::from_ref(&key), &env)?;
                Inbound { msg, to }
            }
            None => {
                self.wait_for(timeout, |m| {
                    m.to == key.verkey
                        && thread_id(&m.msg) == thid
                        && (typ(&m.msg).ends_with("didexchange/1.1/response")
                            || typ(&m.msg).ends_with("/problem-report"))
                })
                .await?
            }
        };
        if !typ(&resp.msg).ends_with("/response") {
            anyhow::bail!("the inviter refused the connection: {}", resp.msg);
        }
        let conn = PeerConnection::complete(&self.http, key, &req, &resp.msg).await?;
        let their = conn.their_did.clone();
        self.peers.push(conn);
        Ok(their)
    }

    /// issue-credential 2.0, holder side, for the next offer from any connection.
    async fn receive_credential(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        let offer = self
            .wait_for(timeout, |m| {
                typ(&m.msg).ends_with("issue-credential/2.0/offer-credential")
            })
            .await
            .map_err(|e| anyhow::anyhow!("no credential offer arrived: {e}"))?;
        let peer = self
            .peers
            .iter()
            .position(|p| p.key.verkey == offer.to)
            .ok_or_else(|| anyhow::anyhow!("an offer on no connection of ours"))?;
        let thid = thread_id(&offer.msg).to_string();
        let detail = match attachment_of(&offer.msg, "offers~attach", LD_DETAIL) {
            Some(d) => d,
            None => {
                let mut pr = new_message(
                    "issue-credential/2.0/problem-report",
                    json!({"description": {"code": "issuance-abandoned", "en": format!("only {LD_DETAIL} offers are supported")}}),
                );
                pr["~thread"] = json!({"thid": thid});
                self.peers[peer].send(&self.http, &pr).await?;
                anyhow::bail!(
                    "the offer has no {LD_DETAIL} attachment: {}",
                    offer.msg["formats"]
                );
            }
        };
        let mut req = new_message(
            "issue-credential/2.0/request-credential",
            json!({
                "formats": [{"attach_id": "ld", "format": LD_DETAIL}],
                "requests~attach": [{"@id": "ld", "mime-type": "application/json",
                    "data": {"base64": STANDARD.encode(detail.to_string())}}],
            }),
        );
        req["~thread"] = json!({"thid": thid});
        self.peers[peer].send(&self.http, &req).await?;
        let to = self.peers[peer].key.verkey.clone();
        let issued = self
            .wait_for(timeout, |m| {
                m.to == to
                    && thread_id(&m.msg) == thid
                    && (typ(&m.msg).ends_with("issue-credential/2.0/issue-credential")
                        || typ(&m.msg).ends_with("/problem-report"))
            })
            .await?;
        if !typ(&issued.msg).ends_with("/issue-credential") {
            anyhow::bail!("the issuer abandoned the exchange: {}", issued.msg);
        }
        let vc = attachment_of(&issued.msg, "credentials~attach", LD_VC)
            .ok_or_else(|| anyhow::anyhow!("the credential has no {LD_VC} attachment"))?;
        check_issued(&detail, &vc)?;
        let mut ack = new_message("issue-credential/2.0/ack", json!({"status": "OK"}));
        ack["~thread"] = json!({"thid": thid});
        self.peers[peer].send(&self.http, &ack).await?;
        let raw = vc.to_string();
        self.held.push(Held {
            view: dcql::credential_view("ldp_vc", &raw).0,
            format: "ldp_vc".into(),
            raw,
        });
        Ok(json!({
            "result": "Receive Credential",
            "issuer": vc["issuer"],
            "type": vc["type"],
            "thread": thid,
        }))
    }

    /// Connects to the mediator, gets mediation, registers a recipient key, opens live mode.
    async fn mediate(&self, invitation_url: &str) -> anyhow::Result<Mediated> {
        let mut conn =
            MediatorConnection::connect(self.http.clone(), invitation_url, "idstack-agent").await?;
        conn.mediate().await?;
        let recipient = AgentKey::generate();
        let r = conn.keylist_update(&recipient.verkey, "add").await?;
        if r != "success" {
            anyhow::bail!("keylist-update: {r}");
        }
        let mut ws = conn.websocket().await?;
        ws.live(true).await?;
        Ok(Mediated {
            conn,
            ws,
            recipient,
        })
    }
}

/// The JSON of the attachment in `field` whose format (in `formats`) is `format`.
fn attachment_of(m: &Value, field: &str, format: &str) -> Option<Value> {
    let id = m["formats"]
        .as_array()?
        .iter()
        .find(|f| f["format"] == format)?["attach_id"]
        .as_str()?
        .to_string();
    let att = m[field]
        .as_array()?
        .iter()
        .find(|a| a["@id"] == id.as_str())?;
    if let Some(j) = att.pointer("/data/json") {
        return Some(j.clone());
    }
    serde_json::from_slice(&peer::attachment_bytes(att).ok()?).ok()
}

/// The issued credential must be the requested one (every field of the request's `credential`,
/// unchanged) with a proof of the requested type, made by a key of the issuer's `did:key`.
fn check_issued(detail: &Value, vc: &Value) -> anyhow::Result<()> {
    let asked = detail["credential"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("the offer's detail has no credential"))?;
    for (k, v) in asked {
        if vc.get(k) != Some(v) {
            anyhow::bail!("the issued credential changed `{k}` from what was requested");
        }
    }
    let proof = &vc["proof"];
    if proof["type"] != detail["options"]["proofType"] {
        anyhow::bail!(
            "proof type {} is not the requested {}",
            proof["type"],
            detail["options"]["proofType"]
        );
    }
    let vm = proof["verificationMethod"].as_str().unwrap_or_default();
    let issuer = vc["issuer"]
        .as_str()
        .or_else(|| vc["issuer"]["id"].as_str())
        .unwrap_or_default();
    if issuer.is_empty() || !vm.starts_with(&format!("{issuer}#")) {
        anyhow::bail!("the proof's verification method {vm:?} is not the issuer's");
    }
    crate::crypto::di::verify_legacy_credential(vc, now())
        .map_err(|e| anyhow::anyhow!("the issued credential does not verify: {e}"))?;
    Ok(())
}

/// Runs the stdio loop until `shutdown` or end of input.
pub async fn run_stdio() -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .pool_idle_timeout(std::time::Duration::from_secs(4))
        .build()?;
    let mut agent = Agent {
        http,
        key: None,
        held: Vec::new(),
        mediator: None,
        connections: Vec::new(),
        peers: Vec::new(),
        peer_keys: Vec::new(),
        inbox: VecDeque::new(),
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let (reply, stop) = match serde_json::from_str::<Value>(&line) {
            Ok(cmd) => {
                let stop = cmd["cmd"] == "shutdown";
                match agent.handle(&cmd).await {
                    Ok(result) => (json!({"error": 0, "result": result}), stop),
                    Err(e) => {
                        eprintln!("agent: {}: {e}", cmd["cmd"]);
                        (json!({"error": 1, "result": e}), stop)
                    }
                }
            }
            Err(e) => (
                json!({"error": 1, "result": format!("not a JSON command: {e}")}),
                false,
            ),
        };
        out.write_all(format!("{reply}\n").as_bytes()).await?;
        out.flush().await?;
        if stop {
            break;
        }
    }
    Ok(())
}
