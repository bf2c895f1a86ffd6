//! The event bus on Redis pub/sub (feature `redis`): an event published on any node reaches the
//! subscribers of every node connected to the same Redis and key prefix.
//!
//! One channel per deployment, `{<key_prefix>}:bus`. Each node keeps one subscriber connection
//! (reconnected with backoff when Redis goes away) and hands what arrives to its local subscribers.
//! In a Redis Cluster, PUBLISH is broadcast to every node of the cluster, so subscribing through
//! any one node is enough. Delivery stays best-effort, as the [`Bus`] contract says: while Redis is
//! unreachable an event is delivered on the publishing node only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::redis_store::{Conn, RedisOptions};
use crate::bus::{Bus, Event, LocalBus};

#[derive(Serialize, Deserialize)]
struct Wire {
    t: String,
    p: String,
}

pub struct RedisBus {
    local: Arc<LocalBus>,
    publisher: Conn,
    channel: String,
    timeout: Duration,
    stop: CancellationToken,
}

impl RedisBus {
    /// Starts the subscriber task (stopped when the bus is dropped) and returns the bus.
    pub fn start(opts: &RedisOptions, publisher: Conn) -> Self {
        let local = Arc::new(LocalBus::new());
        let channel = format!("{{{}}}:bus", opts.key_prefix);
        let stop = CancellationToken::new();
        tokio::spawn(subscriber(
            opts.clone(),
            channel.clone(),
            local.clone(),
            stop.clone(),
        ));
        Self {
            local,
            publisher,
            channel,
            timeout: opts.command_timeout,
            stop,
        }
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, topic: &str, payload: &str) {
        let body = match serde_json::to_string(&Wire {
            t: topic.to_string(),
            p: payload.to_string(),
        }) {
            Ok(b) => b,
            Err(_) => return,
        };
        let mut conn = self.publisher.clone();
        let sent = tokio::time::timeout(
            self.timeout,
            redis::cmd("PUBLISH")
                .arg(&self.channel)
                .arg(&body)
                .query_async::<i64>(&mut conn),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::warn!(
                topic,
                "redis bus: publish failed; delivering on this node only"
            );
            self.local.deliver_local(Event {
                topic: topic.to_string(),
                payload: payload.to_string(),
            });
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }
}

/// Keeps one SUBSCRIBE connection open (any of the configured nodes), forwarding to `local`.
async fn subscriber(
    opts: RedisOptions,
    channel: String,
    local: Arc<LocalBus>,
    stop: CancellationToken,
) {
    let mut attempt = 0usize;
    let mut backoff = Duration::from_millis(100);
    let mut subscribed_before = false;
    loop {
        let url = &opts.urls[attempt % opts.urls.len().max(1)];
        attempt += 1;
        match connect(&opts, url, &channel).await {
            Ok(mut pubsub) => {
                tracing::debug!("redis bus: subscribed");
                backoff = Duration::from_millis(100);
                if subscribed_before {
                    // what was published while the subscription was down never arrives
                    local.deliver_local(Event {
                        topic: crate::bus::GAP_TOPIC.to_string(),
                        payload: String::new(),
                    });
                }
                subscribed_before = true;
                let mut stream = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        msg = stream.next() => match msg {
                            Some(m) => {
                                let Ok(bytes) = m.get_payload::<Vec<u8>>() else { continue };
                                if let Ok(w) = serde_json::from_slice::<Wire>(&bytes) {
                                    local.deliver_local(Event { topic: w.t, payload: w.p });
                                }
                            }
                            None => break,
                        }
                    }
                }
                tracing::warn!("redis bus: subscription lost; reconnecting");
            }
            Err(e) => tracing::debug!(error = %e, "redis bus: cannot subscribe yet"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn connect(
    opts: &RedisOptions,
    url: &str,
    channel: &str,
) -> Result<redis::aio::PubSub, String> {
    let mut info =
        redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| e.to_string())?;
    if let Some(p) = &opts.password {
        info.redis.password = Some(p.clone());
    }
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    let fut = async {
        let mut ps = client.get_async_pubsub().await?;
        ps.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(ps)
    };
    match tokio::time::timeout(opts.connect_timeout + opts.command_timeout, fut).await {
        Ok(Ok(ps)) => Ok(ps),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::store::redis_store::RedisStore;

    async fn node(prefix: &str) -> (RedisBus, RedisStore) {
        let url = tokio::task::spawn_blocking(crate::store::conformance::test_redis_url)
            .await
            .unwrap();
        node_at(url, prefix).await
    }

    async fn node_at(url: String, prefix: &str) -> (RedisBus, RedisStore) {
        let opts = RedisOptions {
            urls: vec![url],
            cluster: false,
            key_prefix: prefix.to_string(),
            pool_size: 1,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            password: None,
        };
        let store = RedisStore::connect(opts.clone(), FakeClock::new(0))
            .await
            .unwrap();
        (RedisBus::start(&opts, store.conn()), store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_published_on_one_node_reach_every_node_of_the_prefix() {
        let prefix = format!("bus-{}", crate::clock::random_id());
        let (a, _sa) = node(&prefix).await;
        let (b, _sb) = node(&prefix).await;
        let (other, _so) = node("another-deployment").await;
        let mut rx_a = a.subscribe();
        let mut rx_b = b.subscribe();
        let mut rx_other = other.subscribe();
        // The subscriber connections come up asynchronously: publish until both nodes hear it.
        let (mut heard_a, mut heard_b) = (None, None);
        while heard_a.is_none() || heard_b.is_none() {
            a.publish("mediator.queued", "recipient-key-1").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(ev) = rx_a.try_recv() {
                heard_a = Some(ev);
            }
            while let Ok(ev) = rx_b.try_recv() {
                heard_b = Some(ev);
            }
        }
        let got = heard_b.unwrap();
        assert_eq!(got.topic, "mediator.queued");
        assert_eq!(got.payload, "recipient-key-1");
        assert_eq!(
            heard_a.unwrap(),
            got,
            "the publishing node hears its own events"
        );
        // another key prefix is another deployment: it hears its own events, never ours
        loop {
            other.publish("x", "from-other").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut done = false;
            while let Ok(ev) = rx_other.try_recv() {
                assert_ne!(ev.payload, "recipient-key-1");
                done |= ev.payload == "from-other";
            }
            if done {
                break;
            }
        }
        a.publish("mediator.queued", "recipient-key-1").await;
        b.publish("mediator.queued", "recipient-key-1").await;
        other.publish("x", "marker").await;
        loop {
            let ev = rx_other.recv().await.unwrap();
            assert_ne!(ev.payload, "recipient-key-1");
            if ev.payload == "marker" {
                break;
            }
        }
    }

    /// A subscription that was lost and is back tells this node's subscribers that events may
    /// have been missed (the mediator then rebuilds its queue indexes from the store).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_subscription_is_reported_as_a_gap_when_it_is_back() {
        // a user of its own, so that only this test's subscription is dropped (the Redis server
        // is shared by the tests)
        let (_, admin) = node("gap-admin").await;
        let user = format!("gap-{}", crate::clock::random_id());
        let mut c = admin.conn();
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&user)
            .arg("on")
            .arg(">pw")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query_async(&mut c)
            .await
            .unwrap();
        let url = tokio::task::spawn_blocking(crate::store::conformance::test_redis_url)
            .await
            .unwrap()
            .replacen("redis://", &format!("redis://{user}:pw@"), 1);
        let (a, _store) = node_at(url, &format!("bus-{}", crate::clock::random_id())).await;
        let mut rx = a.subscribe();
        // subscribed: its own events come back
        loop {
            a.publish("t", "up").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if std::iter::from_fn(|| rx.try_recv().ok()).any(|e| e.payload == "up") {
                break;
            }
        }
        // Redis drops the subscription (a restart, a failover)
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .arg("USER")
            .arg(&user)
            .query_async(&mut c)
            .await
            .unwrap();
        let gap = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match rx.recv().await {
                    Ok(e) if e.topic == crate::bus::GAP_TOPIC => break,
                    _ => {}
                }
            }
        })
        .await;
        assert!(
            gap.is_ok(),
            "no gap reported after the subscription came back"
        );
    }
}
