//! The event bus: small notifications between the parts of a deployment (never message bodies).
//!
//! One node: an in-process broadcast. Cluster mode and the Redis backend replace it with an
//! implementation that reaches every node (gossip-addressed RPC, Redis pub/sub), so a role that
//! publishes here is told about events that happened on any node without knowing how.
//!
//! The mediator publishes `mediator.queued` with the recipient key after a forwarded message is
//! durably stored; whichever node holds that recipient's live socket pushes the queue at once.
//! Delivery is best-effort: subscribers must still find everything by reading the store (the bus
//! only shortens the wait), so a lost notification delays a message, it never loses one.

use async_trait::async_trait;
use tokio::sync::broadcast;

/// Published to this node's own subscribers when events from other nodes may have been missed
/// (the Redis subscription was lost and is back): subscribers treat it as `RecvError::Lagged`
/// and fall back to reading the store.
pub const GAP_TOPIC: &str = "bus.gap";

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub topic: String,
    pub payload: String,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Sends `payload` on `topic` to every subscriber on every node (this one included).
    async fn publish(&self, topic: &str, payload: &str);
    /// A receiver of every event published from now on. A slow receiver may miss events
    /// (`RecvError::Lagged`); it must then fall back to reading the store.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

/// The single-node bus.
pub struct LocalBus {
    tx: broadcast::Sender<Event>,
}

impl LocalBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self { tx }
    }

    /// Hands an event that arrived from elsewhere (another node) to local subscribers.
    pub fn deliver_local(&self, event: Event) {
        let _ = self.tx.send(event);
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, topic: &str, payload: &str) {
        self.deliver_local(Event {
            topic: topic.to_string(),
            payload: payload.to_string(),
        });
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_events_published_after_they_subscribed() {
        let bus = LocalBus::new();
        bus.publish("early", "x").await;
        let mut rx = bus.subscribe();
        bus.publish("mediator.queued", "key1").await;
        let ev = rx.recv().await.unwrap();
        assert_eq!(ev.topic, "mediator.queued");
        assert_eq!(ev.payload, "key1");
    }
}
