//! Mediator scenarios: every simulated user is a DIDComm agent with its own keys, its own
//! connection and its own WebSocket, like a mobile wallet behind a mediator.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{timed, Ctx, Scenario};
use crate::didcomm::client::{self, pickup, AgentKey, MediatorConnection};

const WAIT: Duration = Duration::from_secs(30);

async fn invitation(ctx: &Ctx) -> Result<String, String> {
    let token = ctx.admin.as_deref().ok_or(
        "mediator scenarios need --admin-token (or IDSTACK_ADMIN_TOKEN) for the invitation",
    )?;
    let r = ctx
        .http
        .get(format!("{}/api/mediator/invitation", ctx.target))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("invitation: HTTP {}", r.status()));
    }
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    v["invitation_url"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "invitation without invitation_url".into())
}

fn is(m: &Value, suffix: &str) -> bool {
    m["@type"].as_str().is_some_and(|t| t.ends_with(suffix))
}

// Over 80 lines: one simulated user's whole DIDComm conversation (invitation, exchange,
// mediation, then the scenario's loop), timed step by step; split, the timing state would travel.
pub(super) async fn user(
    ctx: &Ctx,
    scenario: Scenario,
    duration: Duration,
    pace: Option<Duration>,
    user: usize,
) {
    let s = &ctx.stats;
    let Some(inv) = timed(s, "admin: invitation", invitation(ctx)).await else {
        return;
    };
    let setup = Instant::now();
    let Some(mut conn) = timed(
        s,
        "connect (out-of-band + DID exchange)",
        MediatorConnection::connect(ctx.http.clone(), &inv, &format!("load-{user}")),
    )
    .await
    else {
        return;
    };
    if timed(s, "mediate-request → grant", conn.mediate())
        .await
        .is_none()
    {
        return;
    }
    let recipient = AgentKey::generate();
    let added = timed(
        s,
        "keylist-update",
        conn.keylist_update(&recipient.verkey, "add"),
    )
    .await;
    if added.as_deref() != Some("success") {
        if added.is_some() {
            s.error("keylist-update", format!("result {added:?}"));
        }
        return;
    }
    let Some(mut ws) = timed(s, "websocket + live mode", async {
        let mut ws = conn.websocket().await?;
        let (st, _) = ws
            .call(
                serde_json::json!({
                    "@type": "https://didcomm.org/messagepickup/2.0/live-delivery-change",
                    "@id": crate::clock::random_id(),
                    "live_delivery": true,
                    "~transport": {"return_route": "all"},
                }),
                "/status",
                WAIT,
            )
            .await?;
        if st["live_delivery"] != true {
            anyhow::bail!("live mode not confirmed: {st}");
        }
        Ok::<_, anyhow::Error>(ws)
    })
    .await
    else {
        return;
    };
    let deadline = Instant::now() + duration;
    match scenario {
        Scenario::MediatorConnect => {
            // One flow per user: connected, mediated, live on its socket.
            s.record("full flow", setup.elapsed());
            s.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Hold the socket: read (answering pings) until the end of the run.
            while Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                match ws.recv(left.min(Duration::from_secs(5))).await {
                    Ok(_) => {}
                    Err(e) if e.to_string().contains("nothing received") => {}
                    Err(e) => {
                        s.error("hold websocket", e.to_string().chars().take(80).collect());
                        return;
                    }
                }
            }
        }
        Scenario::MediatorPing => {
            let mut next = super::first_tick(pace, user);
            while Instant::now() < deadline {
                super::pace_wait(pace, &mut next).await;
                let t = Instant::now();
                if timed(
                    s,
                    "trust ping (WebSocket, response)",
                    ws.call(pickup::ping(), "ping_response", WAIT),
                )
                .await
                .is_some()
                {
                    s.record("full flow", t.elapsed());
                    s.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Scenario::MediatorMessage => {
            let sender = AgentKey::generate();
            let routing = conn.routing_keys.first().cloned().unwrap_or_default();
            let endpoint = conn.invitation.http_endpoint.clone();
            let mut next = super::first_tick(pace, user);
            let mut n = 0u64;
            while Instant::now() < deadline {
                super::pace_wait(pace, &mut next).await;
                n += 1;
                let text = format!("{user}-{n}");
                let t = Instant::now();
                let sent = timed(s, "POST forward (stored, 202)", async {
                    let inner =
                        sender.pack(&client::basic_message(&text), &recipient.verkey_bytes())?;
                    let env = client::forward_envelope(&inner, &recipient.verkey, &routing)?;
                    let inner: Value = serde_json::from_slice(&inner)?;
                    let r = ctx
                        .http
                        .post(&endpoint)
                        .header("content-type", client::CONTENT_TYPE)
                        .body(env)
                        .send()
                        .await?;
                    if r.status().as_u16() != 202 {
                        anyhow::bail!("forward: HTTP {}", r.status());
                    }
                    Ok::<_, anyhow::Error>(inner)
                })
                .await;
                let Some(inner) = sent else {
                    continue;
                };
                let got = timed(s, "forward → live delivery (end to end)", async {
                    loop {
                        let m = ws.recv(WAIT).await?;
                        if !is(&m, "/delivery") {
                            continue;
                        }
                        let atts = pickup::attachments(&m);
                        let ids: Vec<String> = atts.iter().map(|(id, _)| id.clone()).collect();
                        // The mediator must hand over the sender's envelope as it was sent;
                        // opening it is the recipient application's work, not the mediator's.
                        let found = atts.iter().any(|(_, env)| *env == inner);
                        ws.ack(&ids).await?;
                        if found {
                            return Ok::<_, anyhow::Error>(());
                        }
                    }
                })
                .await;
                if got.is_some() {
                    s.record("full flow", t.elapsed());
                    s.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        _ => {}
    }
    ws.close().await;
}
