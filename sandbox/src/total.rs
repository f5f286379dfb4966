//! Total evaluation of expressions (invariant I14): every expression a query
//! or a desensitization rule evaluates over rows goes through a [`Program`],
//! which never fails because of a value. A row on which an operator or
//! function would fail (overflow, a negative length, a date out of range,
//! division by zero, a panic inside a kernel) yields NULL for that row, and
//! non-finite floats (NaN, ±inf) become NULL too, so neither an error nor a
//! non-finite value can tell a job anything about one row.
//!
//! How. A logical expression is compiled into a small tree of nodes, each
//! one DataFusion kernel applied to the already evaluated columns of its
//! children (constant children stay inside the kernel). Children are always
//! evaluated on every row, before their parent: CASE, AND and OR are
//! evaluated eagerly and combined with selection kernels, so no branch runs
//! only on the rows a secret condition picks, and the work done does not
//! depend on which rows match. When a kernel fails on a batch, the batch is
//! split in halves until the failing rows are isolated, and exactly those
//! rows become NULL; a failure costs `O(log n)` extra kernel calls.
//!
//! Row functions (a job's WASM UDFs) are nodes of their own: their per-row
//! traps are already NULL, and an error from them means the function was
//! stopped (time limit, cancellation), which fails the whole evaluation;
//! the caller turns that into an empty-input release.
//!
//! What this module must not do: hand out a row, or let an error that
//! depends on a value escape [`Program::eval`].

use crate::udf::RowFunction;
use datafusion::arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, Float64Array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{and_kleene, cast, concat, or_kleene, prep_null_mask_filter};
use datafusion::arrow::datatypes::{
    DataType, Field, Float16Type, Float32Type, Float64Type, Schema, SchemaRef,
};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{BinaryExpr, Case, Expr, ExprSchemable, Operator};
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// One node of a compiled expression.
#[derive(Debug)]
enum Node {
    /// The i-th input column of the program.
    Input(usize),
    /// A constant (a child of CASE, AND or OR without column references).
    Const(ScalarValue),
    /// One kernel over the evaluated children, bound to a schema of
    /// placeholder columns `__c0..__cn` of the children's types.
    Kernel {
        expr: Arc<dyn PhysicalExpr>,
        schema: SchemaRef,
        args: Vec<usize>,
    },
    /// Searched CASE: the first branch whose condition is true, else the
    /// `otherwise` value (or NULL).
    Case {
        branches: Vec<(usize, usize)>,
        otherwise: Option<usize>,
    },
    /// Three-valued AND / OR.
    And(usize, usize),
    Or(usize, usize),
    /// A job's row function over Float64 arguments.
    Row(Arc<dyn RowFunction>, Vec<usize>),
}

impl Node {
    /// The nodes whose values this one reads.
    fn children(&self) -> Vec<usize> {
        match self {
            Node::Input(_) | Node::Const(_) => Vec::new(),
            Node::Kernel { args, .. } | Node::Row(_, args) => args.clone(),
            Node::Case { branches, otherwise } => branches
                .iter()
                .flat_map(|(c, t)| [*c, *t])
                .chain(otherwise.iter().copied())
                .collect(),
            Node::And(l, r) | Node::Or(l, r) => vec![*l, *r],
        }
    }
}

/// A compiled expression with total semantics (see the module docs).
#[derive(Debug)]
pub(crate) struct Program {
    /// Columns of the operator's input the program reads, by index.
    inputs: Vec<usize>,
    /// Nodes in evaluation order (children first); the last is the root.
    nodes: Vec<(Node, DataType)>,
    /// Display of the source expression, for plans and logs.
    text: String,
    /// True when the input columns already hold only bounded, finite
    /// values (they come from a view's own programs), so reading them
    /// needs no check.
    clean_inputs: bool,
}

/// Row functions a program may call, by name.
pub(crate) type RowFunctions = HashMap<String, Arc<dyn RowFunction>>;

