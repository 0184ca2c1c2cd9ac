//! Group commit: one task owns ledger writes, taking every append waiting at the moment and
//! committing them in one transaction, so durability costs one sync per batch.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Error;
use crate::store::{LedgerRecord, Store};

/// The most records committed in one transaction.
pub const MAX_BATCH: usize = 1024;

struct Pending {
    record: LedgerRecord,
    done: oneshot::Sender<Result<i64, Error>>,
}

/// A handle for appending to the ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Pending>,
}

impl Ledger {
    /// Starts the writer task. On `shutdown` it stops taking new records, commits every record
    /// already queued, and ends; await the handle to know they are durable.
    pub fn start(store: Store, shutdown: CancellationToken) -> (Ledger, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let task = tokio::spawn(run(store, rx, shutdown));
        (Ledger { tx }, task)
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

async fn run(store: Store, mut rx: mpsc::Receiver<Pending>, shutdown: CancellationToken) {
    let mut records = Vec::with_capacity(MAX_BATCH);
    let mut waiters = Vec::with_capacity(MAX_BATCH);
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
        let outcome = store.append_ledger(&records).await;
        if let Err(e) = &outcome {
            tracing::error!(error = %e, records = records.len(), "ledger batch failed; callers told");
        }
        for (i, done) in waiters.drain(..).enumerate() {
            let reply = match &outcome {
                Ok(first) => Ok(first + i as i64),
                Err(e) => Err(Error::Store(e.to_string())),
            };
            // A caller that went away still had its record committed; nothing to undo.
            let _ = done.send(reply);
        }
        records.clear();
    }
}
