//! Group commit with one writer thread and a few flusher threads.
//!
//! **Writer.** A caller of [`Store::tx`](super::Store::tx) hands its
//! closure to the writer thread, which owns the write connection. The
//! writer takes every unit of work that is waiting (up to [`MAX_BATCH`]),
//! runs each in its own savepoint inside one SQLite transaction (so a
//! failing or panicking unit undoes only its own changes), commits, hands
//! the batch to the flushers and goes straight on with the next batch. When
//! a flusher is free, a batch is committed as soon as it holds
//! `EARLY_BATCH` units, so the disk works on one batch while the next is
//! written instead of everyone waiting in one lockstep group. No caller
//! ever waits for a lock another caller holds, and work runs back to back
//! on one thread: this is what makes many small transactions cheap on a
//! machine with few cores, where handing a lock from thread to thread costs
//! more than the work.
//!
//! **Flushers.** SQLite commits into its write-ahead log without waiting
//! for the disk (`synchronous=NORMAL`). A free flusher claims every batch
//! committed so far, makes the log durable with one `fdatasync`, and then
//! answers every batch that is now known durable, in commit order. Up to
//! [`FLUSHERS`] flushes are in flight at once: a batch committed while the
//! disk is busy with an earlier one is flushed at once rather than after
//! it (disks serve overlapping flushes nearly as fast as one; measured
//! with `invis bench-ledger`). A unit whose own closure failed is answered
//! at once: it changed nothing.
//!
//! Why this is sound: `fdatasync` returns only once everything written to
//! the file before the call is on stable storage, whoever wrote it and
//! whatever other flush is in flight; a flush claims only batches whose
//! commit returned before it started, so when it returns they are durable,
//! and so is every earlier batch. A committed transaction lives either in
//! the WAL file (which the flush covers) or, after a checkpoint, in the
//! database file, and SQLite in `NORMAL` mode syncs the WAL before a
//! checkpoint and the database after it, before the WAL is ever rewound
//! and reused.
//!
//! A failed flush poisons the store: what was committed may be lost, so
//! nothing more is acknowledged.

use rusqlite::Connection;
use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most units of work in one SQLite transaction.
pub const MAX_BATCH: usize = 256;

/// Most flushes in flight at once.
pub const FLUSHERS: usize = 3;

/// Units after which a batch is committed at once if no flush is in flight.
const EARLY_BATCH: usize = 8;

thread_local! {
    /// On a writer thread, how many times changes were undone there (a
    /// unit's savepoint rolled back, or a whole batch); `None` elsewhere.
    static UNDONE: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// On a store's writer thread, how many times changes have been undone
/// there; `None` on every other thread. State a unit derives from what an
/// earlier unit wrote (the ledger's last entry) stays valid only while
/// this count does not change: the writer thread owns the one connection
/// that writes, so nothing else changes the data under it.
pub(super) fn undo_count() -> Option<u64> {
    UNDONE.with(|u| u.get())
}

/// Records that changes were undone on this writer thread.
fn undone() {
    UNDONE.with(|u| u.set(u.get().map(|n| n.wrapping_add(1))));
}

/// How a batch ended for the units in it: durable, or why not.
pub(super) type Outcome = Result<(), String>;

/// A unit of work: runs on the writer thread against the write connection
/// and says whether it succeeded and how to answer its caller.
pub(super) type Work = Box<dyn FnOnce(&Connection) -> Done + Send>;

/// Answers a caller once its batch's outcome is known.
type Answer = Box<dyn FnOnce(Outcome) + Send>;

/// What a unit of work leaves behind once it has run.
pub(super) struct Done {
    /// The closure returned `Ok` (its changes are in the batch).
    pub(super) ok: bool,
    /// Answers the caller once the batch's outcome is known.
    pub(super) answer: Answer,
}

/// Counters of a store's group commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Transactions committed.
    pub commits: u64,
    /// `fdatasync` calls made for them.
    pub flushes: u64,
    /// Time spent in them, added up over flushes in flight together.
    pub flush_time: Duration,
    /// Time the writer spent running and committing batches (the rest of
    /// the time it waited for work).
    pub write_time: Duration,
}

