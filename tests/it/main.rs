//! One integration binary: every test starts the real idstack on port 0.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod abuse_dos;
mod abuse_limits;
mod abuse_outbound;
mod agent;
mod api;
mod balancer;
#[cfg(feature = "cluster")]
mod cluster;
mod common;
mod console;
#[cfg(feature = "cluster")]
mod faults;
mod forgery;
mod foundation;
mod holder;
mod interop;
mod issuer;
mod load;
mod mediator;
mod openapi_coverage;
mod redis_backend;
mod vc_api;
mod verifier;
mod wallet;
mod wallet_mdoc;
