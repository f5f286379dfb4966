//! The embedded store: one SQLite file (write-ahead log, group commit)
//! holding parties, the catalog, scenarios, applications, agreements,
//! privacy budgets, modules, jobs, the lineage ledger and its signed
//! checkpoints. Every state change and its ledger entry are written in one
//! transaction, so either both are durable or neither is; [`Store::tx`]
//! returns only once the transaction is on disk (see [`durable`]).
//!
//! Ledger entries and checkpoints are append-only: triggers refuse every
//! `UPDATE` and `DELETE` on them, and no code path removes them, so the
//! retention of R22 (at least three years) is "forever" unless a regulator
//! rules otherwise. The storage format is described in `docs/ledger.md`.
//!
//! Records are stored as JSON documents of the `scenarios` types plus the
//! columns needed to look them up; the ledger stores each entry's canonical
//! text and leaf hash exactly as they were hashed.

use crate::error::{ServiceError, ServiceResult};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use scenarios::ledger::{leaf_hash, parse_hash, Checkpoint, EntryTail, Hash, SignedCheckpoint, ZERO_HASH};
use scenarios::party::{Actor, Role};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parties (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, org_id TEXT, created_by TEXT);
CREATE TABLE IF NOT EXISTS organizations (id TEXT PRIMARY KEY, name TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (id TEXT PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scenarios (id TEXT PRIMARY KEY, status TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS applications (
    id TEXT PRIMARY KEY, developer_id TEXT NOT NULL, scenario_id TEXT NOT NULL,
    status TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agreements (
    id TEXT PRIMARY KEY, developer_id TEXT NOT NULL, scenario_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS objections (
    id TEXT PRIMARY KEY, dataset TEXT NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS risk_reports (id TEXT PRIMARY KEY, filed_by TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (id TEXT PRIMARY KEY, state TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS consents (
    scenario_id TEXT NOT NULL, unit TEXT NOT NULL, granted INTEGER NOT NULL,
    recorded_by TEXT NOT NULL, recorded_at TEXT NOT NULL, PRIMARY KEY (scenario_id, unit));
CREATE TABLE IF NOT EXISTS verifications (
    developer_id TEXT NOT NULL, scenario_id TEXT NOT NULL, unit TEXT NOT NULL, checks INTEGER NOT NULL,
    PRIMARY KEY (developer_id, scenario_id, unit));
CREATE TABLE IF NOT EXISTS verification_spent (
    developer_id TEXT NOT NULL, scenario_id TEXT NOT NULL,
    epsilon INTEGER NOT NULL, delta INTEGER NOT NULL, rho INTEGER NOT NULL,
    PRIMARY KEY (developer_id, scenario_id));
CREATE TABLE IF NOT EXISTS data_applications (
    id TEXT PRIMARY KEY, developer_id TEXT NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS demands (id TEXT PRIMARY KEY, raised_by TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quality_flags (id TEXT PRIMARY KEY, dataset TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS private_datasets (id TEXT PRIMARY KEY, agreement_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS storage (id TEXT PRIMARY KEY, dir TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (id TEXT PRIMARY KEY, owner TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS modules (hash TEXT PRIMARY KEY, bytes BLOB NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, agreement_id TEXT NOT NULL, developer_id TEXT NOT NULL,
    status TEXT NOT NULL, body TEXT NOT NULL, output BLOB);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_subject ON ledger (subject);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY, root TEXT NOT NULL, time TEXT NOT NULL, signature TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TABLE IF NOT EXISTS published_checkpoints (size INTEGER PRIMARY KEY, published_at TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS published_no_update BEFORE UPDATE ON published_checkpoints
    BEGIN SELECT RAISE(ABORT, 'publications are append-only'); END;
CREATE TRIGGER IF NOT EXISTS published_no_delete BEFORE DELETE ON published_checkpoints
    BEGIN SELECT RAISE(ABORT, 'publications are append-only'); END;
CREATE TABLE IF NOT EXISTS cosignatures (
    size INTEGER NOT NULL, witness TEXT NOT NULL, line TEXT NOT NULL, cosigned_at TEXT NOT NULL,
    PRIMARY KEY (size, witness));
CREATE TRIGGER IF NOT EXISTS cosignatures_no_update BEFORE UPDATE ON cosignatures
    BEGIN SELECT RAISE(ABORT, 'cosignatures are append-only'); END;
CREATE TRIGGER IF NOT EXISTS cosignatures_no_delete BEFORE DELETE ON cosignatures
    BEGIN SELECT RAISE(ABORT, 'cosignatures are append-only'); END;
"#;

/// Current schema version, recorded in `meta`.
/// Version 2 added `budgets.rho_spent` (zCDP accounting); version 3 the
/// `checkpoints` table and the append-only triggers (created by `SCHEMA`);
/// version 4 `parties.org_id` and the organizations; version 5 the
/// `published_checkpoints` table (created by `SCHEMA`); version 6 replaced
/// the per-(developer, scenario) `budgets` table by the population budgets
/// of [`population`] (the old rows are carried over, see
/// [`population::migrate_budgets`]).
const SCHEMA_VERSION: &str = "6";

/// The store: the SQLite connection machinery around [`StoreOps`].
///
/// Every read and write of the store's data is a [`StoreOps`] method;
/// `Store`'s own reads and writes (`ledger`, `checkpoints`,
/// `put_checkpoint`, `put_cosignature`, `party_by_token`, `get`, `list`,
/// `consent_counts`, ...) are thin wrappers that run one of them through
/// [`Store::read`] or [`Store::tx`] (the connection or transaction each
/// always used), so a second backend replaces what is left here and
/// implements `StoreOps`, and nothing else changes. What is left is the
/// connection machinery, bound to SQLite:
/// - [`Store::open`]: opening the file, its pragmas, the schema and its
///   migrations (including `record_creators` and
///   `population::migrate_budgets`, which run on the raw connection
///   before any unit of work exists);
/// - [`Store::tx`], [`Store::write`], [`Store::read`],
///   [`Store::read_consistent`] and the group-commit writer behind them
///   ([`durable`], [`Store::sync_stats`]): how a unit of work gets a
///   connection or transaction and when it is durable;
/// - [`Store::snapshot`]: a consistent copy of the whole database file
///   (`VACUUM INTO` on a connection of its own), a backend's own backup.
pub struct Store {
    /// Owns the write connection (group commit).
    committer: durable::Committer,
    /// A second connection for reads: it sees committed data only.
    reader: Mutex<Connection>,
    /// The database file.
    path: std::path::PathBuf,
}

pub mod durable;
pub mod population;
pub use durable::SyncStats;

impl From<rusqlite::Error> for ServiceError {
    fn from(e: rusqlite::Error) -> Self {
        ServiceError::Internal(format!("store: {e}"))
    }
}

/// The SQLite implementation of [`StoreOps`]: what a unit of work runs
/// on. Only this module can name it (and reach the connection inside);
/// callers get a `&dyn StoreOps`, so no caller can run SQL of its own or
/// depend on SQLite's types.
pub(in crate::store) struct Tx<'a>(&'a Connection);

impl<'a> Tx<'a> {
    /// The connection, for the store's own operations.
    pub(in crate::store) fn sql(&self) -> &'a Connection {
        self.0
    }
}

/// The store's operations inside a unit of work ([`Store::tx`],
/// [`Store::write`], [`Store::read`], [`Store::read_consistent`] hand
/// their closure a `&dyn StoreOps`): every read and write of the store's
/// data, namely the records' documents, parties (by id, by token hash, by
/// role), modules, job outputs, consents and their counts, verification
/// counters, population budgets, the ledger (appends, entries, leaf
/// hashes, size), signed checkpoints, their publications and witness
/// cosignatures. Nothing in it names the database; `Tx` implements it on
/// SQLite, and a second backend would implement it again (with the
/// connection machinery of [`Store`]). Callers use the typed functions of
/// this module ([`get_in`], [`list_in`], [`put`], [`append`],
/// [`party_in`], [`population::charge_in`], ...) or `Store`'s wrappers
/// ([`Store::ledger`], [`Store::put_checkpoint`], ...), which call these
/// methods; whatever one unit of work does through them commits or is
/// undone together (a state change with its ledger entry).
pub trait StoreOps {
    /// Appends one entry to the ledger; returns its sequence number.
    fn append(&self, e: NewEntry, time: DateTime<Utc>) -> ServiceResult<u64>;
    /// The JSON body of document `id` of `table`.
    fn document(&self, table: Table, id: &str) -> ServiceResult<Option<String>>;
    /// The JSON bodies of `table` where `column = value` (all when `None`),
    /// in insertion order.
    fn documents(&self, table: Table, filter: Option<(&str, &str)>) -> ServiceResult<Vec<String>>;
    /// Inserts or replaces document `id` of `table` (its JSON `body`) with
    /// its lookup columns, in the order of the table's `columns`.
    fn put_document(&self, table: Table, id: &str, cols: &[&str], body: &str) -> ServiceResult<()>;
    /// All parties, by creation.
    fn parties(&self) -> ServiceResult<Vec<Party>>;
    /// One party by id.
    fn party(&self, id: &str) -> ServiceResult<Option<Party>>;
    /// Creates a party with a token hash.
    fn insert_party(&self, p: &Party, token_hash: &str) -> ServiceResult<()>;
    /// Replaces a party's token hash; false when there is no such party.
    fn set_token_hash(&self, id: &str, token_hash: &str) -> ServiceResult<bool>;
    /// Stores module bytes under their hash (idempotent).
    fn put_module(&self, hash: &str, bytes: &[u8], now: &str) -> ServiceResult<()>;
    /// Stores a job's output bytes.
    fn set_job_output(&self, id: &str, output: &[u8]) -> ServiceResult<()>;
    /// Records consent (or its withdrawal) of `units` for a scenario;
    /// returns how many records changed.
    fn put_consents(
        &self,
        scenario_id: &str,
        units: &[String],
        granted: bool,
        by: &str,
        at: &str,
    ) -> ServiceResult<usize>;
    /// Counts one more check of each unit; returns the counts before.
    fn count_verifications(
        &self,
        developer: &str,
        scenario: &str,
        units: &[String],
    ) -> ServiceResult<Vec<u32>>;
    /// A population's record ([`population::population_in`]).
    fn population(&self, kind: &str) -> ServiceResult<Option<population::PopulationRecord>>;
    /// Every population's record ([`population::populations_in`]).
    fn populations(&self) -> ServiceResult<Vec<population::PopulationRecord>>;
    /// A population, opened when new ([`population::open_population_in`]).
    fn open_population(
        &self,
        kind: &str,
        units: u64,
        now: DateTime<Utc>,
    ) -> ServiceResult<population::PopulationRecord>;
    /// Charges a query at every level ([`population::charge_in`]).
    fn charge(&self, ch: &population::Charge, now: DateTime<Utc>) -> ServiceResult<Vec<serde_json::Value>>;
    /// Lowers a population's caps ([`population::lower_caps_in`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "the decision's parts, as `population::lower_caps_in`"
    )]
    fn lower_caps(
        &self,
        actor: &Actor,
        kind: &str,
        units: u64,
        caps: scenarios::population::Caps,
        reason: &str,
        now: DateTime<Utc>,
    ) -> ServiceResult<population::PopulationRecord>;
    /// Opens a population's next period ([`population::renew_in`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "the decision's parts, as `population::renew_in`"
    )]
    fn renew(
        &self,
        actor: &Actor,
        kind: &str,
        units: u64,
        caps: Option<scenarios::population::Caps>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> ServiceResult<population::PopulationRecord>;
    /// Every level of a period ([`population::levels_in`]).
    fn levels(
        &self,
        p: &population::PopulationRecord,
        period: u64,
    ) -> ServiceResult<Vec<population::LevelView>>;
    /// The population level's spend ([`population::population_spend_in`]).
    fn population_spend(
        &self,
        p: &population::PopulationRecord,
        period: u64,
    ) -> ServiceResult<scenarios::population::Spend>;
    /// Adds a verification batch's cost ([`population::add_verification_spent`]).
    fn add_verification_spent(
        &self,
        developer: &str,
        scenario: &str,
        cost: &scenarios::budget::Budget,
    ) -> ServiceResult<()>;
    /// Spent through cross-verification ([`population::verification_spent_in`]).
    fn verification_spent(&self, developer: &str, scenario: &str)
        -> ServiceResult<scenarios::budget::Budget>;

    // ----- what `Store`'s own reads and writes run ---------------------------

    /// The party holding a token hash.
    fn party_by_token(&self, token_hash: &str) -> ServiceResult<Option<Party>>;
    /// Number of parties with `role`.
    fn count_role(&self, role: Role) -> ServiceResult<u64>;
    /// Module bytes by hash.
    fn module(&self, hash: &str) -> ServiceResult<Option<Vec<u8>>>;
    /// A job's stored output bytes.
    fn job_output(&self, id: &str) -> ServiceResult<Option<Vec<u8>>>;
    /// Units that consented to a scenario.
    fn consenting_units(&self, scenario_id: &str) -> ServiceResult<std::collections::HashSet<String>>;
    /// Consent counts per scenario: (scenario, granted, withdrawn), by
    /// scenario.
    fn consent_counts(&self) -> ServiceResult<Vec<(String, u64, u64)>>;
    /// Ledger entries `from..` (at most `limit`), in order.
    fn ledger(&self, from: u64, limit: u64) -> ServiceResult<Vec<StoredEntry>>;
    /// Ledger entries about one subject, in order.
    fn ledger_for(&self, subject: &str) -> ServiceResult<Vec<StoredEntry>>;
    /// The number of the first ledger entry about `subject` with `action`.
    fn ledger_seq_of(&self, subject: &str, action: &str) -> ServiceResult<Option<u64>>;
    /// Leaf hashes of ledger entries `from..` (at most `limit`), in order.
    fn ledger_hashes(&self, from: u64, limit: u64) -> ServiceResult<Vec<(u64, Hash)>>;
    /// Number of ledger entries.
    fn ledger_size(&self) -> ServiceResult<u64>;
    /// Records a signed checkpoint; the first one stored for a size is kept.
    fn put_checkpoint(&self, cp: &SignedCheckpoint) -> ServiceResult<()>;
    /// Records that the stored checkpoint of `size` was published
    /// (idempotent).
    fn put_publication(&self, size: u64, at: DateTime<Utc>) -> ServiceResult<()>;
    /// Records a witness's cosignature line of the checkpoint of `size`
    /// (only the line: its ledger entry is the caller's); the first line
    /// stored for a (size, witness) is kept: false when there was one.
    fn put_cosignature(&self, size: u64, witness: &str, line: &str, at: DateTime<Utc>)
        -> ServiceResult<bool>;
    /// The cosignature lines of the checkpoint of `size`, by witness key.
    fn cosignatures(&self, size: u64) -> ServiceResult<Vec<String>>;
    /// The largest cosigned checkpoint size in `from..=to`.
    fn largest_cosigned(&self, from: u64, to: u64) -> ServiceResult<Option<u64>>;
    /// Published checkpoints with `from <= size <= to`, in order.
    fn published_checkpoints(&self, from: u64, to: u64) -> ServiceResult<Vec<SignedCheckpoint>>;
    /// Stored checkpoints with `from <= size <= to`, in order.
    fn checkpoints(&self, from: u64, to: u64) -> ServiceResult<Vec<SignedCheckpoint>>;
    /// The stored checkpoint of largest size at most `at`.
    fn checkpoint_at_or_before(&self, at: u64) -> ServiceResult<Option<SignedCheckpoint>>;
}

impl StoreOps for Tx<'_> {
    fn append(&self, e: NewEntry, time: DateTime<Utc>) -> ServiceResult<u64> {
        append_sql(self, e, time)
    }
    fn document(&self, table: Table, id: &str) -> ServiceResult<Option<String>> {
        let c = self.sql();
        let sql = format!("SELECT body FROM {} WHERE id = ?1", table.name());
        Ok(c.query_row(&sql, [id], |r| r.get(0)).optional()?)
    }
    fn documents(&self, table: Table, filter: Option<(&str, &str)>) -> ServiceResult<Vec<String>> {
        documents_sql(self, table, filter)
    }
    fn put_document(&self, table: Table, id: &str, cols: &[&str], body: &str) -> ServiceResult<()> {
        put_document_sql(self, table, id, cols, body)
    }
    fn parties(&self) -> ServiceResult<Vec<Party>> {
        parties_where(self.sql(), "ORDER BY created_at, id", &[])
    }
    fn party(&self, id: &str) -> ServiceResult<Option<Party>> {
        Ok(parties_where(self.sql(), "WHERE id = ?1", &[&id])?.pop())
    }
    fn insert_party(&self, p: &Party, token_hash: &str) -> ServiceResult<()> {
        self.sql().execute(
            "INSERT INTO parties (id, name, role, token_hash, created_at, org_id, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![p.id, p.name, p.role.as_str(), token_hash, p.created_at, p.organization, p.created_by],
        )?;
        Ok(())
    }
    fn set_token_hash(&self, id: &str, token_hash: &str) -> ServiceResult<bool> {
        Ok(self.sql().execute(
            "UPDATE parties SET token_hash = ?2 WHERE id = ?1",
            params![id, token_hash],
        )? == 1)
    }
    fn put_module(&self, hash: &str, bytes: &[u8], now: &str) -> ServiceResult<()> {
        self.sql().execute(
            "INSERT OR IGNORE INTO modules (hash, bytes, created_at) VALUES (?1, ?2, ?3)",
            params![hash, bytes, now],
        )?;
        Ok(())
    }
    fn set_job_output(&self, id: &str, output: &[u8]) -> ServiceResult<()> {
        self.sql()
            .execute("UPDATE jobs SET output = ?2 WHERE id = ?1", params![id, output])?;
        Ok(())
    }
    fn put_consents(
        &self,
        scenario_id: &str,
        units: &[String],
        granted: bool,
        by: &str,
        at: &str,
    ) -> ServiceResult<usize> {
        put_consents_sql(self, scenario_id, units, granted, by, at)
    }
    fn count_verifications(
        &self,
        developer: &str,
        scenario: &str,
        units: &[String],
    ) -> ServiceResult<Vec<u32>> {
        count_verifications_sql(self, developer, scenario, units)
    }
    fn population(&self, kind: &str) -> ServiceResult<Option<population::PopulationRecord>> {
        population::population_sql(self, kind)
    }
    fn populations(&self) -> ServiceResult<Vec<population::PopulationRecord>> {
        population::populations_sql(self)
    }
    fn open_population(
        &self,
        kind: &str,
        units: u64,
        now: DateTime<Utc>,
    ) -> ServiceResult<population::PopulationRecord> {
        population::open_population_sql(self, kind, units, now)
    }
    fn charge(&self, ch: &population::Charge, now: DateTime<Utc>) -> ServiceResult<Vec<serde_json::Value>> {
        population::charge_sql(self, ch, now)
    }
    fn lower_caps(
        &self,
        actor: &Actor,
        kind: &str,
        units: u64,
        caps: scenarios::population::Caps,
        reason: &str,
        now: DateTime<Utc>,
    ) -> ServiceResult<population::PopulationRecord> {
        population::lower_caps_sql(self, actor, kind, units, caps, reason, now)
    }
    fn renew(
        &self,
        actor: &Actor,
        kind: &str,
        units: u64,
        caps: Option<scenarios::population::Caps>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> ServiceResult<population::PopulationRecord> {
        population::renew_sql(self, actor, kind, units, caps, reason, now)
    }
    fn levels(
        &self,
        p: &population::PopulationRecord,
        period: u64,
    ) -> ServiceResult<Vec<population::LevelView>> {
        population::levels_sql(self, p, period)
    }
    fn population_spend(
        &self,
        p: &population::PopulationRecord,
        period: u64,
    ) -> ServiceResult<scenarios::population::Spend> {
        population::population_spend_sql(self, p, period)
    }
    fn add_verification_spent(
        &self,
        developer: &str,
        scenario: &str,
        cost: &scenarios::budget::Budget,
    ) -> ServiceResult<()> {
        population::add_verification_spent_sql(self, developer, scenario, cost)
    }
    fn verification_spent(
        &self,
        developer: &str,
        scenario: &str,
    ) -> ServiceResult<scenarios::budget::Budget> {
        population::verification_spent_sql(self, developer, scenario)
    }
    fn party_by_token(&self, token_hash: &str) -> ServiceResult<Option<Party>> {
        Ok(parties_where(self.sql(), "WHERE token_hash = ?1", &[&token_hash])?.pop())
    }
    fn count_role(&self, role: Role) -> ServiceResult<u64> {
        Ok(self.sql().query_row(
            "SELECT COUNT(*) FROM parties WHERE role = ?1",
            [role.as_str()],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
    fn module(&self, hash: &str) -> ServiceResult<Option<Vec<u8>>> {
        Ok(self
            .sql()
            .query_row("SELECT bytes FROM modules WHERE hash = ?1", [hash], |r| r.get(0))
            .optional()?)
    }
    fn job_output(&self, id: &str) -> ServiceResult<Option<Vec<u8>>> {
        Ok(self
            .sql()
            .query_row("SELECT output FROM jobs WHERE id = ?1", [id], |r| {
                r.get::<_, Option<Vec<u8>>>(0)
            })
            .optional()?
            .flatten())
    }
    fn consenting_units(&self, scenario_id: &str) -> ServiceResult<std::collections::HashSet<String>> {
        let mut st = self
            .sql()
            .prepare("SELECT unit FROM consents WHERE scenario_id = ?1 AND granted = 1")?;
        let rows = st.query_map([scenario_id], |r| r.get::<_, String>(0))?;
        let mut out = std::collections::HashSet::new();
        for r in rows {
            out.insert(r?);
        }
        Ok(out)
    }
    fn consent_counts(&self) -> ServiceResult<Vec<(String, u64, u64)>> {
        let mut st = self.sql().prepare(
            "SELECT scenario_id, SUM(granted), SUM(1 - granted) FROM consents GROUP BY scenario_id ORDER BY scenario_id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
    fn ledger(&self, from: u64, limit: u64) -> ServiceResult<Vec<StoredEntry>> {
        let mut st = self
            .sql()
            .prepare("SELECT seq, hash, body FROM ledger WHERE seq >= ?1 ORDER BY seq LIMIT ?2")?;
        let rows = st.query_map(params![sql_int(from), sql_int(limit)], stored_entry)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
    fn ledger_for(&self, subject: &str) -> ServiceResult<Vec<StoredEntry>> {
        let mut st = self
            .sql()
            .prepare("SELECT seq, hash, body FROM ledger WHERE subject = ?1 ORDER BY seq")?;
        let rows = st.query_map([subject], stored_entry)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
    fn ledger_seq_of(&self, subject: &str, action: &str) -> ServiceResult<Option<u64>> {
        Ok(self
            .sql()
            .query_row(
                "SELECT MIN(seq) FROM ledger WHERE subject = ?1 AND action = ?2",
                [subject, action],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .map(|s| s as u64))
    }
    fn ledger_hashes(&self, from: u64, limit: u64) -> ServiceResult<Vec<(u64, Hash)>> {
        let mut st = self
            .sql()
            .prepare_cached("SELECT seq, hash FROM ledger WHERE seq >= ?1 ORDER BY seq LIMIT ?2")?;
        let rows = st.query_map(params![sql_int(from), sql_int(limit)], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, hex) = row?;
            let h = parse_hash(&hex).ok_or_else(|| internal(format!("entry {seq} has a malformed hash")))?;
            out.push((seq, h));
        }
        Ok(out)
    }
    fn ledger_size(&self) -> ServiceResult<u64> {
        Ok(self
            .sql()
            .query_row("SELECT COALESCE(MAX(seq) + 1, 0) FROM ledger", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }
    fn put_checkpoint(&self, cp: &SignedCheckpoint) -> ServiceResult<()> {
        self.sql().execute(
            "INSERT OR IGNORE INTO checkpoints (size, root, time, signature) VALUES (?1, ?2, ?3, ?4)",
            params![
                cp.checkpoint.size as i64,
                cp.checkpoint.root,
                cp.checkpoint
                    .time
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                cp.signature
            ],
        )?;
        Ok(())
    }
    fn put_publication(&self, size: u64, at: DateTime<Utc>) -> ServiceResult<()> {
        self.sql().execute(
            "INSERT OR IGNORE INTO published_checkpoints (size, published_at) VALUES (?1, ?2)",
            params![
                sql_int(size),
                at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ],
        )?;
        Ok(())
    }
    fn put_cosignature(
        &self,
        size: u64,
        witness: &str,
        line: &str,
        at: DateTime<Utc>,
    ) -> ServiceResult<bool> {
        let n = self.sql().execute(
            "INSERT OR IGNORE INTO cosignatures (size, witness, line, cosigned_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                sql_int(size),
                witness,
                line,
                at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ],
        )?;
        Ok(n == 1)
    }
    fn cosignatures(&self, size: u64) -> ServiceResult<Vec<String>> {
        let mut st = self
            .sql()
            .prepare_cached("SELECT line FROM cosignatures WHERE size = ?1 ORDER BY witness")?;
        let rows = st.query_map(params![sql_int(size)], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
    fn largest_cosigned(&self, from: u64, to: u64) -> ServiceResult<Option<u64>> {
        let mut st = self
            .sql()
            .prepare_cached("SELECT MAX(size) FROM cosignatures WHERE size >= ?1 AND size <= ?2")?;
        let size = st.query_row(params![sql_int(from), sql_int(to)], |r| {
            r.get::<_, Option<i64>>(0)
        })?;
        Ok(size.map(|s| s as u64))
    }
    fn published_checkpoints(&self, from: u64, to: u64) -> ServiceResult<Vec<SignedCheckpoint>> {
        checkpoint_rows_sql(
            self,
            "SELECT c.size, c.root, c.time, c.signature FROM checkpoints c \
             JOIN published_checkpoints p ON p.size = c.size WHERE c.size >= ?1 AND c.size <= ?2 ORDER BY c.size",
            from,
            to,
        )
    }
    fn checkpoints(&self, from: u64, to: u64) -> ServiceResult<Vec<SignedCheckpoint>> {
        checkpoint_rows_sql(
            self,
            "SELECT size, root, time, signature FROM checkpoints WHERE size >= ?1 AND size <= ?2 ORDER BY size",
            from,
            to,
        )
    }
    fn checkpoint_at_or_before(&self, at: u64) -> ServiceResult<Option<SignedCheckpoint>> {
        Ok(checkpoint_rows_sql(
            self,
            "SELECT size, root, time, signature FROM checkpoints WHERE size >= ?1 AND size <= ?2 \
             ORDER BY size DESC LIMIT 1",
            0,
            at,
        )?
        .pop())
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// A ledger entry before it is sequenced and hashed. Its canonical text is
/// rendered when it is made, on the caller's thread, so that appending it
/// on the store's writer thread costs little more than the insert.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// `noun.verb` (stored in its own column for lookups).
    pub action: String,
    /// Record acted on (stored in its own column for lookups).
    pub subject: String,
    /// Canonical text from `actor` on.
    tail: EntryTail,
}

impl NewEntry {
    /// An entry by an authenticated party.
    pub fn by(actor: &Actor, action: &str, subject: &str, details: serde_json::Value) -> NewEntry {
        NewEntry::new(&actor.id, actor.role.as_str(), action, subject, &details)
    }
    /// An entry by the platform itself.
    pub fn system(action: &str, subject: &str, details: serde_json::Value) -> NewEntry {
        NewEntry::new("system", "system", action, subject, &details)
    }

    fn new(actor: &str, role: &str, action: &str, subject: &str, details: &serde_json::Value) -> NewEntry {
        NewEntry {
            action: action.into(),
            subject: subject.into(),
            tail: EntryTail::new(actor, role, action, subject, details),
        }
    }
}

/// A stored ledger entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEntry {
    /// Sequence number.
    pub seq: u64,
    /// Hex leaf hash.
    pub hash: String,
    /// Canonical text as hashed.
    pub body: String,
}

/// A party as stored (without its token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Party {
    /// `pt_...`
    pub id: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Creation time.
    pub created_at: String,
    /// Organization it is a member of (`org_...`).
    pub organization: String,
    /// The party that created it (`pt_...`); absent for a party from the
    /// bootstrap (I16).
    #[serde(default)]
    pub created_by: Option<String>,
}

/// An organization: a provider department, the operator, a developer
/// company or the regulator, with its member parties (R24).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Organization {
    /// `org_...`
    pub id: String,
    /// Name.
    pub name: String,
    /// Unified social credit code or other registration number, if given.
    #[serde(default)]
    pub registration: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Standing records that bear on eligibility (R10).
    #[serde(default)]
    pub standing: Vec<scenarios::party::Standing>,
}

/// All parties, inside a connection or transaction.
pub fn parties_in(c: &dyn StoreOps) -> ServiceResult<Vec<Party>> {
    c.parties()
}

/// The organization of a party, inside a connection or transaction.
pub fn organization_of(c: &dyn StoreOps, party_id: &str) -> ServiceResult<Option<Organization>> {
    match party_in(c, party_id)? {
        Some(p) => get_in(c, Table::Organizations, &p.organization),
        None => Ok(None),
    }
}

impl Record for Organization {
    const TABLE: Table = Table::Organizations;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.name.clone()]
    }
}

/// One party by id, inside a connection or transaction.
pub fn party_in(c: &dyn StoreOps, id: &str) -> ServiceResult<Option<Party>> {
    c.party(id)
}

/// Parties matching a `WHERE`/`ORDER BY` suffix.
fn parties_where(c: &Connection, suffix: &str, args: &[&dyn rusqlite::ToSql]) -> ServiceResult<Vec<Party>> {
    let sql = format!("SELECT id, name, role, created_at, org_id, created_by FROM parties {suffix}");
    let mut st = c.prepare(&sql)?;
    let rows = st.query_map(args, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name, role, created_at, org, created_by) = row?;
        let role = Role::parse(&role).ok_or_else(|| internal("bad role in store"))?;
        out.push(Party {
            // Parties created before organizations existed are their own.
            organization: org.unwrap_or_else(|| id.clone()),
            id,
            name,
            role,
            created_at,
            created_by,
        });
    }
    Ok(out)
}

/// The chain of accounts that created `party`, nearest first, with their
/// organizations (I16). A chain longer than
/// [`scenarios::party::MAX_CREATOR_CHAIN`], or one that loops, is refused
/// as a corrupt store.
pub fn creators_in(c: &dyn StoreOps, party: &Party) -> ServiceResult<Vec<scenarios::party::Creator>> {
    let mut out: Vec<scenarios::party::Creator> = Vec::new();
    let mut next = party.created_by.clone();
    while let Some(id) = next {
        if out.len() >= scenarios::party::MAX_CREATOR_CHAIN
            || id == party.id
            || out.iter().any(|c| c.id == id)
        {
            return Err(internal("the chain of party creators loops or is too long"));
        }
        // A creator that no longer exists still counts, by id.
        let (org, up) = match party_in(c, &id)? {
            Some(p) => (p.organization, p.created_by),
            None => (String::new(), None),
        };
        out.push(scenarios::party::Creator { id, org });
        next = up;
    }
    Ok(out)
}

/// Records, on parties created before `parties.created_by` existed, the
/// creator their `party.create` ledger entry names (I16); bootstrap
/// parties keep none. Runs on every open: idempotent.
fn record_creators(c: &Connection) -> rusqlite::Result<usize> {
    let has: bool = c.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('parties') WHERE name = 'created_by'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        c.execute_batch("ALTER TABLE parties ADD COLUMN created_by TEXT;")?;
    }
    c.execute(
        "UPDATE parties SET created_by = (
             SELECT json_extract(l.body, '$.actor') FROM ledger l
             WHERE l.action = 'party.create' AND l.subject = parties.id
             ORDER BY l.seq LIMIT 1)
         WHERE created_by IS NULL
           AND EXISTS (SELECT 1 FROM ledger l WHERE l.action = 'party.create' AND l.subject = parties.id)",
        [],
    )
}

/// Runs store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ServiceResult<T> + Send + 'static,
) -> ServiceResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
}

fn unfinished() -> ServiceError {
    ServiceError::Internal("a store operation failed before it finished (see the server log)".into())
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// The last entry appended on a store's writer thread, while nothing has
/// been undone there since (see [`durable::undo_count`]).
struct LastAppended {
    undo_count: u64,
    seq: u64,
    hash: String,
}

thread_local! {
    static LAST_APPENDED: std::cell::RefCell<Option<LastAppended>> = const { std::cell::RefCell::new(None) };
}

/// Appends one entry to the ledger inside `tx`; returns its sequence number.
///
/// On the writer thread the previous entry's number and hash are those
/// this thread appended last, unless a change was undone since; reading
/// them back from the table instead costs about a sixth of an append.
pub fn append(tx: &dyn StoreOps, e: NewEntry, time: DateTime<Utc>) -> ServiceResult<u64> {
    tx.append(e, time)
}

/// [`append`] on SQLite.
fn append_sql(tx: &Tx<'_>, e: NewEntry, time: DateTime<Utc>) -> ServiceResult<u64> {
    let tx = tx.sql();
    let undo_count = durable::undo_count();
    let cached = LAST_APPENDED.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|l| Some(l.undo_count) == undo_count)
            .map(|l| (l.seq + 1, l.hash.clone()))
    });
    let (seq, prev) = match cached {
        Some(next) => next,
        None => tx
            .prepare_cached("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get::<_, i64>(0)? as u64 + 1, r.get(1)?)))
            .optional()?
            .unwrap_or_else(|| (0, hex::encode(ZERO_HASH))),
    };
    let text = e.tail.complete(seq, &prev, &time);
    let hash = hex::encode(leaf_hash(text.as_bytes()));
    tx.prepare_cached("INSERT INTO ledger (seq, hash, action, subject, body) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![seq as i64, hash, e.action, e.subject, text])?;
    if let Some(undo_count) = undo_count {
        LAST_APPENDED.with(|l| {
            *l.borrow_mut() = Some(LastAppended {
                undo_count,
                seq,
                hash,
            })
        });
    }
    Ok(seq)
}

fn to_json<T: Serialize>(v: &T) -> ServiceResult<String> {
    serde_json::to_string(v).map_err(internal)
}

fn from_json<T: DeserializeOwned>(s: &str) -> ServiceResult<T> {
    serde_json::from_str(s).map_err(internal)
}

impl Store {
    /// Opens (creating if needed) `dir/invis.db`.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("invis.db");
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Commits reach the log without waiting; `tx` waits for the group
        // flush instead (see `durable`).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Checkpoint the log every 4000 pages (16 MiB) rather than 1000:
        // the writer pays for checkpoints, and fewer of them copy the same
        // hot pages less often (about +5% durable appends with 32 clients).
        conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(population::SCHEMA)?;
        let version: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| r.get(0))
            .optional()?;
        match version.as_deref() {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(old @ ("1" | "2" | "3" | "4" | "5")) => {
                let tx = conn.unchecked_transaction()?;
                if old == "1" {
                    tx.execute_batch("ALTER TABLE budgets ADD COLUMN rho_spent INTEGER NOT NULL DEFAULT 0;")?;
                }
                let has_org: bool = tx.query_row(
                    "SELECT COUNT(*) > 0 FROM pragma_table_info('parties') WHERE name = 'org_id'",
                    [],
                    |r| r.get(0),
                )?;
                if !has_org {
                    tx.execute_batch("ALTER TABLE parties ADD COLUMN org_id TEXT;")?;
                }
                let moved = population::migrate_budgets(&tx, Utc::now())
                    .map_err(|e| anyhow::anyhow!("moving the budgets to populations: {e:?}"))?;
                if moved > 0 {
                    tracing::info!(rows = moved, "budgets moved to population accounting");
                }
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'schema'",
                    [SCHEMA_VERSION],
                )?;
                tx.commit()?;
            }
            Some(v) => anyhow::bail!("store schema version {v} is not supported by this binary"),
        }
        let recorded = record_creators(&conn)?;
        if recorded > 0 {
            tracing::info!(parties = recorded, "party creators recovered from the ledger");
        }
        // Make the log durable once, with its directory entry, before any
        // commit is acknowledged against it.
        let wal = dir.join("invis.db-wal");
        std::fs::File::open(&wal)?.sync_all()?;
        std::fs::File::open(dir)?.sync_all()?;
        let reader = Connection::open(&path)?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;
        reader.pragma_update(None, "query_only", "ON")?;
        Ok(Store {
            committer: durable::Committer::start(conn, wal)?,
            reader: Mutex::new(reader),
            path,
        })
    }

    /// Group-commit counters.
    pub fn sync_stats(&self) -> SyncStats {
        self.committer.stats()
    }

    /// Runs `f` as one all-or-nothing unit of change on the writer thread:
    /// its writes are kept only if it returns `Ok`, and this returns only
    /// once they are durable. Concurrent callers share a transaction and a
    /// flush (see [`durable`]); each caller's changes still stand or fall
    /// alone. Blocks the calling thread; async code uses [`Store::write`].
    pub fn tx<T, F>(&self, f: F) -> ServiceResult<T>
    where
        F: FnOnce(&dyn StoreOps) -> ServiceResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.tx_sql(move |t: &Tx<'_>| f(t))
    }

    /// [`Store::tx`], for the store's own work on SQLite.
    pub(in crate::store) fn tx_sql<T, F>(&self, f: F) -> ServiceResult<T>
    where
        F: FnOnce(&Tx<'_>) -> ServiceResult<T> + Send + 'static,
        T: Send + 'static,
    {
        // Filled in on the writer or flusher thread. If the unit is dropped
        // unanswered (it panicked), only the caller holds the slot any more.
        let slot = Arc::new(Mutex::new(None::<ServiceResult<T>>));
        let theirs = slot.clone();
        self.submit(f, move |answer| {
            *theirs.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer);
        })?;
        self.committer.wait(|| Arc::strong_count(&slot) == 1);
        let answer = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        answer.unwrap_or_else(|| Err(unfinished()))
    }

    /// [`Store::tx`] for async callers: waits without holding a thread.
    pub async fn write<T, F>(&self, f: F) -> ServiceResult<T>
    where
        F: FnOnce(&dyn StoreOps) -> ServiceResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(
            move |t: &Tx<'_>| f(t),
            move |a| {
                let _ = reply.send(a);
            },
        )?;
        answer.await.map_err(|_| unfinished())?
    }

    /// Queues `f` on the writer; `deliver` gets its result once the batch's
    /// outcome is known (and is dropped uncalled if `f` panics).
    fn submit<T, F>(&self, f: F, deliver: impl FnOnce(ServiceResult<T>) + Send + 'static) -> ServiceResult<()>
    where
        F: FnOnce(&Tx<'_>) -> ServiceResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let work: durable::Work = Box::new(move |conn: &Connection| {
            let result = f(&Tx(conn));
            durable::Done {
                ok: result.is_ok(),
                answer: Box::new(move |outcome: durable::Outcome| {
                    deliver(match outcome {
                        Ok(()) => result,
                        Err(e) => result.and(Err(ServiceError::Internal(e))),
                    })
                }),
            }
        });
        if self.committer.submit(work) {
            Ok(())
        } else {
            Err(ServiceError::Internal("the store's writer has stopped".into()))
        }
    }

    /// Writes a consistent copy of the database (committed data) to
    /// `target`, a new file, while writers carry on.
    pub fn snapshot(&self, target: &Path) -> ServiceResult<()> {
        let target = target
            .to_str()
            .ok_or_else(|| ServiceError::BadRequest("the snapshot path is not UTF-8".into()))?;
        let c = Connection::open(&self.path)?;
        c.busy_timeout(std::time::Duration::from_secs(10))?;
        c.execute("VACUUM INTO ?1", [target])?;
        Ok(())
    }

    /// Runs a read-only closure on committed data, on the reading
    /// connection (writers are not held up).
    pub fn read<T>(&self, f: impl FnOnce(&dyn StoreOps) -> ServiceResult<T>) -> ServiceResult<T> {
        self.read_sql(|t| f(t))
    }

    /// [`Store::read`], for the store's own work on SQLite.
    pub(in crate::store) fn read_sql<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> ServiceResult<T>,
    ) -> ServiceResult<T> {
        let c = self
            .reader
            .lock()
            .map_err(|_| ServiceError::Internal("store lock poisoned".into()))?;
        f(&Tx(&c))
    }

    /// Like [`Store::read`], inside one read transaction: every query of
    /// `f` sees the same committed state.
    pub fn read_consistent<T>(&self, f: impl FnOnce(&dyn StoreOps) -> ServiceResult<T>) -> ServiceResult<T> {
        self.read_sql(|c| {
            let tx = c.sql().unchecked_transaction()?;
            let out = f(&Tx(&tx))?;
            tx.finish()?;
            Ok(out)
        })
    }

    // ----- parties ---------------------------------------------------------

    /// Creates a party with a token hash.
    pub fn insert_party(tx: &dyn StoreOps, p: &Party, token_hash: &str) -> ServiceResult<()> {
        tx.insert_party(p, token_hash)
    }

    /// Replaces a party's token hash (a new token, or revocation with a
    /// value no token hashes to); false when there is no such party.
    pub fn set_token_hash(tx: &dyn StoreOps, id: &str, token_hash: &str) -> ServiceResult<bool> {
        tx.set_token_hash(id, token_hash)
    }

    /// The party holding a token hash.
    pub fn party_by_token(&self, token_hash: &str) -> ServiceResult<Option<Party>> {
        self.read(|c| c.party_by_token(token_hash))
    }

    /// The party holding a token hash, with the chain of accounts that
    /// created it (read together).
    pub fn actor_by_token(
        &self,
        token_hash: &str,
    ) -> ServiceResult<Option<(Party, Vec<scenarios::party::Creator>)>> {
        self.read(|c| match c.party_by_token(token_hash)? {
            Some(p) => {
                let creators = creators_in(c, &p)?;
                Ok(Some((p, creators)))
            }
            None => Ok(None),
        })
    }

    /// All parties.
    pub fn parties(&self) -> ServiceResult<Vec<Party>> {
        self.read(|c| c.parties())
    }

    /// Number of parties with `role`.
    pub fn count_role(&self, role: Role) -> ServiceResult<u64> {
        self.read(|c| c.count_role(role))
    }

    // ----- generic JSON documents -------------------------------------------

    /// Loads the JSON body of `id` from `table`.
    pub fn get<T: DeserializeOwned>(&self, table: Table, id: &str) -> ServiceResult<Option<T>> {
        self.read(|c| get_in(c, table, id))
    }

    /// Lists bodies of `table` where `column = value` (or all when `None`).
    pub fn list<T: DeserializeOwned>(
        &self,
        table: Table,
        filter: Option<(&str, &str)>,
    ) -> ServiceResult<Vec<T>> {
        self.read(|c| list_in(c, table, filter))
    }

    /// Stores module bytes under their hash (idempotent).
    pub fn put_module(tx: &dyn StoreOps, hash: &str, bytes: &[u8], now: &str) -> ServiceResult<()> {
        tx.put_module(hash, bytes, now)
    }

    /// Module bytes by hash.
    pub fn module(&self, hash: &str) -> ServiceResult<Option<Vec<u8>>> {
        self.read(|c| c.module(hash))
    }

    /// A job's released output.
    pub fn job_output(&self, id: &str) -> ServiceResult<Option<Vec<u8>>> {
        self.read(|c| c.job_output(id))
    }

    // ----- ledger ---------------------------------------------------------------

    /// Entries `from..` (at most `limit`).
    pub fn ledger(&self, from: u64, limit: u64) -> ServiceResult<Vec<StoredEntry>> {
        self.read(|c| c.ledger(from, limit))
    }

    /// Entries about one subject, in order.
    pub fn ledger_for(&self, subject: &str) -> ServiceResult<Vec<StoredEntry>> {
        self.read(|c| c.ledger_for(subject))
    }

    /// The first entry about `subject` with `action`, if any.
    pub fn ledger_seq_of(&self, subject: &str, action: &str) -> ServiceResult<Option<u64>> {
        self.read(|c| c.ledger_seq_of(subject, action))
    }

    /// Leaf hashes of entries `from..` (at most `limit`), in order.
    pub fn ledger_hashes(&self, from: u64, limit: u64) -> ServiceResult<Vec<(u64, Hash)>> {
        self.read(|c| c.ledger_hashes(from, limit))
    }

    /// Records a signed checkpoint (idempotent per size: the first one
    /// signed for a size is kept).
    pub fn put_checkpoint(&self, cp: &SignedCheckpoint) -> ServiceResult<()> {
        let cp = cp.clone();
        self.tx(move |tx| tx.put_checkpoint(&cp))
    }

    /// Records that the stored checkpoint of `size` was published (shown
    /// to every party; see `gateway::ledger`). Idempotent.
    pub fn put_publication(&self, size: u64, at: DateTime<Utc>) -> ServiceResult<()> {
        self.tx(move |tx| tx.put_publication(size, at))
    }

    /// Records a witness's cosignature line of the stored checkpoint of
    /// `size` (already verified by the caller) and its ledger entry, in one
    /// transaction. The first line stored for a (size, witness) is kept:
    /// returns false when there was one already.
    pub fn put_cosignature(
        &self,
        size: u64,
        witness: &str,
        line: &str,
        entry: NewEntry,
        at: DateTime<Utc>,
    ) -> ServiceResult<bool> {
        let (witness, line) = (witness.to_string(), line.to_string());
        self.tx(move |tx| {
            let stored = tx.put_cosignature(size, &witness, &line, at)?;
            if stored {
                append(tx, entry, at)?;
            }
            Ok(stored)
        })
    }

    /// The cosignature lines stored for the checkpoint of `size`, by
    /// witness verifier key.
    pub fn cosignatures(&self, size: u64) -> ServiceResult<Vec<String>> {
        self.read(move |c| c.cosignatures(size))
    }

    /// The largest cosigned checkpoint size in `from..=to`.
    pub fn largest_cosigned(&self, from: u64, to: u64) -> ServiceResult<Option<u64>> {
        self.read(move |c| c.largest_cosigned(from, to))
    }

    /// Published checkpoints with `from <= size <= to`, in order.
    pub fn published_checkpoints(&self, from: u64, to: u64) -> ServiceResult<Vec<SignedCheckpoint>> {
        self.read(|c| c.published_checkpoints(from, to))
    }

    /// Stored checkpoints with `from <= size <= to`, in order.
    pub fn checkpoints(&self, from: u64, to: u64) -> ServiceResult<Vec<SignedCheckpoint>> {
        self.read(|c| c.checkpoints(from, to))
    }

    /// The stored checkpoint of largest size at most `at`.
    pub fn checkpoint_at_or_before(&self, at: u64) -> ServiceResult<Option<SignedCheckpoint>> {
        self.read(|c| c.checkpoint_at_or_before(at))
    }

    /// Number of ledger entries.
    pub fn ledger_size(&self) -> ServiceResult<u64> {
        self.read(|c| c.ledger_size())
    }
}

/// A count or position as SQLite stores it: saturated at `i64::MAX`.
pub(in crate::store) fn sql_int(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

/// A ledger row (`seq, hash, body`) as a [`StoredEntry`].
fn stored_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEntry> {
    Ok(StoredEntry {
        seq: r.get::<_, i64>(0)? as u64,
        hash: r.get(1)?,
        body: r.get(2)?,
    })
}

/// Checkpoints selected by `sql` (with `from` and `to` bound to `?1` and
/// `?2`), on SQLite.
fn checkpoint_rows_sql(c: &Tx<'_>, sql: &str, from: u64, to: u64) -> ServiceResult<Vec<SignedCheckpoint>> {
    let mut st = c.sql().prepare_cached(sql)?;
    let rows = st.query_map(params![sql_int(from), sql_int(to)], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (size, root, time, signature) = row?;
        let time = DateTime::parse_from_rfc3339(&time)
            .map_err(internal)?
            .with_timezone(&Utc);
        out.push(SignedCheckpoint {
            checkpoint: Checkpoint { size, root, time },
            signature,
            note: None,
        });
    }
    Ok(out)
}

/// Tables holding JSON documents.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    /// Dataset versions.
    Datasets,
    /// Scenarios.
    Scenarios,
    /// Applications.
    Applications,
    /// Agreements.
    Agreements,
    /// Jobs.
    Jobs,
    /// Objections (R7).
    Objections,
    /// Stop-and-report risk reports (R20).
    RiskReports,
    /// Security incidents (R25).
    Incidents,
    /// Organizations (R24).
    Organizations,
    /// Data applications (R19).
    DataApplications,
    /// Scenario demands (R9).
    Demands,
    /// Data-quality flags (R6).
    QualityFlags,
    /// Developer-supplied tables (R5).
    PrivateDatasets,
    /// Storage locations the operator assigned to providers (I17).
    Storage,
    /// Files providers uploaded (I17).
    Files,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Datasets => "datasets",
            Table::Scenarios => "scenarios",
            Table::Applications => "applications",
            Table::Agreements => "agreements",
            Table::Jobs => "jobs",
            Table::Objections => "objections",
            Table::RiskReports => "risk_reports",
            Table::Incidents => "incidents",
            Table::Organizations => "organizations",
            Table::DataApplications => "data_applications",
            Table::Demands => "demands",
            Table::QualityFlags => "quality_flags",
            Table::PrivateDatasets => "private_datasets",
            Table::Storage => "storage",
            Table::Files => "files",
        }
    }
    fn columns(self) -> &'static [&'static str] {
        match self {
            Table::Datasets => &["name", "owner"],
            Table::Scenarios => &["status"],
            Table::Applications => &["developer_id", "scenario_id", "status"],
            Table::Agreements => &["developer_id", "scenario_id"],
            Table::Jobs => &["agreement_id", "developer_id", "status"],
            Table::Objections => &["dataset", "status"],
            Table::RiskReports => &["filed_by"],
            Table::Incidents => &["state"],
            Table::Organizations => &["name"],
            Table::DataApplications => &["developer_id", "status"],
            Table::Demands => &["raised_by"],
            Table::QualityFlags => &["dataset"],
            Table::PrivateDatasets => &["agreement_id"],
            Table::Storage => &["dir"],
            Table::Files => &["owner"],
        }
    }
}

/// A document stored in one of the JSON tables, with its lookup columns.
pub trait Record: Serialize {
    /// Its table.
    const TABLE: Table;
    /// Its id.
    fn id(&self) -> &str;
    /// Lookup column values, in the order of the table's columns.
    fn lookup(&self) -> Vec<String>;
}

/// The wire name of a unit-like enum (its serde form).
pub fn wire_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Record for scenarios::workflow::Scenario {
    const TABLE: Table = Table::Scenarios;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![wire_name(&self.status)]
    }
}

impl Record for scenarios::workflow::Application {
    const TABLE: Table = Table::Applications;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![
            self.developer_id.clone(),
            self.scenario_id.clone(),
            wire_name(&self.status),
        ]
    }
}

