//! The release mechanism (R17): from a checked query it builds its own
//! plan that bounds every privacy unit's contribution, runs it, adds exact
//! discrete Laplace noise to every measurement, and releases only the groups
//! whose noisy count of distinct units passes a threshold derived from the
//! minimum group size, epsilon and delta.
//!
//! Contribution bounding. When every table read has at most one row per
//! unit, each unit is one row, values are clamped to the declared bounds,
//! and a unit touches one group (the fast path: the plan is the user's
//! aggregate plus a clamp). Otherwise rows are first aggregated per unit and
//! group, each unit's row count is capped at `k = max_rows_per_unit` and its
//! sums clamped to `k` times the bounds, and, unless every group key is
//! determined by the unit, each unit keeps at most `L0 = max_groups_per_unit`
//! groups chosen at random.
//!
//! Budget split. A query spends `epsilon_per_query`, split evenly over its
//! distinct measurements (the unit count used for thresholding is always
//! one); each measurement's noise scale is `L0 · Δ / ε_m`.
//!
//! Threshold. A group is released only if its noisy unit count reaches
//! `τ = min_group_size + ⌈b · ln(L0 / (δ · (1 + e^{-1/b})))⌉`, where `b` is
//! the unit count's noise scale. A group with fewer than `min_group_size`
//! units then passes with probability at most `δ` over all groups of one
//! unit, which both enforces the minimum cell size and makes releasing
//! data-dependent group keys (ε, δ)-differentially private.

use crate::exec::{QueryInput, RelationPlanner};
use crate::measures::Spec as FusedSpec;
use crate::noise::{discrete_gaussian, discrete_laplace, RandomSource, Scale};
use crate::policy::{AggKind, Checked, OutputRef};
use crate::total::RowFunctions;
use crate::{Error, Result};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Builder, Int64Builder, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, lexsort_to_indices, take, SortColumn};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::provider_as_source;
use datafusion::functions::expr_fn as f;
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{
    col, lit, try_cast, when, Expr, ExprFunctionExt, ExprSchemable, LogicalPlan, LogicalPlanBuilder,
};
use num_bigint::BigUint;
use num_traits::ToPrimitive;
use scenarios::budget::Budget;
use scenarios::policy::{NoiseKind, ReleaseRules};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A dataset and the version a query read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRef {
    /// Dataset name.
    pub dataset: String,
    /// Version hash.
    pub version: String,
}

/// One noisy measurement of a query, as recorded in its lineage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasurementRecord {
    /// What is measured (`units`, `rows`, `sum(x)`, `count(x)`).
    pub name: String,
    /// L1 sensitivity over all groups.
    pub sensitivity: String,
    /// Exact noise scale as `num/den`.
    pub scale: String,
    /// Noise scale as a decimal.
    pub scale_f64: f64,
}

/// Mechanism and parameters of one release, as recorded in its lineage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MechanismRecord {
    /// Noise distribution.
    pub noise: String,
    /// `one_row_per_unit` or `bounded_per_unit`.
    pub contribution: String,
    /// k: rows of one unit counted per group.
    pub max_rows_per_unit: u32,
    /// L0: groups one unit contributes to.
    pub max_groups_per_unit: u32,
    /// Minimum distinct units per released group.
    pub min_group_size: u32,
    /// Noisy unit count a group needs to be released.
    pub threshold: i64,
    /// Measurements and their noise.
    pub measurements: Vec<MeasurementRecord>,
    /// Clamping bounds applied to SUM/AVG arguments.
    pub bounds: Vec<(String, i64, i64)>,
}

/// The lineage of one query (R21).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryLineage {
    /// Agreement charged.
    pub agreement_id: String,
    /// The scenario's purpose.
    pub purpose: String,
    /// SQL as submitted.
    pub sql: String,
    /// SHA-256 of the checked plan.
    pub plan_hash: String,
    /// Datasets read and their versions.
    pub tables: Vec<TableRef>,
    /// Release mechanism.
    pub mechanism: MechanismRecord,
    /// Budget charged.
    pub cost: Budget,
    /// Groups released (known after execution).
    pub released_groups: Option<u64>,
    /// SHA-256 of the released Arrow IPC bytes.
    pub output_hash: Option<String>,
    /// Size of the released bytes.
    pub output_bytes: Option<u64>,
}

/// A measurement column of the mechanism's plan.
#[derive(Debug, Clone)]
pub(crate) struct Measure {
    column: String,
    noise: Noise,
}

/// How one output column is computed from measurements.
#[derive(Debug, Clone)]
enum OutSpec {
    Group(usize),
    Count(usize),
    /// A sum measured in units of 10^-scale.
    Sum {
        m: usize,
        lo: i64,
        scale: u32,
    },
    /// An average of a sum measured in units of 10^-scale.
    Avg {
        sum: usize,
        count: usize,
        lo: i64,
        hi: i64,
        scale: u32,
    },
}

/// A mechanism ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub plan: LogicalPlan,
    measures: Vec<Measure>,
    outputs: Vec<(String, OutSpec)>,
    groups: usize,
    threshold: i128,
    /// Public key domains (see `Checked::public_keys`).
    public_keys: Option<Vec<Vec<String>>>,
    /// Dominance and p% rules per sum measurement.
    sdc: Vec<SumRule>,
    /// What the query costs: no delta when no released key depends on data.
    pub cost: Budget,
    pub mechanism: MechanismRecord,
    /// When every measurement is the number of rows of one table, with no
    /// group, no condition and one row per unit: that table. Its row count
    /// is then every measurement ([`Prepared::counts`]).
    pub whole_table_count: Option<String>,
}

