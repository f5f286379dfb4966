//! The policy-scoped door to data: a [`DataPlane`] holds the registered
//! tables, and [`DataPlane::open`] gives a job a [`JobScope`] whose only
//! operation is [`JobScope::query`], which checks, charges, executes and
//! protects. The DataFusion session is private to the scope, so no caller
//! can run SQL without the policy.

use crate::desensitize::{view_columns, TokenKey};
use crate::exec::{RelationPlanner, TotalExec, UnitFilterExec};
use crate::noise::SystemRng;
use crate::policy::Checker;
use crate::release::{self, QueryLineage};
use crate::total::Program;
use crate::udf::{self, RowFunction};
use crate::{Error, Result};
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DFSchema;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::{Expr, ScalarUDF, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use scenarios::budget::Budget;
use scenarios::catalog::{DataFormat, DatasetSpec};
use scenarios::policy::{ScenarioSpec, TableGrant};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Size and modification time of a dataset file when it was registered. A
/// file that no longer matches is refused: its version hash would lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFingerprint {
    /// Length in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub modified_ns: i64,
}

/// Where a table's rows come from.
#[derive(Debug, Clone)]
pub enum TableData {
    /// The registered file (path in the spec), which must still match.
    File(FileFingerprint),
    /// In-memory rows, for sample data and tests.
    Batches(Vec<RecordBatch>),
}

/// One version of one registered dataset.
#[derive(Debug, Clone)]
pub struct TableVersion {
    /// The registration.
    pub spec: DatasetSpec,
    /// Version hash (SHA-256 of the file, hex).
    pub version: String,
    /// True when no privacy unit has more than one row.
    pub unit_unique: bool,
    /// The table is a developer's own (R5), not public data. Its tokenized
    /// columns are keyed under a key derived for it
    /// ([`TokenKey::derive`]), so they never equal a public token, and the
    /// policy refuses to compare them with public tokens.
    pub developer_supplied: bool,
    /// Columns measured at registration to hold no null.
    pub complete_columns: Vec<String>,
    /// Smallest and largest value of numeric columns, measured at
    /// registration; never shown to anyone (see `ColumnProfile::range`).
    pub column_ranges: Vec<(String, f64, f64)>,
    /// Suspended and (when consent is needed) consenting units.
    pub units: crate::desensitize::UnitFilter,
    /// The rows.
    pub data: TableData,
}

impl TableVersion {
    /// The registered file version described by its profile.
    pub fn from_profile(spec: DatasetSpec, p: &crate::profile::DatasetProfile) -> TableVersion {
        let unit_unique = spec.one_row_per_unit;
        TableVersion {
            // Declared and checked at registration, never measured: which
            // measurements a query takes must not depend on one unit.
            complete_columns: spec
                .columns
                .iter()
                .filter(|c| c.not_null)
                .map(|c| c.name.clone())
                .collect(),
            // Ranges of columns holding whole numbers only: integer
            // columns, and float columns measured to be integral.
            column_ranges: p
                .columns
                .iter()
                .filter(|c| {
                    c.integral
                        .unwrap_or_else(|| c.data_type.starts_with("Int") || c.data_type.starts_with("UInt"))
                })
                .filter_map(|c| c.range.map(|[lo, hi]| (c.name.clone(), lo, hi)))
                .collect(),
            units: Default::default(),
            spec,
            version: p.version.clone(),
            unit_unique,
            developer_supplied: false,
            data: TableData::File(p.fingerprint),
        }
    }
}

/// Everything a job's scope is built from.
#[derive(Debug, Clone)]
pub struct ScopeConfig {
    /// Agreement the queries are charged to.
    pub agreement_id: String,
    /// The approved scenario.
    pub scenario: ScenarioSpec,
    /// The granted tables, at the versions the job reads.
    pub tables: Vec<TableVersion>,
    /// Key for tokenized columns, unique to the agreement.
    pub token_key: TokenKey,
    /// Memory DataFusion may use for one query, in bytes.
    pub memory_limit: usize,
    /// Wall-clock limit of one query's execution. A query that runs longer
    /// is released as if its input were empty, charged as usual (I14).
    pub query_timeout: std::time::Duration,
}