/// True when `e` reads no column and calls no row function: a constant
/// that can stay inside its parent's kernel.
fn is_constant(e: &Expr, rows: &RowFunctions) -> bool {
    let mut constant = true;
    let _ = e.apply(|x| {
        match x {
            Expr::Column(_) => constant = false,
            Expr::ScalarFunction(f) if rows.contains_key(f.func.name()) => constant = false,
            _ => {}
        }
        Ok(if constant {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    constant
}

fn internal(msg: impl Into<String>) -> DataFusionError {
    DataFusionError::Internal(msg.into())
}

struct Compiler<'a> {
    schema: &'a DFSchema,
    rows: &'a RowFunctions,
    inputs: Vec<usize>,
    nodes: Vec<(Node, DataType)>,
}

impl Compiler<'_> {
    fn push(&mut self, node: Node, ty: DataType) -> usize {
        self.nodes.push((node, ty));
        self.nodes.len() - 1
    }

    fn input(&mut self, c: &Column) -> Result<usize> {
        let idx = self.schema.index_of_column(c)?;
        let ty = self.schema.field(idx).data_type().clone();
        let k = match self.inputs.iter().position(|i| *i == idx) {
            Some(k) => k,
            None => {
                self.inputs.push(idx);
                self.inputs.len() - 1
            }
        };
        Ok(self.push(Node::Input(k), ty))
    }

    fn compile(&mut self, e: &Expr) -> Result<usize> {
        match e {
            Expr::Alias(a) => self.compile(&a.expr),
            Expr::Column(c) => self.input(c),
            Expr::Case(c) => self.case(c, e),
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: op @ (Operator::And | Operator::Or),
                right,
            }) => {
                let l = self.operand(left)?;
                let r = self.operand(right)?;
                let node = if *op == Operator::And {
                    Node::And(l, r)
                } else {
                    Node::Or(l, r)
                };
                Ok(self.push(node, DataType::Boolean))
            }
            // DataFusion runs `coalesce` only once the simplifier has made
            // it the CASE it stands for (its kernel always fails); compile
            // that CASE.
            Expr::ScalarFunction(f) if f.func.name() == "coalesce" => {
                self.compile(&coalesce_as_case(&f.args)?)
            }
            Expr::ScalarFunction(f) if self.rows.contains_key(f.func.name()) => {
                let func = self
                    .rows
                    .get(f.func.name())
                    .cloned()
                    .ok_or_else(|| internal("row function vanished"))?;
                let args = f
                    .args
                    .iter()
                    .map(|a| self.operand(a))
                    .collect::<Result<Vec<_>>>()?;
                Ok(self.push(Node::Row(func, args), DataType::Float64))
            }
            _ => self.kernel(e),
        }
    }

    /// A child of CASE, AND or OR: a literal becomes a constant node;
    /// anything else (a constant expression included, which may fail and
    /// then yields NULL on every row) is compiled.
    fn operand(&mut self, e: &Expr) -> Result<usize> {
        if let Expr::Literal(v, _) = e {
            let ty = e.get_type(self.schema)?;
            return Ok(self.push(Node::Const(v.clone()), ty));
        }
        self.compile(e)
    }

    fn case(&mut self, c: &Case, whole: &Expr) -> Result<usize> {
        let ty = whole.get_type(self.schema)?;
        let mut branches = Vec::with_capacity(c.when_then_expr.len());
        // `CASE x WHEN v THEN ...` is `CASE WHEN x = v THEN ...`; the
        // analyzer has coerced `x` and every `v` to one type.
        for (w, t) in &c.when_then_expr {
            let cond = match &c.expr {
                Some(x) => Expr::BinaryExpr(BinaryExpr::new(x.clone(), Operator::Eq, w.clone())),
                None => w.as_ref().clone(),
            };
            let cond = self.operand(&cond)?;
            let then = self.operand(t)?;
            branches.push((cond, then));
        }
        let otherwise = match &c.else_expr {
            Some(x) => Some(self.operand(x)?),
            None => None,
        };
        Ok(self.push(Node::Case { branches, otherwise }, ty))
    }

    /// Any other expression: one kernel whose non-constant children are
    /// evaluated first and passed in as placeholder columns.
    fn kernel(&mut self, e: &Expr) -> Result<usize> {
        let ty = e.get_type(self.schema)?;
        let mut args = Vec::new();
        let mut fields = Vec::new();
        let mut failed = None;
        let rewritten = e
            .clone()
            .map_children(|child| {
                if failed.is_some() || is_constant(&child, self.rows) {
                    return Ok(Transformed::no(child));
                }
                let child_ty = match child.get_type(self.schema) {
                    Ok(t) => t,
                    Err(err) => {
                        failed = Some(err);
                        return Ok(Transformed::no(child));
                    }
                };
                match self.compile(&child) {
                    Ok(id) => {
                        let name = format!("__c{}", args.len());
                        args.push(id);
                        fields.push(Field::new(&name, child_ty, true));
                        Ok(Transformed::yes(Expr::Column(Column::from_name(name))))
                    }
                    Err(err) => {
                        failed = Some(err);
                        Ok(Transformed::no(child))
                    }
                }
            })?
            .data;
        if let Some(err) = failed {
            return Err(err);
        }
        let schema = Arc::new(Schema::new(fields));
        let df = DFSchema::try_from(schema.clone())?;
        let expr = create_physical_expr(
            &rewritten,
            &df,
            &ExecutionProps::new(),
            &PhysicalPlanningContext::default(),
        )?;
        Ok(self.push(Node::Kernel { expr, schema, args }, ty))
    }
}

