//! Guest SDK for Invis jobs.
//!
//! A job is a WASM module that exports `run` and calls the host ABI
//! (`invis_v1`). This crate wraps the ABI: [`query`] returns a typed
//! [`Table`] of protected aggregates (decoded from the Arrow IPC the host
//! sends), [`emit`] appends to the job's result, [`log`] writes a bounded
//! diagnostic, [`params`] reads the job's parameters, and
//! [`register_row_function`] lets queries call one of the job's own
//! functions on each row (its result feeds aggregates only).
//!
//! ```no_run
//! fn main() -> Result<(), invis::Error> {
//!     let t = invis::query("SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district")?;
//!     for row in 0..t.num_rows() {
//!         let d = t.str("district", row).unwrap_or("?");
//!         let n = t.i64("n", row).unwrap_or(0);
//!         invis::emit_str(&format!("{},{}\n", d, n));
//!     }
//!     Ok(())
//! }
//! invis::entry!(main);
//! ```
//!
//! The crate has no dependencies and builds with rustc 1.63 for
//! `wasm32-unknown-unknown`, as well as with current stable. On other
//! targets the ABI calls return an error, so the decoder can be tested
//! natively.

#![forbid(unsafe_op_in_unsafe_fn)]
#![allow(unsafe_code)]

pub mod ipc;

pub use ipc::{Column, Table, Values};

use std::fmt;

/// Error codes of the host ABI.
pub mod code {
    /// A pointer, length or UTF-8 string was invalid.
    pub const INVALID_ARGUMENT: i32 = -1;
    /// The query is outside the scenario's policy.
    pub const POLICY_VIOLATION: i32 = -2;
    /// The agreement's privacy budget does not cover the query.
    pub const BUDGET_EXHAUSTED: i32 = -3;
    /// Access is closed.
    pub const ACCESS_CLOSED: i32 = -4;
    /// The SQL does not parse or names unknown tables or columns.
    pub const INVALID_QUERY: i32 = -5;
    /// A per-job limit was reached.
    pub const LIMIT_EXCEEDED: i32 = -6;
    /// No result is pending.
    pub const NO_RESULT: i32 = -7;
    /// A buffer was too small.
    pub const BUFFER_TOO_SMALL: i32 = -8;
    /// The query failed inside the platform.
    pub const INTERNAL: i32 = -9;
    /// The host's answer could not be decoded (SDK-side error).
    pub const DECODE: i32 = -100;
}

/// An error from the host or from decoding its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// One of [`code`].
    pub code: i32,
    /// What the host said.
    pub message: String,
}

