//! `invis_measures(a, b, ...)`: every measurement of a one-row-per-unit
//! query in one aggregate.
//!
//! When every table a query reads has at most one row per unit, the
//! mechanism's measurements of a group are its row count, counts of
//! non-null values and sums of clamped (or fixed-point) values. Computed as
//! separate aggregates, each walks the group indices on its own and each
//! clamp materialises a column first; here one accumulator reads the
//! arguments as they are, clamps in the loop and keeps all the group's
//! figures side by side. The figures are exactly those of the separate
//! aggregates (`invis_rows`, `count`, `SUM(invis_clamp(..))`), with a sum
//! over no value reported as 0 rather than NULL (the release reads NULL as
//! 0 anyway); only the work differs.
//!
//! The result is a struct with one Int64 field per measurement, `m0`,
//! `m1`, ..., in the order of the specifications.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, GroupsAccumulator, Signature, Volatility,
};
use std::sync::Arc;

/// One measurement of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Spec {
    /// The number of rows (the argument is not read).
    Rows,
    /// The number of rows where argument `arg` is not null.
    NonNull { arg: usize },
    /// The sum of Int64 argument `arg` clamped to `[lo, hi]` (nulls add 0).
    Sum { arg: usize, lo: i64, hi: i64 },
    /// The sum of Float64 argument `arg` in fixed point: times 10^scale,
    /// clamped to `[lo, hi]` and rounded half away from zero; NaN and
    /// nulls add 0. See [`kernels::fixed_point`].
    Fixed {
        arg: usize,
        lo: i64,
        hi: i64,
        scale: u32,
    },
}

/// The aggregate computing `specs` over `args` (see the module docs).
/// `args` must hold what each spec reads: Int64 for [`Spec::Sum`], Float64
/// for [`Spec::Fixed`], anything for [`Spec::NonNull`]; when no spec reads
/// an argument, give one NULL literal.
pub(crate) fn measures(specs: Vec<Spec>, args: Vec<Expr>) -> Expr {
    let udaf = AggregateUDF::from(Measures {
        signature: Signature::variadic_any(Volatility::Immutable),
        specs: Arc::new(specs),
    });
    udaf.call(args)
}

/// The name of measurement `i`'s field in the result.
pub(crate) fn field_name(i: usize) -> String {
    format!("m{i}")
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Measures {
    signature: Signature,
    specs: Arc<Vec<Spec>>,
}

impl Measures {
    fn fields(&self) -> Fields {
        (0..self.specs.len())
            .map(|i| Field::new(field_name(i), DataType::Int64, false))
            .collect()
    }
}

impl AggregateUDFImpl for Measures {
    fn name(&self) -> &str {
        "invis_measures"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(self.fields()))
    }
    fn is_nullable(&self) -> bool {
        false
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok((0..self.specs.len())
            .map(|i| Arc::new(Field::new(format!("{}[m{i}]", args.name), DataType::Int64, false)))
            .collect())
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Total {
            fields: self.fields(),
            groups: PerGroup::new(self.specs.clone()),
        }))
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(PerGroup::new(self.specs.clone())))
    }
    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        let zeros: Vec<ArrayRef> = (0..self.specs.len())
            .map(|_| Arc::new(Int64Array::from(vec![0i64])) as ArrayRef)
            .collect();
        Ok(ScalarValue::Struct(Arc::new(StructArray::try_new(
            self.fields(),
            zeros,
            None,
        )?)))
    }
}

fn argument(values: &[ArrayRef], arg: usize) -> Result<&ArrayRef> {
    values
        .get(arg)
        .ok_or_else(|| DataFusionError::Internal("invis_measures: missing argument".into()))
}

use kernels::{FixedPoint, LANES};

/// Up to this many groups, rows are added through [`LANES`] partial
/// figures per group.
const FEW_GROUPS: usize = 256;

/// What each row adds to its group's figure.
#[derive(Clone, Copy)]
enum Figures<'a> {
    /// 1 (a row count).
    Ones,
    /// `values[i]`.
    Given(&'a [i64]),
    /// The fixed-point figure of `values[i]` (0 where `nulls` marks a
    /// null), converted as it is added (one pass over the column).
    Floats(&'a [f64], FixedPoint, Option<&'a NullBuffer>),
}

