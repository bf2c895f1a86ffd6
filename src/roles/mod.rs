//! The role engines (one folder each): `init` builds the enabled roles' services, `configure` mounts them.

#[cfg(not(any(
    feature = "issuer",
    feature = "verifier",
    feature = "wallet",
    feature = "mediator"
)))]
compile_error!("idstack needs at least one role feature: issuer, verifier, wallet or mediator");

#[cfg(feature = "issuer")]
pub mod issuer;
#[cfg(feature = "mediator")]
pub mod mediator;
#[cfg(feature = "verifier")]
pub mod verifier;
#[cfg(feature = "wallet")]
pub mod wallet;

pub mod context;
pub mod mdoc_pki;
pub mod tenant_keys;
pub mod tenants;

use std::sync::Arc;

/// How often startup retries creating a record that must exist once (a default tenant, the
/// mediator key) when the store answers "retry": a cluster node creating it at the same instant
/// (its creation still being decided), or no majority yet. About 20 s in all.
pub(crate) const INIT_RETRIES: u32 = 8;

/// The pause before retry `attempt` (1-based) of [`INIT_RETRIES`]: growing, and jittered so two
/// nodes retrying in step do not split the vote again.
pub(crate) fn init_retry_pause(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis((200 << attempt.min(4)) + rand::random::<u64>() % 250)
}

pub use context::RoleContext;

use crate::config::Config;
use crate::role::Role;

/// The service objects of the enabled roles, built by [`init`] and mounted by [`configure`]. A
/// role that is not running has `None`.
#[derive(Default, Clone)]
pub struct Services {
    #[cfg(feature = "issuer")]
    pub issuer: Option<Arc<issuer::IssuerService>>,
    #[cfg(feature = "verifier")]
    pub verifier: Option<Arc<verifier::VerifierService>>,
    #[cfg(feature = "wallet")]
    pub wallet: Option<Arc<wallet::WalletService>>,
    #[cfg(feature = "mediator")]
    pub mediator: Option<Arc<mediator::MediatorService>>,
}

/// Builds the service of every role in `roles` from `ctx` and the role's own section of `config`
/// (default tenants, keys, background jobs); `ready` is told each role that is.
pub async fn init(
    ctx: &RoleContext,
    config: &Config,
    roles: &[Role],
    mut ready: impl FnMut(Role),
) -> anyhow::Result<Services> {
    let mut services = Services::default();
    for role in roles.iter().copied() {
        match role {
            #[cfg(feature = "issuer")]
            Role::Issuer => services.issuer = Some(issuer::init(ctx, &config.issuer).await?),
            #[cfg(feature = "verifier")]
            Role::Verifier => {
                services.verifier = Some(verifier::init(ctx, &config.verifier).await?)
            }
            #[cfg(feature = "wallet")]
            Role::Wallet => services.wallet = Some(wallet::init(ctx, &config.wallet)?),
            #[cfg(feature = "mediator")]
            Role::Mediator => {
                services.mediator = Some(mediator::init(ctx, &config.mediator).await?)
            }
            #[allow(unreachable_patterns)]
            _ => anyhow::bail!("role {role} is not compiled into this build"),
        }
        ready(role);
    }
    Ok(services)
}

/// Mounts the routes of every role that has a service.
pub fn configure(cfg: &mut utoipa_actix_web::service_config::ServiceConfig, services: &Services) {
    #[cfg(feature = "issuer")]
    if let Some(svc) = &services.issuer {
        issuer::configure(cfg, svc);
    }
    #[cfg(feature = "verifier")]
    if let Some(svc) = &services.verifier {
        verifier::configure(cfg, svc);
    }
    #[cfg(feature = "wallet")]
    if let Some(svc) = &services.wallet {
        wallet::configure(cfg, svc);
    }
    #[cfg(feature = "mediator")]
    if let Some(svc) = &services.mediator {
        mediator::configure(cfg, svc);
    }
    let _ = (cfg, services);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Role initialisation runs again on the same node (after a rolling upgrade refused its
    /// first writes): it succeeds, and the role metrics registered the first time keep counting
    /// (before, the wallet's second registration failed, and the issuer's and mediator's were
    /// silently dropped).
    #[tokio::test]
    async fn roles_initialise_again_on_one_context() {
        let ctx = RoleContext::for_tests(crate::clock::FakeClock::new(1_800_000_000_000));
        let config = Config::default();
        let roles = Role::compiled_in();
        let first = init(&ctx, &config, &roles, |_| {}).await.unwrap();
        let again = init(&ctx, &config, &roles, |_| {}).await.unwrap();
        drop((first, again));
        let metrics = ctx.metrics.render();
        for role in &roles {
            let prefix = format!("idstack_{}_", role.as_str());
            assert!(
                *role == Role::Verifier || metrics.contains(&prefix),
                "{prefix}: {metrics}"
            );
        }
    }
}
