//! Group commit. SQLite commits into its write-ahead log without waiting
//! for the disk (`synchronous=NORMAL`); a commit is acknowledged only after
//! the log has been flushed with `fdatasync` past it. Whoever waits first
//! flushes for everyone who committed before the flush began, so under
//! load one flush makes a whole batch of commits durable while the next
//! batch is being written.
//!
//! Why this is sound: a committed transaction lives either in the WAL file
//! (which the flush covers) or, after a checkpoint, in the database file,
//! and SQLite in `NORMAL` mode syncs the WAL before a checkpoint and the
//! database after it, before the WAL is ever rewound and reused.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};

/// The group-commit coordinator of one store.
#[derive(Debug)]
pub(super) struct GroupSync {
    wal: PathBuf,
    state: Mutex<State>,
    flushed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Commits so far; a commit's number is its position in commit order.
    committed: u64,
    /// All commits up to this number are on disk.
    durable: u64,
    /// A flush is in progress.
    flushing: bool,
    /// Flushes performed (for the benchmark's batching figure).
    flushes: u64,
    /// A failed flush poisons the store: what was committed may be lost,
    /// so nothing more is acknowledged.
    failed: Option<String>,
}

/// Counters of a store's group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    /// Commits acknowledged or pending.
    pub commits: u64,
    /// `fdatasync` calls made for them.
    pub flushes: u64,
}

impl GroupSync {
    pub(super) fn new(wal: PathBuf) -> GroupSync {
        GroupSync {
            wal,
            state: Mutex::new(State::default()),
            flushed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain counters; a panic elsewhere cannot leave it
        // half-updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a commit. Call while still holding the connection, so that
    /// numbers follow commit order.
    pub(super) fn committed(&self) -> u64 {
        let mut s = self.lock();
        s.committed += 1;
        s.committed
    }

    /// Returns once commit `n` is on disk.
    pub(super) fn wait_durable(&self, n: u64) -> Result<(), String> {
        let mut s = self.lock();
        loop {
            if let Some(e) = &s.failed {
                return Err(e.clone());
            }
            if s.durable >= n {
                return Ok(());
            }
            if !s.flushing {
                s.flushing = true;
                let target = s.committed;
                drop(s);
                let result = self.flush();
                s = self.lock();
                s.flushing = false;
                s.flushes += 1;
                match result {
                    Ok(()) => s.durable = s.durable.max(target),
                    Err(e) => s.failed = Some(format!("the store could not flush its log: {e}")),
                }
                self.flushed.notify_all();
                continue;
            }
            s = self.flushed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn flush(&self) -> std::io::Result<()> {
        File::open(&self.wal)?.sync_data()
    }

    pub(super) fn stats(&self) -> SyncStats {
        let s = self.lock();
        SyncStats {
            commits: s.committed,
            flushes: s.flushes,
        }
    }
}