/// `coalesce(a, b, ..., z)` as `CASE WHEN a IS NOT NULL THEN a WHEN b IS
/// NOT NULL THEN b ... ELSE z END` (the analyzer has given every argument
/// one type). DataFusion runs its own `coalesce` only once the simplifier
/// has made it this CASE, so plans that are not simplified (a user's
/// expressions here, the mechanism's own plan in `release`) write it.
pub(crate) fn coalesce_as_case(args: &[Expr]) -> Result<Expr> {
    let Some((last, first)) = args.split_last() else {
        return Err(internal("coalesce without arguments"));
    };
    if first.is_empty() {
        return Ok(last.clone());
    }
    let branches = first
        .iter()
        .map(|a| (Box::new(a.clone().is_not_null()), Box::new(a.clone())))
        .collect();
    Ok(Expr::Case(Case::new(
        None,
        branches,
        Some(Box::new(last.clone())),
    )))
}

impl Program {
    /// Compiles `e`, whose columns refer to `schema` (the operator's input).
    pub(crate) fn compile(e: &Expr, schema: &DFSchema, rows: &RowFunctions) -> Result<Program> {
        let mut c = Compiler {
            schema,
            rows,
            inputs: Vec::new(),
            nodes: Vec::new(),
        };
        c.compile(e)?;
        Ok(Program {
            inputs: c.inputs,
            nodes: c.nodes,
            text: e.to_string(),
            clean_inputs: false,
        })
    }

    /// Marks the inputs as already bounded and finite (outputs of other
    /// programs), which saves checking them again.
    pub(crate) fn over_clean_inputs(mut self) -> Self {
        self.clean_inputs = true;
        self
    }

    /// Type of the value the program computes.
    pub(crate) fn data_type(&self) -> DataType {
        self.nodes
            .last()
            .map(|(_, t)| t.clone())
            .unwrap_or(DataType::Null)
    }

    /// The source expression, for display.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// When the program is one input column: its index (no work to do).
    fn passthrough(&self) -> Option<usize> {
        match self.nodes.as_slice() {
            [(Node::Input(k), _)] => self.inputs.get(*k).copied(),
            _ => None,
        }
    }

