//! Group commit: one task owns ledger writes, taking every append waiting at the moment and
//! committing them in one transaction, so durability costs one sync per batch.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::store::{LedgerAppender, LedgerRecord, Store};

/// Under load (the last batch had at least `BUSY_BATCH` records) a batch waits up to
/// `GATHER_WAIT` for `GATHER_TARGET` records: fewer, larger commits cost less per record, and
/// the callers still signing keep the cores busy meanwhile. A lone caller never waits.
const BUSY_BATCH: usize = 8;
const GATHER_TARGET: usize = 64;
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// The most records committed at once.
pub const MAX_BATCH: usize = crate::store::MAX_APPEND;

struct Pending {
    record: LedgerRecord,
    done: oneshot::Sender<Result<i64, Error>>,
}

/// A handle for appending to the ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Pending>,
    stats: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    records: AtomicU64,
    failed_records: AtomicU64,
}

/// What the writer has committed since it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: u64,
    /// Records committed in them.
    pub records: u64,
    /// Records whose batch failed (their callers were refused).
    pub failed_records: u64,
}

impl Ledger {
    /// The ledger, and its writer task for the caller to run. On `shutdown` the writer stops
    /// taking new records, commits every record already queued, and ends; once it has ended,
    /// they are durable.
    pub fn start(
        store: Store,
        shutdown: CancellationToken,
    ) -> (Ledger, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let stats = Arc::new(Counters::default());
        let writer = run(store, rx, shutdown, stats.clone());
        (Ledger { tx, stats }, writer)
    }

    /// Commits and records so far: their ratio is the mean group-commit size.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.stats.commits.load(Ordering::Relaxed),
            records: self.stats.records.load(Ordering::Relaxed),
            failed_records: self.stats.failed_records.load(Ordering::Relaxed),
        }
    }

    /// Appends one record and waits until it is committed. Returns its sequence number.
    pub async fn append(&self, mut record: LedgerRecord) -> Result<i64, Error> {
        record.leaf_hash = super::leaf_hash(&record);
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { record, done })
            .await
            .map_err(|_| Error::Closed)?;
        wait.await.map_err(|_| Error::Closed)?
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    shutdown: CancellationToken,
    stats: Arc<Counters>,
) {
    let mut appender = store.ledger_appender();
    let mut records = Vec::with_capacity(MAX_BATCH);
    let mut waiters = Vec::with_capacity(MAX_BATCH);
    let mut next_seq = None;
    let mut busy = false;
    loop {
        let first = tokio::select! {
            biased;
            msg = rx.recv() => msg,
            _ = shutdown.cancelled() => {
                // Refuse new appends, then commit what is already queued.
                rx.close();
                rx.recv().await
            }
        };
        let Some(mut next) = first else { break };
        loop {
            records.push(next.record);
            waiters.push(next.done);
            if records.len() == MAX_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(p) => next = p,
                Err(_) => break,
            }
        }
        if busy && records.len() < GATHER_TARGET {
            let deadline = tokio::time::Instant::now() + GATHER_WAIT;
            while records.len() < GATHER_TARGET {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => {
                        records.push(p.record);
                        waiters.push(p.done);
                    }
                    _ => break,
                }
            }
        }
        busy = records.len() >= BUSY_BATCH;
        let outcome = append(&mut appender, &mut next_seq, &records)
            .await
            .map_err(std::sync::Arc::new);
        match &outcome {
            Ok(_) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .records
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats
                    .failed_records
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %e, records = records.len(), "ledger batch failed; callers told")
            }
        }
        for (i, done) in waiters.drain(..).enumerate() {
            let reply = match &outcome {
                Ok(first) => Ok(first + i as i64),
                Err(e) => Err(Error::Store(e.clone())),
            };
            // A caller that went away still had its record committed; nothing to undo.
            let _ = done.send(reply);
        }
        records.clear();
    }
    appender.close().await;
}

/// Writes one batch at the next sequence numbers. The next number is remembered between
/// batches and re-read only when another writer (a second process on the same database) has
/// taken it, so a batch is normally a single statement. After two such losses the batch is
/// written under the writers' lock, which only a writer not taking it can beat, and each time
/// one does it has committed: the batch waits its turn and never fails for it.
async fn append(
    appender: &mut LedgerAppender,
    next_seq: &mut Option<i64>,
    records: &[LedgerRecord],
) -> Result<i64, crate::store::Error> {
    const OPTIMISTIC_ATTEMPTS: usize = 2;
    let mut lost = 0;
    loop {
        let outcome = if lost < OPTIMISTIC_ATTEMPTS {
            let first = match *next_seq {
                Some(n) => n,
                None => appender.next_seq().await?,
            };
            appender.insert_at(first, records).await.map(|()| first)
        } else {
            appender.insert_locked(records).await
        };
        match outcome {
            Ok(first) => {
                *next_seq = Some(first + records.len() as i64);
                return Ok(first);
            }
            Err(crate::store::Error::SeqTaken) => {
                *next_seq = None;
                lost += 1;
            }
            Err(e) => {
                *next_seq = None;
                return Err(e);
            }
        }
    }
}