impl Figures<'_> {
    /// Row `i`'s figure (0 past the end).
    #[inline(always)]
    fn of(&self, i: usize) -> i64 {
        match self {
            Figures::Ones => 1,
            Figures::Given(v) => v.get(i).copied().unwrap_or(0),
            Figures::Floats(_, _, Some(n)) if n.is_null(i) => 0,
            Figures::Floats(x, rule, _) => x.get(i).map_or(0, |x| rule.of(*x)),
        }
    }
}

/// Adds each row's figure to `sums[groups[i]]` for every row `i` the
/// filter keeps and, when `counts` is given, 1 to `counts[groups[i]]` (the
/// row count rides along with a sum: one pass over the rows for both).
///
/// With few groups, consecutive rows mostly add to the same figure, and
/// each addition waits for the one before it to be stored. Rows are then
/// spread over [`LANES`] partial figures per group (row `i` to lane
/// `i % LANES`), which are independent, and the lanes are folded at the
/// end: the same sums, without the chain.
fn scatter(
    sums: &mut [i64],
    counts: Option<&mut [i64]>,
    groups: &[usize],
    keep: Option<&BooleanArray>,
    figures: Figures<'_>,
) {
    let n = sums.len();
    let few = keep.is_none()
        && n <= FEW_GROUPS
        && groups.len() >= 4 * LANES
        && counts.as_ref().is_none_or(|c| c.len() == n);
    if few {
        let width = if counts.is_some() { 2 } else { 1 };
        let mut lanes = vec![0i64; LANES * n * width];
        match figures {
            Figures::Floats(xs, rule, nulls) => {
                kernels::add_fixed_points_to_lanes(&mut lanes, n, width, groups, xs, rule);
                // Nulls add 0: take back what the kernel added for them
                // (the same pass with or without nulls, so how long a
                // batch takes does not turn on whether one row is null).
                if let Some(nulls) = nulls.filter(|n| n.null_count() > 0) {
                    for i in (!nulls.inner()).set_indices() {
                        if let (Some(g), Some(x)) = (groups.get(i), xs.get(i)) {
                            if *g < n {
                                if let Some(a) = lanes.get_mut(kernels::lane_slot(i % LANES, *g, n, width)) {
                                    *a = a.wrapping_sub(rule.of(*x));
                                }
                            }
                        }
                    }
                }
            }
            Figures::Ones => kernels::add_to_lanes(&mut lanes, n, width, groups, None),
            Figures::Given(v) => kernels::add_to_lanes(&mut lanes, n, width, groups, Some(v)),
        }
        fold_lanes(&lanes, width, sums, counts);
        return;
    }
    let mut counts = counts;
    for (i, g) in groups.iter().enumerate() {
        if keep.is_some_and(|k| !(k.is_valid(i) && k.value(i))) {
            continue;
        }
        if let Some(a) = sums.get_mut(*g) {
            *a = a.wrapping_add(figures.of(i));
        }
        if let Some(c) = counts.as_deref_mut().and_then(|c| c.get_mut(*g)) {
            *c = c.wrapping_add(1);
        }
    }
}

/// Adds lane slots (`width` per group: a sum, then its count when `width`
/// is 2) into `sums` and `counts`.
fn fold_lanes(lanes: &[i64], width: usize, sums: &mut [i64], mut counts: Option<&mut [i64]>) {
    let n = sums.len();
    for lane in lanes.chunks_exact((n * width).max(1)) {
        for (g, slot) in lane.chunks_exact(width).enumerate() {
            if let (Some(a), Some(p)) = (sums.get_mut(g), slot.first()) {
                *a = a.wrapping_add(*p);
            }
            if let (Some(a), Some(p)) = (counts.as_deref_mut().and_then(|c| c.get_mut(g)), slot.get(1)) {
                *a = a.wrapping_add(*p);
            }
        }
    }
}

/// The figures of a fixed-point measurement, converted as they are added
/// ([`Figures::Floats`], with or without nulls: the path does not depend
/// on whether a batch holds a null); `None` for any other measurement.
fn floats<'a>(spec: &Spec, values: &'a [ArrayRef]) -> Result<Option<Figures<'a>>> {
    match *spec {
        Spec::Fixed { arg, lo, hi, scale } => {
            let a = argument(values, arg)?
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| {
                    DataFusionError::Internal("invis_measures: fixed-point sum of a non-Float64".into())
                })?;
            Ok(Some(Figures::Floats(
                &a.values()[..],
                FixedPoint::new(scale, lo, hi),
                a.nulls(),
            )))
        }
        _ => Ok(None),
    }
}