impl Prepared {
    /// What the plan yields when every measurement is `rows`
    /// ([`Prepared::whole_table_count`]).
    pub(crate) fn counts(&self, rows: u64) -> Result<RecordBatch> {
        if self.whole_table_count.is_none() {
            return Err(Error::Internal("not a whole-table count".into()));
        }
        let schema = Arc::new(self.plan.schema().as_arrow().clone());
        let n = i64::try_from(rows).map_err(|_| Error::Internal("row count beyond i64".into()))?;
        let one: ArrayRef = Arc::new(datafusion::arrow::array::Int64Array::from(vec![n]));
        let columns = schema
            .fields()
            .iter()
            .map(|f| cast(&one, f.data_type()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// The disclosure rules applied to one sum measurement, on noisy values.
#[derive(Debug, Clone)]
struct SumRule {
    /// The sum measurement.
    sum: usize,
    /// (measurement of the top-n sum, k percent).
    dominance: Option<(usize, u32)>,
    /// (top-1 measurement, top-2 measurement, p percent).
    p_rule: Option<(usize, usize, u32)>,
}

impl SumRule {
    /// True when the cell's sum must be withheld.
    fn withholds(&self, noisy: &[i128]) -> bool {
        let get = |i: usize| noisy.get(i).copied().unwrap_or(0) as f64;
        let total = get(self.sum);
        let dominated = self
            .dominance
            .is_some_and(|(top, k)| total <= 0.0 || get(top) >= total * f64::from(k) / 100.0);
        let estimable = self
            .p_rule
            .is_some_and(|(top1, top2, p)| total - get(top2) < get(top1) * f64::from(p) / 100.0);
        dominated || estimable
    }
}

/// What a measurement is, before columns are assigned. Measurement 0 is
/// always the distinct-unit count.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Units,
    Rows,
    NonNull(Expr),
    /// A clamped sum of the argument times 10^scale (fixed point), with
    /// bounds in those units; the flag says whether clamping is needed.
    Sum(Expr, i64, i64, bool, u32),
    /// The sum of the `n` largest unit contributions to the sum measured
    /// at index `sum` (for the dominance and p% rules).
    Top {
        sum: usize,
        n: u32,
    },
}

impl Kind {
    fn label(&self) -> String {
        match self {
            Kind::Units => "units".into(),
            Kind::Rows => "rows".into(),
            Kind::NonNull(e) => format!("count({e})"),
            Kind::Sum(e, lo, hi, _, 0) => format!("sum(clamp({e}, {lo}, {hi}))"),
            Kind::Sum(e, lo, hi, _, s) => format!("sum(clamp(round({e} * 1e{s}), {lo}, {hi})) / 1e{s}"),
            Kind::Top { sum, n } => format!("top{n}(measurement {sum})"),
        }
    }
}

/// The measurement counting rows where `e` is not null. When `e` can never
/// be null that is the row count itself, and sharing it saves a share of
/// the budget.
///
/// Only a column registration found complete counts as never null: with
/// total evaluation any computed value may be NULL on some row.
fn non_null(e: &Expr, complete: bool, fast: bool) -> Kind {
    let nullable = !complete;
    match (nullable, fast) {
        (false, true) => Kind::Units,
        (false, false) => Kind::Rows,
        (true, _) => Kind::NonNull(e.clone()),
    }
}

fn index_of(kinds: &mut Vec<Kind>, k: Kind) -> usize {
    if let Some(i) = kinds.iter().position(|x| *x == k) {
        i
    } else {
        kinds.push(k);
        kinds.len() - 1
    }
}

/// The key release threshold for Laplace noise (see the module docs).
#[cfg(test)]
pub(crate) fn threshold(min_group_size: u32, unit_scale: f64, l0: u32, delta: f64) -> i128 {
    i128::from(min_group_size) + Noise::laplace_margin(unit_scale, l0, delta) as i128
}

/// The noise of one measurement.
#[derive(Debug, Clone)]
pub(crate) enum Noise {
    /// Discrete Laplace with this scale.
    Laplace(Scale),
    /// Discrete Gaussian with variance parameter `num/den`.
    Gaussian { num: BigUint, den: BigUint },
}

impl Noise {
    /// Gaussian noise for a measurement with squared L2 sensitivity
    /// `l2_squared` receiving `1/share` of a query's rho (in millionths):
    /// `sigma2 = l2² · share / (2 rho)`.
    fn gaussian(l2_squared: &BigUint, share: u128, rho_micros: u64) -> Result<Noise> {
        if rho_micros == 0 {
            return Err(Error::PolicyViolation(
                "rho must be > 0 for Gaussian noise".into(),
            ));
        }
        let num = l2_squared * BigUint::from(share) * BigUint::from(1_000_000u32);
        let den = BigUint::from(2u32) * BigUint::from(rho_micros);
        Ok(Noise::Gaussian { num, den })
    }

    fn sample(&self, rng: &mut dyn RandomSource) -> Result<i128> {
        match self {
            Noise::Laplace(s) => discrete_laplace(rng, s.num, s.den),
            Noise::Gaussian { num, den } => discrete_gaussian(rng, num, den),
        }
    }

    /// The exact parameter, for the lineage.
    fn exact(&self) -> String {
        match self {
            Noise::Laplace(s) => format!("{}/{}", s.num, s.den),
            Noise::Gaussian { num, den } => format!("sigma2={num}/{den}"),
        }
    }

    /// Laplace scale, or Gaussian standard deviation.
    fn scale_f64(&self) -> f64 {
        match self {
            Noise::Laplace(s) => s.as_f64(),
            Noise::Gaussian { num, den } => {
                (num.to_f64().unwrap_or(f64::MAX) / den.to_f64().unwrap_or(1.0)).sqrt()
            }
        }
    }

    /// How far above the minimum group size a noisy unit count must be so
    /// that, over the `l0` groups one unit can touch, a group below the
    /// minimum is released with probability at most `delta`.
    fn tail_margin(&self, l0: u32, delta: f64) -> f64 {
        match self {
            Noise::Laplace(s) => Self::laplace_margin(s.as_f64(), l0, delta),
            // Discrete Gaussian tails are sub-Gaussian (CKS 2020):
            // P[Z >= m] <= exp(-m² / (2 sigma2)).
            Noise::Gaussian { .. } => {
                let sigma = self.scale_f64();
                let tail = (f64::from(l0) / delta).ln();
                if tail > 0.0 {
                    (sigma * (2.0 * tail).sqrt()).ceil()
                } else {
                    0.0
                }
            }
        }
    }

    /// Discrete Laplace tail: P[Z >= m] = exp(-m/b) / (1 + exp(-1/b)).
    fn laplace_margin(b: f64, l0: u32, delta: f64) -> f64 {
        let tail = (f64::from(l0) / (delta * (1.0 + (-1.0 / b).exp()))).ln();
        if tail > 0.0 {
            (b * tail).ceil()
        } else {
            0.0
        }
    }
}

/// Builds the mechanism's plan and parameters for a checked query.
pub(crate) fn prepare(
    c: &Checked,
    rules: &ReleaseRules,
    rows: &RowFunctions,
    relations: &RelationPlanner,
) -> Result<Prepared> {
    let fast = c.unique;
    let k = i64::from(rules.max_rows_per_unit);
    let needs_l0 = !fast && !c.groups.is_empty() && !c.groups_unit_determined;
    let l0: u32 = if needs_l0 { rules.max_groups_per_unit } else { 1 };

    // Measurements, deduplicated; unit count first.
    let mut kinds = vec![Kind::Units];
    let mut outputs = Vec::with_capacity(c.outputs.len());
    let mut bounds = Vec::new();
    for (name, src) in &c.outputs {
        let spec = match *src {
            OutputRef::Group(i) => OutSpec::Group(i),
            OutputRef::Agg(j) => {
                let agg = c
                    .aggs
                    .get(j)
                    .ok_or_else(|| Error::Internal("aggregate index".into()))?;
                match agg {
                    AggKind::CountUnits => OutSpec::Count(0),
                    AggKind::CountRows => {
                        OutSpec::Count(if fast { 0 } else { index_of(&mut kinds, Kind::Rows) })
                    }
                    AggKind::CountNonNull(e, complete) => {
                        OutSpec::Count(index_of(&mut kinds, non_null(e, *complete, fast)))
                    }
                    AggKind::Sum(b) => {
                        bounds.push((b.expr.to_string(), b.lo, b.hi));
                        OutSpec::Sum {
                            m: index_of(
                                &mut kinds,
                                Kind::Sum(b.expr.clone(), b.lo, b.hi, b.clamp, b.scale),
                            ),
                            lo: b.lo,
                            scale: b.scale,
                        }
                    }
                    AggKind::Avg(b, complete) => {
                        bounds.push((b.expr.to_string(), b.lo, b.hi));
                        let sum = index_of(
                            &mut kinds,
                            Kind::Sum(b.expr.clone(), b.lo, b.hi, b.clamp, b.scale),
                        );
                        let count = index_of(&mut kinds, non_null(&b.expr, *complete, fast));
                        OutSpec::Avg {
                            sum,
                            count,
                            lo: b.lo,
                            hi: b.hi,
                            scale: b.scale,
                        }
                    }
                }
            }
        };
        outputs.push((name.clone(), spec));
    }

    // Measurements for the dominance and p% rules: the sums of each
    // cell's largest contributions, for every non-negative sum.
    let mut sdc = Vec::new();
    if rules.dominance.is_some() || rules.p_percent.is_some() {
        let sums: Vec<usize> = kinds
            .iter()
            .enumerate()
            .filter(|(_, kd)| matches!(kd, Kind::Sum(_, lo, _, _, _) if *lo >= 0))
            .map(|(i, _)| i)
            .collect();
        for s in sums {
            let dominance = rules
                .dominance
                .map(|d| (index_of(&mut kinds, Kind::Top { sum: s, n: d.n }), d.k));
            let p_rule = rules.p_percent.map(|p| {
                (
                    index_of(&mut kinds, Kind::Top { sum: s, n: 1 }),
                    index_of(&mut kinds, Kind::Top { sum: s, n: 2 }),
                    p,
                )
            });
            sdc.push(SumRule {
                sum: s,
                dominance,
                p_rule,
            });
        }
    }

    // Per-group sensitivity of each measurement.
    let per_group = |kind: &Kind| -> u128 {
        let rows = if fast { 1 } else { k.unsigned_abs() as u128 };
        let sum_sens =
            |lo: &i64, hi: &i64| rows * u128::from(lo.unsigned_abs().max(hi.unsigned_abs()).max(1));
        match kind {
            Kind::Units => 1,
            Kind::Rows | Kind::NonNull(_) => rows,
            Kind::Sum(_, lo, hi, _, _) => sum_sens(lo, hi),
            // One unit moves the sum of the n largest contributions by at
            // most its own bounded contribution.
            Kind::Top { sum, .. } => match kinds.get(*sum) {
                Some(Kind::Sum(_, lo, hi, _, _)) => sum_sens(lo, hi),
                _ => rows,
            },
        }
    };
    let share = kinds.len() as u128;
    let mut measures = Vec::with_capacity(kinds.len());
    let mut records = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.iter().enumerate() {
        let (noise, sensitivity) = match rules.noise {
            NoiseKind::Laplace => {
                // L1 sensitivity over all groups.
                let l1 = per_group(kind) * u128::from(l0);
                (
                    Noise::Laplace(Scale::laplace(l1, share, rules.epsilon_per_query.0)?),
                    l1.to_string(),
                )
            }
            NoiseKind::Gaussian => {
                // L2 sensitivity over all groups: sqrt(L0) times per group.
                let d = per_group(kind);
                let l2_squared = BigUint::from(d) * d * l0;
                (
                    Noise::gaussian(&l2_squared, share, rules.rho_per_query.0)?,
                    format!("sqrt({l2_squared})"),
                )
            }
        };
        records.push(MeasurementRecord {
            name: kind.label(),
            sensitivity,
            scale: noise.exact(),
            scale_f64: noise.scale_f64(),
        });
        measures.push(Measure {
            column: format!("__m{i}"),
            noise,
        });
    }
    let margin = measures
        .first()
        .map(|m| m.noise.tail_margin(l0, rules.delta_per_query.as_f64()))
        .unwrap_or(0.0);
    let tau = i128::from(rules.min_group_size) + margin as i128;

    let plan = build_plan(c, &kinds, k, needs_l0.then_some(l0), rows, relations)?;
    let whole_table_count = match c.uses.as_slice() {
        [only]
            if fast
                && c.groups.is_empty()
                && c.predicates.is_empty()
                && kinds.iter().all(|kd| matches!(kd, Kind::Units | Kind::Rows)) =>
        {
            Some(only.table.clone())
        }
        _ => None,
    };
    let mut cost = rules.query_cost();
    if c.public_keys.is_some() {
        cost.delta = scenarios::budget::Delta(0);
    }
    Ok(Prepared {
        plan,
        measures,
        outputs,
        groups: c.groups.len(),
        threshold: tau,
        public_keys: c.public_keys.clone(),
        sdc,
        cost,
        whole_table_count,
        mechanism: MechanismRecord {
            noise: match rules.noise {
                NoiseKind::Laplace => "discrete_laplace".into(),
                NoiseKind::Gaussian => "discrete_gaussian".into(),
            },
            contribution: if fast {
                "one_row_per_unit".into()
            } else {
                "bounded_per_unit".into()
            },
            max_rows_per_unit: if fast { 1 } else { rules.max_rows_per_unit },
            max_groups_per_unit: l0,
            min_group_size: rules.min_group_size,
            threshold: i64::try_from(tau).unwrap_or(i64::MAX),
            measurements: records,
            bounds,
        },
    })
}

/// The row-level value a measurement sums, if any.
/// `clamp(x, lo, hi)` as one tight kernel (the contribution bound of every
/// SUM and AVG argument, so it is on the hot path of every such query).
/// Int64 input is clamped; Float64 input is scaled to fixed point (times
/// 10^scale), clamped and rounded to the nearest integer (NaN counts as
/// 0). The output is Int64, so every sum is an exact integer sum of fixed
/// point values: summing floats would let rounding error exceed the
/// sensitivity the noise is calibrated to, and rounding each row to a
/// whole number (scale 0) would bias sums and averages of fractional
/// values (issue 15).
fn clamp_udf(input: DataType, lo: i64, hi: i64, scale: u32) -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::array::{Float64Array, Int64Array};
    use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
    let is_float = input == DataType::Float64;
    let fun = Arc::new(
        move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let a = arrays.first().ok_or_else(|| {
                datafusion::error::DataFusionError::Internal("clamp without argument".into())
            })?;
            let out: ArrayRef = if is_float {
                let a = a.as_any().downcast_ref::<Float64Array>().ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal("clamp of a non-float".into())
                })?;
                let mut figures = Vec::new();
                kernels::fixed_points(a.values(), kernels::FixedPoint::new(scale, lo, hi), &mut figures);
                Arc::new(Int64Array::new(figures.into(), a.nulls().cloned()))
            } else {
                let a = a.as_any().downcast_ref::<Int64Array>().ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal("clamp of a non-integer".into())
                })?;
                // max/min rather than clamp: no assertion in the loop, so
                // it vectorizes.
                Arc::new(
                    datafusion::arrow::compute::kernels::arity::unary::<_, _, Int64Type>(a, move |v| {
                        v.max(lo).min(hi)
                    }),
                )
            };
            Ok(ColumnarValue::Array(out))
        },
    );
    create_udf(
        "invis_clamp",
        vec![input],
        DataType::Int64,
        Volatility::Immutable,
        fun,
    )
}

