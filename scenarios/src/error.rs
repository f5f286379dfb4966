//! Errors of the governance domain. Each variant says whose fault it is.

/// Errors raised by the domain rules in this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed or names something impossible (caller's fault).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The request is well formed but the current state does not allow it
    /// (approve twice, sign an expired agreement).
    #[error("illegal state transition: {0}")]
    IllegalState(String),
    /// The actor's role or identity does not permit the action.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A scenario or release parameter is outside what the platform accepts.
    #[error("unsafe parameter: {0}")]
    UnsafeParameter(String),
    /// Access is closed: no signed agreement, or it expired or was terminated.
    #[error("agreement closed: {0}")]
    AgreementClosed(String),
    /// The privacy budget of the agreement would be exceeded.
    #[error("privacy budget exhausted: {0}")]
    BudgetExhausted(String),
    /// A ledger export failed verification.
    #[error("ledger verification failed: {0}")]
    LedgerInvalid(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
