//! Limits of one job. Every limit is data with a unit; a job gets the
//! defaults unless the platform configuration lowers or raises them within
//! the hard maxima.

use serde::{Deserialize, Serialize};

/// Per-job resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLimits {
    /// Fuel: roughly one unit per WASM instruction executed, plus a fixed
    /// cost per host call. Does not count time spent inside queries.
    pub fuel: u64,
    /// Wall-clock limit in milliseconds on the guest's own running time.
    /// Time spent inside host calls (queries above all) is not counted:
    /// how long a query takes depends on the data, and it must not decide
    /// whether the job finishes (invariant I14). Queries have their own
    /// limit, `query_timeout_ms`.
    pub timeout_ms: u64,
    /// Cap on the guest's linear memory, in bytes.
    pub memory_bytes: u64,
    /// Cap on table elements (function tables).
    pub table_elements: u32,
    /// Cap on the bytes the job may emit as its result.
    pub output_bytes: u64,
    /// Cap on log messages, and on the bytes of each.
    pub log_messages: u32,
    /// Bytes of one log message; longer ones are truncated.
    pub log_message_bytes: u32,
    /// Cap on host calls of any kind.
    pub host_calls: u32,
    /// Memory DataFusion may use for one query, in bytes.
    pub query_memory_bytes: u64,
    /// Wall-clock limit of one query, in milliseconds. A query that runs
    /// longer is released as if its input were empty (charged as usual):
    /// the limit never fails the query or the job, so it tells the job
    /// nothing about the data beyond what a fully suppressed release does.
    #[serde(default = "default_query_timeout_ms")]
    pub query_timeout_ms: u64,
}

fn default_query_timeout_ms() -> u64 {
    30_000
}

/// Largest linear memory a job may be given, in bytes.
pub const MAX_MEMORY_BYTES: usize = 4 << 30;
/// Most table elements a job may be given.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Largest module accepted, in bytes.
pub const MAX_MODULE_BYTES: usize = 16 << 20;
/// Longest SQL text accepted by `query`, in bytes.
pub const MAX_SQL_BYTES: usize = 64 << 10;
/// Largest job parameters, in bytes.
pub const MAX_PARAMS_BYTES: usize = 64 << 10;

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            fuel: 2_000_000_000,
            timeout_ms: 30_000,
            memory_bytes: 64 << 20,
            table_elements: 10_000,
            output_bytes: 1 << 20,
            log_messages: 100,
            log_message_bytes: 1024,
            host_calls: 10_000,
            query_memory_bytes: 1 << 30,
            query_timeout_ms: default_query_timeout_ms(),
        }
    }
}

impl JobLimits {
    /// Fails when a limit is zero or above the platform's hard maximum.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(&str, u64, u64); 9] = [
            ("fuel", self.fuel, 100_000_000_000),
            ("timeout_ms", self.timeout_ms, 600_000),
            ("memory_bytes", self.memory_bytes, MAX_MEMORY_BYTES as u64),
            (
                "table_elements",
                u64::from(self.table_elements),
                MAX_TABLE_ELEMENTS as u64,
            ),
            ("output_bytes", self.output_bytes, 64 << 20),
            ("log_messages", u64::from(self.log_messages), 10_000),
            ("host_calls", u64::from(self.host_calls), 1_000_000),
            ("query_memory_bytes", self.query_memory_bytes, 16 << 30),
            ("query_timeout_ms", self.query_timeout_ms, 600_000),
        ];
        for (name, v, max) in checks {
            if v == 0 || v > max {
                return Err(format!("{name} must be between 1 and {max}"));
            }
        }
        Ok(())
    }
}
