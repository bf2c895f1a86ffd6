//! `idstack agent --stdio`: a holder agent speaking the Aries Akrida agent.js protocol — one JSON
//! command per stdin line, exactly one `{"error":0|1,"result":...}` line per command on stdout,
//! logs on stderr only. OpenID4VC commands (`receiveOffer`, `presentRequest`) run the same clients
//! as the wallet. DIDComm commands answer `error: 1` until the mediator role exists.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::client::{oid4vci, oid4vp};
use crate::crypto::{did, KeyType, SigningKey};
use crate::dcql::{self, CredentialView};

struct Held {
    format: String,
    raw: String,
    view: CredentialView,
}

struct Agent {
    http: reqwest::Client,
    key: Option<Arc<SigningKey>>,
    held: Vec<Held>,
}

fn now() -> i64 {
    crate::clock::Clock::now_secs(&crate::clock::SystemClock)
}

impl Agent {
    async fn handle(&mut self, cmd: &Value) -> Result<Value, String> {
        match cmd["cmd"].as_str().unwrap_or_default() {
            "start" => {
                if cmd["withMediation"].as_bool() == Some(true) {
                    return Err(
                        "DIDComm mediation is not available in this build yet (no mediator role)"
                            .into(),
                    );
                }
                self.key = Some(Arc::new(SigningKey::generate(KeyType::Ed25519)));
                Ok(json!("Initialized agent..."))
            }
            "shutdown" => Ok(json!("Shutting down agent")),
            "ping_mediator"
            | "receiveInvitation"
            | "receiveCredential"
            | "presentationExchange" => Err(format!(
                "{} needs DIDComm, which this build does not support yet",
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

/// Runs the stdio loop until `shutdown` or end of input.
pub async fn run_stdio() -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut agent = Agent {
        http,
        key: None,
        held: Vec::new(),
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
