//! The two physical operators through which every row a query reads passes
//! (invariant I14), and the table that feeds the release mechanism:
//!
//! - [`UnitFilterExec`] removes rows without a privacy unit, rows of units
//!   suspended by an objection (R7) and, where consent is needed, rows of
//!   units that did not consent (R14). It compares units natively, with no
//!   DataFusion expression, and supports no filter pushdown and no swapping
//!   with projections, so no optimizer can move an expression below it:
//!   nothing a user writes ever sees an excluded row.
//! - [`TotalExec`] evaluates a list of [`Program`]s (desensitization rules,
//!   or a query's keys, aggregate arguments and WHERE condition) on every
//!   row of its input, with total semantics, and then keeps the rows whose
//!   condition is true. Evaluating everything before filtering makes the
//!   work independent of which rows a condition picks.
//! - [`QueryInput`] is the table the mechanism's plan reads: the granted
//!   tables joined on their units, under one `TotalExec`.
//!
//! Neither operator reports statistics, so no row count reaches a plan.

use crate::desensitize::UnitFilter;
use crate::total::{Program, RowFunctions};
use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DataFusionError, Result};
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use std::sync::Arc;

/// The schema of named expressions over `input`: every column nullable
/// (total evaluation may null any row).
pub(crate) fn schema_of(columns: &[(String, Expr)], input: &DFSchema) -> crate::Result<Schema> {
    let mut fields = Vec::with_capacity(columns.len());
    for (name, e) in columns {
        let ty = datafusion::logical_expr::ExprSchemable::get_type(e, input)
            .map_err(|e| crate::Error::InvalidQuery(e.to_string()))?;
        fields.push(Field::new(name, ty, true));
    }
    Ok(Schema::new(fields))
}

/// The named expressions a scan's `projection` asks for (all when none).
pub(crate) fn projected<'a>(
    columns: &'a [(String, Expr)],
    projection: Option<&Vec<usize>>,
) -> Result<Vec<&'a (String, Expr)>> {
    match projection {
        None => Ok(columns.iter().collect()),
        Some(p) => p
            .iter()
            .map(|i| {
                columns
                    .get(*i)
                    .ok_or_else(|| DataFusionError::Internal("projection out of range".into()))
            })
            .collect(),
    }
}

fn one_child(mut children: Vec<Arc<dyn ExecutionPlan>>, name: &str) -> Result<Arc<dyn ExecutionPlan>> {
    match (children.pop(), children.is_empty()) {
        (Some(c), true) => Ok(c),
        _ => Err(DataFusionError::Internal(format!("{name} takes one input"))),
    }
}

/// Keeps the rows whose privacy unit is present and let through by a
/// [`UnitFilter`].
#[derive(Debug)]
pub(crate) struct UnitFilterExec {
    input: Arc<dyn ExecutionPlan>,
    /// Index of the unit column in the input.
    unit: usize,
    units: UnitFilter,
    properties: Arc<PlanProperties>,
}

impl UnitFilterExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, unit: usize, units: UnitFilter) -> Self {
        // Removing rows keeps the input's partitioning and orderings.
        let properties = Arc::new(PlanProperties::clone(input.properties()));
        UnitFilterExec {
            input,
            unit,
            units,
            properties,
        }
    }

    fn keep(unit: usize, units: &UnitFilter, batch: RecordBatch) -> Result<RecordBatch> {
        let column = batch
            .columns()
            .get(unit)
            .ok_or_else(|| DataFusionError::Internal("unit column missing".into()))?;
        if units.exclude.is_empty() && units.only.is_none() {
            // Only rows without a unit go: no need to read the values.
            if column.null_count() == 0 {
                return Ok(batch);
            }
            let mask = datafusion::arrow::compute::is_not_null(column)?;
            return Ok(filter_record_batch(&batch, &mask)?);
        }
        let text = cast(column, &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let mask: BooleanArray = (0..text.len())
            .map(|i| {
                Some(
                    text.is_valid(i)
                        && !units.exclude.contains(text.value(i))
                        && units
                            .only
                            .as_ref()
                            .is_none_or(|only| only.contains(text.value(i))),
                )
            })
            .collect();
        Ok(filter_record_batch(&batch, &mask)?)
    }
}

