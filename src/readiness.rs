//! Per-component readiness: each part of the node (a role, the cluster, the store state) says
//! whether it can serve; `/health/ready` reports the failing ones. Low in the house so that every
//! layer (cluster start, roles' init, the first-start guard) can report without seeing the server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// Whether long-lived client sessions (the mediator's WebSockets) may stay open on this node. A
/// balancer routes new requests around a node that is not ready, but a socket opened before stays
/// with its node: this tells such sessions to close, so their clients reconnect to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    Open,
    /// The node is stopping (WebSocket close 1001, going away).
    Stopping,
    /// The node does not serve for now: a rolling upgrade holds it back while an older node serves
    /// (WebSocket close 1013, try again later).
    HeldBack,
}

/// Per-component readiness, reported by `/health/ready`.
#[derive(Debug)]
pub struct Readiness {
    components: RwLock<BTreeMap<String, Result<(), String>>>,
    shutting_down: AtomicBool,
    sessions: tokio::sync::watch::Sender<Sessions>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            components: RwLock::default(),
            shutting_down: AtomicBool::default(),
            sessions: tokio::sync::watch::Sender::new(Sessions::Open),
        }
    }
}

impl Readiness {
    pub fn set_ready(&self, component: &str) {
        self.set(component, Ok(()));
    }
    pub fn set_not_ready(&self, component: &str, reason: impl Into<String>) {
        self.set(component, Err(reason.into()));
    }
    fn set(&self, component: &str, state: Result<(), String>) {
        if let Ok(mut m) = self.components.write() {
            m.insert(component.to_string(), state);
        }
    }
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.sessions.send_replace(Sessions::Stopping);
    }
    /// Held back by a rolling upgrade (or no longer): sessions close, or may open again. Never
    /// reopens them once the node is stopping.
    pub fn hold_sessions(&self, held: bool) {
        let want = if held {
            Sessions::HeldBack
        } else {
            Sessions::Open
        };
        self.sessions.send_if_modified(|s| {
            let change = *s != Sessions::Stopping && *s != want;
            if change {
                *s = want;
            }
            change
        });
    }
    /// What long-lived sessions watch ([`Sessions`]).
    pub fn sessions(&self) -> tokio::sync::watch::Receiver<Sessions> {
        self.sessions.subscribe()
    }
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
    /// Failing components with their reasons; empty = ready.
    pub fn failing(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .components
            .read()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_ref().err().map(|e| (k.clone(), e.clone())))
                    .collect()
            })
            .unwrap_or_default();
        if self.is_shutting_down() {
            out.push(("server".into(), "shutting down".into()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_close_when_held_back_or_stopping_and_never_reopen_after_stopping() {
        let r = Readiness::default();
        let watch = r.sessions();
        assert_eq!(*watch.borrow(), Sessions::Open);
        r.hold_sessions(true);
        assert_eq!(*watch.borrow(), Sessions::HeldBack);
        r.hold_sessions(false);
        assert_eq!(*watch.borrow(), Sessions::Open);
        r.begin_shutdown();
        assert_eq!(*watch.borrow(), Sessions::Stopping);
        r.hold_sessions(false);
        r.hold_sessions(true);
        assert_eq!(*watch.borrow(), Sessions::Stopping);
    }
}
