//! Policy checks on logical plans (R16, R17): the user's SQL is planned by
//! DataFusion against the desensitized views, type-coerced by the analyzer,
//! and then this module walks the plan. Only one shape is accepted:
//!
//! ```text
//! [Projection of group keys and aggregates]
//!   Aggregate(GROUP BY keys; COUNT / SUM / AVG / COUNT(DISTINCT unit))
//!     [Filter]  (WHERE)
//!       granted table | INNER JOIN of granted tables on their privacy units
//! ```
//!
//! Each JOIN's ON clause must equate the unit of the table it adds with the
//! unit of a table before it; a unit equality between tables already joined
//! would leave the new table joined to every row.
//!
//! Every column use is checked against the scenario's column control list
//! (group, filter, aggregate, join), every expression against an allowlist
//! of operators and functions that cannot fail on data, and every SUM/AVG
//! argument must have declared bounds. Anything else is refused with a
//! message naming the rule. The result is a [`Checked`] query from which the
//! release mechanism builds its own plan; the user's plan is never executed.

use crate::desensitize::UNIT_COLUMN;
use crate::scope::{TableInfo, ViewProvider};
use crate::{Error, Result};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema, TableReference};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    cast, col, BinaryExpr, Expr, ExprSchemable, JoinConstraint, JoinType, LogicalPlan, LogicalPlanBuilder,
    Operator,
};
use scenarios::catalog::{ColumnRule, DEFAULT_SUM_SCALE};
use scenarios::policy::{effective_bounds, AggregateFn, ColumnOp};
use std::collections::{BTreeSet, HashMap};

/// One use of a granted table in the FROM clause.
#[derive(Debug, Clone)]
pub(crate) struct TableUse {
    /// How columns of this table are qualified (alias or table name).
    pub qualifier: TableReference,
    /// Catalog table name.
    pub table: String,
}

/// What one user aggregate measures.
#[derive(Debug, Clone)]
pub(crate) enum AggKind {
    /// `COUNT(*)`: rows.
    CountRows,
    /// `COUNT(expr)`: rows where `expr` is not null; `true` when `expr` is
    /// a column registration found to have no null.
    CountNonNull(Expr, bool),
    /// `COUNT(DISTINCT unit)`: distinct privacy units.
    CountUnits,
    /// `SUM(expr)` with integer clamping bounds.
    Sum(Bounded),
    /// `AVG(expr)` with integer clamping bounds; `true` when `expr` is a
    /// column without nulls.
    Avg(Bounded, bool),
}

/// A SUM or AVG argument with its clamping bounds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bounded {
    /// The argument.
    pub expr: Expr,
    /// Lower bound (rounded down to an integer).
    pub lo: i64,
    /// Upper bound (rounded up to an integer).
    pub hi: i64,
    /// False when the argument is an integer column whose every value
    /// already lies within the bounds, so clamping would change nothing.
    pub clamp: bool,
    /// Fixed-point decimal places: the argument is summed as whole units of
    /// 10^-scale, and `lo`, `hi` are in those units. 0 for whole numbers.
    pub scale: u32,
}

/// Where an output column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputRef {
    /// The i-th group key.
    Group(usize),
    /// The i-th aggregate.
    Agg(usize),
}

/// A query that passed every check.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    /// The FROM part: granted tables joined on their hidden unit columns
    /// only, with no condition on values.
    pub relation: LogicalPlan,
    /// WHERE conditions and the ON conditions beyond unit equality, over
    /// `relation`'s columns. The mechanism evaluates them with total
    /// semantics, together with every other expression of the query.
    pub predicates: Vec<Expr>,
    /// The hidden privacy-unit column of the first table.
    pub unit: Expr,
    /// Tables used.
    pub uses: Vec<TableUse>,
    /// True when every table used has at most one row per unit.
    pub unique: bool,
    /// Group key expressions over `input`.
    pub groups: Vec<Expr>,
    /// True when every group key is a function of columns of tables with at
    /// most one row per unit, so each unit falls in exactly one group.
    pub groups_unit_determined: bool,
    /// Aggregates.
    pub aggs: Vec<AggKind>,
    /// Output columns in order: name and source.
    pub outputs: Vec<(String, OutputRef)>,
    /// When every group key is a column with a public domain: the declared
    /// categories of each key, in GROUP BY order. All their combinations are
    /// released (values of small cells suppressed) and no key depends on
    /// the data. `Some(vec![])` when there is no GROUP BY.
    pub public_keys: Option<Vec<Vec<String>>>,
}

/// Most cells a public-domain release may have.
pub(crate) const MAX_PUBLIC_CELLS: usize = 10_000;

/// Most expression nodes a query may hold, over all its expressions.
pub(crate) const MAX_QUERY_NODES: usize = 1024;
/// Most arguments of one function call.
pub(crate) const MAX_FUNCTION_ARGS: usize = 32;
/// Deepest nesting of one expression: total evaluation compiles and runs
/// it recursively, and must never run out of stack after a query is
/// charged.
pub(crate) const MAX_EXPRESSION_DEPTH: usize = 48;