impl DisplayAs for UnitFilterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UnitFilterExec: unit=#{} excluded={} consent_only={}",
            self.unit,
            self.units.exclude.len(),
            self.units.only.is_some()
        )
    }
}

impl ExecutionPlan for UnitFilterExec {
    fn name(&self) -> &str {
        "UnitFilterExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = one_child(children, "UnitFilterExec")?;
        Ok(Arc::new(UnitFilterExec::new(
            input,
            self.unit,
            self.units.clone(),
        )))
    }
    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (unit, units) = (self.unit, self.units.clone());
        let schema = self.input.schema();
        let stream = input.map(move |b| b.and_then(|b| Self::keep(unit, &units, b)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Evaluates programs on every input row, then keeps the rows whose
/// condition (if any) is true.
#[derive(Debug)]
pub(crate) struct TotalExec {
    input: Arc<dyn ExecutionPlan>,
    programs: Arc<Vec<Program>>,
    condition: Option<Arc<Program>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl TotalExec {
    /// `names` name the programs' output columns (all nullable: any row
    /// may fail).
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        programs: Vec<Program>,
        names: &[String],
        condition: Option<Program>,
    ) -> Self {
        let fields: Vec<Field> = programs
            .iter()
            .zip(names)
            .map(|(p, n)| Field::new(n, p.data_type(), true))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        Self::with_schema(input, Arc::new(programs), condition.map(Arc::new), schema)
    }

    fn with_schema(
        input: Arc<dyn ExecutionPlan>,
        programs: Arc<Vec<Program>>,
        condition: Option<Arc<Program>>,
        schema: SchemaRef,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        TotalExec {
            input,
            programs,
            condition,
            schema,
            properties,
        }
    }

    fn apply(
        programs: &[Program],
        condition: Option<&Program>,
        schema: &SchemaRef,
        batch: RecordBatch,
    ) -> Result<RecordBatch> {
        let n = batch.num_rows();
        // Everything is computed on every row first, the condition too.
        let columns = programs
            .iter()
            .map(|p| p.eval(&batch))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let keep = condition.map(|c| c.eval(&batch)).transpose()?;
        let out = RecordBatch::try_new_with_options(
            schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        match keep {
            None => Ok(out),
            Some(k) => {
                let mask = match k.as_boolean_opt() {
                    Some(b) => b.clone(),
                    None => BooleanArray::from(vec![false; n]),
                };
                Ok(filter_record_batch(&out, &mask)?)
            }
        }
    }
}

impl DisplayAs for TotalExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let exprs: Vec<String> = self
            .programs
            .iter()
            .zip(self.schema.fields())
            .map(|(p, field)| format!("{} := {}", field.name(), p.text()))
            .collect();
        write!(f, "TotalExec: [{}]", exprs.join(", "))?;
        if let Some(c) = &self.condition {
            write!(f, " where {}", c.text())?;
        }
        Ok(())
    }
}

impl ExecutionPlan for TotalExec {
    fn name(&self) -> &str {
        "TotalExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    /// Its columns are the programs' results, not its input's: an
    /// ordering required of them must not be passed down by position.
    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = one_child(children, "TotalExec")?;
        Ok(Arc::new(TotalExec::with_schema(
            input,
            self.programs.clone(),
            self.condition.clone(),
            self.schema.clone(),
        )))
    }
    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (programs, condition, schema) =
            (self.programs.clone(), self.condition.clone(), self.schema.clone());
        let out = self.schema.clone();
        let stream =
            input.map(move |b| b.and_then(|b| Self::apply(&programs, condition.as_deref(), &schema, b)));
        // Yields to the scheduler now and then, so the query's time limit
        // can fire even over in-memory input that is never pending.
        Ok(datafusion::physical_plan::coop::make_cooperative(Box::pin(
            RecordBatchStreamAdapter::new(out, stream),
        )))
    }
}

/// Plans the joined tables under a [`QueryInput`]: the scope's session
/// with no physical optimizer rules. The mechanism's plan around them is
/// then optimized as one tree, which takes them in (planning them with the
/// rules as well did that work twice, some 0.1 ms a query, measured).
///
/// Their logical plan is analyzed (type coercion) and then optimized by
/// the two rules a relation has use for: the Checker lets into it only
/// granted views, their aliases and inner joins whose ON clause is unit
/// equalities ([`crate::policy`]), so the equalities become join keys
/// (else the join would run as a nested loop) and the columns the query
/// reads reach the scans. The other rules of DataFusion's default list
/// rewrite expressions, filters, subqueries, limits and unions, none of
/// which a relation holds; running them cost some 50 µs a query
/// (measured).
///
/// Made once per scope, after its tables are registered; a relation reads
/// only tables and columns, never a function a job registers later.
#[derive(Clone)]
pub(crate) struct RelationPlanner(Arc<SessionState>);

impl RelationPlanner {
    pub(crate) fn new(state: SessionState) -> Self {
        use datafusion::optimizer::extract_equijoin_predicate::ExtractEquijoinPredicate;
        use datafusion::optimizer::optimize_projections::OptimizeProjections;
        RelationPlanner(Arc::new(
            SessionStateBuilder::new_from_existing(state)
                .with_optimizer_rules(vec![
                    Arc::new(ExtractEquijoinPredicate::new()),
                    Arc::new(OptimizeProjections::new()),
                ])
                .with_physical_optimizer_rules(Vec::new())
                .build(),
        ))
    }