/// Each row's figure of a measurement that reads an argument, written to
/// `out` (resized to the batch): nulls give 0. Fixed-point figures are
/// never written out: [`floats`] converts them as they are added.
fn row_figures(spec: &Spec, values: &[ArrayRef], out: &mut Vec<i64>) -> Result<()> {
    out.clear();
    let nulls = match *spec {
        Spec::Rows => return Ok(()),
        Spec::NonNull { arg } => {
            let a = argument(values, arg)?;
            match a.logical_nulls() {
                None => out.resize(a.len(), 1),
                Some(n) => out.extend(n.iter().map(i64::from)),
            }
            return Ok(());
        }
        Spec::Sum { arg, lo, hi } => {
            let a = argument(values, arg)?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| DataFusionError::Internal("invis_measures: sum of a non-Int64".into()))?;
            out.extend(a.values().iter().map(move |x| (*x).max(lo).min(hi)));
            a.nulls()
        }
        Spec::Fixed { .. } => {
            return Err(DataFusionError::Internal(
                "invis_measures: fixed-point figures are converted as they are added (`floats`)".into(),
            ))
        }
    };
    if let Some(n) = nulls {
        for (v, valid) in out.iter_mut().zip(n.iter()) {
            if !valid {
                *v = 0;
            }
        }
    }
    Ok(())
}

/// The figures of every group, one vector per measurement.
#[derive(Debug)]
struct PerGroup {
    specs: Arc<Vec<Spec>>,
    /// Which measurements are row counts.
    rows_at: Vec<usize>,
    figures: Vec<Vec<i64>>,
    /// One batch's per-row figures of one measurement (reused).
    scratch: Vec<i64>,
}

impl PerGroup {
    fn new(specs: Arc<Vec<Spec>>) -> Self {
        let figures = vec![Vec::new(); specs.len()];
        let rows_at = (0..specs.len())
            .filter(|i| specs.get(*i) == Some(&Spec::Rows))
            .collect();
        PerGroup {
            specs,
            rows_at,
            figures,
            scratch: Vec::new(),
        }
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<ArrayRef> {
        self.figures
            .iter_mut()
            .map(|f| Arc::new(Int64Array::from(emit_to.take_needed(f))) as ArrayRef)
            .collect()
    }

    /// Adds one batch's rows to their groups. Sums add with wrap-around
    /// like DataFusion's Int64 SUM; the release plan only uses this
    /// aggregate where no sum can reach `i64::MAX` (`release::wide_sum`).
    /// The row count is taken in the same pass as the first other
    /// measurement.
    fn add(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        keep: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        for f in &mut self.figures {
            f.resize(total_num_groups, 0);
        }
        let rows_at = &self.rows_at;
        // The first row count is filled while another measurement is
        // taken (or alone at the end); any other row count is always
        // equal to it.
        let mut rows = rows_at
            .first()
            .and_then(|i| self.figures.get_mut(*i))
            .map(std::mem::take);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut counted = false;
        for (spec, acc) in self.specs.iter().zip(self.figures.iter_mut()) {
            if *spec == Spec::Rows {
                continue;
            }
            let counts = if counted { None } else { rows.as_deref_mut() };
            counted |= counts.is_some();
            let figures = match floats(spec, values)? {
                Some(figures) => figures,
                None => {
                    row_figures(spec, values, &mut scratch)?;
                    Figures::Given(&scratch)
                }
            };
            scatter(acc, counts, groups, keep, figures);
        }
        self.scratch = scratch;
        if let Some(r) = rows.as_deref_mut().filter(|_| !counted) {
            scatter(r, None, groups, keep, Figures::Ones);
        }
        if let Some(r) = rows {
            if let Some(f) = rows_at.first().and_then(|i| self.figures.get_mut(*i)) {
                *f = r;
            }
        }
        let first = match rows_at.as_slice() {
            [first, _, ..] => self.figures.get(*first).cloned(),
            _ => None,
        };
        if let Some(first) = first {
            for i in rows_at.iter().skip(1) {
                if let Some(f) = self.figures.get_mut(*i) {
                    *f = first.clone();
                }
            }
        }
        Ok(())
    }
}

impl GroupsAccumulator for PerGroup {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.add(values, group_indices, opt_filter, total_num_groups)
    }
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        for (i, acc) in self.figures.iter_mut().enumerate() {
            acc.resize(total_num_groups, 0);
            let partial = argument(values, i)?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| DataFusionError::Internal("invis_measures: bad state".into()))?;
            let p = partial.values();
            scatter(acc, None, group_indices, None, Figures::Given(p));
        }
        Ok(())
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let fields: Fields = (0..self.specs.len())
            .map(|i| Field::new(field_name(i), DataType::Int64, false))
            .collect();
        Ok(Arc::new(StructArray::try_new(fields, self.take(emit_to), None)?))
    }
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(self.take(emit_to))
    }
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Each row its own group.
        let rows = values.first().map_or(0, |v| v.len());
        let mut each = PerGroup::new(self.specs.clone());
        let groups: Vec<usize> = (0..rows).collect();
        each.add(values, &groups, opt_filter, rows)?;
        Ok(each.take(EmitTo::All))
    }
    fn size(&self) -> usize {
        self.figures
            .iter()
            .map(|f| f.capacity() * std::mem::size_of::<i64>())
            .sum()
    }
}

