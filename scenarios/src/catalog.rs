//! The data catalog: datasets, their columns and the desensitization rule of
//! each column (R1-R4).
//!
//! This module only describes and validates; applying a rule to data is the
//! sandbox's job.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// File formats a dataset can be registered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl DataFormat {
    /// Guesses the format from a file name.
    pub fn from_path(path: &str) -> Option<DataFormat> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Some(DataFormat::Csv)
        } else if lower.ends_with(".parquet") {
            Some(DataFormat::Parquet)
        } else {
            None
        }
    }
}

/// How a column is shown to jobs (R2). Applied before any query sees the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ColumnRule {
    /// Shown unchanged.
    Keep,
    /// Not visible at all.
    Drop,
    /// Characters replaced by `*` except a kept prefix and suffix.
    Mask {
        /// Characters kept at the start.
        #[serde(default)]
        keep_prefix: u32,
        /// Characters kept at the end.
        #[serde(default)]
        keep_suffix: u32,
    },
    /// Replaced by a coarser value.
    Generalize(Generalization),
    /// Replaced by HMAC-SHA256(agreement key, value), hex. Equal values give
    /// equal tokens within one agreement (so they can be join keys) and
    /// unrelated tokens across agreements.
    Tokenize,
}

/// Coarsening applied by [`ColumnRule::Generalize`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Generalization {
    /// Numbers rounded down to a multiple of `width`.
    Bucket {
        /// Bucket width, > 0.
        width: f64,
    },
    /// Numbers mapped to the lower edge of the range they fall in; values
    /// below the first edge map to the first edge.
    Edges {
        /// Strictly increasing edges.
        edges: Vec<f64>,
    },
    /// Strings cut to their first `len` characters.
    Prefix {
        /// Characters kept.
        len: u32,
    },
    /// Dates or timestamps truncated to the start of the year or month.
    DateTrunc {
        /// `year` or `month`.
        unit: DateUnit,
    },
}

/// A calendar unit for [`Generalization::DateTrunc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DateUnit {
    /// January 1st.
    Year,
    /// The 1st of the month.
    Month,
}

/// The publicly known value domain of a column, declared by the provider.
/// Sample data are generated from it, so no real value is ever shown (R3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Domain {
    /// A closed list of categories (for example the districts of a city).
    Categories(Vec<String>),
    /// A numeric range, inclusive.
    Range {
        /// Lowest value.
        min: f64,
        /// Highest value.
        max: f64,
    },
}

/// One column of a dataset as the provider declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name in the source file.
    pub name: String,
    /// Desensitization rule.
    pub rule: ColumnRule,
    /// Public value domain, used for sample data and as default bounds.
    #[serde(default)]
    pub domain: Option<Domain>,
    /// Decimal places kept when fractional values of this column are summed
    /// or averaged: values are summed in fixed point, in units of
    /// 10^-scale, with bounds and noise in the same units, instead of being
    /// rounded to whole numbers row by row (which biases sums and averages
    /// of fractional values). [`DEFAULT_SUM_SCALE`] when absent; at most
    /// [`MAX_SUM_SCALE`]. Integer columns are summed exactly at scale 0
    /// whatever it says; a float column is summed at its declared scale
    /// even when it holds whole numbers only (what the values are must not
    /// choose how the sum is released), so a whole float column declares 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    /// Declared: the column has a value on every row (and, for floats, a
    /// finite one). Registration refuses a file with a missing value; a
    /// `COUNT` of a column that declares it is the row count. Never
    /// inferred from the data (`docs/privacy-model.md`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_null: bool,
    /// Human description.
    #[serde(default)]
    pub description: String,
}

/// Decimal places a fractional column is summed with when its spec
/// declares none: 2 (cents, hundredths).
pub const DEFAULT_SUM_SCALE: u32 = 2;
/// Most decimal places a column may declare.
pub const MAX_SUM_SCALE: u32 = 6;

/// Most characters a mask may keep, prefix and suffix together.
pub const MAX_MASK_KEPT: u32 = 64;

/// Share class of a dataset (R1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShareClass {
    /// Shared without conditions.
    Unconditional,
    /// Shared on conditions (the default for development data).
    #[default]
    Conditional,
    /// Not shared.
    NotShared,
}