/// Charges the privacy budget and records releases. Implemented by the
/// gateway over its store; [`MemoryAccountant`] is an in-memory one.
pub trait Accountant: Send + Sync {
    /// Charges `cost` to the agreement before the query runs. Must be
    /// durable when it returns `Ok`, and must fail with
    /// [`Error::BudgetExhausted`] when the budget does not cover it.
    fn charge(&self, cost: &Budget, lineage: &QueryLineage) -> Result<()>;
    /// Records a release after the result is computed and before it is
    /// handed over.
    fn release(&self, lineage: &QueryLineage) -> Result<()>;
}

/// An [`Accountant`] that keeps the budget in memory (local runs, tests).
#[derive(Debug)]
pub struct MemoryAccountant {
    limit: Budget,
    state: Mutex<(Budget, Vec<QueryLineage>)>,
}

impl MemoryAccountant {
    /// A fresh budget of `limit`.
    pub fn new(limit: Budget) -> Self {
        MemoryAccountant {
            limit,
            state: Mutex::new((Budget::default(), Vec::new())),
        }
    }
    /// Budget spent so far.
    pub fn spent(&self) -> Budget {
        self.state.lock().map(|s| s.0).unwrap_or_default()
    }
    /// Releases recorded so far.
    pub fn releases(&self) -> Vec<QueryLineage> {
        self.state.lock().map(|s| s.1.clone()).unwrap_or_default()
    }
}

impl Accountant for MemoryAccountant {
    fn charge(&self, cost: &Budget, _lineage: &QueryLineage) -> Result<()> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| Error::Internal("accountant lock poisoned".into()))?;
        if !s.0.can_afford(cost, &self.limit) {
            return Err(Error::BudgetExhausted(s.0.shortfall(cost, &self.limit)));
        }
        s.0 = s.0.plus(cost);
        Ok(())
    }
    fn release(&self, lineage: &QueryLineage) -> Result<()> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| Error::Internal("accountant lock poisoned".into()))?;
        s.1.push(lineage.clone());
        Ok(())
    }
}

/// What the policy checker knows of one granted table.
#[derive(Debug, Clone)]
pub(crate) struct TableInfo {
    pub spec: DatasetSpec,
    pub grant: TableGrant,
    pub unit_unique: bool,
    /// A developer's own table (R5): its tokens are keyed apart.
    pub developer_supplied: bool,
    /// Columns without nulls in this version.
    pub complete: std::collections::HashSet<String>,
    /// Value ranges of numeric columns in this version (never released).
    pub ranges: HashMap<String, (f64, f64)>,
    pub version: String,
    pub view_schema: SchemaRef,
    /// How many rows the view has, when that is known without reading
    /// them: the rows are in memory and the view removes none.
    pub exact_rows: Option<u64>,
}

/// A desensitized view as a table provider. It deliberately does not expose
/// its plan, so user plans show it as one opaque table scan, and it accepts
/// no filter: its scan reads the raw columns it needs, removes excluded
/// units natively ([`UnitFilterExec`]) and only then presents each column
/// under its rule with total evaluation ([`TotalExec`]), so no expression
/// ever sees an excluded row (I12, I14).
#[derive(Debug)]
pub(crate) struct ViewProvider {
    raw: Arc<dyn TableProvider>,
    /// The view's columns and their rule expressions over raw columns.
    columns: Vec<(String, Expr)>,
    /// The raw privacy-unit column.
    unit: String,
    units: crate::desensitize::UnitFilter,
    /// False when no row can be excluded (no null unit, no objection, no
    /// consent requirement): the unit filter is then skipped.
    filter_units: bool,
    /// Raw numeric columns declared complete, which registration checked
    /// to hold no null, NaN or infinity: rules read them unchecked.
    clean: std::collections::HashSet<String>,
    schema: SchemaRef,
}