/// Without groups: the same figures for one group.
#[derive(Debug)]
struct Total {
    fields: Fields,
    groups: PerGroup,
}

impl Total {
    fn one(&self, i: usize) -> i64 {
        self.groups
            .figures
            .get(i)
            .and_then(|f| f.first())
            .copied()
            .unwrap_or(0)
    }
}

impl Accumulator for Total {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = values.first().map_or(0, |v| v.len());
        if self.groups.specs.iter().all(|s| *s == Spec::Rows) {
            // Only counts: no need to walk the rows.
            for f in &mut self.groups.figures {
                f.resize(1, 0);
                if let Some(c) = f.first_mut() {
                    *c = c.wrapping_add(i64::try_from(rows).unwrap_or(i64::MAX));
                }
            }
            return Ok(());
        }
        self.groups.add(values, &vec![0; rows], None, 1)
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let rows = states.first().map_or(0, |v| v.len());
        GroupsAccumulator::merge_batch(&mut self.groups, states, &vec![0; rows], 1)
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok((0..self.groups.specs.len())
            .map(|i| ScalarValue::Int64(Some(self.one(i))))
            .collect())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let columns: Vec<ArrayRef> = (0..self.groups.specs.len())
            .map(|i| Arc::new(Int64Array::from(vec![self.one(i)])) as ArrayRef)
            .collect();
        Ok(ScalarValue::Struct(Arc::new(StructArray::try_new(
            self.fields.clone(),
            columns,
            None,
        )?)))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + GroupsAccumulator::size(&self.groups)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int32Array};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::functions::core::expr_fn::get_field;
    use datafusion::functions_aggregate::expr_fn::{count, sum};
    use datafusion::logical_expr::{col, lit, Expr, ExprFunctionExt};
    use datafusion::prelude::SessionContext;

    /// Group key `g`, Int64 `x` (argument 0), Float64 `f` (argument 1).
    pub(crate) fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int32, true),
            Field::new("x", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
        ]))
    }

    fn batch(g: Vec<Option<i32>>, x: Vec<Option<i64>>, f: Vec<Option<f64>>) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int32Array::from(g)),
                Arc::new(Int64Array::from(x)),
                Arc::new(Float64Array::from(f)),
            ],
        )
        .unwrap()
    }

    const SPECS: [Spec; 4] = [
        Spec::Rows,
        Spec::NonNull { arg: 0 },
        Spec::Sum {
            arg: 0,
            lo: -5,
            hi: 100,
        },
        Spec::Fixed {
            arg: 1,
            lo: -300,
            hi: 300,
            scale: 2,
        },
    ];

    /// The separate aggregate a spec over `x` (argument 0) and `f`
    /// (argument 1) replaces, with standard FILTER semantics.
    fn separate(spec: &Spec) -> Expr {
        let clamp = crate::release::clamp_expr;
        match *spec {
            Spec::Rows => count(lit(1i64)),
            Spec::NonNull { arg: 0 } => count(col("x")),
            Spec::NonNull { .. } => count(col("f")),
            Spec::Sum { lo, hi, .. } => sum(clamp(DataType::Int64, lo, hi, 0, col("x"))),
            Spec::Fixed { lo, hi, scale, .. } => sum(clamp(DataType::Float64, lo, hi, scale, col("f"))),
        }
    }

    /// Checks that the fused figures of `specs` over tables of [`schema`]
    /// equal the separate aggregates they replace, with and without groups
    /// and with and without an aggregate FILTER, and returns how many
    /// groups there were (unfiltered).
    pub(crate) async fn compare(parts: Vec<Vec<RecordBatch>>, specs: &[Spec]) -> usize {
        let ctx = SessionContext::new();
        ctx.register_table("t", Arc::new(MemTable::try_new(schema(), parts).unwrap()))
            .unwrap();
        let mut groups_seen = 0;
        for filter in [None, Some(col("g").gt(lit(2)).or(col("x").is_null()))] {
            for groups in [vec![], vec![col("g")]] {
                let with = |e: Expr| match &filter {
                    Some(f) => e.filter(f.clone()).build().unwrap(),
                    None => e,
                };
                let mut aggs = vec![with(measures(specs.to_vec(), vec![col("x"), col("f")])).alias("ms")];
                let mut select = Vec::new();
                for (i, spec) in specs.iter().enumerate() {
                    // An aggregate asked for twice is asked for once
                    // (DataFusion's optimizer refuses the duplicate).
                    let first = specs.iter().position(|s| s == spec).unwrap_or(i);
                    if first == i {
                        aggs.push(with(separate(spec)).alias(format!("s{i}")));
                    }
                    select.push(get_field(col("ms"), field_name(i)).alias(format!("m{i}")));
                    select.push(col(format!("s{first}")).alias(format!("s{i}")));
                }
                let out = ctx
                    .table("t")
                    .await
                    .unwrap()
                    .aggregate(groups.clone(), aggs)
                    .unwrap()
                    .select(select)
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                if filter.is_none() {
                    groups_seen = out.iter().map(|b| b.num_rows()).sum();
                }
                for b in out {
                    for (i, spec) in specs.iter().enumerate() {
                        let fused = b
                            .column_by_name(&format!("m{i}"))
                            .unwrap()
                            .as_primitive::<Int64Type>();
                        let separate = b.column_by_name(&format!("s{i}")).unwrap();
                        let separate = separate.as_primitive::<Int64Type>();
                        for r in 0..b.num_rows() {
                            let expected = if separate.is_null(r) { 0 } else { separate.value(r) };
                            assert_eq!(
                                fused.value(r),
                                expected,
                                "{spec:?} ({i} of {specs:?}) filter {filter:?} groups {groups:?} row {r}"
                            );
                        }
                    }
                }
            }
        }
        groups_seen
    }

    /// [`compare`] for the spec lists below: all kinds, counts after a
    /// sum (twice), and a count alone; how many groups there were.
    async fn compare_lists(parts: Vec<Vec<RecordBatch>>) -> usize {
        let lists = [
            SPECS.to_vec(),
            vec![SPECS[3], Spec::Rows, SPECS[1], Spec::Rows],
            vec![Spec::Rows],
        ];
        let mut seen = 0;
        for specs in lists {
            seen = compare(parts.clone(), &specs).await;
        }
        seen
    }

    /// Over nulls, NaN, infinities, values beyond the bounds, several
    /// partitions and an empty batch.
    #[tokio::test]
    async fn measures_equal_the_separate_aggregates() {
        let parts = vec![
            vec![batch(
                vec![Some(1), None, Some(2), Some(2)],
                vec![None, Some(i64::MIN), Some(3), Some(900)],
                vec![Some(f64::NAN), Some(2.5), Some(-2.5), Some(f64::INFINITY)],
            )],
            vec![
                batch(
                    vec![Some(1), Some(1), Some(3)],
                    vec![Some(1), None, Some(-7)],
                    vec![Some(0.125), None, Some(f64::NEG_INFINITY)],
                ),
                batch(vec![], vec![], vec![]),
            ],
        ];
        assert_eq!(compare_lists(parts).await, 4);
    }

    /// Over batches long enough for the interleaved lanes, with few groups
    /// (lanes) and many (no lanes), and batch lengths that leave a tail.
    #[tokio::test]
    async fn measures_equal_the_separate_aggregates_on_long_batches() {
        // Floats take the fused conversion with nulls among them and
        // without (then with NaN and infinities).
        for (groups, float_nulls) in [(3i32, true), (5_000, true), (3, false), (200, false)] {
            let mut parts = Vec::new();
            for p in 0..2 {
                let mut part = Vec::new();
                for len in [8_192usize, 1_003, 37] {
                    let (mut g, mut x, mut f) = (Vec::new(), Vec::new(), Vec::new());
                    for i in 0..len {
                        let r = (i * 7919 + p * 104_729 + len) as i64;
                        g.push((r % 11 != 0).then_some((r % i64::from(groups)) as i32));
                        x.push((r % 13 != 0).then_some(r % 211 - 60));
                        f.push(match r % 17 {
                            0 if float_nulls => None,
                            0 => Some(f64::NAN),
                            1 if !float_nulls => Some(f64::INFINITY),
                            2 if !float_nulls => Some(-1e300),
                            _ => Some((r % 1_000) as f64 / 7.0 - 50.0),
                        });
                    }
                    part.push(batch(g, x, f));
                }
                parts.push(part);
            }
            let seen = compare_lists(parts).await;
            assert_eq!(seen, groups as usize + 1, "every group and the null group");
        }
    }

    /// The fused conversion gives the figures of the definition (nulls
    /// add 0) on arrays as DataFusion hands them over: sliced (values at
    /// an offset), with a null buffer that marks no row in the slice, with
    /// real nulls, and without a buffer.
    #[test]
    fn fused_floats_equal_the_per_row_figures_on_sliced_and_null_buffered_arrays() {
        use datafusion::arrow::array::Float64Array;
        let specs = Arc::new(vec![
            Spec::Rows,
            Spec::Fixed {
                arg: 0,
                lo: -300,
                hi: 300,
                scale: 2,
            },
            Spec::NonNull { arg: 0 },
            Spec::Rows,
        ]);
        let raw: Vec<Option<f64>> = (0..400)
            .map(|i| match i {
                0..=9 | 390.. => None,
                _ => Some(match i % 9 {
                    0 => f64::NAN,
                    1 => f64::from_bits(0xfff0_0000_0000_0001),
                    2 => f64::INFINITY,
                    3 => -1e300,
                    4 => -0.0,
                    5 => 5e-324,
                    _ => i as f64 / 7.0 - 20.0,
                }),
            })
            .collect();
        // Under a null, a value with a figure of its own (DataFusion leaves
        // whatever it computed there).
        let full = Float64Array::new(
            raw.iter().map(|x| x.unwrap_or(123.0)).collect(),
            Some(raw.iter().map(Option::is_some).collect::<Vec<_>>().into()),
        );
        let rule = FixedPoint::new(2, -300, 300);
        let cases: Vec<(Float64Array, Vec<Option<f64>>)> = vec![
            // Nulls only outside the slice: null_count 0, a null buffer.
            (full.slice(10, 380), raw[10..390].to_vec()),
            // A null buffer that marks nothing, on an unsliced array.
            (
                Float64Array::new(
                    full.slice(10, 380).values().clone(),
                    Some(datafusion::arrow::buffer::NullBuffer::new_valid(380)),
                ),
                raw[10..390].to_vec(),
            ),
            // No buffer at all, at an offset.
            (
                Float64Array::from(raw.iter().map(|x| x.unwrap_or(7.0)).collect::<Vec<_>>()).slice(3, 333),
                raw[3..336].iter().map(|x| Some(x.unwrap_or(7.0))).collect(),
            ),
            // Real nulls (the per-row figures), at an offset.
            (full.slice(5, 390), raw[5..395].to_vec()),
        ];
        for (array, rows) in cases {
            let len = rows.len();
            for n in [1usize, 3, 256, 257, len] {
                let groups: Vec<usize> = (0..len).map(|i| (i * 7) % n).collect();
                let mut acc = PerGroup::new(specs.clone());
                let values: Vec<ArrayRef> = vec![Arc::new(array.clone())];
                acc.add(&values, &groups, None, n).unwrap();
                let mut want = vec![vec![0i64; n]; 4];
                for (x, g) in rows.iter().zip(&groups) {
                    want[0][*g] += 1;
                    want[1][*g] += x.map_or(0, |x| rule.of(x));
                    want[2][*g] += i64::from(x.is_some());
                    want[3][*g] += 1;
                }
                assert_eq!(
                    acc.figures,
                    want,
                    "n {n}, offset {}, nulls {}",
                    array.offset(),
                    array.null_count()
                );
            }
        }
    }

    /// On no rows at all: zeros, like COUNT(*).
    #[tokio::test]
    async fn measures_of_no_rows_are_zero() {
        let ctx = SessionContext::new();
        ctx.register_table("t", Arc::new(MemTable::try_new(schema(), vec![vec![]]).unwrap()))
            .unwrap();
        let out = ctx
            .table("t")
            .await
            .unwrap()
            .aggregate(
                vec![],
                vec![measures(SPECS.to_vec(), vec![col("x"), col("f")]).alias("ms")],
            )
            .unwrap()
            .select(vec![get_field(col("ms"), "m0"), get_field(col("ms"), "m2")])
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(out[0].column(0).as_primitive::<Int64Type>().value(0), 0);
        assert_eq!(out[0].column(1).as_primitive::<Int64Type>().value(0), 0);
    }
}