/// `invis_clamp` of `arg` (see [`clamp_udf`]).
#[cfg(test)]
pub(crate) fn clamp_expr(input: DataType, lo: i64, hi: i64, scale: u32, arg: Expr) -> Expr {
    clamp_udf(input.clone(), lo, hi, scale).call(vec![try_cast(arg, input)])
}

/// The per-row expression of the query a measurement sums, if any: the
/// argument of a COUNT, SUM or AVG. The analyzer casts integer arguments of
/// AVG to Float64; the integer itself is what is clamped (exact, cheaper).
fn value_arg(kind: &Kind, schema: &datafusion::common::DFSchema) -> Option<Expr> {
    match kind {
        Kind::Units | Kind::Rows | Kind::Top { .. } => None,
        Kind::NonNull(e) => Some(e.clone()),
        Kind::Sum(e, ..) => Some(match e {
            Expr::Cast(c)
                if c.field.data_type() == &DataType::Float64
                    && c.expr.get_type(schema).is_ok_and(|t| t.is_integer()) =>
            {
                c.expr.as_ref().clone()
            }
            other => other.clone(),
        }),
    }
}

/// How the platform turns a measurement's evaluated argument into the
/// per-row figure it sums.
#[derive(Debug, Clone, Copy)]
enum Figure {
    /// 1 where the argument is not null, else 0.
    Present,
    /// The argument as Int64: every value is a whole number within the
    /// bounds (measured at registration), so clamping is the identity.
    Whole,
    /// The argument as Int64, clamped to `[lo, hi]`.
    Clamped(i64, i64),
    /// The argument as Float64 in fixed point (times 10^scale), clamped to
    /// `[lo, hi]` and rounded.
    Fixed(i64, i64, u32),
}