impl ViewProvider {
    fn new(
        raw: Arc<dyn TableProvider>,
        spec: &DatasetSpec,
        key: &TokenKey,
        complete: &[String],
        verified: &[String],
        units: crate::desensitize::UnitFilter,
    ) -> Result<Self> {
        let unit_complete = complete.contains(&spec.privacy_unit);
        let clean = raw
            .schema()
            .fields()
            .iter()
            .filter(|f| f.data_type().is_numeric() && verified.contains(f.name()))
            .map(|f| f.name().clone())
            .collect();
        let raw_schema = DFSchema::try_from(raw.schema())?;
        let columns = view_columns(&raw_schema, spec, key)?;
        let schema = crate::exec::schema_of(&columns, &raw_schema)
            .map_err(|e| Error::InvalidDataset(e.to_string()))?;
        Ok(ViewProvider {
            raw,
            columns,
            unit: spec.privacy_unit.clone(),
            filter_units: !unit_complete || !units.exclude.is_empty() || units.only.is_some(),
            units,
            clean,
            schema: Arc::new(schema),
        })
    }
}

#[async_trait]
impl TableProvider for ViewProvider {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Unsupported; filters.len()])
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let wanted = crate::exec::projected(&self.columns, projection)?;
        // Raw columns to read: those the rules use, and the unit to filter on.
        let raw_schema = self.raw.schema();
        let mut names: Vec<String> = wanted
            .iter()
            .flat_map(|(_, e)| e.column_refs().into_iter().map(|c| c.name.clone()))
            .collect();
        if self.filter_units {
            names.push(self.unit.clone());
        }
        let mut indices = names
            .iter()
            .map(|n| raw_schema.index_of(n))
            .collect::<Result<Vec<_>, _>>()?;
        indices.sort_unstable();
        indices.dedup();
        let scan = self.raw.scan(state, Some(&indices), &[], None).await?;
        let read = scan.schema();
        let input: Arc<dyn ExecutionPlan> = if self.filter_units {
            let unit = read.index_of(&self.unit)?;
            Arc::new(UnitFilterExec::new(scan, unit, self.units.clone()))
        } else {
            scan
        };
        let read = DFSchema::try_from(read)?;
        let none = HashMap::new();
        let programs = wanted
            .iter()
            .map(|(_, e)| {
                let p = Program::compile(e, &read, &none)?;
                let clean = e.column_refs().iter().all(|c| self.clean.contains(&c.name));
                Ok(if clean { p.over_clean_inputs() } else { p })
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let names: Vec<String> = wanted.iter().map(|(n, _)| n.clone()).collect();
        Ok(Arc::new(TotalExec::new(input, programs, &names, None)))
    }
}

/// True when column `name` of every batch has no null and, for a float
/// column, no NaN or infinity. Reads every value (no early exit).
fn batches_clean(batches: &[RecordBatch], name: &str) -> bool {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Float16Type, Float32Type, Float64Type};
    batches.iter().fold(true, |ok, b| {
        let Some(a) = b.column_by_name(name) else {
            return false;
        };
        let finite = match a.data_type() {
            DataType::Float64 => a
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .fold(true, |f, v| f & v.is_finite()),
            DataType::Float32 => a
                .as_primitive::<Float32Type>()
                .values()
                .iter()
                .fold(true, |f, v| f & v.is_finite()),
            DataType::Float16 => a
                .as_primitive::<Float16Type>()
                .values()
                .iter()
                .fold(true, |f, v| f & v.is_finite()),
            _ => true,
        };
        ok & finite & (a.logical_null_count() == 0)
    })
}

/// Registered tables and the raw providers behind them, shared by all jobs.
#[derive(Default)]
pub struct DataPlane {
    raw: Mutex<HashMap<String, Arc<dyn TableProvider>>>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataPlane")
    }
}

pub(crate) fn df_error(e: DataFusionError) -> Error {
    match e {
        DataFusionError::ResourcesExhausted(m) => Error::ResourcesExhausted(m),
        DataFusionError::Context(_, inner) => df_error(*inner),
        DataFusionError::Shared(s) => match Arc::try_unwrap(s) {
            Ok(inner) => df_error(inner),
            Err(s) => Error::Internal(s.to_string()),
        },
        other => Error::Internal(other.to_string()),
    }
}