    /// Evaluates the program on every row of `batch`. Never fails because
    /// of a value; an error means a row function was stopped (or a fault
    /// of the platform).
    pub(crate) fn eval(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        let n = batch.num_rows();
        if let Some(i) = self.passthrough() {
            let a = batch.column(i).clone();
            return Ok(if self.clean_inputs { a } else { finite(a) });
        }
        // A node's value is dropped after its last reader has run, so a
        // program holds a few columns at a time, not one per node.
        let mut last_use = vec![0usize; self.nodes.len()];
        for (j, (node, _)) in self.nodes.iter().enumerate() {
            for c in node.children() {
                if let Some(l) = last_use.get_mut(c) {
                    *l = j;
                }
            }
        }
        let mut values: Vec<Option<ArrayRef>> = Vec::with_capacity(self.nodes.len());
        for (j, (node, ty)) in self.nodes.iter().enumerate() {
            let get = |i: &usize| {
                values
                    .get(*i)
                    .cloned()
                    .flatten()
                    .ok_or_else(|| internal("program node out of order"))
            };
            let out = match node {
                Node::Input(k) => {
                    let idx = self
                        .inputs
                        .get(*k)
                        .ok_or_else(|| internal("program input out of range"))?;
                    batch.column(*idx).clone()
                }
                Node::Const(v) => v.to_array_of_size(n)?,
                Node::Kernel { expr, schema, args } => {
                    let cols = args.iter().map(get).collect::<Result<Vec<_>>>()?;
                    kernel(expr.as_ref(), schema, &cols, n, ty)
                }
                Node::Case { branches, otherwise } => {
                    let mut out = match otherwise {
                        Some(o) => conform(get(o)?, ty),
                        None => new_null_array(ty, n),
                    };
                    for (cond, then) in branches.iter().rev() {
                        let mask = true_mask(&get(cond)?);
                        let then = conform(get(then)?, ty);
                        out = zip(&mask, &then, &out).unwrap_or_else(|_| new_null_array(ty, n));
                    }
                    out
                }
                Node::And(l, r) | Node::Or(l, r) => {
                    let (l, r) = (boolean(&get(l)?), boolean(&get(r)?));
                    let res = if matches!(node, Node::And(..)) {
                        and_kleene(&l, &r)
                    } else {
                        or_kleene(&l, &r)
                    };
                    match res {
                        Ok(b) => Arc::new(b) as ArrayRef,
                        Err(_) => new_null_array(&DataType::Boolean, n),
                    }
                }
                Node::Row(f, args) => {
                    row_function(f.as_ref(), &args.iter().map(get).collect::<Result<Vec<_>>>()?, n)?
                }
            };
            for c in node.children() {
                if last_use.get(c) == Some(&j) {
                    if let Some(v) = values.get_mut(c) {
                        *v = None;
                    }
                }
            }
            let clean = self.clean_inputs && matches!(node, Node::Input(_));
            values.push(Some(if clean { out } else { finite(out) }));
        }
        values.pop().flatten().ok_or_else(|| internal("empty program"))
    }
}

/// Casts `a` to `ty` when it is of another type (NULL where it cannot be).
fn conform(a: ArrayRef, ty: &DataType) -> ArrayRef {
    if a.data_type() == ty {
        return a;
    }
    cast(&a, ty).unwrap_or_else(|_| new_null_array(ty, a.len()))
}

/// A Boolean view of `a` (NULL where it is not a Boolean).
fn boolean(a: &ArrayRef) -> BooleanArray {
    match a.as_boolean_opt() {
        Some(b) => b.clone(),
        None => conform(a.clone(), &DataType::Boolean)
            .as_boolean_opt()
            .cloned()
            .unwrap_or_else(|| BooleanArray::from(vec![None; a.len()])),
    }
}