/// Depth of an expression tree.
fn depth(e: &Expr) -> usize {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut deepest = 0usize;
    let _ = e.apply_children(|c| {
        deepest = deepest.max(depth(c));
        // Stop early past the bound: the caller refuses anyway.
        Ok(if deepest > MAX_EXPRESSION_DEPTH {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    deepest + 1
}

/// Refuses expressions whose per-row work could be made large by their
/// size alone: too many nodes, a function with too many arguments, a text
/// constant longer than total evaluation lets any value be. With these and
/// `total::MAX_TEXT_BYTES`, what one row can add to a query's work and
/// memory is bounded before it runs (invariant I14).
fn check_size<'e>(exprs: impl IntoIterator<Item = &'e Expr>) -> Result<()> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut nodes = 0usize;
    let mut problem = None;
    for e in exprs {
        let _ = e.apply(|x| {
            nodes += 1;
            match x {
                Expr::ScalarFunction(f) if f.args.len() > MAX_FUNCTION_ARGS => {
                    problem = Some(format!(
                        "`{}` is called with {} arguments; at most {MAX_FUNCTION_ARGS} are allowed",
                        f.func.name(),
                        f.args.len()
                    ));
                }
                Expr::Literal(v, _) => {
                    let long = match v {
                        datafusion::common::ScalarValue::Utf8(Some(t))
                        | datafusion::common::ScalarValue::LargeUtf8(Some(t))
                        | datafusion::common::ScalarValue::Utf8View(Some(t)) => t.len(),
                        datafusion::common::ScalarValue::Binary(Some(b))
                        | datafusion::common::ScalarValue::LargeBinary(Some(b))
                        | datafusion::common::ScalarValue::BinaryView(Some(b)) => b.len(),
                        _ => 0,
                    };
                    if long as i64 > crate::total::MAX_TEXT_BYTES {
                        problem = Some(format!(
                            "a text constant of {long} bytes; at most {} are allowed",
                            crate::total::MAX_TEXT_BYTES
                        ));
                    }
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        });
    }
    if let Some(p) = problem {
        return refuse(p);
    }
    if nodes > MAX_QUERY_NODES {
        return refuse(format!(
            "the query's expressions have {nodes} parts; at most {MAX_QUERY_NODES} are allowed"
        ));
    }
    Ok(())
}

/// Where in the query an expression appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Group,
    Filter,
    Aggregate,
}

impl Use {
    fn op(self) -> ColumnOp {
        match self {
            Use::Group => ColumnOp::Group,
            Use::Filter => ColumnOp::Filter,
            Use::Aggregate => ColumnOp::Aggregate,
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Use::Group => "GROUP BY",
            Use::Filter => "WHERE / JOIN conditions",
            Use::Aggregate => "aggregates",
        }
    }
}

fn refuse<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::PolicyViolation(msg.into()))
}

/// What an argument of an allowed function is. The checker only needs to
/// know which arguments must be constants; the kinds let tests generate
/// calls of every allowed function with extreme arguments (invariant I14),
/// so a newly allowed function is covered without anyone remembering to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arg {
    /// A number (any numeric type).
    Number,
    /// Text.
    Text,
    /// A date or timestamp.
    Time,
    /// Any type (the function coerces its arguments to a common one).
    Any,
    /// A constant integer (a length, a position, a precision).
    ConstInt,
    /// A constant text naming a date part or unit (`'month'`).
    ConstUnit,
}

impl Arg {
    /// True when the argument must be a constant.
    pub(crate) fn constant(self) -> bool {
        matches!(self, Arg::ConstInt | Arg::ConstUnit)
    }
}

/// A scalar function a query may call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Function {
    /// Name as DataFusion knows it.
    pub name: &'static str,
    /// Arguments, in order.
    pub args: &'static [Arg],
    /// How many trailing arguments may be left out.
    pub optional: usize,
    /// True when the last argument may repeat (COALESCE, CONCAT, ...).
    pub variadic: bool,
}

const fn func(name: &'static str, args: &'static [Arg], optional: usize, variadic: bool) -> Function {
    Function {
        name,
        args,
        optional,
        variadic,
    }
}

/// Every scalar function a query may call. Each is evaluated with total
/// semantics (`crate::total`): on a row where it would fail it yields NULL.
pub(crate) const FUNCTIONS: &[Function] = &[
    func("abs", &[Arg::Number], 0, false),
    func("floor", &[Arg::Number], 0, false),
    func("ceil", &[Arg::Number], 0, false),
    func("round", &[Arg::Number, Arg::ConstInt], 1, false),
    func("lower", &[Arg::Text], 0, false),
    func("upper", &[Arg::Text], 0, false),
    func("trim", &[Arg::Text], 0, false),
    func("btrim", &[Arg::Text], 0, false),
    func("ltrim", &[Arg::Text], 0, false),
    func("rtrim", &[Arg::Text], 0, false),
    func("char_length", &[Arg::Text], 0, false),
    func("character_length", &[Arg::Text], 0, false),
    func("length", &[Arg::Text], 0, false),
    func("concat", &[Arg::Text], 0, true),
    func("coalesce", &[Arg::Any], 0, true),
    func("greatest", &[Arg::Any], 0, true),
    func("least", &[Arg::Any], 0, true),
    func("nullif", &[Arg::Any, Arg::Any], 0, false),
    func("substr", &[Arg::Text, Arg::ConstInt, Arg::ConstInt], 1, false),
    func("substring", &[Arg::Text, Arg::ConstInt, Arg::ConstInt], 1, false),
    func("left", &[Arg::Text, Arg::ConstInt], 0, false),
    func("right", &[Arg::Text, Arg::ConstInt], 0, false),
    func("date_trunc", &[Arg::ConstUnit, Arg::Time], 0, false),
    func("date_part", &[Arg::ConstUnit, Arg::Time], 0, false),
    func("datepart", &[Arg::ConstUnit, Arg::Time], 0, false),
];