/// The kind of a DataFusion error, without its text (which can quote data).
pub(crate) fn df_error_kind(e: &DataFusionError) -> &'static str {
    match e {
        DataFusionError::ArrowError(..) => "arrow",
        DataFusionError::ParquetError(_) => "parquet",
        DataFusionError::IoError(_) => "io",
        DataFusionError::ObjectStore(_) => "object store",
        DataFusionError::SQL(..) => "sql",
        DataFusionError::NotImplemented(_) => "not implemented",
        DataFusionError::Internal(_) => "internal",
        DataFusionError::Plan(_) => "plan",
        DataFusionError::Configuration(_) => "configuration",
        DataFusionError::SchemaError(..) => "schema",
        DataFusionError::Execution(_) => "execution",
        DataFusionError::ExecutionJoin(_) => "join",
        DataFusionError::ResourcesExhausted(_) => "resources exhausted",
        DataFusionError::External(_) => "external",
        DataFusionError::Context(_, inner) => df_error_kind(inner),
        DataFusionError::Substrait(_) => "substrait",
        DataFusionError::Diagnostic(_, inner) => df_error_kind(inner),
        DataFusionError::Collection(v) => v.first().map(df_error_kind).unwrap_or("collection"),
        DataFusionError::Shared(inner) => df_error_kind(inner),
        _ => "other",
    }
}

impl DataPlane {
    /// An empty data plane.
    pub fn new() -> Self {
        Self::default()
    }

    /// The raw (not desensitized) provider of a table version. Private to
    /// the crate: nothing outside may read raw rows.
    pub(crate) async fn raw_provider(&self, t: &TableVersion) -> Result<Arc<dyn TableProvider>> {
        match &t.data {
            TableData::Batches(b) => {
                let schema = b
                    .first()
                    .map(|b| b.schema())
                    .ok_or_else(|| Error::InvalidDataset(format!("table `{}` has no rows", t.spec.name)))?;
                Ok(Arc::new(MemTable::try_new(schema, vec![b.clone()])?))
            }
            TableData::File(fp) => {
                let now = crate::profile::fingerprint(&t.spec.path)?;
                if now != *fp {
                    return Err(Error::InvalidDataset(format!(
                        "the file of dataset `{}` changed after registration; register a new version",
                        t.spec.name
                    )));
                }
                let key = format!("{}:{}", t.version, t.spec.path);
                if let Some(p) = self.raw.lock().ok().and_then(|m| m.get(&key).cloned()) {
                    return Ok(p);
                }
                let p = open_file(&t.spec).await?;
                if let Ok(mut m) = self.raw.lock() {
                    m.insert(key, p.clone());
                }
                Ok(p)
            }
        }
    }

