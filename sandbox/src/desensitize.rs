//! Desensitized views: the only form in which a job's queries see a table
//! (R2). Each column is rewritten by its rule before any user expression is
//! evaluated, and rows without a privacy unit are removed because their
//! contribution could not be bounded.
//!
//! The view also carries the raw privacy unit as the hidden column
//! [`UNIT_COLUMN`]; user queries can never name it (the plan check refuses
//! it), but the release mechanism groups by it to bound contributions.

use crate::{Error, Result};
use datafusion::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::functions::expr_fn as f;
use datafusion::logical_expr::{
    cast, col, create_udf, lit, try_cast, when, ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder,
    ScalarUDF, Volatility,
};
use ring::hmac;
use scenarios::catalog::{ColumnRule, DatasetSpec, DateUnit, Generalization};
use std::sync::Arc;

/// Hidden column holding the raw privacy unit of each row.
pub const UNIT_COLUMN: &str = "__unit";

/// A per-agreement key for [`ColumnRule::Tokenize`]. Tokens from different
/// keys cannot be linked.
#[derive(Clone)]
pub struct TokenKey(hmac::Key);

impl TokenKey {
    /// Builds the key from 32 secret bytes.
    pub fn new(bytes: &[u8; 32]) -> TokenKey {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// A key derived from this one for `label`, unrelated to it and to the
    /// keys of other labels: a developer's own table (R5) is tokenized under
    /// the key derived for it, so its tokens never equal the tokens of the
    /// public tables, and a table of candidate values cannot be turned into
    /// a value-to-token dictionary for public data.
    pub fn derive(&self, label: &str) -> TokenKey {
        let tag = hmac::sign(&self.0, format!("invis token domain v1 {label}").as_bytes());
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref()))
    }

    /// The token of one value: 128 bits of HMAC-SHA256, hex.
    pub fn token(&self, value: &str) -> String {
        let tag = hmac::sign(&self.0, value.as_bytes());
        hex::encode(tag.as_ref().get(..16).unwrap_or(tag.as_ref()))
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

/// The single Utf8 argument of a scalar function, as an array.
fn string_arg(args: &[ColumnarValue]) -> datafusion::error::Result<StringArray> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    arrays
        .first()
        .and_then(|a| a.as_any().downcast_ref::<StringArray>())
        .cloned()
        .ok_or_else(|| datafusion::error::DataFusionError::Internal("string function on a non-string".into()))
}

