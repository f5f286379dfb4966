//! Profiling a dataset file at registration: its version hash, schema,
//! row count and whether each privacy unit has at most one row. Reads the
//! file; reports nothing about its values beyond these counts.
//!
//! The file is not accepted yet while it is profiled, so no error (nor
//! log line) names anything read from it: not a header field, not a value,
//! not the text of a parser's error (Arrow's CSV errors quote the offending
//! field). Errors name only columns the spec itself declares, and
//! positions (invariant I17, `docs/invariants.md`).

use crate::desensitize::{view_plan, TokenKey};
use crate::scope::{df_error, open_file, FileFingerprint};
use crate::{Error, Result};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::datasource::provider_as_source;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, max, min};
use datafusion::logical_expr::{col, LogicalPlanBuilder};
use datafusion::prelude::SessionContext;
use ring::digest::{Context, SHA256};
use scenarios::catalog::DatasetSpec;
use serde::{Deserialize, Serialize};
use std::io::Read;

/// One column as found in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    /// Name.
    pub name: String,
    /// Arrow data type, as text (for example `Int64`, `Utf8`).
    pub data_type: String,
    /// Null values in the column (unknown for old registrations).
    #[serde(default)]
    pub nulls: Option<u64>,
    /// Smallest and largest value of a numeric column. Private to the
    /// platform: an extreme is one unit's exact value, so it is never shown
    /// to anyone; it only lets the mechanism skip clamping when every value
    /// already lies within a scenario's bounds (the output is identical).
    #[serde(default)]
    pub range: Option<[f64; 2]>,
    /// Every value of a floating-point column is a whole number (unknown
    /// for old registrations and other types). With the range, it lets the
    /// mechanism sum such a column exactly without its clamp-and-round
    /// kernel.
    #[serde(default)]
    pub integral: Option<bool>,
}

/// What registration learns about a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetProfile {
    /// SHA-256 of the file, hex: the version hash jobs record.
    pub version: String,
    /// Size and modification time, to detect later changes.
    pub fingerprint: FileFingerprint,
    /// Columns and types.
    pub columns: Vec<ColumnProfile>,
    /// Rows with a privacy unit.
    pub rows: u64,
    /// Distinct privacy units.
    pub units: u64,
    /// True when no unit has more than one row.
    pub unit_unique: bool,
    /// Rows in the file, with or without a privacy unit.
    #[serde(default)]
    pub rows_total: Option<u64>,
    /// Most rows any one privacy unit has. It bounds how much work one
    /// unit's presence can add to a join (a developer-supplied table is
    /// refused above the scenario's rows-per-unit bound, invariant I14).
    /// Never shown to developers.
    #[serde(default)]
    pub max_rows_per_unit: Option<u64>,
}

/// Size and modification time of `path`.
pub fn fingerprint(path: &str) -> Result<FileFingerprint> {
    // The path is the platform's (resolved inside the owner's storage
    // location): it goes to the log, not into the message.
    let meta = std::fs::metadata(path).map_err(|e| {
        tracing::warn!(path, error = %e.kind(), "dataset file cannot be read");
        Error::InvalidDataset("the dataset's file cannot be read".into())
    })?;
    if !meta.is_file() {
        tracing::warn!(path, "dataset file is not a regular file");
        return Err(Error::InvalidDataset(
            "the dataset's file is not a regular file".into(),
        ));
    }
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Ok(FileFingerprint {
        len: meta.len(),
        modified_ns,
    })
}

/// SHA-256 of a file, hex.
pub fn hash_file(path: &str) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| {
        tracing::warn!(path, error = %e.kind(), "dataset file cannot be opened");
        Error::InvalidDataset("the dataset's file cannot be opened".into())
    })?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::InvalidDataset(format!("read failed: {}", e.kind())))?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or(&[]));
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