/// True where `a` is true; false where it is false or NULL.
fn true_mask(a: &ArrayRef) -> BooleanArray {
    let b = boolean(a);
    if b.null_count() > 0 {
        prep_null_mask_filter(&b)
    } else {
        b
    }
}

/// One kernel applied to evaluated argument columns.
struct Call<'a> {
    expr: &'a dyn PhysicalExpr,
    schema: &'a SchemaRef,
    cols: &'a [ArrayRef],
    ty: &'a DataType,
}

impl Call<'_> {
    /// The kernel on rows `offset..offset + len`, or `None` if it fails.
    fn attempt(&self, offset: usize, len: usize) -> Option<ArrayRef> {
        let sliced: Vec<ArrayRef> = self.cols.iter().map(|c| c.slice(offset, len)).collect();
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            sliced,
            &RecordBatchOptions::new().with_row_count(Some(len)),
        )
        .ok()?;
        // A kernel may panic on a value instead of returning an error; the
        // row is then as failed as if it had returned one.
        let out = catch_unwind(AssertUnwindSafe(|| {
            self.expr.evaluate(&batch).and_then(|v| v.into_array(len))
        }))
        .ok()?
        .ok()?;
        (out.len() == len).then(|| conform(out, self.ty))
    }

    /// The kernel on rows `offset..offset + len`, failing rows isolated by
    /// halving and nulled.
    fn range(&self, offset: usize, len: usize) -> ArrayRef {
        if let Some(a) = self.attempt(offset, len) {
            return a;
        }
        if len <= 1 {
            #[cfg(test)]
            NULLED.with(|n| n.set(n.get() + len));
            return new_null_array(self.ty, len);
        }
        let half = len / 2;
        let left = self.range(offset, half);
        let right = self.range(offset + half, len - half);
        concat(&[left.as_ref(), right.as_ref()]).unwrap_or_else(|_| new_null_array(self.ty, len))
    }
}

/// Evaluates one kernel on `n` rows; a failing row becomes NULL.
fn kernel(
    expr: &dyn PhysicalExpr,
    schema: &SchemaRef,
    cols: &[ArrayRef],
    n: usize,
    ty: &DataType,
) -> ArrayRef {
    if n == 0 {
        return new_null_array(ty, 0);
    }
    Call {
        expr,
        schema,
        cols,
        ty,
    }
    .range(0, n)
}