/// The running writer and flushers of one store.
pub(super) struct Committer {
    work: Option<Sender<Work>>,
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
    flushers: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").field("stats", &self.stats()).finish()
    }
}

/// What the writer, the flushers and blocked callers share.
#[derive(Default)]
struct Shared {
    flush: Mutex<Flushing>,
    /// Signalled when a batch is committed or the writer stops.
    to_flush: Condvar,
    /// Callers blocked in [`Committer::wait`]: one broadcast per answered
    /// group (a single system call), not one wake-up per caller.
    round: Mutex<u64>,
    answered: Condvar,
    /// Whose turn it is to answer: groups of ready batches are numbered
    /// under `flush` and answered in that order, so two flushers that
    /// finish close together cannot answer a later batch first.
    turn: Mutex<u64>,
    next_turn: Condvar,
    stats: Mutex<SyncStats>,
}

/// The flushers' state: batches committed and not yet answered, in commit
/// order, and how far flushes have claimed and covered them.
#[derive(Default)]
struct Flushing {
    /// Committed batches not yet answered, numbered from 1 in commit order.
    pending: VecDeque<(u64, Vec<Answer>)>,
    /// Number of the last batch committed.
    committed: u64,
    /// Number of the last batch a started flush covers.
    claimed: u64,
    /// Number of the last batch known durable.
    durable: u64,
    /// Flushes in flight.
    in_flight: usize,
    /// Why nothing more is acknowledged, after a failed flush.
    failed: Option<String>,
    /// The writer has stopped: flushers leave once everything is answered.
    closed: bool,
    /// Groups of ready batches taken so far (see `Shared::turn`).
    groups: u64,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters and queues changed only in small steps that cannot panic
    // half-way: a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Wakes every caller blocked in [`Committer::wait`].
    fn wake_all(&self) {
        *guard(&self.round) += 1;
        self.answered.notify_all();
    }

    /// Whether no flush is in flight.
    fn disk_idle(&self) -> bool {
        guard(&self.flush).in_flight == 0
    }

    /// Queues a committed batch for the flushers.
    fn committed(&self, answers: Vec<Answer>) {
        let mut f = guard(&self.flush);
        f.committed += 1;
        let n = f.committed;
        f.pending.push_back((n, answers));
        drop(f);
        self.to_flush.notify_one();
    }

    fn close(&self) {
        guard(&self.flush).closed = true;
        self.to_flush.notify_all();
    }
}