/// The figure of a measurement over an argument of type `ty`, if it has
/// one (see [`value_arg`]).
fn figure(kind: &Kind, ty: &DataType) -> Option<Figure> {
    match kind {
        Kind::Units | Kind::Rows | Kind::Top { .. } => None,
        Kind::NonNull(_) => Some(Figure::Present),
        Kind::Sum(_, lo, hi, clamp, scale) => Some(if !clamp && ty.is_integer() {
            Figure::Whole
        } else if ty.is_integer() && *scale == 0 {
            Figure::Clamped(*lo, *hi)
        } else {
            Figure::Fixed(*lo, *hi, *scale)
        }),
    }
}

impl Figure {
    /// The figure as an expression over the evaluated argument `arg`.
    fn expr(self, arg: Expr) -> Result<Expr> {
        Ok(match self {
            Figure::Present => when(arg.is_null(), lit(0i64)).otherwise(lit(1i64))?,
            Figure::Whole => try_cast(arg, DataType::Int64),
            Figure::Clamped(lo, hi) => {
                clamp_udf(DataType::Int64, lo, hi, 0).call(vec![try_cast(arg, DataType::Int64)])
            }
            Figure::Fixed(lo, hi, scale) => {
                clamp_udf(DataType::Float64, lo, hi, scale).call(vec![try_cast(arg, DataType::Float64)])
            }
        })
    }

    /// The figure as a specification of the fused aggregate, reading
    /// argument `i`, and what to pass as that argument.
    fn spec(self, i: usize, arg: Expr) -> (FusedSpec, Expr) {
        match self {
            Figure::Present => (FusedSpec::NonNull { arg: i }, arg),
            Figure::Whole => (
                FusedSpec::Sum {
                    arg: i,
                    lo: i64::MIN,
                    hi: i64::MAX,
                },
                try_cast(arg, DataType::Int64),
            ),
            Figure::Clamped(lo, hi) => (FusedSpec::Sum { arg: i, lo, hi }, try_cast(arg, DataType::Int64)),
            Figure::Fixed(lo, hi, scale) => (
                FusedSpec::Fixed {
                    arg: i,
                    lo,
                    hi,
                    scale,
                },
                try_cast(arg, DataType::Float64),
            ),
        }
    }
}