/// The rule for function `name`, if it is allowed.
fn function_rule(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// Binary operators a query may use, with the kinds of their operands.
/// Division and modulo are further limited to a non-zero constant divisor
/// so that bounds can be derived; every operator is evaluated with total
/// semantics.
pub(crate) const OPERATORS: &[(Operator, Arg)] = &[
    (Operator::Eq, Arg::Any),
    (Operator::NotEq, Arg::Any),
    (Operator::Lt, Arg::Any),
    (Operator::LtEq, Arg::Any),
    (Operator::Gt, Arg::Any),
    (Operator::GtEq, Arg::Any),
    (Operator::And, Arg::Any),
    (Operator::Or, Arg::Any),
    (Operator::Plus, Arg::Number),
    (Operator::Minus, Arg::Number),
    (Operator::Multiply, Arg::Number),
    (Operator::Divide, Arg::Number),
    (Operator::Modulo, Arg::Number),
    (Operator::IsDistinctFrom, Arg::Any),
    (Operator::IsNotDistinctFrom, Arg::Any),
    (Operator::StringConcat, Arg::Text),
];

pub(crate) struct Checker<'a> {
    tables: &'a HashMap<String, TableInfo>,
    allowed: &'a BTreeSet<AggregateFn>,
    /// The job's row functions and their declared output bounds.
    row_functions: &'a HashMap<String, (f64, f64)>,
    uses: Vec<TableUse>,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(
        tables: &'a HashMap<String, TableInfo>,
        allowed: &'a BTreeSet<AggregateFn>,
        row_functions: &'a HashMap<String, (f64, f64)>,
    ) -> Self {
        Checker {
            tables,
            allowed,
            row_functions,
            uses: Vec::new(),
        }
    }

    /// Checks an analyzed plan and extracts the query.
    pub(crate) fn check(mut self, plan: &LogicalPlan) -> Result<Checked> {
        // Depth first, before anything walks the expressions recursively.
        let mut too_deep = false;
        let _ = datafusion::common::tree_node::TreeNode::apply(plan, |node| {
            too_deep |= node.expressions().iter().any(|e| depth(e) > MAX_EXPRESSION_DEPTH);
            Ok(if too_deep {
                datafusion::common::tree_node::TreeNodeRecursion::Stop
            } else {
                datafusion::common::tree_node::TreeNodeRecursion::Continue
            })
        });
        if too_deep {
            return refuse(format!(
                "an expression is nested more than {MAX_EXPRESSION_DEPTH} levels deep"
            ));
        }
        let (projection, agg) = match plan {
            LogicalPlan::Projection(p) => match p.input.as_ref() {
                LogicalPlan::Aggregate(a) => (Some(p), a),
                other => return Err(shape_error(other, true)),
            },
            LogicalPlan::Aggregate(a) => (None, a),
            other => return Err(shape_error(other, false)),
        };
        let mut predicates = Vec::new();
        let relation = self.relation(&agg.input, &mut predicates)?;
        let schema = agg.input.schema().clone();

        let mut groups = Vec::with_capacity(agg.group_expr.len());
        for g in &agg.group_expr {
            if matches!(g, Expr::GroupingSet(_)) {
                return refuse("GROUPING SETS, ROLLUP and CUBE are not allowed; run one query per grouping");
            }
            self.expr(g, Use::Group, &schema)?;
            groups.push(g.clone());
        }
        let mut aggs = Vec::with_capacity(agg.aggr_expr.len());
        for a in &agg.aggr_expr {
            let kind = self.aggregate(a, &schema)?;
            let f = match kind {
                AggKind::CountRows | AggKind::CountNonNull(..) => AggregateFn::Count,
                AggKind::CountUnits => AggregateFn::CountDistinctUnits,
                AggKind::Sum(..) => AggregateFn::Sum,
                AggKind::Avg(..) => AggregateFn::Avg,
            };
            if !self.allowed.contains(&f) {
                return refuse(format!(
                    "{} is not among the scenario's allowed aggregate functions",
                    f.sql()
                ));
            }
            aggs.push(kind);
        }

        check_size(groups.iter().chain(&agg.aggr_expr).chain(&predicates))?;
        let ng = groups.len();
        let outputs = match projection {
            Some(p) => {
                let mut outs = Vec::with_capacity(p.expr.len());
                for (i, e) in p.expr.iter().enumerate() {
                    let name = p.schema.field(i).name().clone();
                    let inner = strip_alias(e);
                    let Expr::Column(c) = inner else {
                        return refuse(format!(
                            "output column `{name}` is computed from aggregates; release COUNT, SUM and AVG \
                             as they are and derive values inside the job"
                        ));
                    };
                    let idx = agg.schema.maybe_index_of_column(c).ok_or_else(|| {
                        Error::PolicyViolation(format!("output column `{name}` is not an aggregate"))
                    })?;
                    let src = if idx < ng {
                        OutputRef::Group(idx)
                    } else {
                        OutputRef::Agg(idx - ng)
                    };
                    outs.push((name, src));
                }
                outs
            }
            None => (0..agg.schema.fields().len())
                .map(|i| {
                    let src = if i < ng {
                        OutputRef::Group(i)
                    } else {
                        OutputRef::Agg(i - ng)
                    };
                    (agg.schema.field(i).name().clone(), src)
                })
                .collect(),
        };
        if !outputs.iter().any(|(_, s)| matches!(s, OutputRef::Agg(_))) && groups.is_empty() {
            return refuse("the query releases nothing: select at least one group key or aggregate");
        }

        let unique = self
            .uses
            .iter()
            .all(|u| self.tables.get(&u.table).is_some_and(|t| t.unit_unique));
        let groups_unit_determined = groups.iter().all(|g| {
            g.column_refs()
                .iter()
                .all(|c| self.resolve(c).is_ok_and(|(t, _)| t.unit_unique))
        });
        let first = self
            .uses
            .first()
            .ok_or_else(|| Error::InvalidQuery("the query reads no table".into()))?;
        let unit = col(Column::new(Some(first.qualifier.clone()), UNIT_COLUMN));
        let public_keys = self.public_keys(&groups);
        Ok(Checked {
            relation,
            predicates,
            unit,
            uses: self.uses,
            unique,
            groups,
            groups_unit_determined,
            aggs,
            outputs,
            public_keys,
        })
    }

    /// The declared categories of every group key, when all are public-domain
    /// columns and their combinations are few enough to list.
    fn public_keys(&self, groups: &[Expr]) -> Option<Vec<Vec<String>>> {
        let mut domains = Vec::with_capacity(groups.len());
        let mut cells = 1usize;
        for g in groups {
            let Expr::Column(c) = strip_cast(g) else {
                return None;
            };
            let (t, n) = self.resolve(c).ok()?;
            if !t.grant.column(&n).is_some_and(|gr| gr.public_domain) {
                return None;
            }
            let Some(scenarios::catalog::Domain::Categories(values)) =
                t.spec.column(&n).and_then(|s| s.domain.clone())
            else {
                return None;
            };
            cells = cells.checked_mul(values.len())?;
            if cells > MAX_PUBLIC_CELLS {
                return None;
            }
            domains.push(values);
        }
        Some(domains)
    }

    /// Checks the FROM/WHERE subtree and rebuilds its joins on the hidden
    /// unit columns; every other condition goes to `predicates`.
    fn relation(&mut self, plan: &LogicalPlan, predicates: &mut Vec<Expr>) -> Result<LogicalPlan> {
        match plan {
            LogicalPlan::Filter(f) => {
                let input = self.relation(&f.input, predicates)?;
                self.expr(&f.predicate, Use::Filter, f.input.schema())?;
                predicates.push(f.predicate.clone());
                Ok(input)
            }
            LogicalPlan::Join(j) => {
                if j.join_type != JoinType::Inner {
                    return refuse(format!(
                        "{} joins are not allowed; only INNER JOIN on the privacy unit",
                        j.join_type
                    ));
                }
                if j.join_constraint != JoinConstraint::On && j.join_constraint != JoinConstraint::Using {
                    return refuse("unsupported join form");
                }
                let left = self.relation(&j.left, predicates)?;
                let right = self.relation(&j.right, predicates)?;
                let mut conds: Vec<Expr> = j.on.iter().map(|(l, r)| l.clone().eq(r.clone())).collect();
                if let Some(f) = &j.filter {
                    conds.extend(split_conjunction(f).into_iter().cloned());
                }
                let mut rewritten = Vec::with_capacity(conds.len());
                let mut linked = false;
                for c in conds {
                    if let Some((l, r)) = self.unit_equality(&c)? {
                        if !crosses(&c, j.left.schema(), j.right.schema()) {
                            return refuse(
                                "each JOIN must link the table it adds: its ON clause may equate \
                                 privacy units only between the joined table and a table before it \
                                 (JOIN v ON v.unit = t.unit)",
                            );
                        }
                        rewritten.push(l.eq(r));
                        linked = true;
                    } else {
                        self.expr(&c, Use::Filter, &j.schema)?;
                        predicates.push(c);
                    }
                }
                if !linked {
                    return refuse(
                        "tables must be joined on their privacy units (JOIN ... ON a.unit = b.unit); \
                         other joins could attribute one unit's rows to another",
                    );
                }
                Ok(LogicalPlanBuilder::from(left)
                    .join_on(right, JoinType::Inner, rewritten)?
                    .build()?)
            }
            LogicalPlan::SubqueryAlias(a) => match a.input.as_ref() {
                LogicalPlan::TableScan(s) => {
                    self.leaf(s, a.alias.clone())?;
                    Ok(plan.clone())
                }
                _ => refuse("derived tables and subqueries in FROM are not allowed"),
            },
            LogicalPlan::TableScan(s) => {
                self.leaf(s, s.table_name.clone())?;
                Ok(plan.clone())
            }
            LogicalPlan::Projection(_) | LogicalPlan::Aggregate(_) => {
                refuse("derived tables and subqueries in FROM are not allowed")
            }
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                refuse("the query must read a table granted by the scenario")
            }
            LogicalPlan::Union(_) => refuse("UNION is not allowed; run separate queries"),
            LogicalPlan::Limit(_) => refuse("LIMIT and OFFSET are not allowed: they select individual rows"),
            LogicalPlan::Sort(_) => refuse("ORDER BY inside a query is not allowed"),
            LogicalPlan::Window(_) => {
                refuse("window functions are not allowed: they can release per-row values")
            }
            _ => refuse("unsupported FROM clause; only granted tables and INNER JOIN on the privacy unit"),
        }
    }

    fn leaf(&mut self, scan: &datafusion::logical_expr::TableScan, qualifier: TableReference) -> Result<()> {
        let provider = source_as_provider(&scan.source)?;
        let name = scan.table_name.table().to_string();
        let any: &dyn std::any::Any = provider.as_ref();
        let is_view = any.downcast_ref::<ViewProvider>().is_some();
        if !is_view || !self.tables.contains_key(&name) {
            return refuse(format!(
                "table `{}` is not granted by the scenario",
                name.escape_debug()
            ));
        }
        if !scan.filters.is_empty() || scan.fetch.is_some() {
            return refuse("unsupported table scan");
        }
        if self.uses.iter().any(|u| u.table == name) {
            return refuse(format!(
                "table `{name}` appears twice; self-joins are not allowed because they can isolate a unit"
            ));
        }
        self.uses.push(TableUse {
            qualifier,
            table: name,
        });
        Ok(())
    }

    /// Resolves a column to its table and name.
    fn resolve(&self, c: &Column) -> Result<(&'a TableInfo, String)> {
        let table_use = match &c.relation {
            // The use the planner resolved the column to: the one whose
            // qualifier is the column's, else the only one whose table part
            // is (a column must never be checked against another table's
            // grants, found by review).
            Some(q) => match self.uses.iter().find(|u| &u.qualifier == q) {
                Some(u) => Some(u),
                None => only(self.uses.iter().filter(|u| u.qualifier.table() == q.table()), c)?,
            },
            None => only(
                self.uses.iter().filter(|u| {
                    self.tables
                        .get(&u.table)
                        .is_some_and(|t| t.view_schema.field_with_name(&c.name).is_ok())
                }),
                c,
            )?,
        };
        let table_use = table_use.ok_or_else(|| {
            Error::InvalidQuery(format!(
                "column `{}` does not belong to a table of the query",
                c.name
            ))
        })?;
        let info = self
            .tables
            .get(&table_use.table)
            .ok_or_else(|| Error::Internal("table use without table".into()))?;
        Ok((info, c.name.clone()))
    }

    /// If `e` is `a.unit = b.unit` across two tables whose units are of the
    /// same kind, returns the equality on the hidden unit columns.
    fn unit_equality(&self, e: &Expr) -> Result<Option<(Expr, Expr)>> {
        let Some((lc, rc)) = column_equality(e) else {
            return Ok(None);
        };
        let (lt, ln) = self.resolve(lc)?;
        let (rt, rn) = self.resolve(rc)?;
        let l_unit = ln == lt.spec.privacy_unit;
        let r_unit = rn == rt.spec.privacy_unit;
        if !l_unit && !r_unit {
            return Ok(None);
        }
        if !(l_unit && r_unit) {
            return refuse(
                "a privacy unit column can only be joined with another table's privacy unit column",
            );
        }
        if lt.spec.name == rt.spec.name {
            return refuse("self-joins are not allowed");
        }
        for (t, n) in [(lt, &ln), (rt, &rn)] {
            let granted = t.grant.column(n).is_some_and(|g| g.ops.contains(&ColumnOp::Join));
            if !granted {
                return refuse(format!(
                    "column `{}.{n}` is not granted as a join key",
                    t.spec.name
                ));
            }
        }
        match (&lt.spec.unit_kind, &rt.spec.unit_kind) {
            (Some(a), Some(b)) if a == b => {}
            _ => {
                return refuse(format!(
                    "tables `{}` and `{}` do not declare the same kind of privacy unit",
                    lt.spec.name, rt.spec.name
                ))
            }
        }
        let lq = lc.relation.clone();
        let rq = rc.relation.clone();
        let mut l = col(Column::new(lq, UNIT_COLUMN));
        let mut r = col(Column::new(rq, UNIT_COLUMN));
        let lt_ty = lt
            .view_schema
            .field_with_name(UNIT_COLUMN)
            .map(|f| f.data_type().clone())
            .ok();
        let rt_ty = rt
            .view_schema
            .field_with_name(UNIT_COLUMN)
            .map(|f| f.data_type().clone())
            .ok();
        if lt_ty != rt_ty {
            l = cast(l, DataType::Utf8);
            r = cast(r, DataType::Utf8);
        }
        Ok(Some((l, r)))
    }

    fn aggregate(&self, e: &Expr, schema: &DFSchema) -> Result<AggKind> {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = strip_alias(e) else {
            return refuse(format!("`{e}` is not an aggregate"));
        };
        let name = func.name().to_ascii_lowercase();
        if params.filter.is_some() {
            return refuse("FILTER (WHERE ...) on aggregates is not supported; use WHERE");
        }
        if !params.order_by.is_empty() {
            return refuse("ordered aggregates are not supported");
        }
        let arg = match params.args.as_slice() {
            [a] => a,
            _ => return refuse(format!("`{name}` takes exactly one argument here")),
        };
        match name.as_str() {
            "count" if params.distinct => {
                if let Expr::Column(c) = strip_cast(arg) {
                    let (t, n) = self.resolve(c)?;
                    if n == t.spec.privacy_unit {
                        let granted = t
                            .grant
                            .column(&n)
                            .is_some_and(|g| g.ops.contains(&ColumnOp::Aggregate));
                        if !granted {
                            return refuse(format!(
                                "column `{}.{n}` is not granted for aggregates",
                                t.spec.name
                            ));
                        }
                        return Ok(AggKind::CountUnits);
                    }
                }
                refuse("COUNT(DISTINCT ...) is only allowed on the privacy unit column")
            }
            "count" => match arg {
                Expr::Literal(v, _) if !v.is_null() => Ok(AggKind::CountRows),
                _ if self.token_column(arg).is_some() => {
                    self.token_operand(arg, Use::Aggregate)?;
                    Ok(AggKind::CountNonNull(arg.clone(), self.complete(arg)))
                }
                _ => {
                    self.expr(arg, Use::Aggregate, schema)?;
                    Ok(AggKind::CountNonNull(arg.clone(), self.complete(arg)))
                }
            },
            "sum" | "avg" => {
                if params.distinct {
                    return refuse(format!("{}(DISTINCT ...) is not allowed", name.to_uppercase()));
                }
                self.expr(arg, Use::Aggregate, schema)?;
                // The analyzer casts AVG's integer argument to Float64; the
                // mechanism sums integers anyway, and without the cast SUM(x)
                // and AVG(x) share one measurement.
                let arg = match arg {
                    Expr::Cast(c) if c.expr.get_type(schema).is_ok_and(|t| t.is_integer()) => c.expr.as_ref(),
                    other => other,
                };
                let (lo, hi) = self.bounds(arg).ok_or_else(|| {
                    Error::PolicyViolation(format!(
                        "`{arg}` has no declared bounds; {}() needs the scenario to declare bounds for every column it uses",
                        name.to_uppercase()
                    ))
                })?;
                if !(lo.is_finite() && hi.is_finite()) || lo.abs() > 1e12 || hi.abs() > 1e12 {
                    return refuse(format!("the bounds of `{arg}` are too wide"));
                }
                let scale = self.sum_scale(arg, schema);
                let unit = 10f64.powi(scale as i32);
                let (lo, hi) = ((lo * unit).floor(), (hi * unit).ceil());
                if lo.abs() > 1e15 || hi.abs() > 1e15 {
                    return refuse(format!(
                        "the bounds of `{arg}` are too wide for its {scale} decimal places"
                    ));
                }
                let (lo, hi) = (lo as i64, hi as i64);
                let bounded = Bounded {
                    expr: arg.clone(),
                    lo,
                    hi,
                    clamp: scale > 0 || !self.within(arg, lo, hi),
                    scale,
                };
                Ok(if name == "sum" {
                    AggKind::Sum(bounded)
                } else {
                    AggKind::Avg(bounded, self.complete(arg))
                })
            }
            "min" | "max" => refuse(format!(
                "{}() releases one unit's exact value and is not allowed",
                name.to_uppercase()
            )),
            other => refuse(format!(
                "aggregate `{other}` is not supported; use COUNT, SUM or AVG"
            )),
        }
    }

    /// True when `e` is (a cast of) a column kept as is (the registered
    /// range is of raw values: a generalizing rule can move a value outside
    /// it) that holds whole numbers whose registered range lies within
    /// `[lo, hi]`: an integer column, or a float column measured at
    /// registration to hold whole numbers only (its values then convert to
    /// integers exactly).
    fn within(&self, e: &Expr, lo: i64, hi: i64) -> bool {
        match strip_cast(e) {
            Expr::Column(c) => self.resolve(c).is_ok_and(|(t, n)| {
                let kept = t.spec.column(&n).is_some_and(|c| c.rule == ColumnRule::Keep);
                let whole = kept
                    && t.view_schema
                        .field_with_name(&n)
                        .is_ok_and(|f| f.data_type().is_integer() || f.data_type().is_floating());
                whole
                    && t.ranges
                        .get(&n)
                        .is_some_and(|(a, b)| *a >= lo as f64 && *b <= hi as f64)
            }),
            _ => false,
        }
    }

    /// The fixed-point decimal places a SUM/AVG argument is summed with: 0
    /// for an integer expression; otherwise the largest scale declared by
    /// the columns it reads ([`DEFAULT_SUM_SCALE`] for a column that
    /// declares none, and for an expression that reads no column).
    ///
    /// Never what registration measured: a float column found to hold
    /// whole numbers only was once summed at scale 0 (released as an
    /// integer) and one unit's fractional value turned every sum into a
    /// float, an exact answer about the data outside any budget. A provider
    /// whose float column is whole declares `scale: 0`.
    fn sum_scale(&self, e: &Expr, schema: &DFSchema) -> u32 {
        if e.get_type(schema).is_ok_and(|t| t.is_integer()) {
            return 0;
        }
        let declared = e.column_refs().into_iter().filter_map(|c| {
            let (t, n) = self.resolve(c).ok()?;
            Some(t.spec.column(&n)?.scale.unwrap_or(DEFAULT_SUM_SCALE))
        });
        declared
            .max()
            .unwrap_or(DEFAULT_SUM_SCALE)
            .min(scenarios::catalog::MAX_SUM_SCALE)
    }

    /// True when `e` is (a cast of) a column that declares `not_null`
    /// (checked at registration: no null, and for floats no NaN or ±inf,
    /// which total evaluation would turn into NULL). Declared, never
    /// measured: whether COUNT(x) needs a measurement of its own must not
    /// depend on one unit's value.
    ///
    /// Only plain casts are looked through (the policy admits only casts
    /// that cannot fail); a TRY_CAST may yield NULL.
    fn complete(&self, e: &Expr) -> bool {
        let mut e = e;
        loop {
            match e {
                Expr::Alias(a) => e = &a.expr,
                Expr::Cast(c) => e = &c.expr,
                Expr::Column(c) => {
                    return self.resolve(c).is_ok_and(|(t, n)| t.complete.contains(&n));
                }
                _ => return false,
            }
        }
    }

    /// Interval bounds of a numeric expression from declared column bounds.
    fn bounds(&self, e: &Expr) -> Option<(f64, f64)> {
        match e {
            Expr::Alias(a) => self.bounds(&a.expr),
            Expr::Column(c) => {
                let (t, n) = self.resolve(c).ok()?;
                let grant = t.grant.column(&n)?;
                effective_bounds(grant, Some(&t.spec)).map(|[lo, hi]| (lo, hi))
            }
            Expr::Literal(v, _) => {
                let x = match v.cast_to(&DataType::Float64).ok()? {
                    datafusion::common::ScalarValue::Float64(Some(x)) => x,
                    _ => return None,
                };
                Some((x, x))
            }
            Expr::Cast(c) => self.bounds(&c.expr),
            Expr::TryCast(c) => self.bounds(&c.expr),
            Expr::Negative(x) => self.bounds(x).map(|(lo, hi)| (-hi, -lo)),
            Expr::BinaryExpr(b) => {
                let (a1, a2) = self.bounds(&b.left)?;
                let (b1, b2) = self.bounds(&b.right)?;
                match b.op {
                    Operator::Plus => Some((a1 + b1, a2 + b2)),
                    Operator::Minus => Some((a1 - b2, a2 - b1)),
                    Operator::Multiply => {
                        let p = [a1 * b1, a1 * b2, a2 * b1, a2 * b2];
                        Some((
                            p.iter().cloned().fold(f64::INFINITY, f64::min),
                            p.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                        ))
                    }
                    Operator::Divide if b1 == b2 && b1 != 0.0 => {
                        let (x, y) = (a1 / b1, a2 / b1);
                        Some((x.min(y), x.max(y)))
                    }
                    _ => None,
                }
            }
            Expr::Case(c) => {
                let mut lo = f64::INFINITY;
                let mut hi = f64::NEG_INFINITY;
                let branches = c
                    .when_then_expr
                    .iter()
                    .map(|(_, t)| t.as_ref())
                    .chain(c.else_expr.as_deref());
                for b in branches {
                    if matches!(b, Expr::Literal(v, _) if v.is_null()) {
                        continue;
                    }
                    let (l, h) = self.bounds(b)?;
                    lo = lo.min(l);
                    hi = hi.max(h);
                }
                (lo <= hi).then_some((lo, hi))
            }
            Expr::ScalarFunction(f) if self.row_functions.contains_key(f.func.name()) => {
                self.row_functions.get(f.func.name()).copied()
            }
            Expr::ScalarFunction(f) => match f.func.name() {
                "abs" => {
                    let (l, h) = self.bounds(f.args.first()?)?;
                    let m = l.abs().max(h.abs());
                    Some((
                        if l <= 0.0 && h >= 0.0 {
                            0.0
                        } else {
                            l.abs().min(h.abs())
                        },
                        m,
                    ))
                }
                "round" | "floor" | "ceil" => {
                    let (l, h) = self.bounds(f.args.first()?)?;
                    Some((l.floor(), h.ceil()))
                }
                "coalesce" | "greatest" | "least" => {
                    let mut lo = f64::INFINITY;
                    let mut hi = f64::NEG_INFINITY;
                    for a in &f.args {
                        let (l, h) = self.bounds(a)?;
                        lo = lo.min(l);
                        hi = hi.max(h);
                    }
                    Some((lo, hi))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Checks one expression in one place of the query.
    fn expr(&self, e: &Expr, place: Use, schema: &DFSchema) -> Result<()> {
        match e {
            Expr::Alias(a) => self.expr(&a.expr, place, schema),
            Expr::Column(c) => self.column(c, place),
            Expr::Literal(_, _) => Ok(()),
            Expr::BinaryExpr(b)
                if matches!(
                    b.op,
                    Operator::Eq | Operator::NotEq | Operator::IsDistinctFrom | Operator::IsNotDistinctFrom
                ) && (self.token_column(&b.left).is_some() || self.token_column(&b.right).is_some()) =>
            {
                self.token_comparison(&b.left, &b.right, place)
            }
            Expr::IsNull(x) | Expr::IsNotNull(x) if self.token_column(x).is_some() => {
                self.token_operand(x, place)
            }
            Expr::BinaryExpr(b) => {
                use Operator::*;
                if !OPERATORS.iter().any(|(op, _)| *op == b.op) {
                    return refuse(format!("operator `{}` is not allowed", b.op));
                }
                match b.op {
                    Divide | Modulo => {
                        let nonzero_literal = match strip_cast(&b.right) {
                            Expr::Literal(v, _) => {
                                !v.is_null()
                                    && v.cast_to(&DataType::Float64).ok().is_some_and(|x| {
                                        matches!(x, datafusion::common::ScalarValue::Float64(Some(f)) if f != 0.0)
                                    })
                            }
                            _ => false,
                        };
                        if !nonzero_literal {
                            return refuse(format!(
                                "`{e}`: division and modulo are only allowed by a non-zero constant"
                            ));
                        }
                    }
                    _ => {}
                }
                self.expr(&b.left, place, schema)?;
                self.expr(&b.right, place, schema)
            }
            Expr::Like(l) => {
                let Expr::Literal(pattern, _) = strip_cast(&l.pattern) else {
                    return refuse("LIKE patterns must be constants");
                };
                // Only prefix, suffix and substring patterns: their work
                // per row is linear in the value. A general pattern runs a
                // regular expression whose work on one chosen value can be
                // a million times that of another (invariant I14).
                let text = match pattern {
                    datafusion::common::ScalarValue::Utf8(Some(t))
                    | datafusion::common::ScalarValue::LargeUtf8(Some(t))
                    | datafusion::common::ScalarValue::Utf8View(Some(t)) => t.as_str(),
                    _ => return refuse("LIKE patterns must be text constants"),
                };
                let inner = text.strip_prefix('%').unwrap_or(text);
                let inner = inner.strip_suffix('%').unwrap_or(inner);
                if l.escape_char.is_some() || inner.contains(['%', '_', '\\']) {
                    return refuse(
                        "LIKE patterns may only be 'text', 'text%', '%text' or '%text%' (no _ , inner % or escapes)",
                    );
                }
                self.expr(&l.expr, place, schema)
            }
            Expr::Not(x)
            | Expr::IsNull(x)
            | Expr::IsNotNull(x)
            | Expr::IsTrue(x)
            | Expr::IsFalse(x)
            | Expr::IsUnknown(x)
            | Expr::IsNotTrue(x)
            | Expr::IsNotFalse(x)
            | Expr::IsNotUnknown(x)
            | Expr::Negative(x) => self.expr(x, place, schema),
            Expr::Between(b) => {
                self.expr(&b.expr, place, schema)?;
                self.expr(&b.low, place, schema)?;
                self.expr(&b.high, place, schema)
            }
            Expr::Case(c) => {
                if let Some(x) = &c.expr {
                    self.expr(x, place, schema)?;
                }
                for (w, t) in &c.when_then_expr {
                    self.expr(w, place, schema)?;
                    self.expr(t, place, schema)?;
                }
                if let Some(x) = &c.else_expr {
                    self.expr(x, place, schema)?;
                }
                Ok(())
            }
            Expr::Cast(c) => {
                let from = c
                    .expr
                    .get_type(schema)
                    .map_err(|e| Error::InvalidQuery(e.to_string()))?;
                let to = c.field.data_type();
                if !safe_cast(&from, to) {
                    return refuse(format!(
                        "CAST from {from} to {to} can fail on data values; use TRY_CAST"
                    ));
                }
                self.expr(&c.expr, place, schema)
            }
            Expr::TryCast(c) => self.expr(&c.expr, place, schema),
            Expr::ScalarFunction(f) if self.row_functions.contains_key(f.func.name()) => {
                if place != Use::Aggregate {
                    return refuse(format!(
                        "row function `{}` may only be used inside COUNT, SUM or AVG arguments, not in {}: its output is never released per row",
                        f.func.name(),
                        place.describe()
                    ));
                }
                f.args.iter().try_for_each(|a| self.expr(a, place, schema))
            }
            Expr::ScalarFunction(f) => {
                let name = f.func.name();
                let rule = function_rule(name)
                    .ok_or_else(|| Error::PolicyViolation(format!("function `{name}` is not allowed")))?;
                let fewest = rule.args.len().saturating_sub(rule.optional);
                if f.args.len() < fewest || (!rule.variadic && f.args.len() > rule.args.len()) {
                    return refuse(format!(
                        "`{name}` is not allowed with {} arguments here",
                        f.args.len()
                    ));
                }
                for (i, a) in f.args.iter().enumerate() {
                    let kind = rule
                        .args
                        .get(i)
                        .or(if rule.variadic { rule.args.last() } else { None })
                        .copied()
                        .unwrap_or(Arg::Any);
                    if kind.constant() {
                        if !matches!(strip_cast(a), Expr::Literal(_, _)) {
                            return refuse(format!("argument {} of `{name}` must be a constant", i + 1));
                        }
                    } else {
                        self.expr(a, place, schema)?;
                    }
                }
                Ok(())
            }
            Expr::InList(l) => {
                if l.list.len() > 1000 {
                    return refuse("IN lists are limited to 1000 constants");
                }
                if l.list
                    .iter()
                    .any(|x| !matches!(strip_cast(x), Expr::Literal(_, _)))
                {
                    return refuse("IN lists must hold constants");
                }
                self.expr(&l.expr, place, schema)
            }
            Expr::AggregateFunction(_) => refuse(
                "aggregates are only allowed directly in the SELECT list, not nested or in WHERE/GROUP BY",
            ),
            Expr::WindowFunction(_) => {
                refuse("window functions are not allowed: they can release per-row values")
            }
            Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_) | Expr::SetComparison(_) => {
                refuse("subqueries are not allowed")
            }
            Expr::Placeholder(_) => refuse("query parameters are not supported"),
            other => refuse(format!("expression `{other}` is not allowed")),
        }
    }

    /// The table and name of `e` when it is (a cast of) a tokenized column
    /// other than the privacy unit.
    fn token_column(&self, e: &Expr) -> Option<(&'a TableInfo, String)> {
        let Expr::Column(c) = strip_cast(e) else {
            return None;
        };
        let (t, n) = self.resolve(c).ok()?;
        let tokenized =
            n != t.spec.privacy_unit && t.spec.column(&n).is_some_and(|s| s.rule == ColumnRule::Tokenize);
        tokenized.then_some((t, n))
    }

    /// A tokenized column where tokens may stand: an operand of an equality
    /// with another token, of IS NULL, or of COUNT. Checks the grant only.
    fn token_operand(&self, e: &Expr, place: Use) -> Result<()> {
        match strip_cast(e) {
            Expr::Column(c) => self.granted(c, place),
            _ => refuse("a tokenized column may only be compared as it is"),
        }
    }

    /// `l = r` (or `<>`, `IS [NOT] DISTINCT FROM`) where one side is a
    /// token. Tokens are opaque: the only thing a query may learn from one
    /// is whether it equals another token under the same key. Comparing a
    /// token with a constant, a kept value or anything computed would let a
    /// developer bisect or match tokens against values it knows, and a
    /// developer's own table is keyed apart from public data, so its tokens
    /// never equal a public token (the comparison is refused rather than
    /// left always false).
    fn token_comparison(&self, l: &Expr, r: &Expr, place: Use) -> Result<()> {
        let (Some((lt, ln)), Some((rt, rn))) = (self.token_column(l), self.token_column(r)) else {
            let (t, n) = self
                .token_column(l)
                .or_else(|| self.token_column(r))
                .ok_or_else(|| Error::Internal("token comparison without a token".into()))?;
            return refuse(format!(
                "column `{}.{n}` is tokenized: a token may only be compared for equality with another tokenized column",
                t.spec.name
            ));
        };
        let same_key = !(lt.developer_supplied || rt.developer_supplied) || lt.spec.name == rt.spec.name;
        if !same_key {
            return refuse(format!(
                "`{}.{ln}` and `{}.{rn}`: tokens of a developer's own table are keyed apart from other tables' tokens and never match them; \
                 link your table to public data through the privacy unit only",
                lt.spec.name, rt.spec.name
            ));
        }
        self.token_operand(l, place)?;
        self.token_operand(r, place)
    }

    fn column(&self, c: &Column, place: Use) -> Result<()> {
        if let Some((t, n)) = self.token_column(&Expr::Column(c.clone())) {
            return refuse(format!(
                "column `{}.{n}` is tokenized: tokens are never released, grouped or computed on; \
                 a token may only be compared for equality with another tokenized column, tested for NULL or counted",
                t.spec.name
            ));
        }
        self.granted(c, place)
    }

    /// Checks that `c` is granted for `place` (and is not the unit).
    fn granted(&self, c: &Column, place: Use) -> Result<()> {
        if c.name == UNIT_COLUMN {
            return refuse(format!("column `{UNIT_COLUMN}` is not granted by the scenario"));
        }
        let (t, name) = self.resolve(c)?;
        if name == t.spec.privacy_unit {
            return refuse(format!(
                "`{}.{name}` is the privacy unit: it may only be a join key or counted with COUNT(DISTINCT ...)",
                t.spec.name
            ));
        }
        let grant = t.grant.column(&name).ok_or_else(|| {
            Error::PolicyViolation(format!(
                "column `{}.{name}` is not granted by the scenario",
                t.spec.name
            ))
        })?;
        if !grant.ops.contains(&place.op()) {
            let allowed: Vec<&str> = grant
                .ops
                .iter()
                .map(|o| match o {
                    ColumnOp::Group => "group",
                    ColumnOp::Filter => "filter",
                    ColumnOp::Aggregate => "aggregate",
                    ColumnOp::Join => "join",
                    ColumnOp::Verify => "verify",
                })
                .collect();
            return refuse(format!(
                "column `{}.{name}` may not be used in {}; the scenario allows: {}",
                t.spec.name,
                place.describe(),
                if allowed.is_empty() {
                    "nothing".to_string()
                } else {
                    allowed.join(", ")
                }
            ));
        }
        Ok(())
    }
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}

/// The one table use of `found`, if any: a column that more than one
/// could hold is ambiguous.
fn only<'u>(mut found: impl Iterator<Item = &'u TableUse>, c: &Column) -> Result<Option<&'u TableUse>> {
    let first = found.next();
    if found.next().is_some() {
        return Err(Error::InvalidQuery(format!(
            "column `{}` is ambiguous; qualify it with its table's alias",
            c.name
        )));
    }
    Ok(first)
}

