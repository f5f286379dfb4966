//! Cross-verification (R18): a developer's claimed values for named
//! subjects are compared with the raw data inside the sandbox, and only
//! match or no match comes out, never a value. The gateway decides which
//! subjects may be checked at all (consent, objections, limits); this
//! module only compares.

use crate::scope::{df_error, DataPlane, TableVersion};
use crate::{Error, Result};
use datafusion::arrow::array::{Array, ArrayRef, Float64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{cast as cast_expr, col, lit};
use datafusion::prelude::SessionContext;
use std::collections::{BTreeMap, HashMap};

/// A claimed value: numbers compare numerically, text exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum Claimed {
    /// A number.
    Number(f64),
    /// Text (also dates, as `YYYY-MM-DD`).
    Text(String),
}

/// What a developer claims about one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The subject's privacy unit value.
    pub unit: String,
    /// Claimed values by column.
    pub values: BTreeMap<String, Claimed>,
}

/// One raw cell, as compared.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Number(f64),
    Text(String),
    Null,
}

fn cells(a: &ArrayRef) -> Result<Vec<Cell>> {
    let numeric = a.data_type().is_numeric();
    if numeric {
        let f = cast(a, &DataType::Float64)?;
        let f = f
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| Error::Internal("cast to f64".into()))?;
        return Ok((0..f.len())
            .map(|i| {
                if f.is_null(i) {
                    Cell::Null
                } else {
                    Cell::Number(f.value(i))
                }
            })
            .collect());
    }
    let s = cast(a, &DataType::Utf8)?;
    let s = s
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::Internal("cast to text".into()))?;
    Ok((0..s.len())
        .map(|i| {
            if s.is_null(i) {
                Cell::Null
            } else {
                Cell::Text(s.value(i).to_string())
            }
        })
        .collect())
}

fn agrees(cell: &Cell, claim: &Claimed) -> bool {
    match (cell, claim) {
        (Cell::Number(v), Claimed::Number(c)) => v == c,
        (Cell::Number(v), Claimed::Text(c)) => c.trim().parse::<f64>().is_ok_and(|c| c == *v),
        (Cell::Text(v), Claimed::Text(c)) => v == c,
        (Cell::Text(v), Claimed::Number(c)) => v.trim().parse::<f64>().is_ok_and(|v| v == *c),
        (Cell::Null, _) => false,
    }
}

/// Most claims checked in one call.
pub const MAX_CLAIMS: usize = 10_000;

impl DataPlane {
    /// Compares each claim with the raw rows of its subject in `table`:
    /// `Some(true)` when some row of the subject agrees with every claimed
    /// value, `Some(false)` when none does, `None` when the subject has no
    /// row (or its rows are withheld by the table's unit filter). Columns
    /// must exist and must not be the privacy unit; which columns may be
    /// checked is the caller's policy.
    pub async fn verify(&self, table: &TableVersion, claims: &[Claim]) -> Result<Vec<Option<bool>>> {
        if claims.len() > MAX_CLAIMS {
            return Err(Error::InvalidQuery(format!(
                "at most {MAX_CLAIMS} claims per call"
            )));
        }
        let unit = &table.spec.privacy_unit;
        let mut columns: Vec<String> = claims.iter().flat_map(|c| c.values.keys().cloned()).collect();
        columns.sort();
        columns.dedup();
        for c in &columns {
            if c == unit || table.spec.column(c).is_none() {
                return Err(Error::InvalidQuery(format!(
                    "column `{}` cannot be verified in `{}`",
                    c.escape_debug(),
                    table.spec.name
                )));
            }
        }
        let wanted: Vec<&Claim> = claims
            .iter()
            .filter(|c| !table.units.exclude.contains(&c.unit))
            .filter(|c| table.units.only.as_ref().is_none_or(|o| o.contains(&c.unit)))
            .collect();
        if wanted.is_empty() || columns.is_empty() {
            return Ok(vec![None; claims.len()]);
        }
        let raw = self.raw_provider(table).await?;
        let ctx = SessionContext::new();
        let unit_text = cast_expr(col(datafusion::common::Column::from_name(unit)), DataType::Utf8);
        let mut select = vec![unit_text.clone().alias("__unit")];
        select.extend(
            columns
                .iter()
                .map(|c| col(datafusion::common::Column::from_name(c))),
        );
        let list = wanted.iter().map(|c| lit(c.unit.clone())).collect();
        let batches = ctx
            .read_table(raw)
            .map_err(df_error)?
            .filter(unit_text.in_list(list, false))
            .map_err(df_error)?
            .select(select)
            .map_err(df_error)?
            .collect()
            .await
            .map_err(df_error)?;
        // Each subject's rows, as cells by column.
        let mut rows: HashMap<String, Vec<Vec<Cell>>> = HashMap::new();
        for b in &batches {
            let units = cells(b.column(0))?;
            let cols: Vec<Vec<Cell>> = (1..b.num_columns())
                .map(|i| cells(b.column(i)))
                .collect::<Result<_>>()?;
            for (r, u) in units.into_iter().enumerate() {
                let Cell::Text(u) = u else { continue };
                let row: Vec<Cell> = cols
                    .iter()
                    .map(|c| c.get(r).cloned().unwrap_or(Cell::Null))
                    .collect();
                rows.entry(u).or_default().push(row);
            }
        }
        Ok(claims
            .iter()
            .map(|c| {
                if !wanted.iter().any(|w| std::ptr::eq(*w, c)) {
                    return None;
                }
                let subject = rows.get(&c.unit)?;
                Some(subject.iter().any(|row| {
                    c.values.iter().all(|(name, claimed)| {
                        columns
                            .iter()
                            .position(|x| x == name)
                            .and_then(|i| row.get(i))
                            .is_some_and(|cell| agrees(cell, claimed))
                    })
                }))
            })
            .collect())
    }
}