impl Record for scenarios::workflow::Agreement {
    const TABLE: Table = Table::Agreements;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.developer_id.clone(), self.scenario_id.clone()]
    }
}

impl Record for scenarios::workflow::DataApplication {
    const TABLE: Table = Table::DataApplications;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.developer_id.clone(), wire_name(&self.status)]
    }
}

impl Record for scenarios::feedback::Demand {
    const TABLE: Table = Table::Demands;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.by.clone()]
    }
}

impl Record for scenarios::feedback::QualityFlag {
    const TABLE: Table = Table::QualityFlags;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.dataset.clone()]
    }
}

impl Record for scenarios::oversight::Objection {
    const TABLE: Table = Table::Objections;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.dataset.clone(), wire_name(&self.status)]
    }
}

impl Record for scenarios::oversight::RiskReport {
    const TABLE: Table = Table::RiskReports;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.filed_by.clone()]
    }
}

impl Record for scenarios::oversight::Incident {
    const TABLE: Table = Table::Incidents;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![wire_name(&self.state)]
    }
}

/// Inserts or updates a record with its lookup columns.
pub fn put<R: Record>(tx: &dyn StoreOps, r: &R) -> ServiceResult<()> {
    let cols = r.lookup();
    let refs: Vec<&str> = cols.iter().map(String::as_str).collect();
    put_in(tx, R::TABLE, r.id(), &refs, r)
}

