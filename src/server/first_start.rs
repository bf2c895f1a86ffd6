//! First-start state on a store every node shares (Redis): the default issuer and verifier with
//! their signing keys, the mediator key, the sealed master-key canary and the sandbox admin token.
//! A node writes a marker record once its roles are initialised; the marker missing later means
//! the store lost its data under running nodes (Redis restarted without persistence, FLUSHALL).
//!
//! Then readiness is 503 (component `store_state`) and the node does not serve 404s for tenants
//! that vanished as if that were normal:
//! - sandbox mode: it recreates the defaults exactly as a first start does — insert-only, so
//!   nodes recovering at once agree (the first key stored wins, the others adopt it) — puts back
//!   the mediator key it holds (every node of a deployment loaded the same one) and the sandbox
//!   admin token, writes the marker, and is ready again;
//! - production mode: it recreates nothing, logs why at error level and stays not ready until
//!   the data is restored (the marker comes back with it) or a restarted node creates a fresh
//!   first-start state.
//!
//! A mediator whose in-memory key is not the stored one (another node recreated it) is not ready
//! (component `mediator`) until restarted, as in cluster mode.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Mode, Secret};
use crate::roles::Services;
use crate::server::state::AppState;

use crate::clock::random_token;
use crate::store::open::Opened;
use crate::store::{keyspaces, Cas, Sealer, Store, StoreResult};
use crate::tasks::Tasks;

/// The marker record in [`keyspaces::SYSTEM`].
pub const MARKER: &str = "first_start";
/// The readiness component that names a lost first-start state.
pub const COMPONENT: &str = "store_state";

/// Whether the marker is in the store.
pub async fn present(store: &dyn Store) -> StoreResult<bool> {
    Ok(store.get(keyspaces::SYSTEM, MARKER).await?.is_some())
}

/// Writes the marker unless it is there (first writer wins; its content is informational).
pub async fn mark(store: &dyn Store, now_ms: i64) -> StoreResult<()> {
    let v = serde_json::json!({ "initialised_at_ms": now_ms }).to_string();
    store
        .compare_and_swap(
            keyspaces::SYSTEM,
            MARKER,
            None,
            Some((v.into_bytes(), None)),
        )
        .await?;
    Ok(())
}

/// The readiness reason while the marker is missing.
pub fn missing_reason(mode: Mode) -> &'static str {
    match mode {
        Mode::Sandbox => "first-start state missing from the shared store (data loss?): recreating the defaults",
        Mode::Production => "first-start state missing from the shared store (data loss?): production mode does not recreate it; restore the data or restart a node to create a fresh one",
    }
}

/// Recreates what a first start creates, insert-only, then writes the marker.
async fn recreate(
    state: &AppState,
    services: &Services,
    sandbox_admin: Option<&Secret>,
) -> anyhow::Result<()> {
    crate::store::open::check_master_key(&state.store, &state.sealer).await?;
    if let Some(token) = sandbox_admin {
        restore_sandbox_admin_token(state.store.as_ref(), &state.sealer, token).await?;
    }
    #[cfg(feature = "issuer")]
    if let Some(svc) = &services.issuer {
        svc.init().await?;
    }
    #[cfg(feature = "verifier")]
    if let Some(svc) = &services.verifier {
        svc.init().await?;
    }
    #[cfg(feature = "mediator")]
    if let Some(svc) = &services.mediator {
        svc.restore_key().await?;
    }
    let _ = services; // a wallet-only build recreates no role state
    mark(state.store.as_ref(), state.clock.now_ms()).await?;
    Ok(())
}

/// The mediator's key against the stored one: not ready while another key is stored.
#[cfg(feature = "mediator")]
async fn check_mediator(state: &AppState, services: &Services) {
    use crate::roles::mediator::StoredKey;
    let Some(svc) = &services.mediator else {
        return;
    };
    match svc.stored_key().await {
        Ok(StoredKey::Same) => state.readiness.set_ready("mediator"),
        Ok(StoredKey::Missing) => state.readiness.set_not_ready(
            "mediator",
            "the mediator key is missing from the store (data loss?)",
        ),
        Ok(StoredKey::Different) => state.readiness.set_not_ready(
            "mediator",
            "the mediator key in the store is not the one this node loaded (recreated after a data loss?); restart this node to use it",
        ),
        Err(e) => tracing::warn!(error = %e, "mediator key check failed"),
    }
}

