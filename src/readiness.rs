//! Per-component readiness: each part of the node (a role, the cluster, the store state) says
//! whether it can serve; `/health/ready` reports the failing ones. Low in the house so that every
//! layer (cluster start, roles' init, the first-start guard) can report without seeing the server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// Per-component readiness, reported by `/health/ready`.
#[derive(Debug, Default)]
pub struct Readiness {
    components: RwLock<BTreeMap<String, Result<(), String>>>,
    shutting_down: AtomicBool,
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
