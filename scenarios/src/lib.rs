//! Invis governance domain: the catalog, scenarios, applications,
//! agreements, the working-day calendar, the policy vocabulary that scenario
//! approvals produce, and the lineage ledger's types and verifier.
//!
//! Architecture invariant: this crate does no IO and knows nothing of
//! DataFusion, wasmtime or HTTP. Everything here is a pure function of its
//! inputs (time and ids are passed in), so it is tested in isolation.

pub mod budget;
pub mod calendar;
pub mod catalog;
mod error;
pub mod feedback;
pub mod fees;
pub mod ledger;
pub mod oversight;
pub mod party;
pub mod policy;
pub mod population;
pub mod workflow;

pub use error::{Error, Result};

/// Fails unless a free-text field is filled in (and of a sane length):
/// `what` names it in the message, as in "the grounds are required".
pub(crate) fn required(what: &str, v: &str) -> Result<()> {
    if v.trim().is_empty() {
        Err(Error::InvalidRequest(format!("{what} is required")))
    } else if v.len() > 4000 {
        Err(Error::InvalidRequest(format!("{what} is longer than 4000 bytes")))
    } else {
        Ok(())
    }
}