/// One check: the marker, recovery when it is gone, the mediator key. Runs after a successful
/// store probe. `lost` remembers an ongoing loss so it is logged once, not every second.
async fn check(
    state: &AppState,
    services: &Services,
    sandbox_admin: Option<&Secret>,
    lost: &mut bool,
) {
    let mode = state.settings.raw.server.mode;
    match present(state.store.as_ref()).await {
        Err(e) => {
            tracing::debug!(error = %e, "first-start marker check failed");
            // (the mediator key check below needs the store too: next time)
            #[cfg(feature = "mediator")]
            return;
        }
        Ok(true) => {
            if *lost {
                tracing::info!("first-start state is back in the store; ready again");
                *lost = false;
            }
            state.readiness.set_ready(COMPONENT);
        }
        Ok(false) => {
            state
                .readiness
                .set_not_ready(COMPONENT, missing_reason(mode));
            if !*lost {
                tracing::error!(
                    "the shared store lost its first-start state (marker system/{MARKER} is gone: Redis restarted without persistence, FLUSHALL, or a key prefix shared with another deployment?): every record written before is gone; not ready"
                );
            }
            match mode {
                Mode::Production => {
                    if !*lost {
                        tracing::error!(
                            "production mode: the default issuer, verifier and keys are NOT recreated; this node stays not ready until the data is restored (Redis backup, `idstack store import`) or a node is restarted, which creates a fresh first-start state"
                        );
                    }
                    *lost = true;
                }
                Mode::Sandbox => {
                    if !*lost {
                        tracing::warn!(
                            "sandbox mode: recreating the default issuer, verifier and keys (insert-only: nodes sharing the store agree on the first one stored)"
                        );
                    }
                    *lost = true;
                    match recreate(state, services, sandbox_admin).await {
                        Ok(()) => {
                            tracing::info!("first-start state recreated; ready again");
                            *lost = false;
                            state.readiness.set_ready(COMPONENT);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "recreating the first-start state failed; retrying")
                        }
                    }
                }
            }
        }
    }
    #[cfg(feature = "mediator")]
    check_mediator(state, services).await;
}

/// Watches a shared store (every second, after a store probe passed).
pub fn spawn_guard(
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
    state: &AppState,
    services: &Services,
    sandbox_admin: Option<Secret>,
) {
    let state = state.clone();
    let services = services.clone();
    tasks.spawn("first-start-guard", shutdown, move |token| async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut lost = false;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    let probe = tokio::time::timeout(Duration::from_secs(3), state.store.probe()).await;
                    if matches!(probe, Ok(Ok(()))) {
                        check(&state, &services, sandbox_admin.as_ref(), &mut lost).await;
                    }
                }
            }
        }
    });
}

const ADMIN_TOKEN_KEY: &str = "sandbox_admin_token";

/// Sandbox: one admin token generated on first start, stored sealed, printed once.
///
/// Kept in [`keyspaces::ADMIN`], insert-only in cluster mode: should two nodes still make one
/// each (their views of the init lease's primary disagreed), the first made wins on every node
/// and the other node is not ready until restarted. So a copy this node holds is used as it is
/// (a node restarted alone, its peers down, still starts); without one, it is read where
/// compare-and-swaps run (in cluster mode the key's primary, not a local copy that may lag): a
/// node must not make a second token because its copy had not seen the first yet. A token an
/// earlier release kept in the `system` keyspace is moved there unchanged, and a new token is
/// written there too, so those releases find it after a rollback.
pub async fn sandbox_admin_token(opened: &Opened) -> anyhow::Result<Secret> {
    let store = &opened.store;
    if let Some(sealed) = store.get(keyspaces::ADMIN, ADMIN_TOKEN_KEY).await? {
        return loaded(opened, &sealed);
    }
    // an earlier release's token, here or where compare-and-swaps run
    let legacy = match store.get(keyspaces::SYSTEM, ADMIN_TOKEN_KEY).await? {
        Some(sealed) => Some(sealed),
        None => {
            if let Some(sealed) = store.get_settled(keyspaces::ADMIN, ADMIN_TOKEN_KEY).await? {
                return loaded(opened, &sealed);
            }
            store
                .get_settled(keyspaces::SYSTEM, ADMIN_TOKEN_KEY)
                .await?
        }
    };
    if let Some(sealed) = legacy {
        let token = open_admin_token(opened, &sealed)?;
        // moved where this release keeps it; a node that cannot write it now (restarted alone)
        // uses it all the same and moves it next time
        match store
            .compare_and_swap(
                keyspaces::ADMIN,
                ADMIN_TOKEN_KEY,
                None,
                Some((sealed.clone(), None)),
            )
            .await
        {
            Ok(Cas::Conflict(Some(found))) if found != sealed => return loaded(opened, &found),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the sandbox admin token could not be moved to the admin keyspace yet")
            }
        }
        tracing::info!(
            "sandbox admin token loaded from the store (print it with `idstack admin-token`)"
        );
        return Ok(token);
    }
    let token = random_token(24);
    let sealed = opened
        .sealer
        .seal(ADMIN_TOKEN_KEY.as_bytes(), token.as_bytes())?;
    let cas = store
        .compare_and_swap(
            keyspaces::ADMIN,
            ADMIN_TOKEN_KEY,
            None,
            Some((sealed.clone(), None)),
        )
        .await?;
    match cas {
        Cas::Swapped => {}
        // a retried compare-and-swap whose first attempt applied finds its own write
        Cas::Conflict(Some(found)) if found == sealed => {}
        // another node stored one first: this node uses that one
        Cas::Conflict(Some(found)) => return loaded(opened, &found),
        Cas::Conflict(None) => anyhow::bail!("the sandbox admin token vanished while it was made"),
    }
    // where earlier releases look (best effort: only a rollback needs it)
    if let Err(e) = store
        .compare_and_swap(
            keyspaces::SYSTEM,
            ADMIN_TOKEN_KEY,
            None,
            Some((sealed, None)),
        )
        .await
    {
        tracing::debug!(error = %e, "the sandbox admin token was not copied for earlier releases");
    }
    // Printed once, to stderr, on purpose: the operator needs it.
    eprintln!(
        "\n  idstack sandbox admin token (shown once; `idstack admin-token` prints it again):\n\n      {token}\n"
    );
    Ok(Secret::new(token))
}

