//! Row functions a job supplies (guest UDFs). The sandbox does not know
//! where they come from (the runtime implements [`RowFunction`] with a
//! WebAssembly instance); it only knows they are untrusted and pure: the
//! policy lets their output feed COUNT, SUM and AVG arguments and nothing
//! else, and the release mechanism clamps it to the bounds the job declared,
//! so a row function can change what is aggregated but never what is
//! released per row, nor the sensitivity the noise is calibrated to.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{exec_err, DataFusionError};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Most row functions one job may register.
pub const MAX_ROW_FUNCTIONS: usize = 16;

/// Most arguments a row function takes.
pub const MAX_ROW_FUNCTION_ARGS: usize = 8;

/// A pure function from `Float64` arguments to one `Float64`, evaluated a
/// batch of rows at a time. `NaN` stands for null in both directions.
pub trait RowFunction: Send + Sync + std::fmt::Debug {
    /// The name queries call it by.
    fn name(&self) -> &str;
    /// Number of arguments.
    fn arity(&self) -> usize;
    /// Declared output range `[lo, hi]`: the release mechanism clamps to it
    /// before summing, so the declaration cannot understate sensitivity.
    fn bounds(&self) -> (f64, f64);
    /// Evaluates `rows` rows; `args` are columns of `rows` values each.
    /// An error stops the query (and the runtime decides the job's fate).
    fn eval(&self, args: &[&[f64]], rows: usize) -> Result<Vec<f64>, String>;
}

/// Checks a row function's name: lower-case ASCII identifier, not a name
/// DataFusion already has.
pub fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err("a row function name is 1-64 characters of a-z, 0-9 and _, starting with a letter".into())
    }
}

/// A [`RowFunction`] as a DataFusion scalar function.
#[derive(Debug)]
pub(crate) struct GuestUdf {
    f: Arc<dyn RowFunction>,
    signature: Signature,
}

impl GuestUdf {
    pub(crate) fn new(f: Arc<dyn RowFunction>) -> Self {
        let signature = Signature::uniform(f.arity(), vec![DataType::Float64], Volatility::Immutable);
        GuestUdf { f, signature }
    }
}

impl PartialEq for GuestUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.f, &other.f)
    }
}
impl Eq for GuestUdf {}
impl Hash for GuestUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.f.name().hash(state);
    }
}

/// Values of a column as `f64`, nulls as `NaN`; borrowed when there is no
/// null.
fn values(a: &ArrayRef) -> datafusion::error::Result<std::borrow::Cow<'_, [f64]>> {
    if a.data_type() != &DataType::Float64 {
        return exec_err!("row function arguments must be Float64, got {}", a.data_type());
    }
    let f = a.as_primitive::<Float64Type>();
    if f.null_count() == 0 {
        return Ok(std::borrow::Cow::Borrowed(f.values().as_ref()));
    }
    Ok(std::borrow::Cow::Owned(
        f.iter().map(|v| v.unwrap_or(f64::NAN)).collect(),
    ))
}

impl ScalarUDFImpl for GuestUdf {
    fn name(&self) -> &str {
        self.f.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let arrays = arrays
            .iter()
            .map(|a| cast(a, &DataType::Float64).map_err(DataFusionError::from))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let cols = arrays
            .iter()
            .map(values)
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        if cols.iter().any(|c| c.len() != rows) {
            return exec_err!("row function `{}`: arguments of unequal length", self.f.name());
        }
        let refs: Vec<&[f64]> = cols.iter().map(|c| c.as_ref()).collect();
        let out = self
            .f
            .eval(&refs, rows)
            .map_err(|e| DataFusionError::Execution(format!("row function `{}`: {e}", self.f.name())))?;
        if out.len() != rows {
            return exec_err!(
                "row function `{}` returned {} values for {rows} rows",
                self.f.name(),
                out.len()
            );
        }
        let nulls = out
            .iter()
            .any(|v| v.is_nan())
            .then(|| NullBuffer::new(out.iter().map(|v| !v.is_nan()).collect::<BooleanBuffer>()));
        let array = Float64Array::new(out.into(), nulls);
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

/// A row function as a DataFusion scalar function, for benchmarks that
/// compare it with a native expression outside any job scope.
pub fn scalar_udf(f: Arc<dyn RowFunction>) -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(GuestUdf::new(f))
}
