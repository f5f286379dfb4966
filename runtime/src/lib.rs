//! Invis WASM runtime: runs untrusted job modules under wasmtime (pooling
//! allocator) with fuel, a deadline on the guest's own running time (epoch
//! interruption; time inside host calls is not counted), memory
//! and table caps, and no WASI: the only imports a job may have are the host ABI in
//! [`host`], whose `query` is backed by a policy-scoped
//! [`sandbox::JobScope`].
//!
//! Architecture invariant: this crate never touches DataFusion or raw data;
//! it can only call [`sandbox::JobScope::query`].

mod engine;
mod error;
pub mod fair;
pub mod host;
mod limits;
pub mod shape;
#[cfg(test)]
mod tests;
pub mod udf;

pub use engine::{
    JobInput, JobOutcome, ModuleInfo, Runtime, SlotHold, Usage, CACHE_BYTES, CONCURRENT_JOBS, MAX_COMPILE,
    SLOTS_PER_ORGANIZATION,
};
pub use error::JobError;
pub use limits::{
    JobLimits, MAX_MEMORY_BYTES, MAX_MODULE_BYTES, MAX_PARAMS_BYTES, MAX_SQL_BYTES, MAX_TABLE_ELEMENTS,
};