/// Loads one document inside a connection or transaction.
pub fn get_in<T: DeserializeOwned>(c: &dyn StoreOps, table: Table, id: &str) -> ServiceResult<Option<T>> {
    c.document(table, id)?.map(|b| from_json(&b)).transpose()
}

/// Lists documents inside a connection or transaction.
pub fn list_in<T: DeserializeOwned>(
    c: &dyn StoreOps,
    table: Table,
    filter: Option<(&str, &str)>,
) -> ServiceResult<Vec<T>> {
    c.documents(table, filter)?.iter().map(|b| from_json(b)).collect()
}

/// [`StoreOps::documents`] on SQLite.
fn documents_sql(c: &Tx<'_>, table: Table, filter: Option<(&str, &str)>) -> ServiceResult<Vec<String>> {
    let c = c.sql();
    let mut bodies: Vec<String> = Vec::new();
    match filter {
        Some((col, val)) => {
            if !table.columns().contains(&col) {
                return Err(internal(format!("no column {col}")));
            }
            let sql = format!(
                "SELECT body FROM {} WHERE {col} = ?1 ORDER BY rowid",
                table.name()
            );
            let mut st = c.prepare(&sql)?;
            for b in st.query_map([val], |r| r.get::<_, String>(0))? {
                bodies.push(b?);
            }
        }
        None => {
            let sql = format!("SELECT body FROM {} ORDER BY rowid", table.name());
            let mut st = c.prepare(&sql)?;
            for b in st.query_map([], |r| r.get::<_, String>(0))? {
                bodies.push(b?);
            }
        }
    }
    Ok(bodies)
}

