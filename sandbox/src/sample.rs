//! Synthetic sample data (R3): rows generated from a dataset's schema and
//! declared public domains only, so no real value is ever shown. They are
//! shown in the development catalog through the same desensitized view jobs
//! see, and local runs execute jobs against them.

use crate::desensitize::{view_plan, TokenKey};
use crate::scope::df_error;
use crate::{Error, Result};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::{provider_as_source, MemTable};
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::SessionContext;
use scenarios::catalog::{DatasetSpec, Domain};
use std::sync::Arc;

/// A small deterministic generator (splitmix64, Steele et al. 2014) for
/// synthetic data, which must be reproducible, not secret. Never used for
/// noise: that is [`crate::noise::SystemRng`].
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value in `[0, n)` (0 when `n` is 0); the modulo bias is irrelevant
    /// for synthetic data.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Distinct values of a text column without a declared domain.
const SAMPLE_CATEGORIES: u64 = 6;

fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3)
    })
}

/// Parses a type name recorded at registration.
pub fn parse_type(s: &str) -> Result<DataType> {
    s.parse::<DataType>()
        .map_err(|_| Error::InvalidDataset(format!("unknown column type `{}`", s.escape_debug())))
}

/// Generates `rows` synthetic raw rows for `spec` with the column types of
/// `types` (name, Arrow type). When `unit_unique` is false, privacy units
/// repeat, as they do in the real table.
pub fn sample_batch(
    spec: &DatasetSpec,
    types: &[(String, DataType)],
    rows: usize,
    unit_unique: bool,
) -> Result<RecordBatch> {
    let mut g = SplitMix64(seed_of(&spec.name));
    let mut fields = Vec::with_capacity(types.len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(types.len());
    for (name, dt) in types {
        let domain = spec.column(name).and_then(|c| c.domain.clone());
        let is_unit = *name == spec.privacy_unit;
        let unit_pool = if unit_unique {
            rows as u64
        } else {
            (rows as u64 / 3).max(1)
        };
        let array: ArrayRef = if is_unit {
            let mut b = StringBuilder::new();
            for i in 0..rows {
                let id = if unit_unique { i as u64 } else { g.below(unit_pool) };
                b.append_value(format!("S{id:06}"));
            }
            cast(&(Arc::new(b.finish()) as ArrayRef), dt).unwrap_or_else(|_| {
                let mut b = Int64Builder::new();
                for i in 0..rows {
                    b.append_value(if unit_unique {
                        i as i64
                    } else {
                        g.below(unit_pool) as i64
                    });
                }
                Arc::new(b.finish())
            })
        } else {
            match (&domain, dt) {
                (Some(Domain::Categories(values)), _) => {
                    let mut b = StringBuilder::new();
                    for _ in 0..rows {
                        let v = values
                            .get(g.below(values.len() as u64) as usize)
                            .cloned()
                            .unwrap_or_default();
                        b.append_value(v);
                    }
                    let s: ArrayRef = Arc::new(b.finish());
                    cast(&s, dt).map_err(|_| {
                        Error::InvalidDataset(format!("column `{name}`: categories do not fit type {dt}"))
                    })?
                }
                (d, dt) if dt.is_integer() => {
                    let (lo, hi) = match d {
                        Some(Domain::Range { min, max }) => (min.ceil() as i64, max.floor() as i64),
                        _ => (0, 999),
                    };
                    let mut b = Int64Builder::new();
                    for _ in 0..rows {
                        b.append_value(lo + g.below((hi - lo).max(0) as u64 + 1) as i64);
                    }
                    cast(&(Arc::new(b.finish()) as ArrayRef), dt)?
                }
                (d, dt) if dt.is_numeric() => {
                    let (lo, hi) = match d {
                        Some(Domain::Range { min, max }) => (*min, *max),
                        _ => (0.0, 1000.0),
                    };
                    // Within the domain and finite in the column's own type:
                    // the table declares every column complete, so its
                    // values are read without the finite check.
                    let most = match dt {
                        DataType::Float32 => f64::from(f32::MAX),
                        DataType::Float16 => 65_504.0,
                        _ => f64::MAX,
                    };
                    let mut b = Float64Builder::new();
                    for _ in 0..rows {
                        let u = g.unit();
                        let v = lo * (1.0 - u) + hi * u;
                        let r = (v * 100.0).round() / 100.0;
                        let v = if r.is_finite() { r } else { v };
                        b.append_value(v.max(lo).min(hi).max(-most).min(most));
                    }
                    cast(&(Arc::new(b.finish()) as ArrayRef), dt)?
                }
                (_, DataType::Boolean) => {
                    let mut b = BooleanBuilder::new();
                    for _ in 0..rows {
                        b.append_value(g.below(2) == 1);
                    }
                    Arc::new(b.finish())
                }
                (_, DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)) => {
                    let mut b = Date32Builder::new();
                    for _ in 0..rows {
                        // 2024-01-01 is day 19723 since the epoch.
                        b.append_value(19_723 + g.below(731) as i32);
                    }
                    cast(&(Arc::new(b.finish()) as ArrayRef), dt)?
                }
                (_, dt) => {
                    // A few made-up categories, so that sample groups are
                    // large enough to pass release thresholds in local runs.
                    let mut b = StringBuilder::new();
                    for _ in 0..rows {
                        b.append_value(format!("{name}-{}", 1 + g.below(SAMPLE_CATEGORIES)));
                    }
                    cast(&(Arc::new(b.finish()) as ArrayRef), dt).map_err(|_| {
                        Error::InvalidDataset(format!("column `{name}`: cannot synthesize type {dt}"))
                    })?
                }
            }
        };
        fields.push(Field::new(name, dt.clone(), true));
        columns.push(array);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// Sample rows as jobs would see them (desensitized), as text cells.
pub async fn sample_rows(
    spec: &DatasetSpec,
    types: &[(String, DataType)],
    rows: usize,
    unit_unique: bool,
) -> Result<(Vec<String>, Vec<Vec<Option<String>>>)> {
    let batch = sample_batch(spec, types, rows, unit_unique)?;
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
    let scan = LogicalPlanBuilder::scan("sample", provider_as_source(Arc::new(table)), None)?.build()?;
    let view = view_plan(scan, spec, &TokenKey::new(&[7u8; 32]), true)?;
    let ctx = SessionContext::new();
    let out = ctx
        .execute_logical_plan(view)
        .await
        .map_err(df_error)?
        .collect()
        .await
        .map_err(df_error)?;
    let Some(first) = out.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    // The hidden unit column is not part of what anyone sees.
    let visible: Vec<usize> = first
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.name().starts_with("__"))
        .map(|(i, _)| i)
        .collect();
    let header = visible
        .iter()
        .map(|&i| first.schema().field(i).name().clone())
        .collect();
    let mut cells = Vec::new();
    let opts = FormatOptions::default();
    for b in &out {
        let fmts = visible
            .iter()
            .map(|&i| ArrayFormatter::try_new(b.column(i).as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()?;
        for r in 0..b.num_rows() {
            let row = visible
                .iter()
                .zip(&fmts)
                .map(|(&i, f)| (!b.column(i).is_null(r)).then(|| f.value(r).to_string()))
                .collect();
            cells.push(row);
        }
    }
    Ok((header, cells))
}

/// A table version made of `rows` synthetic rows, for local runs: jobs see
/// it through the same desensitized view, policy and release mechanism as
/// the real table, so a job that works here works on the platform.
pub fn sample_table(
    spec: &DatasetSpec,
    types: &[(String, DataType)],
    rows: usize,
    unit_unique: bool,
) -> Result<crate::TableVersion> {
    let batch = sample_batch(spec, types, rows, unit_unique)?;
    Ok(crate::TableVersion {
        spec: spec.clone(),
        version: format!("sample-{rows}"),
        unit_unique,
        developer_supplied: false,
        // Synthetic columns have no nulls.
        complete_columns: types.iter().map(|(n, _)| n.clone()).collect(),
        column_ranges: Vec::new(),
        units: Default::default(),
        data: crate::TableData::Batches(vec![batch]),
    })
}
