//! Named background tasks with one owner: each is spawned with a name and the shutdown token, and
//! `shutdown` awaits them all with a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Tasks {
    handles: Vec<(&'static str, JoinHandle<()>)>,
}

impl Tasks {
    pub fn spawn<F, Fut>(&mut self, name: &'static str, token: &CancellationToken, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = f(token.child_token());
        tracing::debug!(task = name, "starting background task");
        self.handles.push((name, tokio::spawn(fut)));
    }

    /// Awaits every task (they watch the token) for at most `deadline`, then aborts stragglers.
    pub async fn shutdown(self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut h) in self.handles {
            match tokio::time::timeout_at(until, &mut h).await {
                Ok(_) => tracing::debug!(task = name, "task stopped"),
                Err(_) => {
                    tracing::warn!(task = name, "task did not stop in time; aborting");
                    h.abort();
                }
            }
        }
    }
}