/// Open class of a dataset under the public data opening rules (R1):
/// whether and how it is opened to the public, apart from development on
/// the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OpenClass {
    /// Opened to anyone (无条件开放).
    Unconditional,
    /// Opened on conditions (有条件开放).
    Conditional,
    /// Not opened (不予开放); the default.
    #[default]
    NotOpen,
}

/// What a data provider submits to register a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Table name jobs use in SQL: lowercase letters, digits and `_`.
    pub name: String,
    /// Human description.
    #[serde(default)]
    pub description: String,
    /// The CSV or Parquet file. A provider names it relative to its
    /// storage location (normal components only, see
    /// [`validate_storage_path`]): a file it uploaded or one the operator
    /// placed there, never an arbitrary server path. In a registered
    /// version the platform has replaced it by the absolute path of the
    /// accepted file, which is what the sandbox reads.
    pub path: String,
    /// File format; guessed from the extension when absent.
    #[serde(default)]
    pub format: Option<DataFormat>,
    /// The column identifying the privacy unit (a person, an enterprise).
    /// Contribution bounding is per distinct value of this column.
    pub privacy_unit: String,
    /// Kind of privacy unit (for example `enterprise`). Tables may only be
    /// joined on their privacy units when the kinds are equal.
    #[serde(default)]
    pub unit_kind: Option<String>,
    /// Share class.
    #[serde(default)]
    pub share_class: ShareClass,
    /// Open class.
    #[serde(default)]
    pub open_class: OpenClass,
    /// Why a dataset that is not shared is excluded from development (R4);
    /// required when `share_class` is `not_shared`.
    #[serde(default)]
    pub exclusion_reason: Option<String>,
    /// Every column of the file with its rule. Columns of the file that are
    /// not listed are refused at registration: each column needs a rule.
    pub columns: Vec<ColumnSpec>,
    /// Declared: every privacy unit has exactly one row. Registration
    /// refuses a file in which a unit has more; queries over tables that
    /// declare it take the one-row release path. Never inferred from the
    /// data: which path a query takes must not depend on one unit
    /// (`docs/privacy-model.md`, "Declared, never measured").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_row_per_unit: bool,
}

/// The public granularity of row counts shown outside the data's owner and
/// the regulator (the catalog, metering and fee statements): 1,000 rows.
pub const ROW_COUNT_GRANULARITY: u64 = 1_000;

/// A row count as it is published: rounded up to a multiple of
/// [`ROW_COUNT_GRANULARITY`] (0 only for an empty table). Exact counts of
/// successive versions would show the arrival or removal of a single row
/// (and, beside other facts, whose); a rounded count changes only when a
/// boundary is crossed, which an observer who does not know the exact
/// count cannot attribute to one row. Rounding rather than noise: the
/// count is read by everyone, any number of times, outside any budget, and
/// a rounded count is stable and needs no stored draw per version (see
/// `docs/privacy-model.md`).
pub fn published_rows(rows: u64) -> u64 {
    rows.div_ceil(ROW_COUNT_GRANULARITY)
        .checked_mul(ROW_COUNT_GRANULARITY)
        .unwrap_or(rows / ROW_COUNT_GRANULARITY * ROW_COUNT_GRANULARITY)
}

/// Checks that `name` is usable as an SQL identifier without quoting.
pub fn validate_identifier(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.as_bytes().first().is_some_and(|b| b.is_ascii_lowercase())
        && !name.starts_with("__");
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "{what} `{}` must be 1-63 characters of a-z, 0-9 and _, starting with a letter",
            name.escape_debug()
        )))
    }
}

/// Longest relative path in a storage location, in bytes.
pub const MAX_STORAGE_PATH: usize = 512;

/// Checks one component of a path in a storage location: 1-255 bytes of
/// `A-Z a-z 0-9 . _ -`, not starting with a dot (so `.` and `..` are
/// refused, and the platform's temporary files, which start with a dot,
/// can never be named).
pub fn validate_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "file name `{}` must be 1-255 characters of A-Z, a-z, 0-9, `.`, `_` and `-`, not starting with `.`",
            name.escape_debug()
        )))
    }
}

