//! idstack: one binary that is the whole identity server stack.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)
)]
#![deny(clippy::await_holding_lock)]

pub mod app;
pub mod bus;
#[cfg(feature = "redis")]
pub mod bus_redis;
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
pub mod first_start;
pub mod http;
pub mod keystore;
pub mod load;
pub mod roles;
pub mod state;
pub mod store;
pub mod tasks;
pub mod tenancy;