/// Adds window expressions, each under a name, keeping every column.
/// `window_plan` groups the expressions by sort keys and sorts the input as
/// the physical planner requires; it takes them unaliased, so the names are
/// given by a projection afterwards.
fn with_windows(b: LogicalPlanBuilder, windows: Vec<(Expr, String)>) -> Result<LogicalPlanBuilder> {
    let input = b.build()?;
    let mut exprs: Vec<Expr> = input.schema().columns().into_iter().map(Expr::Column).collect();
    let names: Vec<String> = windows.iter().map(|(e, _)| e.schema_name().to_string()).collect();
    let plan = LogicalPlanBuilder::window_plan(input, windows.iter().map(|(e, _)| e.clone()))?;
    for ((_, alias), name) in windows.iter().zip(names) {
        exprs.push(col(datafusion::common::Column::from_name(name)).alias(alias));
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?)
}

/// True when a sum of values clamped to `[lo, hi]`, `k` rows per unit,
/// could pass `i64::MAX` within 4·10⁹ rows: it is then summed in 128 bits.
pub(crate) fn wide_sum(lo: i64, hi: i64, k: i64) -> bool {
    let per_row = i128::from(lo.unsigned_abs().max(hi.unsigned_abs())) * i128::from(k.max(1));
    per_row > i128::from(i32::MAX)
}

/// The joined tables, reduced to the columns the expressions read, under
/// a [`QueryInput`] that evaluates `outputs` and the query's conditions.
fn query_input(
    c: &Checked,
    outputs: Vec<(String, Expr)>,
    rows: &RowFunctions,
    relations: &RelationPlanner,
) -> Result<QueryInput> {
    let mut needed: Vec<datafusion::common::Column> = Vec::new();
    for e in outputs.iter().map(|(_, e)| e).chain(&c.predicates) {
        for col_ref in e.column_refs() {
            if !needed.contains(col_ref) {
                needed.push(col_ref.clone());
            }
        }
    }
    let relation = LogicalPlanBuilder::from(c.relation.clone())
        .project(needed.into_iter().map(Expr::Column))?
        .build()?;
    let condition = datafusion::logical_expr::utils::conjunction(c.predicates.iter().cloned());
    QueryInput::new(relation, outputs, condition, rows.clone(), relations.clone())
}