    async fn plan(&self, relation: &LogicalPlan) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.create_physical_plan(relation).await
    }
}

impl std::fmt::Debug for RelationPlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelationPlanner").finish_non_exhaustive()
    }
}

/// The rows the release mechanism aggregates: the granted tables joined on
/// their units (`relation`), with the query's expressions (`outputs`) and
/// its WHERE/ON conditions (`condition`) evaluated by a [`TotalExec`].
#[derive(Debug)]
pub(crate) struct QueryInput {
    relation: LogicalPlan,
    planner: RelationPlanner,
    outputs: Vec<(String, Expr)>,
    condition: Option<Expr>,
    rows: RowFunctions,
    schema: SchemaRef,
}

impl QueryInput {
    /// `relation` must read only the columns the expressions use (project
    /// it first), so scans read no more than they need.
    pub(crate) fn new(
        relation: LogicalPlan,
        outputs: Vec<(String, Expr)>,
        condition: Option<Expr>,
        rows: RowFunctions,
        planner: RelationPlanner,
    ) -> crate::Result<Self> {
        Ok(QueryInput {
            schema: Arc::new(schema_of(&outputs, relation.schema())?),
            relation,
            planner,
            outputs,
            condition,
            rows,
        })
    }

    /// Every column a query reads comes out of a view's programs, so it is
    /// already bounded and finite.
    fn compile(&self, e: &Expr, input: &DFSchema) -> Result<Program> {
        Ok(Program::compile(e, input, &self.rows)?.over_clean_inputs())
    }
}

#[async_trait]
impl TableProvider for QueryInput {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Temporary
    }
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Unsupported; filters.len()])
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = self.planner.plan(&self.relation).await?;
        let schema = self.relation.schema();
        let wanted = projected(&self.outputs, projection)?;
        let programs = wanted
            .iter()
            .map(|(_, e)| self.compile(e, schema))
            .collect::<Result<Vec<_>>>()?;
        let names: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
        let condition = self
            .condition
            .as_ref()
            .map(|c| self.compile(c, schema))
            .transpose()?;
        Ok(Arc::new(TotalExec::new(input, programs, &names, condition)))
    }
}