/// Checks a path relative to a storage location (a dataset's file, or the
/// directory the operator assigns to a provider under the data root):
/// components of [`validate_file_name`] separated by `/`, so never
/// absolute, never `..` or `.`, no empty component, at most
/// [`MAX_STORAGE_PATH`] bytes. Purely textual: it looks at no file.
pub fn validate_storage_path(what: &str, path: &str) -> Result<()> {
    let refuse = || {
        Error::InvalidRequest(format!(
            "{what} `{}` must be a relative path of plain names (A-Z, a-z, 0-9, `.`, `_`, `-`, \
             none starting with `.`) separated by `/`: no absolute path, no `..`",
            path.escape_debug()
        ))
    };
    if path.is_empty() || path.len() > MAX_STORAGE_PATH {
        return Err(refuse());
    }
    for c in path.split('/') {
        validate_file_name(c).map_err(|_| refuse())?;
    }
    Ok(())
}

/// True when one of two storage paths (already valid under
/// [`validate_storage_path`]) equals, contains or lies inside the other.
pub fn storage_paths_overlap(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    let n = a.len().min(b.len());
    a.get(..n) == b.get(..n)
}

impl DatasetSpec {
    /// Validates names, rules and domains. Does not look at the file.
    pub fn validate(&self) -> Result<()> {
        validate_identifier("dataset name", &self.name)?;
        if self.path.is_empty() {
            return Err(Error::InvalidRequest("path is empty".into()));
        }
        let reason = self
            .exclusion_reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty());
        match (self.share_class, reason) {
            (ShareClass::NotShared, None) => {
                return Err(Error::InvalidRequest(
                    "a dataset that is not shared needs an exclusion_reason".into(),
                ))
            }
            (ShareClass::Unconditional | ShareClass::Conditional, Some(_)) => {
                return Err(Error::InvalidRequest(
                    "exclusion_reason is only for datasets that are not shared".into(),
                ))
            }
            _ => {}
        }
        if self.format.is_none() && DataFormat::from_path(&self.path).is_none() {
            return Err(Error::InvalidRequest(
                "format is not given and the path ends in neither .csv nor .parquet".into(),
            ));
        }
        if self.columns.is_empty() {
            return Err(Error::InvalidRequest(
                "a dataset needs at least one column".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for c in &self.columns {
            validate_identifier("column name", &c.name)?;
            if !seen.insert(c.name.as_str()) {
                return Err(Error::InvalidRequest(format!(
                    "column `{}` is listed twice",
                    c.name
                )));
            }
            validate_rule(c)?;
        }
        if !seen.contains(self.privacy_unit.as_str()) {
            return Err(Error::InvalidRequest(format!(
                "privacy unit column `{}` is not among the columns",
                self.privacy_unit.escape_debug()
            )));
        }
        if let Some(kind) = &self.unit_kind {
            validate_identifier("unit kind", kind)?;
        }
        Ok(())
    }

    /// The format, explicit or from the extension.
    pub fn effective_format(&self) -> Option<DataFormat> {
        self.format.or_else(|| DataFormat::from_path(&self.path))
    }

    /// The spec of column `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }
}

fn validate_rule(c: &ColumnSpec) -> Result<()> {
    let bad = |m: &str| Err(Error::InvalidRequest(format!("column `{}`: {m}", c.name)));
    if c.scale.is_some_and(|s| s > MAX_SUM_SCALE) {
        return bad(&format!("scale must be at most {MAX_SUM_SCALE} decimal places"));
    }
    match &c.rule {
        ColumnRule::Generalize(Generalization::Bucket { width }) if !(width.is_finite() && *width > 0.0) => {
            return bad("bucket width must be a finite number > 0");
        }
        ColumnRule::Generalize(Generalization::Edges { edges }) => {
            if edges.is_empty() || edges.len() > 1000 {
                return bad("edges must list 1 to 1000 values");
            }
            if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
                return bad("edges must be finite and strictly increasing");
            }
        }
        ColumnRule::Generalize(Generalization::Prefix { len: 0 }) => {
            return bad("prefix length must be > 0");
        }
        // A masked value is always as long as its kept parts plus a fixed
        // run of stars (so its length says nothing of the raw value's);
        // the kept parts are capped so that length stays small.
        ColumnRule::Mask {
            keep_prefix,
            keep_suffix,
        } if keep_prefix.saturating_add(*keep_suffix) > MAX_MASK_KEPT => {
            return bad(&format!(
                "a mask keeps at most {MAX_MASK_KEPT} characters (prefix and suffix together)"
            ));
        }
        _ => {}
    }
    match &c.domain {
        Some(Domain::Range { min, max }) if !(min.is_finite() && max.is_finite() && min <= max) => {
            bad("domain range needs finite min <= max")
        }
        Some(Domain::Categories(v)) if v.is_empty() || v.len() > 10_000 => {
            bad("domain categories must list 1 to 10000 values")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_a_bounded_number_of_characters() {
        let mut c: ColumnSpec = serde_json::from_value(serde_json::json!(
            {"name": "n", "rule": {"mask": {"keep_prefix": 40, "keep_suffix": 24}}}))
        .unwrap();
        assert!(validate_rule(&c).is_ok());
        c.rule = ColumnRule::Mask {
            keep_prefix: u32::MAX,
            keep_suffix: 1,
        };
        assert!(matches!(validate_rule(&c), Err(Error::InvalidRequest(_))));
    }

    #[test]
    fn published_row_counts_hide_single_rows() {
        assert_eq!(published_rows(0), 0);
        assert_eq!(published_rows(1), 1_000);
        assert_eq!(published_rows(4_000), 4_000);
        // Adding or removing one row inside a granule changes nothing.
        assert_eq!(published_rows(4_001), published_rows(4_999));
        assert_eq!(published_rows(4_500), published_rows(4_501));
        assert_eq!(published_rows(u64::MAX) % ROW_COUNT_GRANULARITY, 0);
    }

    fn spec() -> DatasetSpec {
        serde_json::from_value(serde_json::json!({
            "name": "enterprise_register",
            "path": "/data/reg.parquet",
            "privacy_unit": "enterprise_id",
            "columns": [
                {"name": "enterprise_id", "rule": "tokenize"},
                {"name": "name", "rule": {"mask": {"keep_prefix": 1}}},
                {"name": "capital", "rule": {"generalize": {"bucket": {"width": 100000.0}}}},
                {"name": "district", "rule": "keep", "domain": {"categories": ["a", "b"]}}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn valid_spec_passes() {
        spec().validate().unwrap();
        assert_eq!(spec().effective_format(), Some(DataFormat::Parquet));
    }

    #[test]
    fn storage_paths_are_plain_relative_names() {
        for ok in ["a.csv", "census/2024/pums.parquet", "x-1_y.CSV", "a..b"] {
            assert!(validate_storage_path("path", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../a.csv",
            "a/../b",
            "a/./b",
            "./a",
            "a//b",
            "a/",
            ".hidden",
            "a/.upload-1",
            "..",
            "a\\b",
            "a b",
            "caf\u{e9}",
            "a\0b",
        ] {
            assert!(
                matches!(validate_storage_path("path", bad), Err(Error::InvalidRequest(_))),
                "{bad:?}"
            );
        }
        assert!(validate_storage_path("path", &"a/".repeat(300)).is_err());
        assert!(validate_file_name("a/b").is_err());
        assert!(validate_file_name(&"a".repeat(256)).is_err());
        assert!(validate_file_name("data.csv").is_ok());
    }

    #[test]
    fn overlap_is_by_whole_components() {
        assert!(storage_paths_overlap("census", "census"));
        assert!(storage_paths_overlap("census", "census/2024"));
        assert!(storage_paths_overlap("census/2024", "census"));
        assert!(!storage_paths_overlap("census", "census2"));
        assert!(!storage_paths_overlap("a/b", "a/c"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<DatasetSpec, _> = serde_json::from_value(serde_json::json!({
            "name": "x", "path": "/a.csv", "privacy_unit": "id", "columns": [], "secret": 1
        }));
        assert!(r.is_err());
    }

    #[test]
    fn bad_names_and_rules_are_refused() {
        let mut s = spec();
        s.name = "Robert'); DROP".into();
        assert!(matches!(s.validate(), Err(Error::InvalidRequest(_))));
        let mut s = spec();
        s.privacy_unit = "nope".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.columns[2].rule = ColumnRule::Generalize(Generalization::Bucket { width: 0.0 });
        assert!(s.validate().is_err());
        let mut s = spec();
        s.columns.push(s.columns[0].clone());
        assert!(s.validate().is_err());
        let mut s = spec();
        s.columns[3].name = "__hidden".into();
        assert!(s.validate().is_err());
    }
}
