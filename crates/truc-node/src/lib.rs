//! The truc runtime. One [`RunningNode`] plays hub, relay or edge depending on its
//! [`Config`]: it listens for children when it has `[listen]`, dials a parent when it
//! has `[parent]`, and serves the agency API when it serves agencies.
//!
//! - [`config`]: the TOML file, validated.
//! - [`state`]: the durable state machine — accept, dedup, route, queue, inbox, sent.
//! - [`link`]: the node-to-node stream with credits and acks after fsync.
//! - [`agency`]: the gRPC API for applications.
//! - [`transport`]: rustls under tonic.

#![forbid(unsafe_code)]

pub mod admin;
pub mod agency;
pub mod audit;
pub mod config;
pub mod directory;
pub mod edxml;
pub mod envelope;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod json;
pub mod link;
#[cfg(test)]
mod model_test;
pub mod node;
pub mod operator;
pub mod rest;
pub mod state;
pub mod stream;
pub mod telemetry;
pub mod transport;

pub use config::Config;
pub use error::{NodeError, Refusal};
pub use node::{Listeners, RunningNode, open_state};
pub use state::{Event, NodeState, Origin};

/// Resolves once a stop flag turns true (or its sender is gone).
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