/// Profiles the file of `spec` and checks it against the spec: every file
/// column needs a rule, every rule a column, and every rule must fit its
/// column's type.
pub async fn profile(spec: &DatasetSpec) -> Result<DatasetProfile> {
    spec.validate()?;
    if !std::path::Path::new(&spec.path).is_absolute() {
        return Err(Error::InvalidDataset("the dataset path must be absolute".into()));
    }
    let before = fingerprint(&spec.path)?;
    let version = hash_file(&spec.path)?;
    let provider = open_file(spec).await?;
    let schema: SchemaRef = provider.schema();
    // A header field is a value of a file not yet accepted: the message
    // gives its position only.
    let n = schema.fields().len();
    for (i, f) in schema.fields().iter().enumerate() {
        if spec.column(f.name()).is_none() {
            return Err(Error::InvalidDataset(format!(
                "the file has a column with no desensitization rule (column {} of {n}); \
                 every column of the file needs a rule in the spec",
                i + 1
            )));
        }
    }
    for c in &spec.columns {
        if schema.field_with_name(&c.name).is_err() {
            return Err(Error::InvalidDataset(format!(
                "column `{}` declared in the spec is not in the file",
                c.name
            )));
        }
    }
    let scan = LogicalPlanBuilder::scan("raw", provider_as_source(provider.clone()), None)?.build()?;
    // Building the view checks that every rule fits its column type.
    view_plan(scan.clone(), spec, &TokenKey::new(&[0u8; 32]), false)?;
    let unit = col(datafusion::common::Column::from_name(&spec.privacy_unit));
    let mut aggs = vec![
        count(datafusion::logical_expr::lit(1i64)).alias("__total"),
        count(unit.clone()).alias("__rows"),
        count_distinct(unit).alias("__units"),
    ];
    for (i, f) in schema.fields().iter().enumerate() {
        let c = col(datafusion::common::Column::from_name(f.name()));
        aggs.push(count(c.clone()).alias(format!("__c{i}")));
        if f.data_type().is_numeric() {
            let x = datafusion::logical_expr::cast(c, datafusion::arrow::datatypes::DataType::Float64);
            aggs.push(min(x.clone()).alias(format!("__lo{i}")));
            aggs.push(max(x.clone()).alias(format!("__hi{i}")));
            if f.data_type().is_floating() {
                // Values with a fractional part (nulls count as none).
                let fractional = datafusion::logical_expr::when(
                    x.clone()
                        .not_eq(datafusion::functions::math::expr_fn::trunc(vec![x])),
                    datafusion::logical_expr::lit(1i64),
                )
                .otherwise(datafusion::logical_expr::lit(0i64))?;
                aggs.push(
                    datafusion::functions_aggregate::expr_fn::sum(fractional).alias(format!("__frac{i}")),
                );
            }
        }
    }
    let batch_source = scan.clone();
    let counted = LogicalPlanBuilder::from(scan)
        .aggregate(Vec::<datafusion::logical_expr::Expr>::new(), aggs)?
        .build()?;
    let ctx = SessionContext::new();
    let batches = ctx
        .execute_logical_plan(counted)
        .await
        .map_err(df_error)?
        .collect()
        .await
        .map_err(|e| unreadable(spec, &e))?;
    let batch = batches
        .first()
        .filter(|b| b.num_rows() == 1)
        .ok_or_else(|| Error::Internal("the count query returned no row".into()))?;
    let get = |name: &str| -> u64 {
        batch
            .column_by_name(name)
            .map(|c| c.as_primitive::<Int64Type>().value(0).max(0) as u64)
            .unwrap_or(0)
    };
    let getf = |name: &str| -> Option<f64> {
        use datafusion::arrow::array::Array;
        let c = batch.column_by_name(name)?;
        let c = c.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        (!c.is_null(0) && c.value(0).is_finite()).then(|| c.value(0))
    };
    let (total, rows, units) = (get("__total"), get("__rows"), get("__units"));
    if rows == 0 {
        return Err(Error::InvalidDataset(
            "the file has no row with a privacy unit".into(),
        ));
    }
    let max_rows_per_unit = if rows == units {
        1
    } else {
        most_rows_of_one_unit(&ctx, spec, batch_source).await?
    };
    // What the provider declared is checked, never inferred (the release
    // path must not depend on one unit): the counts are the provider's own.
    if spec.one_row_per_unit && rows != units {
        return Err(Error::InvalidDataset(format!(
            "the dataset declares one row per unit, but a unit has {max_rows_per_unit} rows"
        )));
    }
    for (i, f) in schema.fields().iter().enumerate() {
        let declared = spec.column(f.name()).is_some_and(|c| c.not_null);
        if !declared {
            continue;
        }
        if get(&format!("__c{i}")) != total {
            return Err(Error::InvalidDataset(format!(
                "column `{}` is declared not null but has missing values",
                f.name()
            )));
        }
        let finite = getf(&format!("__lo{i}")).is_some() && getf(&format!("__hi{i}")).is_some();
        if f.data_type().is_floating() && !finite {
            return Err(Error::InvalidDataset(format!(
                "column `{}` is declared not null but holds NaN or infinite values",
                f.name()
            )));
        }
    }
    if fingerprint(&spec.path)? != before {
        return Err(Error::InvalidDataset(
            "the file changed while it was being registered".into(),
        ));
    }
    Ok(DatasetProfile {
        version,
        fingerprint: before,
        columns: schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| ColumnProfile {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nulls: Some(total.saturating_sub(get(&format!("__c{i}")))),
                range: match (getf(&format!("__lo{i}")), getf(&format!("__hi{i}"))) {
                    (Some(lo), Some(hi)) => Some([lo, hi]),
                    _ => None,
                },
                integral: f.data_type().is_floating().then(|| {
                    batch.column_by_name(&format!("__frac{i}")).is_some() && get(&format!("__frac{i}")) == 0
                }),
            })
            .collect(),
        rows,
        units,
        unit_unique: rows == units,
        rows_total: Some(total),
        max_rows_per_unit: Some(max_rows_per_unit),
    })
}

