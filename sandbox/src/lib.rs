//! Invis data plane: desensitized views, policy checks on DataFusion
//! logical plans, the release mechanism (contribution bounding, exact
//! discrete noise, thresholds) and the [`JobScope`] that is a job's only
//! door to data.
//!
//! Architecture invariant: this crate knows nothing of WASM or HTTP, and it
//! never hands out a DataFusion session: the only way to run SQL from
//! outside is [`JobScope::query`], which applies the scenario's policy.

pub mod audit;
pub mod bench;
pub mod desensitize;
mod error;
mod exec;
pub mod files;
mod limits;
mod measures;
pub mod noise;
mod policy;
pub mod profile;
pub mod release;
mod rows;
pub mod sample;
mod scope;
#[cfg(test)]
mod tests;
mod total;
pub mod udf;
pub mod verify;

pub use error::{Error, Result};
pub use release::{QueryLineage, TableRef};
pub use scope::{
    Accountant, DataPlane, FileFingerprint, JobScope, MemoryAccountant, Release, ScopeConfig, TableData,
    TableVersion,
};

/// Arrow, as used by this crate (re-exported so callers need no second copy).
pub use datafusion::arrow;