    /// Opens a job's scope over the granted tables.
    pub async fn open(&self, cfg: ScopeConfig, accountant: Arc<dyn Accountant>) -> Result<JobScope> {
        let pool = Arc::new(crate::limits::NoisyPool::new(cfg.memory_limit));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .build_arc()?;
        let config = SessionConfig::new()
            .with_information_schema(false)
            .with_target_partitions(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let mut tables = HashMap::new();
        for t in &cfg.tables {
            let grant = cfg
                .scenario
                .table(&t.spec.name)
                .ok_or_else(|| Error::Internal(format!("table `{}` is not in the scenario", t.spec.name)))?
                .clone();
            let raw = self.raw_provider(t).await?;
            // A developer's own table is tokenized under a key of its own:
            // equal values there and in public data give unrelated tokens.
            let key = if t.developer_supplied {
                cfg.token_key.derive(&format!("developer table {}", t.spec.name))
            } else {
                cfg.token_key.clone()
            };
            // Registration checked a file's declared-complete columns for
            // nulls, NaN and infinities; in-memory rows were checked by no
            // one, so their columns are read unchecked only where they are
            // found clean (else the view's finite check stays).
            let verified: Vec<String> = match &t.data {
                TableData::File(_) => t.complete_columns.clone(),
                TableData::Batches(b) => t
                    .complete_columns
                    .iter()
                    .filter(|c| batches_clean(b, c))
                    .cloned()
                    .collect(),
            };
            let view = ViewProvider::new(
                raw,
                &t.spec,
                &key,
                &t.complete_columns,
                &verified,
                t.units.clone(),
            )?;
            let schema = view.schema.clone();
            let exact_rows = match &t.data {
                TableData::Batches(b) if !view.filter_units => {
                    Some(b.iter().map(|b| b.num_rows() as u64).sum())
                }
                _ => None,
            };
            ctx.register_table(t.spec.name.as_str(), Arc::new(view))?;
            tables.insert(
                t.spec.name.clone(),
                TableInfo {
                    spec: t.spec.clone(),
                    grant,
                    unit_unique: t.unit_unique,
                    developer_supplied: t.developer_supplied,
                    complete: t.complete_columns.iter().cloned().collect(),
                    ranges: t
                        .column_ranges
                        .iter()
                        .map(|(n, lo, hi)| (n.clone(), (*lo, *hi)))
                        .collect(),
                    version: t.version.clone(),
                    view_schema: schema,
                    exact_rows,
                },
            );
        }
        let relations = RelationPlanner::new(ctx.state());
        Ok(JobScope {
            session: RwLock::new(Snapshot::of(&ctx)),
            ctx,
            relations,
            agreement_id: cfg.agreement_id,
            scenario: cfg.scenario,
            tables,
            accountant,
            rng: Mutex::new(SystemRng::default()),
            queries: AtomicU32::new(0),
            row_functions: Mutex::new(HashMap::new()),
            query_timeout: cfg.query_timeout,
            pool,
        })
    }
}

pub(crate) async fn open_file(spec: &DatasetSpec) -> Result<Arc<dyn TableProvider>> {
    let ctx = SessionContext::new();
    let format = spec
        .effective_format()
        .ok_or_else(|| Error::InvalidDataset("unknown file format".into()))?;
    let registered = match format {
        DataFormat::Csv => {
            ctx.register_csv("t", &spec.path, CsvReadOptions::new().has_header(true))
                .await
        }
        DataFormat::Parquet => {
            ctx.register_parquet("t", &spec.path, ParquetReadOptions::default())
                .await
        }
    };
    registered.map_err(|e| {
        // The error's text can quote the file (a header, a value): only
        // its kind is logged (invariant I17).
        tracing::warn!(path = %spec.path, error = df_error_kind(&e), "dataset file could not be opened");
        Error::InvalidDataset(format!(
            "the file of `{}` could not be read as {format:?}",
            spec.name
        ))
    })?;
    ctx.table_provider("t").await.map_err(df_error)
}

/// A released result: what the job receives, and its lineage.
#[derive(Debug, Clone)]
pub struct Release {
    /// The protected table.
    pub batch: RecordBatch,
    /// The same table as an Arrow IPC stream.
    pub ipc: Vec<u8>,
    /// How it was produced.
    pub lineage: QueryLineage,
    /// True when execution failed or ran out of time and the release is
    /// the mechanism's answer on an empty input. Never shown to a job or a
    /// developer (it would be the very oracle I14 forbids); tests use it
    /// to prove total evaluation leaves nothing to fall back from.
    pub(crate) fallback: bool,
}

/// A job's policy-scoped handle on the data.
pub struct JobScope {
    /// The session with the desensitized views. Never handed out.
    ctx: SessionContext,
    /// A snapshot of `ctx`'s state and a task context made from it, taken
    /// when the scope opens and again when a row function is registered
    /// (the only change a scope's session sees), so a query does not copy
    /// the session's function registries to plan and run.
    session: RwLock<Snapshot>,
    agreement_id: String,
    scenario: ScenarioSpec,
    tables: HashMap<String, TableInfo>,
    accountant: Arc<dyn Accountant>,
    /// Noise source. A mutex because queries of one job run one at a time
    /// anyway, and a sampler must never share bytes between draws.
    rng: Mutex<SystemRng>,
    queries: AtomicU32,
    /// Row functions the job registered, by name.
    row_functions: Mutex<HashMap<String, Arc<dyn RowFunction>>>,
    /// Wall-clock limit of one query's execution (noise is added per
    /// query, `crate::limits`).
    query_timeout: std::time::Duration,
    /// The session's memory pool, whose limit is drawn per query.
    pool: Arc<crate::limits::NoisyPool>,
    /// Plans the tables a query reads (see [`RelationPlanner`]).
    relations: RelationPlanner,
}

/// A session's state, frozen, and the task context its plans run in.
#[derive(Clone)]
struct Snapshot {
    state: Arc<SessionState>,
    task: Arc<TaskContext>,
}

impl Snapshot {
    fn of(ctx: &SessionContext) -> Snapshot {
        let state = ctx.state();
        Snapshot {
            task: state.task_ctx(),
            state: Arc::new(state),
        }
    }
}

impl std::fmt::Debug for JobScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobScope")
            .field("agreement_id", &self.agreement_id)
            .finish_non_exhaustive()
    }
}

