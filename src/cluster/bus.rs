//! [`ClusterBus`]: an event published on any node reaches the subscribers of every live node.
//! Local subscribers get it at once; peers get it over internal RPC (best effort, as the
//! [`Bus`] contract says: subscribers still find everything in the store).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::node::Node;
use crate::bus::{Bus, Event};

pub struct ClusterBus {
    node: Arc<Node>,
}

impl ClusterBus {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[async_trait]
impl Bus for ClusterBus {
    async fn publish(&self, topic: &str, payload: &str) {
        self.node.local_bus.deliver_local(Event {
            topic: topic.to_string(),
            payload: payload.to_string(),
        });
        self.node.broadcast(topic, payload).await;
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.node.local_bus.subscribe()
    }
}
