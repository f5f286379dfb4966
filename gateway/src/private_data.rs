//! Developer-supplied data (R5, 融合开发): a developer brings its own (or a
//! third party's) table into one agreement. It is stored inside the
//! platform, joined with public data only inside jobs of that agreement,
//! under the scenario's release rules; nobody else's jobs see it, and
//! nobody, the developer included, reads its rows back.

use crate::agreements::open_agreement_of;
use crate::datasets::current_datasets;
use crate::error::{ServiceError, ServiceResult};
use crate::keys::new_id;
use crate::records::PrivateDataset;
use crate::state::AppState;
use crate::store::{append, blocking, put, NewEntry, Table};
use chrono::Utc;
use scenarios::catalog::{ColumnSpec, DatasetSpec};
use scenarios::party::Actor;
use scenarios::policy::TableGrant;
use scenarios::workflow::Agreement;
use serde_json::json;

/// Largest CSV a developer can bring, in bytes.
const MAX_CSV_BYTES: usize = 8 << 20;

/// A developer's table.
#[derive(Debug)]
pub struct Upload {
    /// Table name its jobs use.
    pub name: String,
    /// What it holds.
    pub description: String,
    /// Its privacy unit column.
    pub privacy_unit: String,
    /// The kind of its units (their population).
    pub unit_kind: Option<String>,
    /// Every column with its rule.
    pub columns: Vec<ColumnSpec>,
    /// The operations jobs may apply to each column (as in a scenario).
    pub grant: Vec<scenarios::policy::ColumnGrant>,
    /// The table itself, as CSV text with a header row.
    pub csv: String,
}

/// `actor` brings table `req` into its open agreement `id`: stored,
/// profiled and checked as if part of the scenario, then registered with
/// its ledger entry.
pub async fn register(st: &AppState, actor: Actor, id: String, req: Upload) -> ServiceResult<PrivateDataset> {
    if req.csv.len() > MAX_CSV_BYTES {
        return Err(ServiceError::TooLarge(format!(
            "the CSV is larger than {MAX_CSV_BYTES} bytes"
        )));
    }
    let s = st.clone();
    let name = req.name.clone();
    let (ag, sc, existing) = blocking(move || {
        let (ag, sc) = open_agreement_of(&s, &actor.id, &id)?;
        let catalog = current_datasets(&s)?;
        if catalog.iter().any(|d| d.name == name) || sc.spec.table(&name).is_some() {
            return Err(ServiceError::Conflict(format!(
                "`{name}` is a public dataset's name; choose another"
            )));
        }
        let existing = crate::datasets::private_tables(&s, &ag.id)?;
        Ok((ag, sc, existing))
    })
    .await?;
    if existing.iter().any(|p| p.spec.name == req.name) {
        return Err(ServiceError::Conflict(format!(
            "agreement {} already has a table `{}`",
            ag.id, req.name
        )));
    }
    // The platform's copy of the file, readable by the platform only.
    let dir = st.config.data_dir.join("private").join(&ag.id);
    let path = dir.join(format!("{}.csv", new_id("pd")));
    let spec = DatasetSpec {
        name: req.name,
        description: req.description,
        path: path.to_string_lossy().into_owned(),
        format: Some(scenarios::catalog::DataFormat::Csv),
        privacy_unit: req.privacy_unit,
        unit_kind: req.unit_kind,
        share_class: scenarios::catalog::ShareClass::Conditional,
        open_class: scenarios::catalog::OpenClass::NotOpen,
        exclusion_reason: None,
        columns: req.columns,
        // The developer's table takes the bounded path: its rows per unit
        // are limited by the scenario's k instead.
        one_row_per_unit: false,
    };
    spec.validate()?;
    let grant = TableGrant {
        dataset: spec.name.clone(),
        columns: req.grant,
    };
    // The grants are checked as if the table were part of the scenario:
    // the same rules for units, joins, bounds and domains.
    let mut extended = sc.spec.clone();
    extended.tables.push(grant.clone());
    let catalog = {
        let s = st.clone();
        blocking(move || current_datasets(&s)).await?
    };
    extended.validate(|n| {
        if n == spec.name {
            Some(&spec)
        } else {
            catalog.iter().find(|d| d.name == n).map(|d| &d.spec)
        }
    })?;
    write_private(&dir, &path, req.csv.as_bytes())?;
    let profile = match sandbox::profile::profile(&spec).await {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
    };
    // A unit with many rows here would multiply its rows in a join with a
    // public table, so whether it is in that table would show in how long
    // a query takes (invariant I14). The scenario counts at most k rows of
    // a unit anyway; more are refused.
    let k = u64::from(sc.spec.release.max_rows_per_unit.max(1));
    if profile.max_rows_per_unit.unwrap_or(u64::MAX) > k {
        let _ = std::fs::remove_file(&path);
        return Err(ServiceError::BadRequest(format!(
            "a privacy unit has more than {k} rows in this table; the scenario counts at most {k} rows per unit, so keep at most {k}"
        )));
    }
    let record = PrivateDataset {
        id: new_id("pd"),
        agreement_id: ag.id.clone(),
        developer_id: ag.developer_id.clone(),
        spec,
        grant,
        profile,
        created_at: Utc::now(),
    };
    let r = record.clone();
    st.store
        .write(move |tx| {
            put(tx, &r)?;
            append(
                tx,
                NewEntry::system(
                    "private_data.register",
                    &r.id,
                    json!({"agreement": r.agreement_id, "developer": r.developer_id, "name": r.spec.name,
                        "version_hash": r.profile.version, "rows": r.profile.rows,
                        "rules": r.spec.columns.iter().map(|c| json!({"column": c.name, "rule": c.rule})).collect::<Vec<_>>(),
                        "grant": r.grant}),
                ),
                r.created_at,
            )
        })
        .await?;
    Ok(record)
}

fn write_private(dir: &std::path::Path, path: &std::path::Path, bytes: &[u8]) -> ServiceResult<()> {
    use std::io::Write;
    let io = |e: std::io::Error| ServiceError::Internal(format!("storing the table: {e}"));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// The developer-supplied tables of agreement `id` (a developer sees
/// only its own agreements'). Blocking.
pub fn of_agreement(st: &AppState, actor: &Actor, id: &str) -> ServiceResult<Vec<PrivateDataset>> {
    let ag: Option<Agreement> = st.store.get(Table::Agreements, id)?;
    let ag = ag
        .filter(|a| actor.role != scenarios::party::Role::Developer || a.developer_id == actor.id)
        .ok_or_else(|| ServiceError::NotFound(format!("no agreement {}", id.escape_debug())))?;
    crate::datasets::private_tables(st, &ag.id)
}