impl JobScope {
    /// Names and version hashes of the tables in scope.
    pub fn tables(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .tables
            .values()
            .map(|t| (t.spec.name.clone(), t.version.clone()))
            .collect();
        v.sort();
        v
    }

    /// Queries run so far.
    pub fn queries_run(&self) -> u32 {
        self.queries.load(Ordering::SeqCst)
    }

    /// Whether a row function named `name` could be registered now: the
    /// name is free and fewer than [`udf::MAX_ROW_FUNCTIONS`] are. Checked
    /// before a row function is prepared, so a refused registration costs
    /// nothing (runtime/ABI.md).
    pub fn row_function_admissible(&self, name: &str) -> Result<()> {
        let registered = self
            .row_functions
            .lock()
            .map_err(|_| Error::Internal("row function registry poisoned".into()))?;
        self.name_free(&registered, name)
    }

    fn name_free(&self, registered: &HashMap<String, Arc<dyn RowFunction>>, name: &str) -> Result<()> {
        let state = self.snapshot()?.state;
        let taken = registered.contains_key(name)
            || state.scalar_functions().contains_key(name)
            || state.aggregate_functions().contains_key(name)
            || state.window_functions().contains_key(name);
        if taken {
            return Err(Error::InvalidQuery(format!(
                "a function named `{name}` already exists; choose another name"
            )));
        }
        if registered.len() >= udf::MAX_ROW_FUNCTIONS {
            return Err(Error::ResourcesExhausted(format!(
                "a job may register at most {} row functions",
                udf::MAX_ROW_FUNCTIONS
            )));
        }
        Ok(())
    }