/// True when `e` is an equality of a column of `left` with a column of
/// `right`, in either order: a condition that links the two sides of a
/// join, as opposed to one between tables already joined.
fn crosses(e: &Expr, left: &DFSchema, right: &DFSchema) -> bool {
    column_equality(e).is_some_and(|(a, b)| {
        (left.has_column(a) && right.has_column(b)) || (left.has_column(b) && right.has_column(a))
    })
}

/// The two columns of `a = b`, casts aside, when `e` is one.
fn column_equality(e: &Expr) -> Option<(&Column, &Column)> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = e
    else {
        return None;
    };
    match (strip_cast(left), strip_cast(right)) {
        (Expr::Column(a), Expr::Column(b)) => Some((a, b)),
        _ => None,
    }
}

fn strip_cast(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => strip_cast(&c.expr),
        Expr::TryCast(c) => strip_cast(&c.expr),
        Expr::Alias(a) => strip_cast(&a.expr),
        other => other,
    }
}

/// Casts that cannot fail on any value of the source type.
fn safe_cast(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to || matches!(from, Null) {
        return true;
    }
    match to {
        Utf8 | LargeUtf8 | Utf8View => !matches!(from, Binary | LargeBinary | BinaryView),
        Float64 => from.is_numeric(),
        Float32 => from.is_integer() || matches!(from, Float16),
        Int64 => matches!(from, Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32),
        Int32 => matches!(from, Int8 | Int16 | UInt8 | UInt16),
        Timestamp(_, _) | Date32 | Date64 => matches!(from, Date32 | Date64 | Timestamp(_, _)),
        _ => false,
    }
}