/// Inserts or replaces a document with its lookup columns (in the order of
/// the table's `columns`).
pub fn put_in<T: Serialize>(
    tx: &dyn StoreOps,
    table: Table,
    id: &str,
    cols: &[&str],
    body: &T,
) -> ServiceResult<()> {
    if table.columns().len() != cols.len() {
        return Err(internal("column count mismatch"));
    }
    tx.put_document(table, id, cols, &to_json(body)?)
}

/// [`StoreOps::put_document`] on SQLite.
fn put_document_sql(tx: &Tx<'_>, table: Table, id: &str, cols: &[&str], json: &str) -> ServiceResult<()> {
    let tx = tx.sql();
    let names = table.columns();
    if names.len() != cols.len() {
        return Err(internal("column count mismatch"));
    }
    let placeholders: Vec<String> = (0..names.len() + 2).map(|i| format!("?{}", i + 1)).collect();
    // An upsert, not INSERT OR REPLACE: replacing would drop columns that
    // are not part of the document (a job's output).
    let updates: Vec<String> = names
        .iter()
        .chain(["body"].iter())
        .map(|n| format!("{n} = excluded.{n}"))
        .collect();
    let sql = format!(
        "INSERT INTO {} (id, {}, body) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
        table.name(),
        names.join(", "),
        placeholders.join(", "),
        updates.join(", ")
    );
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&id];
    for c in cols {
        values.push(c);
    }
    values.push(&json);
    tx.execute(&sql, values.as_slice())?;
    Ok(())
}