    /// Makes a job's row function callable in this scope's queries, where
    /// the policy lets it feed aggregates only (see [`crate::udf`]).
    pub fn register_row_function(&self, f: Arc<dyn RowFunction>) -> Result<()> {
        let name = f.name().to_string();
        udf::valid_name(&name).map_err(Error::InvalidQuery)?;
        let arity = f.arity();
        if arity == 0 || arity > udf::MAX_ROW_FUNCTION_ARGS {
            return Err(Error::InvalidQuery(format!(
                "a row function takes 1 to {} arguments",
                udf::MAX_ROW_FUNCTION_ARGS
            )));
        }
        let (lo, hi) = f.bounds();
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return Err(Error::InvalidQuery(
                "a row function's bounds must be finite with lo <= hi".into(),
            ));
        }
        let mut registered = self
            .row_functions
            .lock()
            .map_err(|_| Error::Internal("row function registry poisoned".into()))?;
        self.name_free(&registered, &name)?;
        self.ctx
            .register_udf(ScalarUDF::new_from_impl(udf::GuestUdf::new(f.clone())));
        *self
            .session
            .write()
            .map_err(|_| Error::Internal("session snapshot poisoned".into()))? = Snapshot::of(&self.ctx);
        registered.insert(name, f);
        Ok(())
    }

    /// The session's current snapshot (see [`JobScope::session`]).
    fn snapshot(&self) -> Result<Snapshot> {
        self.session
            .read()
            .map(|s| s.clone())
            .map_err(|_| Error::Internal("session snapshot poisoned".into()))
    }

    /// Checks `sql` against the scenario, charges the budget, runs it and
    /// returns the protected result. Refusals change nothing and cost
    /// nothing; once the budget is charged it stays charged, even if
    /// execution then fails, so failures cannot be used to probe for free.
    pub async fn query(&self, sql: &str) -> Result<Release> {
        let rules = &self.scenario.release;
        let n = self.queries.fetch_add(1, Ordering::SeqCst);
        if n >= rules.max_queries_per_job {
            return Err(Error::ResourcesExhausted(format!(
                "a job may run at most {} queries",
                rules.max_queries_per_job
            )));
        }
        let (prepared, mut lineage) = self.prepare(sql).await?;
        self.accountant.charge(&lineage.cost, &lineage)?;
        // From here on the outcome must not depend on any single row (I14):
        // an execution that fails or runs out of time (memory for
        // aggregation state, a join's fan-out, the query's time limit) is
        // released as the mechanism's answer on an empty input, charged as
        // usual. The cause goes to the platform's log only.
        // Both limits are drawn afresh with noise, so that whether a query
        // crosses one is not a noise-free bit about one row.
        let timeout = {
            let mut rng = self
                .rng
                .lock()
                .map_err(|_| Error::Internal("noise source lock poisoned".into()))?;
            self.pool.redraw(&mut *rng)?;
            crate::limits::noisy_timeout(self.query_timeout, &mut *rng)?
        };
        let executed = tokio::time::timeout(timeout, self.execute(&prepared)).await;
        let (batches, mut fallback) = match executed {
            Ok(Ok(batches)) => (batches, false),
            Ok(Err(e)) => {
                tracing::warn!(agreement = %self.agreement_id, error = %e, "query execution failed; released as an empty input");
                (Vec::new(), true)
            }
            Err(_) => {
                tracing::warn!(agreement = %self.agreement_id, "query ran past its time limit; released as an empty input");
                (Vec::new(), true)
            }
        };
        let batch = {
            let mut rng = self
                .rng
                .lock()
                .map_err(|_| Error::Internal("noise source lock poisoned".into()))?;
            match release::finish(&prepared, &batches, &mut *rng) {
                Ok(b) => b,
                Err(e) if !batches.is_empty() => {
                    tracing::warn!(agreement = %self.agreement_id, error = %e, "shaping the release failed; released as an empty input");
                    fallback = true;
                    release::finish(&prepared, &[], &mut *rng)?
                }
                Err(e) => return Err(e),
            }
        };
        let ipc = release::to_ipc(&batch)?;
        lineage.released_groups = Some(batch.num_rows() as u64);
        lineage.output_hash = Some(hex::encode(scenarios::ledger::sha256(&ipc)));
        lineage.output_bytes = Some(ipc.len() as u64);
        self.accountant.release(&lineage)?;
        Ok(Release {
            batch,
            ipc,
            lineage,
            fallback,
        })
    }
}