impl Committer {
    /// Starts the writer on `conn` and the flushers on the log file `wal`.
    pub(super) fn start(conn: Connection, wal: PathBuf) -> std::io::Result<Committer> {
        let shared = Arc::new(Shared::default());
        let (work_tx, work_rx) = mpsc::channel::<Work>();
        let mut flushers = Vec::new();
        for i in 0..FLUSHERS {
            let (mine, wal) = (shared.clone(), wal.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("invis-store-flush-{i}"))
                .spawn(move || flush_loop(wal, &mine));
            match spawned {
                Ok(t) => flushers.push(t),
                Err(e) => {
                    shared.close();
                    return Err(e);
                }
            }
        }
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("invis-store-writer".into())
                .spawn(move || {
                    write_loop(conn, work_rx, &shared);
                    shared.close();
                })
        };
        let writer = match writer {
            Ok(w) => w,
            Err(e) => {
                shared.close();
                return Err(e);
            }
        };
        Ok(Committer {
            work: Some(work_tx),
            shared,
            writer: Some(writer),
            flushers,
        })
    }

    /// Queues a unit of work; `false` when the writer has stopped.
    pub(super) fn submit(&self, w: Work) -> bool {
        self.work.as_ref().is_some_and(|s| s.send(w).is_ok())
    }

    /// Blocks until `answered()` holds; it is checked again after each
    /// round of answers.
    pub(super) fn wait(&self, answered: impl Fn() -> bool) {
        let mut round = guard(&self.shared.round);
        while !answered() {
            round = self
                .shared
                .answered
                .wait(round)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(super) fn stats(&self) -> SyncStats {
        *guard(&self.shared.stats)
    }
}

impl Drop for Committer {
    /// Lets queued work finish, flushes it, and closes the connection.
    fn drop(&mut self) {
        self.work = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        for t in self.flushers.drain(..) {
            let _ = t.join();
        }
    }
}

fn write_loop(conn: Connection, work: Receiver<Work>, shared: &Shared) {
    UNDONE.with(|u| u.set(Some(0)));
    let mut next = work.recv().ok();
    while let Some(first) = next.take() {
        let started = Instant::now();
        let mut answers = Vec::new();
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Run nothing; the caller learns why.
            drop(first);
            shared.wake_all();
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
                    shared.wake_all();
                }
                // A panic: the caller learns it from the dropped answer.
                None => shared.wake_all(),
            }
            if conn.is_autocommit() {
                // The database rolled the whole batch back (for example a
                // full disk): nothing of it is kept.
                rolled_back = true;
                break;
            }
            // Commit early when the disk would otherwise sit idle: a
            // flusher takes this batch while the next one is written.
            // Otherwise the batch grows while work is waiting, and is
            // flushed beside the flush in flight as soon as it commits.
            let early = answers.len() >= EARLY_BATCH && shared.disk_idle();
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
        if outcome.is_err() {
            undone();
        }
        {
            let mut s = guard(&shared.stats);
            s.write_time += started.elapsed();
            s.commits += u64::from(outcome.is_ok());
        }
        match outcome {
            Ok(()) => shared.committed(answers),
            Err(e) => {
                for a in answers {
                    a(Err(e.clone()));
                }
                shared.wake_all();
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
    if !keep || conn.is_autocommit() {
        undone();
    }
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

fn flush_loop(wal: PathBuf, shared: &Shared) {
    // The log stays the same file while the store's connections are open:
    // SQLite rewinds it in place and deletes it only when the last
    // connection closes, and the writer's stays open as long as batches
    // are pending. So one handle serves every flush; it is reopened after
    // an error.
    let mut log: Option<File> = None;
    let mut f = guard(&shared.flush);
    loop {
        if f.claimed == f.committed {
            if f.closed {
                break;
            }
            f = shared.to_flush.wait(f).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        // Claim every batch committed so far: their commits returned
        // before this flush starts.
        let target = f.committed;
        f.claimed = target;
        let poisoned = f.failed.is_some();
        f.in_flight += 1;
        drop(f);
        let result = if poisoned {
            Ok(())
        } else {
            let started = Instant::now();
            let r = match log.take() {
                Some(file) => Ok(file),
                None => File::open(&wal),
            }
            .and_then(|file| file.sync_data().map(|()| file))
            .map(|file| log = Some(file));
            let mut s = guard(&shared.stats);
            s.flushes += 1;
            s.flush_time += started.elapsed();
            r
        };
        f = guard(&shared.flush);
        f.in_flight -= 1;
        match result {
            Ok(()) if f.failed.is_none() => f.durable = f.durable.max(target),
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "the store could not flush its log; it acknowledges nothing more");
                f.failed
                    .get_or_insert_with(|| format!("the store could not flush its log: {e}"));
            }
        }
        // Answer, in commit order, every batch known durable; after a
        // failure, every batch this flush claimed fails.
        let upto = if f.failed.is_some() {
            target.max(f.durable)
        } else {
            f.durable
        };
        let mut ready = Vec::new();
        while let Some((n, _)) = f.pending.front() {
            if *n > upto {
                break;
            }
            if let Some((n, answers)) = f.pending.pop_front() {
                ready.push((n, answers));
            }
        }
        let failed = f.failed.clone();
        let durable = f.durable;
        let group = (!ready.is_empty()).then(|| {
            f.groups += 1;
            f.groups
        });
        drop(f);
        if let Some(group) = group {
            let mut turn = guard(&shared.turn);
            while *turn + 1 != group {
                turn = shared.next_turn.wait(turn).unwrap_or_else(|p| p.into_inner());
            }
            for (n, answers) in ready {
                let outcome = match &failed {
                    Some(e) if n > durable => Err(e.clone()),
                    _ => Ok(()),
                };
                for a in answers {
                    a(outcome.clone());
                }
            }
            *turn = group;
            drop(turn);
            shared.next_turn.notify_all();
            shared.wake_all();
        }
        f = guard(&shared.flush);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A unit that inserts `n` into table `t` and reports its outcome.
    fn unit(n: i64, outcomes: &Arc<Mutex<Vec<(i64, Outcome)>>>, answered: &Arc<AtomicUsize>) -> Work {
        let (outcomes, answered) = (outcomes.clone(), answered.clone());
        Box::new(move |c: &Connection| Done {
            ok: c.execute("INSERT INTO t (n) VALUES (?1)", [n]).is_ok(),
            answer: Box::new(move |o| {
                guard(&outcomes).push((n, o));
                answered.fetch_add(1, Ordering::SeqCst);
            }),
        })
    }

    fn store(dir: &std::path::Path) -> Connection {
        let c = Connection::open(dir.join("t.db")).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "synchronous", "NORMAL").unwrap();
        c.execute_batch("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")
            .unwrap();
        c
    }

    fn run(wal: PathBuf, conn: Connection, n: i64) -> Vec<(i64, Outcome)> {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let committer = Committer::start(conn, wal).unwrap();
        for i in 0..n {
            assert!(committer.submit(unit(i, &outcomes, &answered)));
        }
        committer.wait(|| answered.load(Ordering::SeqCst) == n as usize);
        drop(committer);
        let out = guard(&outcomes).clone();
        out
    }

    #[test]
    fn every_unit_is_answered_once_and_durable_batches_in_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = store(dir.path());
        let out = run(dir.path().join("t.db-wal"), conn, 500);
        assert_eq!(out.len(), 500);
        assert!(out.iter().all(|(_, o)| o.is_ok()));
        // One submitter: units commit in submission order, and batches are
        // answered in commit order even with flushes overlapping.
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        let c = Connection::open(dir.path().join("t.db")).unwrap();
        let rows: i64 = c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 500);
    }

    #[test]
    fn a_failed_flush_acknowledges_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let conn = store(dir.path());
        // A log that cannot be opened: the first flush fails.
        let gone = dir.path().join("missing");
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let committer = Committer::start(conn, gone.join("t.db-wal")).unwrap();
        for i in 0..50 {
            assert!(committer.submit(unit(i, &outcomes, &answered)));
        }
        committer.wait(|| answered.load(Ordering::SeqCst) == 50);
        // The log can be flushed again, but what was committed meanwhile
        // may be lost: later units are refused too.
        std::fs::create_dir(&gone).unwrap();
        std::fs::write(gone.join("t.db-wal"), b"").unwrap();
        for i in 50..100 {
            assert!(committer.submit(unit(i, &outcomes, &answered)));
        }
        committer.wait(|| answered.load(Ordering::SeqCst) == 100);
        drop(committer);
        let out = guard(&outcomes).clone();
        assert_eq!(out.len(), 100);
        for (n, o) in &out {
            let e = o
                .as_ref()
                .expect_err("a unit was acknowledged after a failed flush");
            assert!(e.contains("could not flush its log"), "unit {n}: {e}");
        }
    }

    #[test]
    fn dropping_the_committer_answers_what_was_queued() {
        let dir = tempfile::tempdir().unwrap();
        let conn = store(dir.path());
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let committer = Committer::start(conn, dir.path().join("t.db-wal")).unwrap();
        let slow = Arc::new(AtomicBool::new(false));
        let seen = slow.clone();
        // The first unit holds the writer while more are queued behind it.
        assert!(committer.submit(Box::new(move |_c: &Connection| {
            std::thread::sleep(Duration::from_millis(50));
            seen.store(true, Ordering::SeqCst);
            Done {
                ok: true,
                answer: Box::new(|_| {}),
            }
        })));
        for i in 0..100 {
            assert!(committer.submit(unit(i, &outcomes, &answered)));
        }
        drop(committer);
        assert!(slow.load(Ordering::SeqCst));
        assert_eq!(answered.load(Ordering::SeqCst), 100);
        assert!(guard(&outcomes).iter().all(|(_, o)| o.is_ok()));
    }
}