#[cfg(test)]
thread_local! {
    /// Rows nulled because a kernel failed on them, on this thread (tests
    /// run queries on a current-thread runtime).
    pub(crate) static NULLED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs a row function; nulls in and out are NaN.
fn row_function(f: &dyn RowFunction, args: &[ArrayRef], n: usize) -> Result<ArrayRef> {
    let cols: Vec<Vec<f64>> = args
        .iter()
        .map(|a| {
            let a = conform(a.clone(), &DataType::Float64);
            let f = a.as_primitive::<Float64Type>();
            f.iter().map(|v| v.unwrap_or(f64::NAN)).collect()
        })
        .collect();
    let refs: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
    let out = f
        .eval(&refs, n)
        .map_err(|e| DataFusionError::Execution(format!("row function `{}` stopped: {e}", f.name())))?;
    if out.len() != n {
        return Err(internal(format!(
            "row function `{}` returned {} values for {n} rows",
            f.name(),
            out.len()
        )));
    }
    Ok(Arc::new(Float64Array::from(out)))
}

/// Longest text or binary value an expression may produce or read, in
/// bytes; a longer one is NULL. It bounds what one row can add to the work
/// and memory of a query (invariant I14): without it one long value,
/// concatenated many times, made one row's work take seconds and decided
/// whether a query ran out of memory.
pub(crate) const MAX_TEXT_BYTES: i64 = 1024;

/// Replaces text longer than [`MAX_TEXT_BYTES`] by NULL, and drops the
/// bytes of such values (also behind NULLs).
fn short(a: ArrayRef) -> ArrayRef {
    use datafusion::arrow::datatypes::DataType::*;
    if let Dictionary(_, value) = a.data_type() {
        // Through the plain type and back, only when a value is too long.
        let long = a.as_any_dictionary_opt().is_some_and(|d| {
            let values = d.values().clone();
            let n = values.null_count();
            short(values).null_count() != n
        });
        if !long {
            return a;
        }
        let ty = a.data_type().clone();
        return cast(&a, value)
            .map(short)
            .and_then(|plain| cast(&plain, &ty))
            .unwrap_or_else(|_| new_null_array(&ty, a.len()));
    }
    if !matches!(
        a.data_type(),
        Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView
    ) {
        return a;
    }
    let Ok(lengths) = datafusion::arrow::compute::kernels::length::length(&a) else {
        return a;
    };
    let Ok(lengths) = cast(&lengths, &DataType::Int64) else {
        return a;
    };
    let lengths = lengths.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    if lengths.values().iter().all(|l| *l <= MAX_TEXT_BYTES) {
        return a;
    }
    // Rebuilt rather than masked: a NULL over a long value would still hold
    // its bytes, which later kernels copy or search.
    macro_rules! rebuild {
        ($arr:expr, $ty:ty) => {
            Arc::new(
                $arr.iter()
                    .map(|v| v.filter(|x| x.len() as i64 <= MAX_TEXT_BYTES))
                    .collect::<$ty>(),
            ) as ArrayRef
        };
    }
    use datafusion::arrow::array::{
        BinaryArray, BinaryViewArray, LargeBinaryArray, LargeStringArray, StringArray, StringViewArray,
    };
    match a.data_type() {
        Utf8 => rebuild!(a.as_string::<i32>(), StringArray),
        LargeUtf8 => rebuild!(a.as_string::<i64>(), LargeStringArray),
        Utf8View => rebuild!(a.as_string_view(), StringViewArray),
        Binary => rebuild!(a.as_binary::<i32>(), BinaryArray),
        LargeBinary => rebuild!(a.as_binary::<i64>(), LargeBinaryArray),
        BinaryView => rebuild!(a.as_binary_view(), BinaryViewArray),
        _ => a,
    }
}

/// What every node yields: non-finite floats and over-long text as NULL.
fn finite(a: ArrayRef) -> ArrayRef {
    short(finite_floats(a))
}

/// Replaces non-finite floats by NULL.
fn finite_floats(a: ArrayRef) -> ArrayRef {
    fn mask<T: datafusion::arrow::datatypes::ArrowPrimitiveType>(
        a: &ArrayRef,
        is_finite: impl Fn(T::Native) -> bool,
    ) -> Option<ArrayRef> {
        let p = a.as_primitive_opt::<T>()?;
        // In chunks without an early exit, so the check vectorizes.
        let all_finite = p
            .values()
            .chunks(256)
            .all(|c| c.iter().fold(true, |ok, v| ok & is_finite(*v)));
        if all_finite {
            return None;
        }
        let finite: NullBuffer = p.values().iter().map(|v| is_finite(*v)).collect();
        let nulls = NullBuffer::union(p.nulls(), Some(&finite));
        let data = p.to_data().into_builder().nulls(nulls).build().ok()?;
        Some(datafusion::arrow::array::make_array(data))
    }
    let fixed = match a.data_type() {
        DataType::Float64 => mask::<Float64Type>(&a, f64::is_finite),
        DataType::Float32 => mask::<Float32Type>(&a, f32::is_finite),
        DataType::Float16 => mask::<Float16Type>(&a, |v| v.is_finite()),
        _ => None,
    };
    fixed.unwrap_or(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::logical_expr::{col, lit, when};

    fn schema() -> DFSchema {
        DFSchema::try_from(Schema::new(vec![
            Field::new("x", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]))
        .unwrap()
    }

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(schema().as_arrow().clone()),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(i64::MIN), None, Some(-3)])),
                Arc::new(StringArray::from(vec![Some("ab"), Some("cd"), Some("ef"), None])),
            ],
        )
        .unwrap()
    }

    fn run(e: Expr) -> ArrayRef {
        let p = Program::compile(&e, &schema(), &HashMap::new()).unwrap();
        p.eval(&batch()).unwrap()
    }

    /// The values of an integer expression over [`batch`].
    fn ints(e: Expr) -> Vec<Option<i64>> {
        let out = run(e);
        out.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .iter()
            .collect()
    }

    #[test]
    fn a_failing_row_is_null_and_the_others_are_computed() {
        use datafusion::functions::expr_fn::abs;
        assert_eq!(ints(abs(col("x"))), vec![Some(1), None, None, Some(3)]);
    }

    #[test]
    fn case_branches_are_evaluated_on_every_row_and_selected() {
        use datafusion::functions::expr_fn::abs;
        // The THEN arm fails on row 1; the condition picks it only on row 0.
        let e = when(col("x").eq(lit(1i64)), abs(col("x")))
            .otherwise(lit(7i64))
            .unwrap();
        assert_eq!(ints(e), vec![Some(1), Some(7), Some(7), Some(7)]);
    }

    #[test]
    fn text_longer_than_the_bound_is_null_wherever_it_appears() {
        use datafusion::functions::expr_fn::concat;
        // Each 600-byte operand is within the bound; their concatenation
        // is not, and is NULL before anything can use it.
        let long = lit("x".repeat(600));
        let out = run(concat(vec![col("s"), long.clone(), long]));
        assert_eq!(out.null_count(), 4);
        let out = run(concat(vec![col("s"), lit("y".repeat(10))]));
        assert_eq!(out.null_count(), 0);
    }

    /// DataFusion's own `coalesce` kernel always fails (it expects the
    /// simplifier to have replaced it): compiled as it stands, every row
    /// was NULL.
    #[test]
    fn coalesce_takes_the_first_value_that_is_not_null() {
        use datafusion::functions::expr_fn::coalesce;
        assert_eq!(
            ints(coalesce(vec![col("x"), lit(9i64)])),
            vec![Some(1), Some(i64::MIN), Some(9), Some(-3)]
        );
        let out = run(coalesce(vec![col("s"), lit("none")]));
        let out = out.as_string::<i32>();
        assert_eq!(
            out.iter().collect::<Vec<_>>(),
            vec![Some("ab"), Some("cd"), Some("ef"), Some("none")]
        );
        let out = run(coalesce(vec![col("x")]));
        assert_eq!(out.null_count(), 1);
        // A failing argument is NULL on its row, and the next one is taken.
        use datafusion::functions::expr_fn::abs;
        assert_eq!(
            ints(coalesce(vec![abs(col("x")), lit(0i64)])),
            vec![Some(1), Some(0), Some(0), Some(3)]
        );
    }

    /// DataFusion 55's functions whose kernel fails until the simplifier
    /// has replaced them: none may be allowed unless compiled here as what
    /// it stands for (as `coalesce` is).
    #[test]
    fn no_allowed_function_needs_the_simplifier() {
        const SIMPLIFIED_ONLY: [&str; 7] = [
            "nvl",
            "ifnull",
            "nvl2",
            "arrow_cast",
            "arrow_try_cast",
            "cast_to_type",
            "try_cast_to_type",
        ];
        for f in crate::policy::FUNCTIONS {
            assert!(
                !SIMPLIFIED_ONLY.contains(&f.name),
                "{} is allowed but never runs",
                f.name
            );
        }
    }

    #[test]
    fn division_by_zero_and_non_finite_values_are_null() {
        let out = run(col("x") / lit(0i64));
        assert_eq!(out.null_count(), 4);
        let out = run(datafusion::logical_expr::cast(col("x"), DataType::Float64) / lit(0.0f64));
        assert_eq!(out.null_count(), 4, "inf and NaN become NULL");
    }
}