impl JobScope {
    /// Plans, checks and prepares `sql` under the scenario's rules: the
    /// mechanism ready to run and the query's lineage, before any charge.
    /// Shared by [`JobScope::query`] and the auditing harness
    /// (`crate::audit`), so what is audited is what queries run.
    pub(crate) async fn prepare(&self, sql: &str) -> Result<(release::Prepared, QueryLineage)> {
        let rules = &self.scenario.release;
        let state = self.snapshot()?.state;
        let plan = state
            .create_logical_plan(sql)
            .await
            .map_err(|e| Error::InvalidQuery(planning_message(&e)))?;
        let analyzed = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})
            .map_err(|e| Error::InvalidQuery(planning_message(&e)))?;
        let row_functions = self
            .row_functions
            .lock()
            .map_err(|_| Error::Internal("row function registry poisoned".into()))?
            .clone();
        let checked = {
            let bounds: HashMap<String, (f64, f64)> = row_functions
                .iter()
                .map(|(n, f)| (n.clone(), f.bounds()))
                .collect();
            Checker::new(&self.tables, &self.scenario.aggregates, &bounds).check(&analyzed)?
        };
        let plan_hash = hex::encode(scenarios::ledger::sha256(
            analyzed.display_indent().to_string().as_bytes(),
        ));
        let prepared = release::prepare(&checked, rules, &row_functions, &self.relations)?;
        let lineage = QueryLineage {
            agreement_id: self.agreement_id.clone(),
            purpose: self.scenario.purpose.clone(),
            sql: sql.to_string(),
            plan_hash,
            tables: checked
                .uses
                .iter()
                .filter_map(|u| self.tables.get(&u.table))
                .map(|t| release::TableRef {
                    dataset: t.spec.name.clone(),
                    version: t.version.clone(),
                })
                .collect(),
            mechanism: prepared.mechanism.clone(),
            cost: prepared.cost,
            released_groups: None,
            output_hash: None,
            output_bytes: None,
        };
        Ok((prepared, lineage))
    }

    /// The exact row count [`JobScope::execute`] may read for `table`.
    #[cfg(test)]
    pub(crate) fn exact_rows(&self, table: &str) -> Option<u64> {
        self.tables.get(table).and_then(|t| t.exact_rows)
    }

    /// Runs the mechanism's plan to completion. A count of all the rows of
    /// one table whose row count is known exactly ([`TableInfo::exact_rows`])
    /// is read from that count, as DataFusion answers the same raw query
    /// from the table's statistics: the figures are the ones the plan
    /// would compute, and their time depends on no row at all.
    pub(crate) async fn execute(&self, prepared: &release::Prepared) -> Result<Vec<RecordBatch>> {
        let known = prepared
            .whole_table_count
            .as_ref()
            .and_then(|t| self.tables.get(t))
            .and_then(|t| t.exact_rows);
        if let Some(rows) = known {
            return Ok(vec![prepared.counts(rows)?]);
        }
        self.execute_plan(prepared).await
    }

    /// Runs the mechanism's plan to completion, never reading a count from
    /// a table's length: what a file-backed table always runs (the audit
    /// runs it on its in-memory neighbours).
    ///
    /// The mechanism's plan is the platform's own, built in the shape in
    /// which it is to run, so it is analyzed (type coercion) and planned
    /// as built, with no pass of the logical optimizer: no rewrite can move
    /// or merge anything across the operators that guard the rows (I14),
    /// and a query does not pay for rewrites that find nothing to do (some
    /// 0.3 ms a query, measured). The joined tables inside its
    /// [`QueryInput`](crate::exec::QueryInput) are still optimized when
    /// they are planned (projections reach the scans, joins take their
    /// keys).
    pub(crate) async fn execute_plan(&self, prepared: &release::Prepared) -> Result<Vec<RecordBatch>> {
        let (physical, task) = self.physical_plan(prepared).await?;
        datafusion::physical_plan::collect(physical, task)
            .await
            .map_err(df_error)
    }

    /// The physical plan [`JobScope::execute_plan`] runs, and the task
    /// context it runs in.
    pub(crate) async fn physical_plan(
        &self,
        prepared: &release::Prepared,
    ) -> Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>)> {
        let Snapshot { state, task } = self.snapshot()?;
        let analyzed = state
            .analyzer()
            .execute_and_check(prepared.plan.clone(), state.config_options(), |_, _| {})
            .map_err(df_error)?;
        let physical = state
            .query_planner()
            .create_physical_plan(&analyzed, state.as_ref())
            .await
            .map_err(df_error)?;
        Ok((physical, task))
    }
}

/// DataFusion planning errors name tables, columns and SQL syntax, never
/// data values; strip the error-kind prefix for readability.
fn planning_message(e: &DataFusionError) -> String {
    let s = e.strip_backtrace();
    // DataFusion appends a bug-report hint to some type errors; it is noise
    // for a developer whose query simply has the wrong types.
    let s = s
        .split("\nThis issue was likely caused")
        .next()
        .unwrap_or("")
        .to_string();
    let mut s = [
        "Error during planning: ",
        "SQL error: ",
        "Schema error: ",
        "Internal error: ",
    ]
    .iter()
    .find_map(|p| s.strip_prefix(p).map(str::to_string))
    .unwrap_or(s);
    if s.len() > 400 {
        let cut = (0..=400).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        s.truncate(cut);
        s.push_str("...");
    }
    s
}
