//! Offer updates of unknown outcome: a store failure after the write may have been applied, and
//! the client was told to retry (503). An update that turns out to have landed must not stay —
//! the holder never received what it stands for (a token, credentials) — so it is watched for a
//! while and taken back if it shows up.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::model::Offer;
use super::offers::update_offer;
use super::service::IssuerService;
use crate::error::{ErrorCode, OAuthCode::InvalidGrant};
use crate::store::{Store, StoreResult};

/// How long an update of unknown outcome is watched.
pub(super) const UNDO_WINDOW: Duration = Duration::from_secs(120);

/// How a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watched {
    /// The update had landed and was taken back.
    Undone,
    /// It never landed (or can no longer: the offer moved on, or is gone).
    NeverLanded,
    /// The store kept failing until the window closed: unknown still.
    StoreFailing,
}

impl Watched {
    /// Its label in `issuer_unknown_outcomes_total`.
    fn as_str(self) -> &'static str {
        match self {
            Watched::Undone => "undone",
            Watched::NeverLanded => "never_landed",
            Watched::StoreFailing => "store_failing",
        }
    }
}

impl IssuerService {
    /// Watches offer `offer_key` in the background for up to [`UNDO_WINDOW`] by the service's
    /// clock (a clock set back cannot stretch it past twice that), backing off from 100 ms to 5 s
    /// between looks; each wait is followed by a look, and the window is checked after it. Each
    /// look first runs `check`, which reads what else `undo` must know (other
    /// records; a store failure skips the look), then `undo` looks for this attempt's update in
    /// the offer and takes it back (true: the offer was changed, write it); `settled` tells, when
    /// it is not there or must stay, whether the offer moved on so that the watch can end (a
    /// compare-and-swap made on an older value never applies). `then` runs once, with how the
    /// watch ended. (Lost if this process dies within the window: a store failure and a node
    /// death at once.)
    pub(super) fn watch_unknown_outcome<C, CF, G, U, S, T, F>(
        &self,
        offer_key: String,
        check: C,
        undo: U,
        settled: S,
        then: T,
    ) where
        C: Fn(Arc<dyn Store>) -> CF + Send + Sync + 'static,
        CF: Future<Output = StoreResult<G>> + Send + 'static,
        G: Send + Sync + 'static,
        U: Fn(&mut Offer, &G) -> bool + Send + Sync + 'static,
        S: Fn(&Offer) -> bool + Send + Sync + 'static,
        T: FnOnce(Arc<dyn Store>, Watched) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let store = self.ctx.store.clone();
        let clock = self.ctx.clock.clone();
        let running = Running::start(&self.watches);
        let ended = self.watch_outcomes.clone();
        tokio::spawn(async move {
            let _running = running;
            let window = i64::try_from(UNDO_WINDOW.as_millis()).unwrap_or(i64::MAX);
            let deadline = clock.now_ms().saturating_add(window);
            let mut wait = Duration::from_millis(100);
            let mut outcome = Watched::StoreFailing;
            let started = tokio::time::Instant::now();
            while clock.now_ms() < deadline && started.elapsed() < UNDO_WINDOW * 2 {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                let checked = match check(store.clone()).await {
                    Ok(checked) => checked,
                    Err(e) => {
                        tracing::debug!(error = %e, offer = %offer_key, "unknown outcome: check failed");
                        outcome = Watched::StoreFailing;
                        continue;
                    }
                };
                let moved_on = AtomicBool::new(false);
                let undone = update_offer(
                    store.as_ref(),
                    &offer_key,
                    clock.now_secs(),
                    None,
                    |mut o| {
                        if undo(&mut o, &checked) {
                            return Ok(o);
                        }
                        moved_on.store(settled(&o), Ordering::SeqCst);
                        Err(InvalidGrant.because("not this attempt's update").into())
                    },
                )
                .await;
                match undone {
                    Ok(Some(_)) => {
                        outcome = Watched::Undone;
                        break;
                    }
                    Ok(None) => {
                        outcome = Watched::NeverLanded;
                        break;
                    }
                    Err(e) if e.is_server_error() => outcome = Watched::StoreFailing,
                    Err(_) => {
                        // not (yet) there: an update in flight may still land, unless the
                        // offer moved on
                        outcome = Watched::NeverLanded;
                        if moved_on.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                }
            }
            if outcome == Watched::Undone {
                tracing::info!(
                    offer = %offer_key,
                    "an offer update of unknown outcome had landed and was taken back"
                );
            }
            if let Some(ended) = &ended {
                ended.with_label_values(&[outcome.as_str()]).inc();
            }
            then(store, outcome).await;
        });
    }
}

/// One watch counted in [`IssuerService::watches`] until it is dropped (when the watch's task
/// ends, however it ends).
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