/// The rows the mechanism aggregates: a [`QueryInput`] evaluates, on every
/// row of the joined tables and with total semantics, the unit, the group
/// keys, the aggregate arguments and the WHERE condition; the platform's
/// own expressions (clamps, contribution bounds) then work on its columns.
fn build_plan(
    c: &Checked,
    kinds: &[Kind],
    k: i64,
    l0: Option<u32>,
    rows: &RowFunctions,
    relations: &RelationPlanner,
) -> Result<LogicalPlan> {
    let schema = c.relation.schema().clone();
    let gcols: Vec<String> = (0..c.groups.len()).map(|i| format!("__g{i}")).collect();
    let mut outputs: Vec<(String, Expr)> = Vec::new();
    if !c.unique {
        outputs.push(("__u".to_string(), c.unit.clone()));
    }
    for (g, name) in c.groups.iter().zip(&gcols) {
        outputs.push((name.clone(), g.clone()));
    }
    // One evaluated column per distinct argument, and each measurement's
    // figure over it.
    let mut args: Vec<Expr> = Vec::new();
    let mut figures: Vec<Option<(Figure, Expr)>> = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let Some(arg) = value_arg(kind, &schema) else {
            figures.push(None);
            continue;
        };
        let ty = arg
            .get_type(&schema)
            .map_err(|e| Error::InvalidQuery(e.to_string()))?;
        let j = match args.iter().position(|a| *a == arg) {
            Some(j) => j,
            None => {
                args.push(arg.clone());
                outputs.push((format!("__a{}", args.len() - 1), arg));
                args.len() - 1
            }
        };
        let figure = figure(kind, &ty).ok_or_else(|| Error::Internal("measurement without value".into()))?;
        figures.push(Some((figure, col(format!("__a{j}").as_str()))));
    }
    let input = query_input(c, outputs, rows, relations)?;
    let group_keys: Vec<Expr> = gcols.iter().map(|g| col(g.as_str())).collect();
    let scan = LogicalPlanBuilder::scan("__input", provider_as_source(Arc::new(input)), None)?;
    // One row per unit, no sum wide enough for 128 bits and no ranking:
    // every measurement in one aggregate over the input as it is.
    let fused = c.unique
        && kinds.iter().all(|kd| match kd {
            Kind::Top { .. } => false,
            Kind::Sum(_, lo, hi, _, _) => !wide_sum(*lo, *hi, k),
            _ => true,
        });
    if fused {
        let mut specs = Vec::with_capacity(kinds.len());
        let mut fused_args: Vec<Expr> = Vec::new();
        for f in &figures {
            specs.push(match f {
                None => FusedSpec::Rows,
                Some((figure, arg)) => {
                    let (spec, arg) = figure.spec(fused_args.len(), arg.clone());
                    fused_args.push(arg);
                    spec
                }
            });
        }
        if fused_args.is_empty() {
            fused_args.push(lit(datafusion::common::ScalarValue::Null));
        }
        let mut out: Vec<Expr> = group_keys.clone();
        out.extend((0..kinds.len()).map(|i| {
            datafusion::functions::core::expr_fn::get_field(col("__ms"), crate::measures::field_name(i))
                .alias(format!("__m{i}"))
        }));
        return Ok(scan
            .aggregate(
                group_keys,
                vec![crate::measures::measures(specs, fused_args).alias("__ms")],
            )?
            .project(out)?
            .build()?);
    }

    let mut value_cols: Vec<Option<String>> = Vec::with_capacity(kinds.len());
    let mut row_exprs: Vec<Expr> = Vec::new();
    // Aliased so later stages see unqualified names.
    if !c.unique {
        row_exprs.push(col("__u").alias("__u"));
    }
    row_exprs.extend(gcols.iter().map(|g| col(g.as_str()).alias(g)));
    for (i, (kind, f)) in kinds.iter().zip(figures).enumerate() {
        let Some((figure, arg)) = f else {
            value_cols.push(None);
            continue;
        };
        let mut value = figure.expr(arg)?;
        // A sum whose bound times k could reach i64::MAX within 4·10⁹ rows
        // is summed in 128 bits: DataFusion's Int64 SUM wraps around, and a
        // bound chosen to sit at the wrap would make one row an exact bit.
        if let Kind::Sum(_, lo, hi, _, _) = kind {
            if wide_sum(*lo, *hi, k) {
                value = try_cast(value, DataType::Decimal128(38, 0));
            }
        }
        let name = format!("__v{i}");
        row_exprs.push(value.alias(&name));
        value_cols.push(Some(name));
    }
    let mut b = scan;
    if row_exprs.is_empty() {
        // A NULL column costs no memory; the counts only need rows.
        row_exprs.push(lit(datafusion::common::ScalarValue::Null).alias("__one"));
    }
    b = b.project(row_exprs)?;

    if !c.unique {
        // Per (unit, group): rows and sums.
        let mut per_unit_keys = vec![col("__u")];
        per_unit_keys.extend(group_keys.iter().cloned());
        let mut stage1 = vec![crate::rows::rows().alias("__rows")];
        for v in value_cols.iter().flatten() {
            stage1.push(sum(col(v.as_str())).alias(v));
        }
        b = b.aggregate(per_unit_keys, stage1)?;

        // Bound each unit's contribution to each group.
        let mut bounded = vec![col("__u")];
        bounded.extend(group_keys.iter().cloned());
        bounded.push(f::least(vec![col("__rows"), lit(k)]).alias("__rows"));
        for (kind, v) in kinds.iter().zip(&value_cols) {
            let Some(v) = v else { continue };
            // The mechanism's plan is not simplified before it runs (see
            // `JobScope::execute_plan`).
            let x = crate::total::coalesce_as_case(&[col(v.as_str()), lit(0i64)])?;
            let e = match kind {
                Kind::Sum(_, lo, hi, _, _) => {
                    let lo_k = lo.saturating_mul(k).min(0);
                    let hi_k = hi.saturating_mul(k).max(0);
                    f::least(vec![f::greatest(vec![x, lit(lo_k)]), lit(hi_k)])
                }
                _ => f::least(vec![x, lit(k)]),
            };
            bounded.push(e.alias(v));
        }
        b = b.project(bounded)?;

        if let Some(l0) = l0 {
            let rn = row_number()
                .partition_by(vec![col("__u")])
                .order_by(vec![f::random().sort(true, false)])
                .build()?;
            b = with_windows(b, vec![(rn, "__rn".to_string())])?
                .filter(col("__rn").lt_eq(lit(i64::from(l0))))?;
        }
    }

    // Rank each unit's (bounded) contribution within its group, for the
    // sums whose largest contributions are measured.
    let mut ranked: Vec<usize> = kinds
        .iter()
        .filter_map(|kd| match kd {
            Kind::Top { sum, .. } => Some(*sum),
            _ => None,
        })
        .collect();
    ranked.sort_unstable();
    ranked.dedup();
    if !ranked.is_empty() {
        let mut ranks = Vec::with_capacity(ranked.len());
        for s in &ranked {
            let v = value_cols
                .get(*s)
                .cloned()
                .flatten()
                .ok_or_else(|| Error::Internal("top of a measurement without values".into()))?;
            ranks.push((
                row_number()
                    .partition_by(group_keys.clone())
                    .order_by(vec![col(v.as_str()).sort(false, true)])
                    .build()?,
                format!("__r{s}"),
            ));
        }
        b = with_windows(b, ranks)?;
    }

    let mut aggs = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.iter().enumerate() {
        let name = format!("__m{i}");
        aggs.push(match (kind, &value_cols[i]) {
            (Kind::Units, _) => crate::rows::rows().alias(name),
            (Kind::Rows, _) if c.unique => crate::rows::rows().alias(name),
            (Kind::Rows, _) => sum(col("__rows")).alias(name),
            (Kind::Top { sum: s, n }, _) => {
                let v = value_cols.get(*s).cloned().flatten().unwrap_or_default();
                let top = when(
                    col(format!("__r{s}").as_str()).lt_eq(lit(i64::from(*n))),
                    col(v.as_str()),
                )
                .otherwise(lit(0i64))?;
                sum(top).alias(name)
            }
            (_, Some(v)) => sum(col(v.as_str())).alias(name),
            (_, None) => return Err(Error::Internal("measurement without value".into())),
        });
    }
    Ok(b.aggregate(group_keys, aggs)?.build()?)
}

/// Casts a released group key to one of the three types the guest SDK
/// decodes: Int64, Float64 or Utf8.
fn normalize(a: &ArrayRef) -> Result<ArrayRef> {
    let dt = a.data_type();
    let to = if dt.is_integer() {
        DataType::Int64
    } else if dt.is_floating() || matches!(dt, DataType::Decimal128(_, _) | DataType::Decimal256(_, _)) {
        DataType::Float64
    } else {
        DataType::Utf8
    };
    if dt == &to {
        Ok(a.clone())
    } else {
        Ok(cast(a, &to)?)
    }
}

