//! Group commit with one writer thread and one flusher thread.
//!
//! **Writer.** A caller of [`Store::tx`](super::Store::tx) hands its
//! closure to the writer thread, which owns the write connection. The
//! writer takes every unit of work that is waiting (up to [`MAX_BATCH`]),
//! runs each in its own savepoint inside one SQLite transaction (so a
//! failing or panicking unit undoes only its own changes), commits, hands
//! the batch to the flusher and goes straight on with the next batch. When
//! the flusher is idle, a batch is committed as soon as it holds
//! `EARLY_BATCH` units, so the disk works on one batch while the next is
//! written instead of everyone waiting in one lockstep group. No
//! caller ever waits for a lock another caller holds, and work runs back to
//! back on one thread: this is what makes many small transactions cheap on
//! a machine with few cores, where handing a lock from thread to thread
//! costs more than the work.
//!
//! **Flusher.** SQLite commits into its write-ahead log without waiting for
//! the disk (`synchronous=NORMAL`). The flusher takes every committed batch
//! that is waiting, makes the log durable with one `fdatasync`, and only
//! then tells each caller its result; so one flush covers many commits
//! while the writer is already building the next batch. A unit whose own
//! closure failed is answered at once: it changed nothing.
//!
//! Why this is sound: a committed transaction lives either in the WAL file
//! (which the flush covers) or, after a checkpoint, in the database file,
//! and SQLite in `NORMAL` mode syncs the WAL before a checkpoint and the
//! database after it, before the WAL is ever rewound and reused.
//!
//! A failed flush poisons the store: what was committed may be lost, so
//! nothing more is acknowledged.

use rusqlite::Connection;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most units of work in one SQLite transaction.
pub const MAX_BATCH: usize = 256;

/// Units after which a batch is committed at once if the flusher is idle.
const EARLY_BATCH: usize = 8;

/// How a batch ended for the units in it: durable, or why not.
pub(super) type Outcome = Result<(), String>;

/// A unit of work: runs on the writer thread against the write connection
/// and says whether it succeeded and how to answer its caller.
pub(super) type Work = Box<dyn FnOnce(&Connection) -> Done + Send>;

/// What a unit of work leaves behind once it has run.
pub(super) struct Done {
    /// The closure returned `Ok` (its changes are in the batch).
    pub(super) ok: bool,
    /// Answers the caller once the batch's outcome is known.
    pub(super) answer: Box<dyn FnOnce(Outcome) + Send>,
}

/// Counters of a store's group commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Transactions committed.
    pub commits: u64,
    /// `fdatasync` calls made for them.
    pub flushes: u64,
    /// Time spent in them.
    pub flush_time: Duration,
    /// Time the writer spent running and committing batches (the rest of
    /// the time it waited for work).
    pub write_time: Duration,
}

/// The running writer and flusher of one store.
pub(super) struct Committer {
    work: Option<Sender<Work>>,
    wake: Arc<Wake>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: Arc<Mutex<SyncStats>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").field("stats", &self.stats()).finish()
    }
}

/// Wakes callers once their answers are in: one broadcast per flushed
/// group (a single system call), rather than one wake-up per caller on the
/// flusher's path.
#[derive(Default)]
struct Wake {
    round: Mutex<u64>,
    answered: Condvar,
    /// The flusher is waiting for work.
    flusher_idle: std::sync::atomic::AtomicBool,
}

impl Wake {
    fn all(&self) {
        *self.round.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.answered.notify_all();
    }
}

/// A committed batch on its way to the flusher.
struct Committed {
    answers: Vec<Box<dyn FnOnce(Outcome) + Send>>,
}

fn lock(stats: &Mutex<SyncStats>) -> MutexGuard<'_, SyncStats> {
    // Plain counters: a panic elsewhere cannot leave them half-updated.
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

impl Committer {
    /// Starts the writer on `conn` and the flusher on the log file `wal`.
    pub(super) fn start(conn: Connection, wal: PathBuf) -> std::io::Result<Committer> {
        let stats = Arc::new(Mutex::new(SyncStats::default()));
        let (work_tx, work_rx) = mpsc::channel::<Work>();
        let (flush_tx, flush_rx) = mpsc::channel::<Committed>();
        let wake = Arc::new(Wake::default());
        let writer = {
            let (stats, wake) = (stats.clone(), wake.clone());
            std::thread::Builder::new()
                .name("invis-store-writer".into())
                .spawn(move || write_loop(conn, work_rx, flush_tx, &stats, &wake))?
        };
        let flusher = {
            let (stats, wake) = (stats.clone(), wake.clone());
            std::thread::Builder::new()
                .name("invis-store-flusher".into())
                .spawn(move || flush_loop(wal, flush_rx, &stats, &wake))?
        };
        Ok(Committer {
            work: Some(work_tx),
            wake,
            threads: vec![writer, flusher],
            stats,
        })
    }

    /// Queues a unit of work; `false` when the writer has stopped.
    pub(super) fn submit(&self, w: Work) -> bool {
        self.work.as_ref().is_some_and(|s| s.send(w).is_ok())
    }

