//! Why a job stopped, as data (not strings), so callers can map each cause
//! to a status, a fee and a ledger entry.

use serde::{Deserialize, Serialize};

/// The reason a job did not finish successfully.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum JobError {
    /// The module is not a valid job: not WASM, too large, wrong imports or
    /// exports. Detected before anything runs.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// The job used up its fuel (instruction budget).
    #[error("out of fuel: the job exceeded its instruction budget")]
    OutOfFuel,
    /// The job ran past its wall-clock deadline.
    #[error("deadline exceeded: the job ran longer than its time limit")]
    DeadlineExceeded,
    /// The job tried to grow memory or tables past its cap.
    #[error("memory limit: the job tried to grow its memory past the cap")]
    MemoryLimit,
    /// The job exceeded a host ABI limit (output size, log volume, calls).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The job trapped (stack overflow, unreachable, out-of-bounds access).
    #[error("guest trap: {0}")]
    GuestTrap(String),
    /// The job returned a non-zero status from `run`.
    #[error("the job reported failure with status {0}")]
    GuestFailed(i32),
    /// Access was withdrawn while the job ran (agreement ended or stopped).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The job was stopped by an operator or developer.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A fault of the platform.
    #[error("internal error: {0}")]
    Internal(String),
}

impl JobError {
    /// A short stable name of the variant.
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::InvalidModule(_) => "invalid_module",
            JobError::OutOfFuel => "out_of_fuel",
            JobError::DeadlineExceeded => "deadline_exceeded",
            JobError::MemoryLimit => "memory_limit",
            JobError::LimitExceeded(_) => "limit_exceeded",
            JobError::GuestTrap(_) => "guest_trap",
            JobError::GuestFailed(_) => "guest_failed",
            JobError::PermissionDenied(_) => "permission_denied",
            JobError::Cancelled(_) => "cancelled",
            JobError::Internal(_) => "internal",
        }
    }
}