/// The largest number of rows one privacy unit has in `source`.
async fn most_rows_of_one_unit(
    ctx: &SessionContext,
    spec: &DatasetSpec,
    source: datafusion::logical_expr::LogicalPlan,
) -> Result<u64> {
    let u = col(datafusion::common::Column::from_name(&spec.privacy_unit));
    let per_unit = LogicalPlanBuilder::from(source)
        .filter(u.clone().is_not_null())?
        .aggregate(
            vec![u],
            vec![count(datafusion::logical_expr::lit(1i64)).alias("__n")],
        )?
        .aggregate(
            Vec::<datafusion::logical_expr::Expr>::new(),
            vec![max(col("__n")).alias("__most")],
        )?
        .build()?;
    let batches = ctx
        .execute_logical_plan(per_unit)
        .await
        .map_err(df_error)?
        .collect()
        .await
        .map_err(|e| unreadable(spec, &e))?;
    Ok(batches
        .first()
        .and_then(|b| b.column_by_name("__most"))
        .map(|c| c.as_primitive::<Int64Type>())
        .filter(|c| c.len() == 1)
        .map(|c| c.value(0).max(0) as u64)
        .unwrap_or(0))
}

/// A file that could not be scanned to the end. The parser's message quotes
/// what it could not parse, so neither the answer nor the log carries it:
/// the log gets the kind of error and the platform's path.
fn unreadable(spec: &DatasetSpec, e: &datafusion::error::DataFusionError) -> Error {
    tracing::warn!(
        path = %spec.path,
        error = crate::scope::df_error_kind(e),
        "dataset file could not be scanned"
    );
    Error::InvalidDataset(format!(
        "the file of `{}` could not be read completely; check its format and that every value fits its column's type",
        spec.name
    ))
}
