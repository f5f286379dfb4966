//! Group commit, in two layers.
//!
//! **Batches.** Writers that arrive while another writer holds the
//! connection join one SQLite transaction: each runs its own closure on its
//! own thread inside a savepoint (so a failing closure undoes only its own
//! changes), and the last writer of the batch commits for all, waits for
//! the flush, and tells the others once. A batch closes when no writer is
//! waiting, when it reaches [`MAX_BATCH`], or when a reader needs the
//! connection, so a reader never sees uncommitted data.
//!
//! **Flushes.** SQLite commits into its write-ahead log without waiting for
//! the disk (`synchronous=NORMAL`); a write is acknowledged only after the
//! log has been flushed with `fdatasync` past its commit. Whoever waits
//! first flushes for everyone who committed before the flush began, so one
//! flush makes many commits durable while the next batch is being written.
//!
//! Why this is sound: a committed transaction lives either in the WAL file
//! (which the flush covers) or, after a checkpoint, in the database file,
//! and SQLite in `NORMAL` mode syncs the WAL before a checkpoint and the
//! database after it, before the WAL is ever rewound and reused.

use rusqlite::Connection;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Most writers in one SQLite transaction.
pub const MAX_BATCH: usize = 256;

/// The connection and the batch open on it.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) conn: Connection,
    /// Id of the open batch and how many writers are in it.
    open: Option<(u64, usize)>,
    next_id: u64,
}

impl Writer {
    pub(super) fn new(conn: Connection) -> Writer {
        Writer {
            conn,
            open: None,
            next_id: 1,
        }
    }

    /// Joins the open batch or begins one; returns its id.
    pub(super) fn join(&mut self) -> rusqlite::Result<u64> {
        if let Some((id, n)) = &mut self.open {
            *n += 1;
            return Ok(*id);
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let id = self.next_id;
        self.next_id += 1;
        self.open = Some((id, 1));
        Ok(id)
    }

    /// Whether the open batch is full.
    pub(super) fn full(&self) -> bool {
        self.open.is_some_and(|(_, n)| n >= MAX_BATCH)
    }
}

/// What the members of a closed batch learn.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    /// Committed and flushed: acknowledge.
    Durable,
    /// Committed (by a reader, who does not flush): wait for this commit
    /// number to be flushed, then acknowledge.
    Committed(u64),
    /// Not committed; nothing of the batch is kept.
    Failed(String),
}

/// A batch just committed by the caller, who must publish its outcome.
#[derive(Debug)]
pub(super) struct Closed {
    id: u64,
    /// Members waiting for the outcome (all but the closer, when the
    /// closer is a member).
    others: usize,
    /// The commit number, or why the commit failed.
    pub(super) commit: Result<u64, String>,
}

/// Outcomes of closed batches, published once per batch so each waiting
/// member wakes once.
#[derive(Debug, Default)]
pub(super) struct Batches {
    state: Mutex<BTreeMap<u64, (Outcome, usize)>>,
    published: Condvar,
}

impl Batches {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, (Outcome, usize)>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits the open batch, if any. Call with the writer held; publish
    /// the result after releasing it. `member` says whether the caller is
    /// one of the batch's writers (a reader is not).
    pub(super) fn close(&self, w: &mut Writer, sync: &GroupSync, member: bool) -> Option<Closed> {
        let (id, members) = w.open.take()?;
        let commit = if w.conn.is_autocommit() {
            Err("the database rolled the transaction back".to_string())
        } else {
            match w.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(sync.committed()),
                Err(e) => {
                    let _ = w.conn.execute_batch("ROLLBACK");
                    Err(format!("commit failed: {e}"))
                }
            }
        };
        Some(Closed {
            id,
            others: members.saturating_sub(usize::from(member)),
            commit,
        })
    }

    /// Tells the other members of a closed batch how it ended.
    pub(super) fn publish(&self, closed: &Closed, outcome: Outcome) {
        if closed.others == 0 {
            return;
        }
        self.lock().insert(closed.id, (outcome, closed.others));
        self.published.notify_all();
    }

    /// Waits for the outcome of batch `id`, as one of its other members.
    pub(super) fn wait(&self, id: u64) -> Outcome {
        let mut s = self.lock();
        loop {
            if let Some((outcome, readers)) = s.get_mut(&id) {
                let outcome = outcome.clone();
                *readers -= 1;
                if *readers == 0 {
                    s.remove(&id);
                }
                return outcome;
            }
            s = self.published.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

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
    /// Flushes performed and their total time (for the benchmark).
    flushes: u64,
    flush_time: std::time::Duration,
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
    /// Time spent in them.
    pub flush_time: std::time::Duration,
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
                let started = std::time::Instant::now();
                let result = self.flush();
                s = self.lock();
                s.flushing = false;
                s.flushes += 1;
                s.flush_time += started.elapsed();
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
            flush_time: s.flush_time,
        }
    }
}