/// Why a plan of the wrong shape is refused, naming the rule.
fn shape_error(plan: &LogicalPlan, under_projection: bool) -> Error {
    let msg = match plan {
        LogicalPlan::Sort(_) => {
            "ORDER BY is not supported: released groups come sorted by their keys; sort further inside the job"
        }
        LogicalPlan::Limit(_) => "LIMIT and OFFSET are not allowed: they select individual rows or groups",
        LogicalPlan::Filter(f) if matches!(f.input.as_ref(), LogicalPlan::Aggregate(_)) => {
            "HAVING is not allowed: filtering on exact aggregates leaks them; filter released results inside the job"
        }
        LogicalPlan::Window(_) => "window functions are not allowed: they can release per-row values",
        LogicalPlan::Distinct(d) if matches!(d.input().as_ref(), LogicalPlan::Union(_)) => {
            "UNION is not allowed; run separate queries"
        }
        LogicalPlan::Distinct(_) => "SELECT DISTINCT is not allowed; use GROUP BY, whose keys pass the release threshold",
        LogicalPlan::Union(_) => "UNION is not allowed; run separate queries",
        LogicalPlan::Projection(_) if under_projection => "derived tables and subqueries are not allowed",
        LogicalPlan::TableScan(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Join(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Projection(_) => {
            "row-level output is not allowed: every selected column must be a GROUP BY key or an aggregate (COUNT, SUM, AVG)"
        }
        LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => "the query must read a table granted by the scenario",
        LogicalPlan::Ddl(_)
        | LogicalPlan::Dml(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::Statement(_)
        | LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::DescribeTable(_) => "only SELECT queries are allowed",
        _ => "unsupported query: only SELECT ... FROM granted tables [WHERE ...] [GROUP BY ...] with COUNT, SUM, AVG",
    };
    Error::PolicyViolation(msg.into())
}
