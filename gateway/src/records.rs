//! Stored records of the gateway: datasets, jobs and developer-supplied
//! tables as they are written to the store (`crate::store::Record`), with
//! the rules that read only a record (`JobRecord::disclosed`).
//!
//! Layering: records sit below both the services (`jobs`, `ledger`,
//! `local`, ...) and the HTTP layer (`api`). They never import from `api`;
//! `api` re-exports them for its handlers. Their serialized form is what
//! the store holds and what the API shows, so it must not change.

use crate::store::{Record, Table};
use chrono::{DateTime, Utc};
use runtime::Usage;
use sandbox::profile::DatasetProfile;
use sandbox::TableRef;
use scenarios::budget::Budget;
use scenarios::catalog::DatasetSpec;
use scenarios::policy::TableGrant;
use serde::{Deserialize, Serialize};
use serde_json::Value;

// ----- datasets ----------------------------------------------------------------

/// One registered version of a dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// `ds_...`
    pub id: String,
    /// Table name.
    pub name: String,
    /// Version number, from 1.
    pub version: u32,
    /// Providing party.
    pub owner: String,
    /// Providing party's name.
    pub owner_name: String,
    /// Registration. Its `path` is the canonical path of the accepted file
    /// (what the sandbox reads), not what the provider wrote.
    pub spec: DatasetSpec,
    /// The file as the provider named it, relative to its storage location
    /// (absent for versions registered by server path before I17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// What profiling found.
    pub profile: DatasetProfile,
    /// Registration time (the dataset's update time).
    pub created_at: DateTime<Utc>,
    /// The operator's review of this version's desensitization rules (R2).
    /// Versions stored before reviews existed count as approved.
    #[serde(default = "RulesReview::legacy")]
    pub review: RulesReview,
}

/// State of a rules review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// Waiting for the operator; the version is not used.
    Pending,
    /// Approved: the version can be read.
    Approved,
    /// Rejected with a reason; the version is never used.
    Rejected,
}

/// The operator's review of a dataset version's desensitization rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesReview {
    /// State.
    pub status: ReviewStatus,
    /// Reviewer.
    pub by: Option<String>,
    /// When.
    pub at: Option<DateTime<Utc>>,
    /// Reason (required when rejected).
    pub reason: Option<String>,
}

impl RulesReview {
    fn legacy() -> RulesReview {
        RulesReview {
            status: ReviewStatus::Approved,
            by: None,
            at: None,
            reason: Some("registered before rule reviews".into()),
        }
    }

    /// Waiting for the operator.
    pub fn pending() -> RulesReview {
        RulesReview {
            status: ReviewStatus::Pending,
            by: None,
            at: None,
            reason: None,
        }
    }

    /// True once the operator approved the rules.
    pub fn approved(&self) -> bool {
        self.status == ReviewStatus::Approved
    }
}

impl Record for DatasetRecord {
    const TABLE: Table = Table::Datasets;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.name.clone(), self.owner.clone()]
    }
}

// ----- jobs --------------------------------------------------------------------

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, not started.
    Queued,
    /// Running.
    Running,
    /// Finished; its output was released to the developer.
    Succeeded,
    /// Stopped with an error; nothing was released.
    Failed,
    /// Finished; the output waits for the operator's review (the airlock).
    AwaitingReview,
    /// Finished, but the operator's review withheld the output.
    Withheld,
}

impl JobStatus {
    /// True once the runner is done with the job.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::AwaitingReview => "awaiting_review",
            JobStatus::Withheld => "withheld",
        }
    }
}

/// One query a job received, with its ledger entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryRecord {
    /// Ledger sequence number of the release entry.
    pub ledger_seq: Option<u64>,
    /// SQL as submitted.
    pub sql: String,
    /// Epsilon charged.
    pub epsilon: f64,
    /// Groups released.
    pub released_groups: Option<u64>,
    /// Hash of the released bytes.
    pub output_hash: Option<String>,
    /// Table rows metered for fees: the catalog row counts of the tables
    /// the query read (R15).
    #[serde(default)]
    pub rows_metered: u64,
}