/// Records consent (or its withdrawal) of `units` for a scenario; the last
/// record of a unit counts. Returns how many records changed.
pub fn put_consents(
    tx: &dyn StoreOps,
    scenario_id: &str,
    units: &[String],
    granted: bool,
    by: &str,
    at: &str,
) -> ServiceResult<usize> {
    tx.put_consents(scenario_id, units, granted, by, at)
}

/// [`put_consents`] on SQLite.
fn put_consents_sql(
    tx: &Tx<'_>,
    scenario_id: &str,
    units: &[String],
    granted: bool,
    by: &str,
    at: &str,
) -> ServiceResult<usize> {
    let tx = tx.sql();
    let mut st = tx.prepare_cached(
        "INSERT INTO consents (scenario_id, unit, granted, recorded_by, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (scenario_id, unit) DO UPDATE SET granted = excluded.granted,
             recorded_by = excluded.recorded_by, recorded_at = excluded.recorded_at
         WHERE consents.granted != excluded.granted",
    )?;
    let mut changed = 0;
    for u in units {
        changed += st.execute(params![scenario_id, u, granted, by, at])?;
    }
    Ok(changed)
}

impl Store {
    /// Units that consented to a scenario.
    pub fn consenting_units(&self, scenario_id: &str) -> ServiceResult<std::collections::HashSet<String>> {
        self.read(|c| c.consenting_units(scenario_id))
    }

