//! Shared state of the server: the store, keys, data plane, WASM runtime
//! and configuration. Cloned into every handler.

use crate::keys::Keys;
use crate::ledger::Ledger;
use crate::store::Store;
use runtime::{JobLimits, Runtime};
use sandbox::DataPlane;
use scenarios::calendar::Calendar;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the store, keys and modules.
    pub data_dir: PathBuf,
    /// The data root: every provider's storage location is a directory
    /// under it (`providers/<party id>` unless the operator assigned
    /// another), and a dataset's file is read only from its owner's
    /// location (invariant I17). Never the data directory or above it.
    pub data_root: PathBuf,
    /// Largest file a provider may upload, in bytes.
    pub max_upload_bytes: u64,
    /// Jobs in flight each developer and organization may have.
    pub tenant_limits: crate::tenants::TenantLimits,
    /// The key-encryption key the platform's keys are sealed under at
    /// rest (`crate::keys`); `None` keeps them unsealed.
    pub kek: Option<crate::keys::Kek>,
    /// Limits applied to every job.
    pub job_limits: JobLimits,
    /// Working-day calendar for review deadlines.
    pub calendar: Calendar,
    /// The published tariff (R15).
    pub tariff: scenarios::fees::Tariff,
    /// Sample rows shown per dataset in the development catalog.
    pub sample_rows: usize,
    /// How often the server signs and publishes a checkpoint when the
    /// ledger has grown (at least [`Config::time_quantum`]; see
    /// [`Config::publish_every`]).
    pub checkpoint_every: std::time::Duration,
    /// Granularity of time as seen from outside a job (I14): a job's end
    /// becomes visible at a whole number of quanta after its start.
    pub time_quantum: std::time::Duration,
}

impl Config {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            data_root: data_dir.join("files"),
            data_dir,
            max_upload_bytes: crate::storage::DEFAULT_MAX_UPLOAD,
            kek: None,
            tenant_limits: crate::tenants::TenantLimits::default(),
            job_limits: JobLimits::default(),
            calendar: Calendar::default(),
            tariff: scenarios::fees::Tariff::default(),
            sample_rows: 10,
            checkpoint_every: std::time::Duration::from_secs(10),
            time_quantum: std::time::Duration::from_secs(1),
        }
    }

    /// The period of checkpoint publication: `checkpoint_every`, but never
    /// shorter than the time quantum, so that what parties other than the
    /// regulator see of the ledger's growth is no finer than job ends.
    pub fn publish_every(&self) -> std::time::Duration {
        self.checkpoint_every.max(self.time_quantum)
    }
}

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Metadata and ledger.
    pub store: Arc<Store>,
    /// Signing and tokenization keys.
    pub keys: Arc<Keys>,
    /// The Merkle tree, checkpoints and proofs over the store's ledger.
    pub ledger: Arc<Ledger>,
    /// Registered tables.
    pub plane: Arc<DataPlane>,
    /// The WASM runtime (one engine per process).
    pub runtime: Arc<Runtime>,
    /// Configuration.
    pub config: Arc<Config>,
    /// Stop flags of running jobs, by job id. A flag set here stops the
    /// job at its next epoch tick or host call.
    pub running: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    /// Jobs in flight by developer and organization.
    pub tenants: Arc<crate::tenants::Tenants>,
    /// Held while a key rotates: one rotation at a time.
    pub key_rotation: Arc<tokio::sync::Mutex<()>>,
}

impl AppState {
    /// Opens the store and keys in `config.data_dir` and builds the engines.
    pub fn open(config: Config) -> anyhow::Result<AppState> {
        let store = Store::open(&config.data_dir)?;
        crate::storage::prepare_root(&config.data_root, &config.data_dir)?;
        let keys = Keys::load_or_create(&config.data_dir, config.kek.as_ref())?;
        crate::ledger::follow_key_chain(&store, &keys, crate::ledger::Enrollment::Record)?;
        let runtime = Runtime::new().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(AppState {
            store: Arc::new(store),
            keys: Arc::new(keys),
            ledger: Arc::new(Ledger::new()),
            plane: Arc::new(DataPlane::new()),
            runtime: Arc::new(runtime),
            config: Arc::new(config),
            running: Arc::new(Mutex::new(HashMap::new())),
            tenants: Arc::new(crate::tenants::Tenants::default()),
            key_rotation: Arc::new(tokio::sync::Mutex::new(())),
        })
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}