fn clamp_i128(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Renders one cell as text, for matching keys.
fn key_text(a: &ArrayRef, row: usize) -> String {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    if a.is_null(row) {
        return "\u{0}NULL".into();
    }
    ArrayFormatter::try_new(a.as_ref(), &FormatOptions::default())
        .map(|f| f.value(row).to_string())
        .unwrap_or_default()
}

/// The type a released key of type `dt` is normalized to.
fn normalized_type(dt: &DataType) -> DataType {
    if dt.is_integer() {
        DataType::Int64
    } else if dt.is_floating() || matches!(dt, DataType::Decimal128(_, _) | DataType::Decimal256(_, _)) {
        DataType::Float64
    } else {
        DataType::Utf8
    }
}

/// One row of the release before shaping: where its key comes from and
/// its noisy measurements.
struct Cell {
    /// Row of the exact result, or `None` for a public key with no data.
    source: Option<usize>,
    /// Index into each public domain (public mode only).
    coords: Vec<usize>,
    noisy: Vec<i128>,
    /// Values withheld (public mode: the key stays, the values go).
    suppressed: bool,
    /// Sum measurements withheld by the dominance or p% rule.
    withheld: Vec<usize>,
}

/// Complementary suppression over the public grid: along every dimension,
/// a line holding exactly one suppressed cell gets its smallest other cell
/// suppressed too, so no suppressed value is the difference of a total and
/// released values. Decided on noisy counts only.
fn secondary_suppression(cells: &mut [Cell], dims: &[usize]) {
    if dims.is_empty() {
        return;
    }
    let index = |coords: &[usize]| coords.iter().zip(dims).fold(0usize, |acc, (c, d)| acc * d + c);
    loop {
        let mut changed = false;
        for d in 0..dims.len() {
            if dims[d] < 2 {
                continue;
            }
            // Lines along dimension d: every combination of the other coords.
            let mut lines: std::collections::BTreeMap<Vec<usize>, Vec<usize>> =
                std::collections::BTreeMap::new();
            for (i, c) in cells.iter().enumerate() {
                let mut key = c.coords.clone();
                key[d] = usize::MAX;
                lines.entry(key).or_default().push(i);
            }
            for members in lines.values() {
                let suppressed = members.iter().filter(|&&i| cells[i].suppressed).count();
                if suppressed == 1 {
                    let victim = members
                        .iter()
                        .copied()
                        .filter(|&i| !cells[i].suppressed)
                        .min_by_key(|&i| {
                            (
                                cells[i].noisy.first().copied().unwrap_or(0),
                                index(&cells[i].coords),
                            )
                        });
                    if let Some(v) = victim {
                        cells[v].suppressed = true;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            return;
        }
    }
}

/// Adds noise, applies the threshold and shapes the released table.
pub(crate) fn finish(
    p: &Prepared,
    batches: &[RecordBatch],
    rng: &mut dyn RandomSource,
) -> Result<RecordBatch> {
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => Arc::new(p.plan.schema().as_arrow().clone()),
    };
    let all = concat_batches(&schema, batches)?;
    let n = all.num_rows();

    // Exact measurements by row of the exact result.
    let mut exact: Vec<Vec<i128>> = Vec::with_capacity(p.measures.len());
    for m in &p.measures {
        let column = all
            .column_by_name(&m.column)
            .ok_or_else(|| Error::Internal(format!("missing {}", m.column)))?;
        if let Some(wide) = column.as_primitive_opt::<datafusion::arrow::datatypes::Decimal128Type>() {
            // 128-bit sums (scale 0) are read as they are.
            exact.push(
                (0..n)
                    .map(|i| if wide.is_null(i) { 0 } else { wide.value(i) })
                    .collect(),
            );
            continue;
        }
        let column = cast(column, &DataType::Int64)?;
        let values = column.as_primitive::<Int64Type>();
        exact.push(
            (0..n)
                .map(|i| {
                    if values.is_null(i) {
                        0
                    } else {
                        i128::from(values.value(i))
                    }
                })
                .collect(),
        );
    }
    let mut keys: Vec<ArrayRef> = Vec::with_capacity(p.groups);
    let mut key_types: Vec<DataType> = Vec::with_capacity(p.groups);
    for g in 0..p.groups {
        let name = format!("__g{g}");
        let c = all
            .column_by_name(&name)
            .ok_or_else(|| Error::Internal("missing group column".into()))?;
        key_types.push(normalized_type(c.data_type()));
        keys.push(normalize(c)?);
    }

    // The cells to release: every exact row, or every public combination.
    let mut cells: Vec<Cell> = Vec::new();
    let mut public_values: Vec<ArrayRef> = Vec::new();
    match &p.public_keys {
        None => cells.extend((0..n).map(|i| Cell {
            source: Some(i),
            coords: Vec::new(),
            noisy: Vec::new(),
            suppressed: false,
            withheld: Vec::new(),
        })),
        Some(domains) => {
            // Canonical text of each category, through the key's type.
            for (d, values) in domains.iter().enumerate() {
                let strings: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(values.clone()));
                let ty = key_types.get(d).cloned().unwrap_or(DataType::Utf8);
                public_values.push(cast(&strings, &ty)?);
            }
            let mut by_key: std::collections::HashMap<Vec<String>, usize> = std::collections::HashMap::new();
            for i in 0..n {
                by_key.insert(keys.iter().map(|k| key_text(k, i)).collect(), i);
            }
            let dims: Vec<usize> = domains.iter().map(Vec::len).collect();
            let total: usize = dims.iter().product();
            for flat in 0..total {
                let mut coords = vec![0usize; dims.len()];
                let mut rest = flat;
                for d in (0..dims.len()).rev() {
                    coords[d] = rest % dims[d];
                    rest /= dims[d];
                }
                let text: Vec<String> = coords
                    .iter()
                    .enumerate()
                    .map(|(d, c)| key_text(&public_values[d], *c))
                    .collect();
                cells.push(Cell {
                    source: by_key.get(&text).copied(),
                    coords,
                    noisy: Vec::new(),
                    suppressed: false,
                    withheld: Vec::new(),
                });
            }
        }
    }
    for cell in &mut cells {
        for (m, values) in p.measures.iter().zip(&exact) {
            let e = cell.source.and_then(|i| values.get(i).copied()).unwrap_or(0);
            cell.noisy.push(e + m.noise.sample(rng)?);
        }
        cell.suppressed = cell.noisy.first().copied().unwrap_or(0) < p.threshold;
        cell.withheld = p
            .sdc
            .iter()
            .filter(|r| r.withholds(&cell.noisy))
            .map(|r| r.sum)
            .collect();
    }
    if let Some(domains) = &p.public_keys {
        let dims: Vec<usize> = domains.iter().map(Vec::len).collect();
        secondary_suppression(&mut cells, &dims);
    } else {
        // Data-dependent keys: a cell below the threshold is not released.
        cells.retain(|c| !c.suppressed);
    }

    let mut fields = Vec::with_capacity(p.outputs.len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(p.outputs.len());
    for (name, spec) in &p.outputs {
        let array: ArrayRef = match spec {
            OutSpec::Group(g) => match &p.public_keys {
                Some(_) => {
                    let values = public_values
                        .get(*g)
                        .ok_or_else(|| Error::Internal("public domain".into()))?;
                    let idx =
                        UInt32Array::from(cells.iter().map(|c| c.coords[*g] as u32).collect::<Vec<_>>());
                    take(values, &idx, None)?
                }
                None => {
                    let k = keys.get(*g).ok_or_else(|| Error::Internal("group key".into()))?;
                    let idx = UInt32Array::from(
                        cells
                            .iter()
                            .map(|c| c.source.unwrap_or(0) as u32)
                            .collect::<Vec<_>>(),
                    );
                    take(k, &idx, None)?
                }
            },
            OutSpec::Count(m) => {
                let mut b = Int64Builder::with_capacity(cells.len());
                for c in &cells {
                    match c.suppressed {
                        true => b.append_null(),
                        false => b.append_value(clamp_i128(c.noisy[*m].max(0))),
                    }
                }
                Arc::new(b.finish())
            }
            OutSpec::Sum { m, lo, scale: 0 } => {
                let mut b = Int64Builder::with_capacity(cells.len());
                for c in &cells {
                    let v = c.noisy[*m];
                    match c.suppressed || c.withheld.contains(m) {
                        true => b.append_null(),
                        false => b.append_value(clamp_i128(if *lo >= 0 { v.max(0) } else { v })),
                    }
                }
                Arc::new(b.finish())
            }
            OutSpec::Sum { m, lo, scale } => {
                // A fixed-point sum is released in its own units: a float
                // of `scale` decimal places.
                let unit = 10f64.powi(*scale as i32);
                let mut b = Float64Builder::with_capacity(cells.len());
                for c in &cells {
                    let v = c.noisy[*m];
                    match c.suppressed || c.withheld.contains(m) {
                        true => b.append_null(),
                        false => b.append_value((if *lo >= 0 { v.max(0) } else { v }) as f64 / unit),
                    }
                }
                Arc::new(b.finish())
            }
            OutSpec::Avg {
                sum,
                count,
                lo,
                hi,
                scale,
            } => {
                let unit = 10f64.powi(*scale as i32);
                let mut b = Float64Builder::with_capacity(cells.len());
                for c in &cells {
                    let n = c.noisy[*count];
                    if c.suppressed || n < 1 || c.withheld.contains(sum) {
                        b.append_null();
                    } else {
                        b.append_value(
                            (c.noisy[*sum] as f64 / unit / n as f64)
                                .clamp(*lo as f64 / unit, *hi as f64 / unit),
                        );
                    }
                }
                Arc::new(b.finish())
            }
        };
        fields.push(Field::new(name, array.data_type().clone(), true));
        columns.push(array);
    }
    let out_schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(out_schema.clone(), columns)?;
    if p.groups == 0 || batch.num_rows() < 2 {
        return Ok(batch);
    }
    // Sort by group keys so the order reveals nothing about the engine.
    let sort_cols: Vec<SortColumn> = p
        .outputs
        .iter()
        .enumerate()
        .filter(|(_, (_, s))| matches!(s, OutSpec::Group(_)))
        .map(|(i, _)| SortColumn {
            values: batch.column(i).clone(),
            options: None,
        })
        .collect();
    if sort_cols.is_empty() {
        return Ok(batch);
    }
    let idx = lexsort_to_indices(&sort_cols, None)?;
    let cols = batch
        .columns()
        .iter()
        .map(|c| take(c, &idx, None))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(out_schema, cols)?)
}

/// Serializes a released table as an Arrow IPC stream.
pub fn to_ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut buf, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(buf)
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Error::Internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(counts: &[i128], dims: &[usize], threshold: i128) -> Vec<Cell> {
        (0..counts.len())
            .map(|flat| {
                let mut coords = vec![0usize; dims.len()];
                let mut rest = flat;
                for d in (0..dims.len()).rev() {
                    coords[d] = rest % dims[d];
                    rest /= dims[d];
                }
                Cell {
                    source: None,
                    coords,
                    noisy: vec![counts[flat]],
                    suppressed: counts[flat] < threshold,
                    withheld: Vec::new(),
                }
            })
            .collect()
    }

    #[test]
    fn a_lone_suppressed_cell_gets_a_complement() {
        // One dimension of 4: only the 3 is below 10, so the next smallest
        // (40) goes too; the total minus released cells no longer isolates it.
        let mut cells = grid(&[100, 3, 40, 70], &[4], 10);
        secondary_suppression(&mut cells, &[4]);
        let s: Vec<bool> = cells.iter().map(|c| c.suppressed).collect();
        assert_eq!(s, [false, true, true, false]);
    }

    #[test]
    fn complements_propagate_across_dimensions_until_no_line_has_one() {
        // 2 x 3 grid; the 2 is small. Row 0 gets a complement, which leaves
        // two columns with one suppressed cell each, so row 1 loses cells too.
        let mut cells = grid(&[2, 50, 60, 80, 90, 30], &[2, 3], 10);
        secondary_suppression(&mut cells, &[2, 3]);
        for d in 0..2 {
            let mut lines: std::collections::BTreeMap<Vec<usize>, usize> = std::collections::BTreeMap::new();
            for c in &cells {
                let mut k = c.coords.clone();
                k[d] = usize::MAX;
                *lines.entry(k).or_default() += usize::from(c.suppressed);
            }
            assert!(
                lines.values().all(|&n| n != 1),
                "a line with one suppressed cell remains: {lines:?}"
            );
        }
        assert!(cells[0].suppressed);
    }

    #[test]
    fn threshold_grows_with_noise_and_shrinking_delta() {
        let t1 = threshold(10, 1.0, 1, 1e-6);
        let t2 = threshold(10, 3.0, 1, 1e-6);
        let t3 = threshold(10, 1.0, 1, 1e-9);
        let t4 = threshold(10, 1.0, 4, 1e-6);
        assert!(t1 > 10 && t2 > t1 && t3 > t1 && t4 > t1, "{t1} {t2} {t3} {t4}");
        // P[noise >= tau - k + 1] <= delta for the discrete Laplace tail.
        let b: f64 = 2.0;
        let tau = threshold(5, b, 1, 1e-6);
        let m = (tau - 5 + 1) as f64;
        let p = (-m / b).exp() / (1.0 + (-1.0 / b).exp());
        assert!(p <= 1e-6, "{p}");
    }
}
