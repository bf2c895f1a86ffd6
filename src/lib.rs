//! idstack: one binary that is the whole identity server stack.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)
)]
#![deny(clippy::await_holding_lock)]

pub mod app;
pub mod bus;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod dcql;
pub mod didcomm;
pub mod error;
pub mod http;
pub mod json_cost;
pub mod load;
pub mod pex_filter;
pub mod readiness;
pub mod role;
pub mod roles;
pub mod server;
pub mod store;
pub mod tasks;
pub mod tenancy;
