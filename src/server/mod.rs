//! The server's edge: the application state handlers share ([`state::AppState`]), and the routes
//! that belong to the node rather than to a role — health and readiness, metrics, system info,
//! the served JSON-LD context. The role engines never see this state: they get a
//! [`crate::roles::RoleContext`].

pub mod contexts;
pub mod first_start;
pub mod health;
pub mod state;
pub mod system;
pub mod workers;
