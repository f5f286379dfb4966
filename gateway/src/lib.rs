//! Invis gateway: the only composition root. It owns HTTP (axum), the
//! embedded store (SQLite), keys, the job lifecycle and the `invis` command
//! line, and wires `scenarios`, `sandbox` and `runtime` together.
//!
//! API boundary: wire types live here and convert to and from the domain
//! types of `scenarios`; no other crate knows HTTP or JSON bodies.
//!
//! Layers inside the gateway: `api` (routes, wire types, authentication,
//! the one mapping of errors to HTTP) sits on the services (`jobs`,
//! `ledger`, `datasets`, `metering`, `applications`, `airlock`, ...),
//! which decide and record, and sit on `records` and `store` (its
//! operations behind `store::StoreOps`); nothing below `api` imports from
//! it or uses axum, handlers leave store work to the services, and no
//! modules import each other in a circle (checked by the tests in
//! `layers.rs`). This file, `main.rs` and `server.rs` are the composition
//! roots.

pub mod agreements;
pub mod airlock;
pub mod api;
pub mod applications;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod client;
pub mod consents;
pub mod data_applications;
pub mod datasets;
pub mod demo;
pub mod error;
pub mod feedback;
pub mod halts;
pub mod incidents;
pub mod jobs;
pub mod keys;
#[cfg(test)]
mod layers;
pub mod ledger;
pub mod ledger_views;
pub mod local;
pub mod metering;
pub mod objections;
pub mod organizations;
pub mod parties;
pub mod populations;
pub mod private_data;
pub mod proposals;
pub mod providers;
pub mod records;
pub mod reports;
pub mod rotation;
pub mod server;
pub mod state;
pub mod statements;
pub mod storage;
pub mod store;
pub mod tenants;
pub mod uploads;
pub mod verification;
pub mod witness;

pub use api::router;
pub use state::{AppState, Config};