impl Error {
    /// True when the query was refused by the scenario's policy.
    pub fn is_policy_violation(&self) -> bool {
        self.code == code::POLICY_VIOLATION
    }
    /// True when the privacy budget is used up.
    pub fn is_budget_exhausted(&self) -> bool {
        self.code == code::BUDGET_EXHAUSTED
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for Error {}

#[cfg(target_arch = "wasm32")]
mod sys {
    #[link(wasm_import_module = "invis_v1")]
    extern "C" {
        pub fn query(sql_ptr: i32, sql_len: i32) -> i64;
        pub fn result_read(ptr: i32, len: i32) -> i32;
        pub fn error_read(ptr: i32, len: i32) -> i32;
        pub fn emit(ptr: i32, len: i32) -> i32;
        pub fn log(ptr: i32, len: i32) -> i32;
        pub fn params_len() -> i32;
        pub fn params_read(ptr: i32, len: i32) -> i32;
        pub fn udf_register(name_ptr: i32, name_len: i32, lo: f64, hi: f64) -> i32;
    }
}

/// Native stand-ins: there is no host outside WASM.
#[cfg(not(target_arch = "wasm32"))]
mod sys {
    pub unsafe fn query(_: i32, _: i32) -> i64 {
        super::code::ACCESS_CLOSED as i64
    }
    pub unsafe fn result_read(_: i32, _: i32) -> i32 {
        super::code::NO_RESULT
    }
    pub unsafe fn error_read(_: i32, _: i32) -> i32 {
        0
    }
    pub unsafe fn emit(_: i32, _: i32) -> i32 {
        super::code::ACCESS_CLOSED
    }
    pub unsafe fn log(_: i32, _: i32) -> i32 {
        super::code::ACCESS_CLOSED
    }
    pub unsafe fn params_len() -> i32 {
        0
    }
    pub unsafe fn params_read(_: i32, _: i32) -> i32 {
        0
    }
    pub unsafe fn udf_register(_: i32, _: i32, _: f64, _: f64) -> i32 {
        super::code::ACCESS_CLOSED
    }
}

fn last_error(code: i32) -> Error {
    let mut buf = vec![0u8; 1024];
    // SAFETY: the host writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { sys::error_read(buf.as_mut_ptr() as i32, buf.len() as i32) };
    let n = if n < 0 { 0 } else { (n as usize).min(buf.len()) };
    buf.truncate(n);
    let message = String::from_utf8(buf).unwrap_or_else(|_| "host error".to_string());
    Error {
        code,
        message: if message.is_empty() {
            format!("host error {}", code)
        } else {
            message
        },
    }
}

/// Runs `sql` and returns the raw Arrow IPC stream of the protected result.
pub fn query_ipc(sql: &str) -> Result<Vec<u8>, Error> {
    // SAFETY: the pointer and length describe `sql`, which outlives the call.
    let n = unsafe { sys::query(sql.as_ptr() as i32, sql.len() as i32) };
    if n < 0 {
        return Err(last_error(n as i32));
    }
    let mut buf = vec![0u8; n as usize];
    // SAFETY: the host writes exactly `n` bytes into `buf`, which has room.
    let got = unsafe { sys::result_read(buf.as_mut_ptr() as i32, buf.len() as i32) };
    if got < 0 {
        return Err(last_error(got));
    }
    buf.truncate(got as usize);
    Ok(buf)
}

/// Runs `sql` and returns the protected result as a table.
pub fn query(sql: &str) -> Result<Table, Error> {
    let bytes = query_ipc(sql)?;
    ipc::decode(&bytes).map_err(|m| Error {
        code: code::DECODE,
        message: m,
    })
}

/// Appends bytes to the job's result.
pub fn emit(bytes: &[u8]) -> Result<(), Error> {
    // SAFETY: the pointer and length describe `bytes`.
    let r = unsafe { sys::emit(bytes.as_ptr() as i32, bytes.len() as i32) };
    if r < 0 {
        Err(last_error(r))
    } else {
        Ok(())
    }
}

/// Appends text to the job's result.
pub fn emit_str(s: &str) -> Result<(), Error> {
    emit(s.as_bytes())
}

/// Writes a diagnostic message (bounded in size and number by the host).
pub fn log(msg: &str) {
    // SAFETY: the pointer and length describe `msg`.
    unsafe {
        sys::log(msg.as_ptr() as i32, msg.len() as i32);
    }
}

/// The job's parameters, as given at submission.
pub fn params() -> Vec<u8> {
    // SAFETY: no pointers are passed.
    let n = unsafe { sys::params_len() };
    if n <= 0 {
        return Vec::new();
    }
    let mut buf = vec![0u8; n as usize];
    // SAFETY: the host writes at most `buf.len()` bytes into `buf`.
    let got = unsafe { sys::params_read(buf.as_mut_ptr() as i32, buf.len() as i32) };
    buf.truncate(if got < 0 { 0 } else { got as usize });
    buf
}

/// Makes the exported function `name` callable in this job's queries as a
/// row function: DataFusion calls it on each row's (desensitized) values
/// inside the platform, and its result may only feed COUNT, SUM or AVG,
/// clamped to `[lo, hi]`.
///
/// The function must be exported with `#[no_mangle] pub extern "C"`, take
/// 1 to 8 `f64` and return `f64` (`NaN` is null both ways), and be
/// stateless: no writes to memory or globals, no loops, no recursion, no
/// host calls. Plain arithmetic, comparisons and `f64` methods qualify. A
/// trap on one row makes that row's value null.
///
/// ```no_run
/// #[no_mangle]
/// pub extern "C" fn coverage(insured: f64, employees: f64) -> f64 {
///     if employees > 0.0 { (insured / employees).min(1.0) } else { f64::NAN }
/// }
/// invis::register_row_function("coverage", 0.0, 1.0).unwrap();
/// ```
pub fn register_row_function(name: &str, lo: f64, hi: f64) -> Result<(), Error> {
    // SAFETY: the pointer and length describe `name`.
    let r = unsafe { sys::udf_register(name.as_ptr() as i32, name.len() as i32, lo, hi) };
    if r < 0 {
        Err(last_error(r))
    } else {
        Ok(())
    }
}

/// Defines the exported `run` entry point from a function returning
/// `Result<(), E>`. An error is logged and the job fails with status 1.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        pub extern "C" fn run() -> i32 {
            match $main() {
                Ok(()) => 0,
                Err(e) => {
                    $crate::log(&format!("job failed: {}", e));
                    1
                }
            }
        }
    };
}

/// Quotes a field for CSV output when needed.
pub fn csv_field(s: &str) -> String {
    if s.contains(',') || s.contains('"') || s.contains('\n') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