/// A job as stored and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    /// `job_...`
    pub id: String,
    /// Agreement it runs under.
    pub agreement_id: String,
    /// Submitting developer.
    pub developer_id: String,
    /// Scenario of the agreement.
    pub scenario_id: String,
    /// SHA-256 of the module: the job's code identity.
    pub module_hash: String,
    /// Module size in bytes.
    pub module_size: u64,
    /// Milliseconds spent compiling the module at submission (0 when it
    /// was already compiled). It depends on the module alone, so it is
    /// always shown, and it counts against the job's time limit and fees.
    #[serde(default)]
    pub compile_ms: u64,
    /// SHA-256 of the parameters, if any.
    pub params_hash: Option<String>,
    /// State.
    pub status: JobStatus,
    /// Submission time.
    pub submitted_at: DateTime<Utc>,
    /// Start time.
    pub started_at: Option<DateTime<Utc>>,
    /// End time.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<Value>,
    /// Resources used.
    pub usage: Option<Usage>,
    /// Queries answered.
    pub queries: Vec<QueryRecord>,
    /// Datasets read, with versions.
    pub tables: Vec<TableRef>,
    /// Hash of the released output.
    pub output_hash: Option<String>,
    /// Size of the released output.
    pub output_bytes: Option<u64>,
    /// Job log messages (bounded).
    pub logs: Vec<String>,
    /// The airlock: automatic check verdicts and the operator's decision.
    #[serde(default)]
    pub review: Option<Value>,
    /// Queries charged to the budget while the job ran, counted in the
    /// same transaction as each charge: above zero, the job has been
    /// handed (or was about to be handed) protected results.
    #[serde(default)]
    pub charged_queries: u32,
    /// Budget charged to the job's queries, counted like `charged_queries`.
    #[serde(default)]
    pub charged: Budget,
    /// What the job is metered at while its details are withheld (R15,
    /// I14), fixed when it starts.
    #[serde(default)]
    pub allowance: Option<Allowance>,
}

/// Data-independent metering of a job whose details are withheld: what
/// it could have used, not what it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// The job's fuel limit.
    pub fuel: u64,
    /// Catalog rows of every table in the job's scope, metered for each
    /// query it received.
    pub rows_per_query: u64,
}

impl JobRecord {
    /// True once the job has been handed a protected query result (or a
    /// query of it was charged).
    pub fn received_results(&self) -> bool {
        self.charged_queries > 0 || !self.queries.is_empty()
    }

    /// The disclosure rule (I14): the developer sees a job's metadata
    /// (logs, usage, error, queries, tables, output hash, review) only
    /// once it has ended and either its output was released to them or it
    /// never received a query result, so that everything about it is a
    /// function of its code and parameters. A job held for review,
    /// withheld, failed or stopped after receiving a result discloses
    /// nothing beyond its status, ids, hashes and times.
    pub fn disclosed(&self) -> bool {
        self.status.is_final() && (self.status == JobStatus::Succeeded || !self.received_results())
    }
}

impl Record for JobRecord {
    const TABLE: Table = Table::Jobs;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![
            self.agreement_id.clone(),
            self.developer_id.clone(),
            self.status.as_str().to_string(),
        ]
    }
}

// ----- developer-supplied tables (R5) -------------------------------------------

/// A developer's table inside one agreement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrivateDataset {
    /// `pd_...`
    pub id: String,
    /// The only agreement whose jobs see it.
    pub agreement_id: String,
    /// Its developer.
    pub developer_id: String,
    /// Registration (the file is the platform's copy).
    pub spec: DatasetSpec,
    /// Columns jobs may use, and how.
    pub grant: TableGrant,
    /// What profiling found.
    pub profile: DatasetProfile,
    /// When it was brought in.
    pub created_at: DateTime<Utc>,
}

impl Record for PrivateDataset {
    const TABLE: Table = Table::PrivateDatasets;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.agreement_id.clone()]
    }
}

/// A job record with every field filled, for tests of what is shown of it.
#[cfg(test)]
pub(crate) fn test_job(status: JobStatus, charged_queries: u32) -> JobRecord {
    JobRecord {
        id: "job_1".into(),
        agreement_id: "ag_1".into(),
        developer_id: "pt_1".into(),
        scenario_id: "sc_1".into(),
        module_hash: "ab".into(),
        module_size: 10,
        compile_ms: 3,
        params_hash: None,
        status,
        submitted_at: Utc::now(),
        started_at: Some(Utc::now()),
        finished_at: status.is_final().then(Utc::now),
        error: Some(serde_json::json!({"kind": "guest_failed", "message": "status 424242"})),
        usage: Some(Usage::default()),
        queries: Vec::new(),
        tables: Vec::new(),
        output_hash: Some("cd".into()),
        output_bytes: Some(2),
        logs: vec!["a secret".into()],
        review: Some(serde_json::json!({"decision": {"reason": "too fine"}})),
        charged_queries,
        charged: Budget::default(),
        allowance: None,
    }
}