/// A stored token, opened.
fn loaded(opened: &Opened, sealed: &[u8]) -> anyhow::Result<Secret> {
    tracing::info!(
        "sandbox admin token loaded from the store (print it with `idstack admin-token`)"
    );
    open_admin_token(opened, sealed)
}

fn open_admin_token(opened: &Opened, sealed: &[u8]) -> anyhow::Result<Secret> {
    let plain = opened.sealer.open(ADMIN_TOKEN_KEY.as_bytes(), sealed)?;
    Ok(Secret::new(String::from_utf8_lossy(&plain).into_owned()))
}

/// Puts the sandbox admin token this node uses back into a store that lost it (insert-only: the
/// nodes of a deployment loaded the same one), so `idstack admin-token` prints it again.
pub async fn restore_sandbox_admin_token(
    store: &dyn Store,
    sealer: &Sealer,
    token: &Secret,
) -> anyhow::Result<()> {
    let sealed = sealer.seal(ADMIN_TOKEN_KEY.as_bytes(), token.expose().as_bytes())?;
    store
        .compare_and_swap(
            keyspaces::ADMIN,
            ADMIN_TOKEN_KEY,
            None,
            Some((sealed, None)),
        )
        .await?;
    Ok(())
}

/// The stored sandbox admin token (where an earlier release kept it, if it was not moved yet).
pub async fn stored_admin_token(opened: &Opened) -> anyhow::Result<Option<Secret>> {
    let sealed = match opened.store.get(keyspaces::ADMIN, ADMIN_TOKEN_KEY).await? {
        Some(sealed) => Some(sealed),
        None => opened.store.get(keyspaces::SYSTEM, ADMIN_TOKEN_KEY).await?,
    };
    sealed.map(|s| open_admin_token(opened, &s)).transpose()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::FakeClock;

    fn opened(state: &AppState) -> Opened {
        Opened {
            store: state.store.clone(),
            sealer: state.sealer.clone(),
            bus: state.bus.clone(),
            collectors: Vec::new(),
        }
    }

    /// The sandbox admin token is made once, in the `admin` keyspace (insert-only in cluster
    /// mode); a token an earlier release kept in `system` is moved there unchanged, not replaced.
    #[tokio::test]
    async fn the_sandbox_admin_token_is_made_once_and_an_earlier_releases_token_is_kept() {
        let state = AppState::for_tests(FakeClock::new(1_000_000));
        let o = opened(&state);
        let made = sandbox_admin_token(&o).await.unwrap();
        let stored = |o: &Opened, ks: &'static str| {
            let store = o.store.clone();
            async move { store.get(ks, ADMIN_TOKEN_KEY).await.unwrap() }
        };
        // kept in `admin`, and copied where earlier releases look (for a rollback)
        let kept = stored(&o, keyspaces::ADMIN).await.unwrap();
        assert_eq!(stored(&o, keyspaces::SYSTEM).await, Some(kept));
        assert_eq!(
            sandbox_admin_token(&o).await.unwrap().expose(),
            made.expose()
        );
        assert_eq!(
            stored_admin_token(&o).await.unwrap().unwrap().expose(),
            made.expose()
        );

        // a store an earlier release started
        let older = AppState::for_tests(FakeClock::new(1_000_000));
        let o = opened(&older);
        let sealed = o
            .sealer
            .seal(ADMIN_TOKEN_KEY.as_bytes(), b"token-of-an-earlier-release")
            .unwrap();
        o.store
            .compare_and_swap(
                keyspaces::SYSTEM,
                ADMIN_TOKEN_KEY,
                None,
                Some((sealed, None)),
            )
            .await
            .unwrap();
        assert_eq!(
            stored_admin_token(&o).await.unwrap().unwrap().expose(),
            "token-of-an-earlier-release"
        );
        assert_eq!(
            sandbox_admin_token(&o).await.unwrap().expose(),
            "token-of-an-earlier-release"
        );
        let moved = stored(&o, keyspaces::ADMIN).await.unwrap();
        assert_eq!(
            open_admin_token(&o, &moved).unwrap().expose(),
            "token-of-an-earlier-release"
        );
    }

    /// A node on a store that loses everything: not ready, then (sandbox) the defaults are
    /// back, with one key stored for two nodes recovering at once.
    #[cfg(all(feature = "issuer", feature = "verifier"))]
    #[tokio::test]
    async fn a_lost_first_start_state_is_recreated_once_in_sandbox_mode() {
        let clock = FakeClock::new(1_000_000);
        let a = AppState::for_tests(clock.clone());
        let mut b = AppState::for_tests(clock.clone());
        // two nodes on one store
        b.store = a.store.clone();
        let config = crate::config::Config::default();
        let roles = [crate::role::Role::Issuer, crate::role::Role::Verifier];
        let sa = crate::roles::init(&a.role_context(), &config, &roles, |_| {})
            .await
            .unwrap();
        let sb = crate::roles::init(&b.role_context(), &config, &roles, |_| {})
            .await
            .unwrap();
        mark(a.store.as_ref(), 0).await.unwrap();
        let did = |s: &Services| {
            let s = s.clone();
            async move {
                s.issuer
                    .unwrap()
                    .get_issuer("default")
                    .await
                    .unwrap()
                    .key_fingerprint
            }
        };
        let before = did(&sa).await;
        assert_eq!(before, did(&sb).await);

        // everything is gone
        for r in a.store.export_all().await.unwrap() {
            let ks: &'static str = Box::leak(r.keyspace.into_boxed_str());
            a.store.delete(ks, &r.key).await.unwrap();
        }
        assert!(!present(a.store.as_ref()).await.unwrap());
        let (mut la, mut lb) = (false, false);
        let (ra, rb) = tokio::join!(check(&a, &sa, None, &mut la), check(&b, &sb, None, &mut lb));
        let _ = (ra, rb);
        assert!(present(a.store.as_ref()).await.unwrap());
        assert!(
            a.readiness.failing().is_empty(),
            "{:?}",
            a.readiness.failing()
        );
        assert!(
            b.readiness.failing().is_empty(),
            "{:?}",
            b.readiness.failing()
        );
        let after = did(&sa).await;
        assert_eq!(
            after,
            did(&sb).await,
            "both nodes use the one key stored first"
        );
        assert_ne!(after, before, "a new default issuer key");
    }

    #[tokio::test]
    async fn production_mode_stays_not_ready_and_recreates_nothing() {
        let clock = FakeClock::new(1_000_000);
        let mut s = AppState::for_tests(clock);
        let mut settings = (*s.settings).clone();
        settings.raw.server.mode = Mode::Production;
        s.settings = Arc::new(settings);
        let mut lost = false;
        check(&s, &Services::default(), None, &mut lost).await;
        assert!(lost);
        let failing = s.readiness.failing();
        assert!(
            failing
                .iter()
                .any(|(c, r)| c == COMPONENT && r.contains("production mode")),
            "{failing:?}"
        );
        assert!(!present(s.store.as_ref()).await.unwrap());
        // the data comes back (a restore writes the marker with it): ready again
        mark(s.store.as_ref(), 1).await.unwrap();
        check(&s, &Services::default(), None, &mut lost).await;
        assert!(!lost);
        assert!(s.readiness.failing().iter().all(|(c, _)| c != COMPONENT));
    }
}
