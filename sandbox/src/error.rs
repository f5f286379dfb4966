//! Errors of the data plane. Variants say whose fault it is; none carries a
//! data value, so every message is safe to show to the developer.

/// Data-plane errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The query or request is malformed (does not parse, names no table).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The query is well formed but outside the scenario's policy. The
    /// message names the rule.
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    /// The agreement's privacy budget does not cover the query.
    #[error("privacy budget exhausted: {0}")]
    BudgetExhausted(String),
    /// Access is closed (agreement not open, dataset suspended).
    #[error("access closed: {0}")]
    AccessClosed(String),
    /// A dataset file does not match its registration.
    #[error("invalid dataset: {0}")]
    InvalidDataset(String),
    /// A resource limit was reached (time, rows, memory).
    #[error("resources exhausted: {0}")]
    ResourcesExhausted(String),
    /// A fault of the platform. The message is for the log, not the caller.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<scenarios::Error> for Error {
    fn from(e: scenarios::Error) -> Self {
        match e {
            scenarios::Error::BudgetExhausted(m) => Error::BudgetExhausted(m),
            scenarios::Error::AgreementClosed(m) => Error::AccessClosed(m),
            scenarios::Error::UnsafeParameter(m) => Error::PolicyViolation(m),
            other => Error::InvalidQuery(other.to_string()),
        }
    }
}
