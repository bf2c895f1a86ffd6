//! `idstack agent --stdio`: a holder agent speaking the Aries Akrida agent.js protocol — one JSON
//! command per stdin line, exactly one `{"error":0|1,"result":...}` line per command on stdout,
//! logs on stderr only. OpenID4VC commands (`receiveOffer`, `presentRequest`) run the same clients
//! as the wallet. DIDComm commands (`start` with `withMediation`, `ping_mediator`,
//! `receiveInvitation`) run the DIDComm client the load harness uses: the mediator invitation comes
//! from the command's `mediatorUrl` or, as in Akrida, the `MEDIATION_URL` environment variable.
//! Credential exchange over DIDComm (`receiveCredential`) is not implemented: it answers `error: 1`.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::client::{oid4vci, oid4vp};
use crate::crypto::{did, KeyType, SigningKey};
use crate::dcql::{self, CredentialView};
use crate::didcomm::client::{pickup, AgentKey, MediatorConnection, WsConnection};

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
                m.ws.call(pickup::ping(), "ping_response", std::time::Duration::from_secs(30))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(json!({"ping_ms": t.elapsed().as_secs_f64() * 1000.0}))
            }
            "info" => Ok(match &self.mediator {
                Some(m) => json!({
                    "mediated": true,
                    "recipient_key": m.recipient.did_key(),
                    "routing_keys": m.conn.routing_keys,
                    "endpoint": m.conn.invitation.http_endpoint,
                    "connections": self.connections.len(),
                }),
                None => json!({"mediated": false, "connections": self.connections.len()}),
            }),
            "receiveInvitation" => {
                let url = cmd["invitationUrl"].as_str().ok_or("invitationUrl is required")?;
                let c = MediatorConnection::connect(self.http.clone(), url, "idstack-agent")
                    .await
                    .map_err(|e| e.to_string())?;
                let their = crate::didcomm::envelope::verkey_b58(&c.mediator_key);
                self.connections.push(c);
                Ok(json!({"connection": their}))
            }
            "receiveCredential" | "presentationExchange" => Err(format!(
                "{} (DIDComm issue-credential / present-proof) is not implemented by this agent; use receiveOffer / presentRequest (OID4VC)",
                cmd["cmd"]
            )),
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
                let req = oid4vp::resolve_request(&self.http, uri)
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
                        oid4vp::presentation(&req, &held, &dcql::requested_claim_names(&cq), now())
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