    /// Consent counts per scenario: (scenario, granted, withdrawn).
    pub fn consent_counts(&self) -> ServiceResult<Vec<(String, u64, u64)>> {
        self.read(|c| c.consent_counts())
    }
}

/// Counts one more check of each of `units` by `developer` in `scenario`
/// and returns, per unit, how many checks it had before this one.
pub fn count_verifications(
    tx: &dyn StoreOps,
    developer: &str,
    scenario: &str,
    units: &[String],
) -> ServiceResult<Vec<u32>> {
    tx.count_verifications(developer, scenario, units)
}

/// [`count_verifications`] on SQLite.
fn count_verifications_sql(
    tx: &Tx<'_>,
    developer: &str,
    scenario: &str,
    units: &[String],
) -> ServiceResult<Vec<u32>> {
    let tx = tx.sql();
    let mut get = tx.prepare_cached(
        "SELECT checks FROM verifications WHERE developer_id = ?1 AND scenario_id = ?2 AND unit = ?3",
    )?;
    let mut put = tx.prepare_cached(
        "INSERT INTO verifications (developer_id, scenario_id, unit, checks) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (developer_id, scenario_id, unit) DO UPDATE SET checks = checks + 1",
    )?;
    let mut before = Vec::with_capacity(units.len());
    for unit in units {
        let done: u32 = get
            .query_row(params![developer, scenario, unit], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        put.execute(params![developer, scenario, unit])?;
        before.push(done);
    }
    Ok(before)
}

/// Stores a job's output bytes.
pub fn set_job_output(tx: &dyn StoreOps, id: &str, output: &[u8]) -> ServiceResult<()> {
    tx.set_job_output(id, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scenarios::budget::{Delta, Epsilon, Rho};
    use scenarios::ledger::EntryBody;

    /// Parties stored before `created_by` existed get the creator their
    /// `party.create` entry names when the store is opened, so the chain
    /// A creates B creates C is known (I16); a loop is refused.
    #[test]
    fn party_creators_are_recovered_from_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let party = |id: &str, role: Role, org: &str| Party {
            id: id.into(),
            name: id.into(),
            role,
            created_at: "now".into(),
            organization: org.into(),
            created_by: None,
        };
        let actor = |p: &Party| Actor {
            id: p.id.clone(),
            role: p.role,
            name: p.name.clone(),
            org: p.organization.clone(),
            creators: Vec::new(),
        };
        {
            let store = Store::open(dir.path()).unwrap();
            let a = party("pt_a", Role::Operator, "org_op");
            let b = party("pt_b", Role::Operator, "org_op");
            let c = party("pt_c", Role::Regulator, "org_c");
            let (aa, ab) = (actor(&a), actor(&b));
            store
                .tx(move |tx| {
                    Store::insert_party(tx, &a, "h_a")?;
                    append(
                        tx,
                        NewEntry::system("party.bootstrap", "pt_a", serde_json::json!({})),
                        Utc::now(),
                    )?;
                    Store::insert_party(tx, &b, "h_b")?;
                    append(
                        tx,
                        NewEntry::by(&aa, "party.create", "pt_b", serde_json::json!({})),
                        Utc::now(),
                    )?;
                    Store::insert_party(tx, &c, "h_c")?;
                    append(
                        tx,
                        NewEntry::by(&ab, "party.create", "pt_c", serde_json::json!({})),
                        Utc::now(),
                    )?;
                    Ok(())
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let (c, chain) = store.actor_by_token("h_c").unwrap().unwrap();
        assert_eq!(c.created_by.as_deref(), Some("pt_b"));
        let ids: Vec<(&str, &str)> = chain.iter().map(|x| (x.id.as_str(), x.org.as_str())).collect();
        assert_eq!(ids, [("pt_b", "org_op"), ("pt_a", "org_op")]);
        let (a, chain) = store.actor_by_token("h_a").unwrap().unwrap();
        assert_eq!(a.created_by, None, "a bootstrap party has no creator");
        assert!(chain.is_empty());
        // A loop (only a corrupt store holds one) is refused, not followed.
        store
            .tx_sql(|tx| {
                tx.sql()
                    .execute("UPDATE parties SET created_by = 'pt_c' WHERE id = 'pt_a'", [])?;
                Ok(())
            })
            .unwrap();
        assert!(store.actor_by_token("h_c").is_err());
    }

    #[test]
    fn a_version_1_store_is_migrated_and_keeps_its_budgets() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join("invis.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('schema', '1');
                 CREATE TABLE budgets (developer_id TEXT NOT NULL, scenario_id TEXT NOT NULL,
                     epsilon_spent INTEGER NOT NULL, delta_spent INTEGER NOT NULL,
                     PRIMARY KEY (developer_id, scenario_id));
                 INSERT INTO budgets VALUES ('pt_a', 'sc_a', 1500000, 200000);",
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        // The scenario is unknown: its spending lands on the unspecified
        // population, at every level, for the developer's own organization.
        let levels = store
            .read(|c| {
                let p = population::population_in(c, scenarios::population::UNSPECIFIED)?.unwrap();
                population::levels_in(c, &p, 1)
            })
            .unwrap();
        assert_eq!(levels.len(), 4, "{levels:?}");
        for l in &levels {
            assert_eq!(
                (l.spent.epsilon, l.spent.delta, l.spent.rho),
                (Epsilon(1_500_000), Delta(200_000), Rho(0)),
                "{l:?}"
            );
        }
        drop(store);
        // Opening again is a no-op.
        let store = Store::open(dir.path()).unwrap();
        let n: i64 = store
            .read_sql(|c| {
                Ok(c.sql()
                    .query_row("SELECT COUNT(*) FROM budget_levels", [], |r| r.get(0))?)
            })
            .unwrap();
        assert_eq!(n, 4);
    }

    #[test]
    fn ledger_rows_cannot_be_changed_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .tx(move |tx| {
                append(
                    tx,
                    NewEntry::system("test.append", "x", serde_json::json!({})),
                    Utc::now(),
                )
            })
            .unwrap();
        let cp = SignedCheckpoint {
            checkpoint: Checkpoint {
                size: 1,
                root: "00".repeat(32),
                time: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
            },
            signature: "00".into(),
            note: None,
        };
        store.put_checkpoint(&cp).unwrap();
        store.put_publication(1, Utc::now()).unwrap();
        let entry = NewEntry::system("witness.cosign", "checkpoint:1", serde_json::json!({}));
        assert!(store.put_cosignature(1, "w", "line", entry, Utc::now()).unwrap());
        let again = NewEntry::system("witness.cosign", "checkpoint:1", serde_json::json!({}));
        assert!(!store.put_cosignature(1, "w", "other", again, Utc::now()).unwrap());
        for sql in [
            "UPDATE ledger SET body = 'forged' WHERE seq = 0",
            "DELETE FROM ledger WHERE seq = 0",
            "UPDATE checkpoints SET root = 'forged'",
            "DELETE FROM checkpoints",
            "UPDATE published_checkpoints SET size = 2",
            "DELETE FROM published_checkpoints",
            "UPDATE cosignatures SET line = 'forged'",
            "DELETE FROM cosignatures",
        ] {
            let r = store.tx_sql(move |tx| Ok(tx.sql().execute(sql, [])?));
            assert!(r.is_err(), "{sql} must be refused");
        }
        assert_eq!(store.ledger_size().unwrap(), 2);
        assert_eq!(store.cosignatures(1).unwrap(), ["line"]);
        assert_eq!(store.ledger(0, 1).unwrap()[0].seq, 0);
        // A start past i64::MAX reads nothing (it once wrapped to a
        // negative number and read from the first entry).
        assert!(store.ledger(u64::MAX, 10).unwrap().is_empty());
        assert!(store.ledger(1 << 63, 10).unwrap().is_empty());
        assert!(store.ledger_hashes(u64::MAX, 10).unwrap().is_empty());
        assert_eq!(store.checkpoints(0, u64::MAX).unwrap(), vec![cp.clone()]);
        assert_eq!(store.published_checkpoints(0, u64::MAX).unwrap(), vec![cp]);
        // Acknowledged writes were flushed: at least one flush, never more
        // flushes than commits.
        let s = store.sync_stats();
        assert!(s.flushes >= 1 && s.flushes <= s.commits, "{s:?}");
    }

    #[test]
    fn concurrent_writers_share_batches_and_each_stands_or_falls_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for i in 0..60 {
                        let subject = format!("t{t}-{i}");
                        let fail = i % 7 == 3;
                        let entry = NewEntry::system("test.append", &subject, serde_json::json!({}));
                        let r = store.tx(move |tx| {
                            append(tx, entry, Utc::now())?;
                            if fail {
                                return Err(ServiceError::Conflict("refused after writing".into()));
                            }
                            Ok(())
                        });
                        assert_eq!(r.is_err(), fail);
                        if !fail {
                            kept.push(subject);
                        }
                        // Readers interleave with open batches.
                        if i % 10 == 0 {
                            store.ledger_size().unwrap();
                        }
                    }
                    kept
                })
            })
            .collect();
        let mut kept: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let entries = store.ledger(0, 10_000).unwrap();
        let mut present: Vec<String> = entries
            .iter()
            .map(|e| serde_json::from_str::<EntryBody>(&e.body).unwrap().subject)
            .collect();
        kept.sort();
        present.sort();
        assert_eq!(
            present, kept,
            "every acknowledged write and nothing of a refused one"
        );
        assert_chained(&entries);
        let s = store.sync_stats();
        assert!(
            s.commits < kept.len() as u64,
            "writers shared transactions: {s:?}"
        );
    }

    #[test]
    fn a_panicking_change_is_undone_and_the_writer_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let append_one = |subject: &'static str| {
            move |tx: &dyn StoreOps| {
                append(
                    tx,
                    NewEntry::system("test.append", subject, serde_json::json!({})),
                    Utc::now(),
                )
            }
        };
        store.tx(append_one("before")).unwrap();
        let panicked = store.tx(move |tx| -> ServiceResult<()> {
            append_one("lost")(tx)?;
            panic!("a bug in a store operation");
        });
        assert!(matches!(panicked, Err(ServiceError::Internal(_))), "{panicked:?}");
        // Async callers go through the same writer.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(store.write(append_one("after"))).unwrap();
        let subjects: Vec<String> = store
            .ledger(0, 10)
            .unwrap()
            .iter()
            .map(|e| serde_json::from_str::<EntryBody>(&e.body).unwrap().subject)
            .collect();
        assert_eq!(subjects, ["before", "after"]);
        assert_chained(&store.ledger(0, 10).unwrap());
    }

    /// Entries are numbered from 0 without gaps, each names its
    /// predecessor's hash, and each hash is that of its text: an append
    /// after an undone one links to what is really stored.
    fn assert_chained(entries: &[StoredEntry]) {
        let mut prev = hex::encode(ZERO_HASH);
        for (i, e) in entries.iter().enumerate() {
            let body: EntryBody = serde_json::from_str(&e.body).unwrap();
            assert_eq!((e.seq, body.seq), (i as u64, i as u64), "no gaps");
            assert_eq!(body.prev, prev, "entry {i} links to its predecessor");
            assert_eq!(e.hash, hex::encode(leaf_hash(e.body.as_bytes())));
            prev = e.hash.clone();
        }
    }
}
