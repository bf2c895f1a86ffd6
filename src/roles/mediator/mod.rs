//! The mediator role. Not built yet: it initialises nothing and mounts no routes, but its config
//! section, feature flag and role gating exist so deployments can already name it.

pub mod envelope;

use crate::state::AppState;

pub async fn init(_state: &AppState) -> anyhow::Result<()> {
    Ok(())
}

pub fn configure(_cfg: &mut utoipa_actix_web::service_config::ServiceConfig, _state: &AppState) {}