fn string_map_udf(name: &str, map: impl Fn(&str) -> String + Send + Sync + 'static) -> ScalarUDF {
    let fun = Arc::new(
        move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
            let input = string_arg(args)?;
            let mut out = StringBuilder::with_capacity(input.len(), input.len() * 16);
            for i in 0..input.len() {
                if input.is_null(i) {
                    out.append_null();
                } else {
                    out.append_value(map(input.value(i)));
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
        },
    );
    create_udf(
        name,
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        fun,
    )
}

/// Stars that replace the hidden part of every masked value, whatever its
/// length.
pub const MASK_STARS: usize = 8;

/// A masked value: the kept prefix, [`MASK_STARS`] stars, the kept suffix.
/// The output has the same length, `keep_prefix + MASK_STARS +
/// keep_suffix` characters, for every value, so `length()` of a masked
/// column says nothing about the raw value (issue 15). A value too short
/// to hide anything between its kept prefix and suffix is all stars (at
/// that same length): keeping its prefix and suffix would show it whole.
fn mask(value: &str, keep_prefix: usize, keep_suffix: usize) -> String {
    let n = value.chars().count();
    let width = keep_prefix.saturating_add(MASK_STARS).saturating_add(keep_suffix);
    let mut out = String::with_capacity(width.saturating_mul(4));
    if n <= keep_prefix.saturating_add(keep_suffix) {
        out.extend(std::iter::repeat_n('*', width));
        return out;
    }
    out.extend(value.chars().take(keep_prefix));
    out.extend(std::iter::repeat_n('*', MASK_STARS));
    out.extend(value.chars().skip(n - keep_suffix));
    out
}

fn as_text(e: Expr, dt: &DataType) -> Expr {
    if matches!(dt, DataType::Utf8) {
        e
    } else {
        cast(e, DataType::Utf8)
    }
}

fn is_integer(dt: &DataType) -> bool {
    dt.is_integer()
}

fn numeric_check(column: &str, dt: &DataType) -> Result<()> {
    if dt.is_numeric() {
        Ok(())
    } else {
        // The type is not named: its parameters (a time zone, a struct's
        // field names) are text of a file not yet accepted (I17).
        Err(Error::InvalidDataset(format!(
            "column `{column}`: numeric generalization on a column that is not numeric"
        )))
    }
}

/// The expression that presents `column` (of type `dt`) under `rule`, or
/// `None` for [`ColumnRule::Drop`].
pub fn rule_expr(column: &str, dt: &DataType, rule: &ColumnRule, key: &TokenKey) -> Result<Option<Expr>> {
    let c = col(datafusion::common::Column::from_name(column));
    let e = match rule {
        ColumnRule::Drop => return Ok(None),
        ColumnRule::Keep => c,
        ColumnRule::Mask {
            keep_prefix,
            keep_suffix,
        } => {
            // Registration caps the kept characters; the cap here keeps a
            // spec that escaped it from making every value huge.
            let cap = scenarios::catalog::MAX_MASK_KEPT as usize;
            let (p, s) = ((*keep_prefix as usize).min(cap), (*keep_suffix as usize).min(cap));
            let udf = string_map_udf("invis_mask", move |v| mask(v, p, s));
            udf.call(vec![as_text(c, dt)])
        }
        ColumnRule::Tokenize => {
            let key = key.clone();
            let udf = string_map_udf("invis_tokenize", move |v| key.token(v));
            udf.call(vec![as_text(c, dt)])
        }
        ColumnRule::Generalize(Generalization::Prefix { len }) => {
            let n = *len as usize;
            let udf = string_map_udf("invis_prefix", move |v| v.chars().take(n).collect());
            udf.call(vec![as_text(c, dt)])
        }
        ColumnRule::Generalize(Generalization::Bucket { width }) => {
            numeric_check(column, dt)?;
            let bucket = f::floor(cast(c, DataType::Float64) / lit(*width)) * lit(*width);
            if is_integer(dt) && width.fract() == 0.0 {
                try_cast(bucket, DataType::Int64)
            } else {
                bucket
            }
        }
        ColumnRule::Generalize(Generalization::Edges { edges }) => {
            numeric_check(column, dt)?;
            let first = *edges
                .first()
                .ok_or_else(|| Error::InvalidDataset(format!("column `{column}`: no edges")))?;
            let x = cast(c, DataType::Float64);
            let mut rev = edges.iter().rev();
            let top = *rev.next().unwrap_or(&first);
            let mut case = when(x.clone().gt_eq(lit(top)), lit(top));
            for e in rev {
                case = case.when(x.clone().gt_eq(lit(*e)), lit(*e));
            }
            // NULL stays NULL; values below the first edge map to it.
            let expr = when(x.clone().is_null(), lit(ScalarValue::Float64(None)))
                .otherwise(case.otherwise(lit(first))?)?;
            if is_integer(dt) && edges.iter().all(|e| e.fract() == 0.0) {
                try_cast(expr, DataType::Int64)
            } else {
                expr
            }
        }
        ColumnRule::Generalize(Generalization::DateTrunc { unit }) => {
            let unit = match unit {
                DateUnit::Year => "year",
                DateUnit::Month => "month",
            };
            match dt {
                DataType::Date32 | DataType::Date64 => cast(
                    f::date_trunc(
                        lit(unit),
                        cast(
                            c,
                            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Second, None),
                        ),
                    ),
                    dt.clone(),
                ),
                DataType::Timestamp(_, _) => f::date_trunc(lit(unit), c),
                // The type is not named (its parameters are the file's
                // text, I17).
                _ => {
                    return Err(Error::InvalidDataset(format!(
                        "column `{column}`: date truncation on a column that is not a date or timestamp"
                    )))
                }
            }
        }
    };
    Ok(Some(e))
}

/// Which privacy units a view lets through: units suspended by an
/// objection are excluded (R7); when a scenario needs the subjects'
/// consent, only consenting units are kept (R14). Units are compared as
/// text.
#[derive(Debug, Clone, Default)]
pub struct UnitFilter {
    /// Units whose rows never reach a job.
    pub exclude: Arc<std::collections::HashSet<String>>,
    /// When set, only these units' rows reach a job.
    pub only: Option<Arc<std::collections::HashSet<String>>>,
}

