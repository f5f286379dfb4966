//! `invis_rows(x)`: how many rows a group has, whatever `x` holds.
//!
//! The mechanism counts rows for every released group (the count is
//! measured and thresholded). DataFusion's `count(1)` expands the literal
//! into a column of ones for every batch before counting it; the release
//! plan instead passes a NULL literal, which DataFusion represents without
//! buffers, and this aggregate counts the rows it is given, NULL or not.
//! The result is exactly `count(*)`; only the work differs.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, GroupsAccumulator, Signature, Volatility,
};
use std::sync::{Arc, LazyLock};

/// The number of rows of each group (see the module docs).
pub(crate) fn rows() -> Expr {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(Rows::default())));
    UDAF.call(vec![Expr::Literal(ScalarValue::Null, None)])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Rows {
    signature: Signature,
}

impl Default for Rows {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for Rows {
    fn name(&self) -> &str {
        "invis_rows"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn is_nullable(&self) -> bool {
        false
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[rows]", args.name),
            DataType::Int64,
            false,
        ))])
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Total(0)))
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(PerGroup(Vec::new())))
    }
    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(0)))
    }
}

fn len_i64(a: Option<&ArrayRef>) -> i64 {
    a.map_or(0, |a| i64::try_from(a.len()).unwrap_or(i64::MAX))
}

/// Without groups: one running count.
#[derive(Debug)]
struct Total(i64);

impl Accumulator for Total {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.0 = self.0.saturating_add(len_i64(values.first()));
        Ok(())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        if let Some(s) = states.first().and_then(|s| s.as_primitive_opt::<Int64Type>()) {
            self.0 = s.values().iter().fold(self.0, |a, v| a.saturating_add(*v));
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Int64(Some(self.0))])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.0)))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// With groups: a count per group index.
#[derive(Debug)]
struct PerGroup(Vec<i64>);

impl PerGroup {
    fn add(&mut self, group: usize, n: i64) {
        if let Some(c) = self.0.get_mut(group) {
            *c = c.saturating_add(n);
        }
    }
    fn take(&mut self, emit_to: EmitTo) -> ArrayRef {
        Arc::new(Int64Array::from(emit_to.take_needed(&mut self.0)))
    }
}

impl GroupsAccumulator for PerGroup {
    fn update_batch(
        &mut self,
        _values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.0.resize(total_num_groups, 0);
        match opt_filter {
            None => group_indices.iter().for_each(|g| self.add(*g, 1)),
            Some(f) => group_indices
                .iter()
                .zip(f.iter())
                .filter(|(_, keep)| *keep == Some(true))
                .for_each(|(g, _)| self.add(*g, 1)),
        }
        Ok(())
    }
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.0.resize(total_num_groups, 0);
        if let Some(partial) = values.first().and_then(|s| s.as_primitive_opt::<Int64Type>()) {
            for (g, n) in group_indices.iter().zip(partial.values().iter()) {
                self.add(*g, *n);
            }
        }
        Ok(())
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(self.take(emit_to))
    }
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.take(emit_to)])
    }
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Each row its own group: a count of one, or zero when filtered out.
        let n = values.first().map_or(0, |v| v.len());
        let ones: Int64Array = match opt_filter {
            None => Int64Array::from_value(1, n),
            Some(f) => f.iter().map(|keep| Some(i64::from(keep == Some(true)))).collect(),
        };
        Ok(vec![Arc::new(ones)])
    }
    fn size(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<i64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::functions_aggregate::expr_fn::count;
    use datafusion::logical_expr::{col, lit};
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn rows_equals_count_star_with_and_without_groups() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int32, true),
            Field::new("x", DataType::Int32, true),
        ]));
        let batch = |g: Vec<Option<i32>>, x: Vec<Option<i32>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int32Array::from(g)), Arc::new(Int32Array::from(x))],
            )
            .unwrap()
        };
        let parts = vec![
            vec![batch(vec![Some(1), None, Some(2)], vec![None, None, Some(3)])],
            vec![
                batch(vec![Some(1), Some(1)], vec![Some(1), None]),
                batch(vec![], vec![]),
            ],
        ];
        let ctx = SessionContext::new();
        ctx.register_table("t", Arc::new(MemTable::try_new(schema.clone(), parts).unwrap()))
            .unwrap();
        for groups in [vec![], vec![col("g")]] {
            let df = ctx.table("t").await.unwrap();
            let out = df
                .aggregate(groups.clone(), vec![rows().alias("r"), count(lit(1)).alias("c")])
                .unwrap()
                .sort(vec![col("r").sort(true, true)])
                .unwrap()
                .collect()
                .await
                .unwrap();
            for b in out {
                let r = b.column_by_name("r").unwrap().as_primitive::<Int64Type>();
                let c = b.column_by_name("c").unwrap().as_primitive::<Int64Type>();
                assert_eq!(r, c, "groups {groups:?}");
            }
        }
        // On no rows at all: 0, like COUNT(*).
        let df = ctx.table("t").await.unwrap().filter(lit(false)).unwrap();
        let out = df
            .aggregate(vec![], vec![rows().alias("r")])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let r = out[0].column(0).as_primitive::<Int64Type>();
        assert_eq!(r.value(0), 0);
    }
}