    /// Blocks until `answered()` holds; it is checked again after each
    /// round of answers.
    pub(super) fn wait(&self, answered: impl Fn() -> bool) {
        let mut round = self.wake.round.lock().unwrap_or_else(|p| p.into_inner());
        while !answered() {
            round = self.wake.answered.wait(round).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(super) fn stats(&self) -> SyncStats {
        *lock(&self.stats)
    }
}

impl Drop for Committer {
    /// Lets queued work finish, flushes it, and closes the connection.
    fn drop(&mut self) {
        self.work = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn write_loop(
    conn: Connection,
    work: Receiver<Work>,
    flush: Sender<Committed>,
    stats: &Mutex<SyncStats>,
    wake: &Wake,
) {
    let mut next = work.recv().ok();
    while let Some(first) = next.take() {
        let started = Instant::now();
        let mut answers = Vec::new();
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Run nothing; the caller learns why.
            drop(first);
            wake.all();
            tracing::error!(error = %e, "the store could not begin a transaction");
            next = work.recv().ok();
            continue;
        }
        let mut unit = Some(first);
        let mut rolled_back = false;
        while let Some(w) = unit.take() {
            match run_one(&conn, w) {
                Some(done) if done.ok => answers.push(done.answer),
                // Its own error needs no flush: it changed nothing.
                Some(done) => {
                    (done.answer)(Ok(()));
                    wake.all();
                }
                // A panic: the caller learns it from the dropped answer.
                None => wake.all(),
            }
            if conn.is_autocommit() {
                // The database rolled the whole batch back (for example a
                // full disk): nothing of it is kept.
                rolled_back = true;
                break;
            }
            // Commit early when the disk would otherwise sit idle: the
            // flusher takes this batch while the next one is written.
            let early = answers.len() >= EARLY_BATCH && wake.flusher_idle.load(Ordering::Acquire);
            if answers.len() < MAX_BATCH && !early {
                unit = work.try_recv().ok();
            }
        }
        let outcome = if rolled_back {
            Err("the database rolled the transaction back".to_string())
        } else {
            match conn.execute_batch("COMMIT") {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(format!("commit failed: {e}"))
                }
            }
        };
        {
            let mut s = lock(stats);
            s.write_time += started.elapsed();
            s.commits += u64::from(outcome.is_ok());
        }
        match outcome {
            Ok(()) => {
                if let Err(mpsc::SendError(c)) = flush.send(Committed { answers }) {
                    for a in c.answers {
                        a(Err("the store's flusher stopped".into()));
                    }
                    wake.all();
                }
            }
            Err(e) => {
                for a in answers {
                    a(Err(e.clone()));
                }
                wake.all();
            }
        }
        next = work.recv().ok();
    }
}

/// Runs one unit in a savepoint; `None` when it panicked (its changes are
/// undone and its answer dropped).
fn run_one(conn: &Connection, w: Work) -> Option<Done> {
    if let Err(e) = conn
        .prepare_cached("SAVEPOINT invis_tx")
        .and_then(|mut s| s.execute([]))
    {
        tracing::error!(error = %e, "the store could not open a savepoint");
        return None;
    }
    // A panicking closure is a bug; it must not leave its changes in a
    // batch others will commit, nor stop the writer.
    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w(conn))).ok();
    let keep = done.as_ref().is_some_and(|d| d.ok);
    if !conn.is_autocommit() {
        let end = if keep {
            conn.prepare_cached("RELEASE invis_tx")
                .and_then(|mut s| s.execute([]))
                .map(|_| ())
        } else {
            conn.execute_batch("ROLLBACK TO invis_tx; RELEASE invis_tx")
        };
        if let Err(e) = end {
            tracing::error!(error = %e, "the store could not close a savepoint");
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    done
}

fn flush_loop(wal: PathBuf, batches: Receiver<Committed>, stats: &Mutex<SyncStats>, wake: &Wake) {
    let mut failed: Option<String> = None;
    // The log stays the same file while the store's connections are open:
    // SQLite rewinds it in place and deletes it only when the last
    // connection closes, and the writer's stays open as long as this loop
    // runs. So one handle serves every flush; it is reopened after an
    // error.
    let mut log: Option<File> = None;
    loop {
        wake.flusher_idle.store(true, Ordering::Release);
        let Ok(first) = batches.recv() else { break };
        wake.flusher_idle.store(false, Ordering::Release);
        let mut group = vec![first];
        group.extend(batches.try_iter());
        if failed.is_none() {
            let started = Instant::now();
            let r = match log.take() {
                Some(f) => Ok(f),
                None => File::open(&wal),
            }
            .and_then(|f| f.sync_data().map(|()| f))
            .map(|f| log = Some(f));
            let mut s = lock(stats);
            s.flushes += 1;
            s.flush_time += started.elapsed();
            if let Err(e) = r {
                tracing::error!(error = %e, "the store could not flush its log; it acknowledges nothing more");
                failed = Some(format!("the store could not flush its log: {e}"));
            }
        }
        for c in group {
            for a in c.answers {
                a(failed.clone().map_or(Ok(()), Err));
            }
        }
        wake.all();
    }
}