/// The columns of a dataset's desensitized view, in order: the hidden
/// [`UNIT_COLUMN`] (the raw unit), then every column not dropped, presented
/// under its rule. Expressions refer to the raw columns by name.
pub fn view_columns(schema: &DFSchema, spec: &DatasetSpec, key: &TokenKey) -> Result<Vec<(String, Expr)>> {
    let mut out = Vec::with_capacity(spec.columns.len() + 1);
    out.push((
        UNIT_COLUMN.to_string(),
        col(datafusion::common::Column::from_name(&spec.privacy_unit)),
    ));
    for c in &spec.columns {
        let field = schema
            .field_with_unqualified_name(&c.name)
            .map_err(|_| Error::InvalidDataset(format!("column `{}` is missing from the file", c.name)))?;
        if let Some(e) = rule_expr(&c.name, field.data_type(), &c.rule, key)? {
            out.push((c.name.clone(), e));
        }
    }
    // Dictionary-encoded columns (Parquet written from categoricals) are
    // presented as plain values: total evaluation bounds plain text only.
    for (_, e) in out.iter_mut() {
        if let Ok(DataType::Dictionary(_, value)) =
            datafusion::logical_expr::ExprSchemable::get_type(&*e, schema)
        {
            *e = cast(e.clone(), value.as_ref().clone());
        }
    }
    Ok(out)
}

/// Wraps the raw scan `raw` of a dataset into its desensitized view as a
/// logical plan: rows with a null privacy unit removed (unless
/// `unit_complete` says the file has none), [`UNIT_COLUMN`] added, every
/// column presented under its rule, dropped columns absent. Used for
/// synthetic samples and registration checks; jobs read views through
/// `scope::ViewProvider`, which applies the same columns with total
/// evaluation behind a native unit filter.
pub fn view_plan(
    raw: LogicalPlan,
    spec: &DatasetSpec,
    key: &TokenKey,
    unit_complete: bool,
) -> Result<LogicalPlan> {
    let exprs: Vec<Expr> = view_columns(raw.schema(), spec, key)?
        .into_iter()
        .map(|(name, e)| e.alias(name))
        .collect();
    let unit = col(datafusion::common::Column::from_name(&spec.privacy_unit));
    let mut b = LogicalPlanBuilder::from(raw);
    // When registration found no null unit the filter is a no-op, and
    // skipping it saves reading the unit column in queries that need none.
    if !unit_complete {
        b = b.filter(unit.clone().is_not_null())?;
    }
    Ok(b.project(exprs)?.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_prefix_and_suffix_by_character() {
        assert_eq!(mask("厦门市思明区", 2, 1), "厦门********区");
        assert_eq!(mask("abcdef", 0, 0), "********");
    }

    #[test]
    fn masking_hides_the_length() {
        // Issue 15: `length()` of a masked value was the raw length.
        let lengths: std::collections::BTreeSet<usize> =
            ["", "a", "ab", "abcd", "厦门市思明区", &"x".repeat(300)]
                .iter()
                .map(|v| mask(v, 2, 2).chars().count())
                .collect();
        assert_eq!(lengths.into_iter().collect::<Vec<_>>(), [2 + MASK_STARS + 2]);
        // A value no longer than the kept parts is not shown whole.
        assert_eq!(mask("ab", 2, 2), "*".repeat(12));
        assert_eq!(mask("abcd", 2, 2), "*".repeat(12));
        assert_eq!(mask("abcde", 2, 2), "ab********de");
    }

    #[test]
    fn tokens_depend_on_the_key() {
        let a = TokenKey::new(&[1u8; 32]);
        let b = TokenKey::new(&[2u8; 32]);
        assert_eq!(a.token("E1"), a.token("E1"));
        assert_ne!(a.token("E1"), a.token("E2"));
        assert_ne!(a.token("E1"), b.token("E1"));
        assert_eq!(a.token("E1").len(), 32);
        assert!(!format!("{a:?}").contains('1'));
    }

    #[test]
    fn derived_keys_give_unrelated_tokens() {
        let a = TokenKey::new(&[1u8; 32]);
        let d = a.derive("developer table x");
        assert_ne!(a.token("E1"), d.token("E1"));
        assert_ne!(d.token("E1"), a.derive("developer table y").token("E1"));
        assert_eq!(d.token("E1"), a.derive("developer table x").token("E1"));
    }
}
