//! `idmint audit verify`: the ledger recomputed from its stored records and held against what
//! was said of it before: each record's leaf hash, the tiles written as the log grew, and
//! every signed checkpoint (the log's own and those a team kept). Whatever differs is named
//! by the first entry it touches.

use super::merkle::{self, Hash, MemoryTree};
use super::note::{Checkpoint, NoteVerifier};
use super::tree::TILE_WIDTH;
use crate::store::{self, LedgerEntry, Store};

/// Entries read per round trip.
const BATCH: u64 = 4096;

/// What is wrong with the ledger, each naming where it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The entry's fields do not give its recorded leaf hash: a field was changed.
    FieldsChanged { seq: u64 },
    /// The entry is not the one the log's tiles recorded when it was logged: changed,
    /// replaced, moved or inserted.
    NotAsLogged { seq: u64 },
    /// Entries are missing from here on, or a gap sits here.
    Missing { seq: u64 },
    /// The tree of the first `size` entries does not have the checkpoint's root.
    CheckpointMismatch { size: u64, source: String },
    /// The ledger has fewer entries than a checkpoint signed.
    Truncated {
        size: u64,
        entries: u64,
        source: String,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::FieldsChanged { seq } => write!(
                f,
                "entry {seq}: its fields do not match its leaf hash (a field was changed)"
            ),
            Finding::NotAsLogged { seq } => write!(
                f,
                "entry {seq}: not the entry the log recorded at this place (changed, replaced, moved or inserted)"
            ),
            Finding::Missing { seq } => write!(f, "entry {seq}: missing (deleted)"),
            Finding::CheckpointMismatch { size, source } => write!(
                f,
                "checkpoint of size {size} ({source}): the first {size} entries no longer have its root; an entry before {size} differs"
            ),
            Finding::Truncated {
                size,
                entries,
                source,
            } => write!(
                f,
                "checkpoint of size {size} ({source}): the ledger holds only {entries} entries; entries from {entries} on were removed"
            ),
        }
    }
}

/// What verification found.
#[derive(Debug, Default)]
pub struct Report {
    /// Entries read.
    pub entries: u64,
    /// The root of all of them.
    pub root: Hash,
    /// Checkpoints checked: the log's own, and given ones.
    pub checkpoints: usize,
    /// What differs, first entry first.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The first entry anything touches.
    pub fn first_entry(&self) -> Option<u64> {
        self.findings
            .iter()
            .filter_map(|f| match f {
                Finding::FieldsChanged { seq }
                | Finding::NotAsLogged { seq }
                | Finding::Missing { seq } => Some(*seq),
                _ => None,
            })
            .min()
    }
}

/// A checkpoint to hold the ledger against, and where it came from.
pub struct GivenCheckpoint {
    pub checkpoint: Checkpoint,
    pub source: String,
}

/// Opens a saved checkpoint note with any of `keys`; a note from another log or with a bad
/// signature is refused, saying which.
pub fn open_checkpoint(
    note: &str,
    keys: &[NoteVerifier],
    origin: &str,
) -> Result<Checkpoint, String> {
    let mut last = String::from("no checkpoint signing key is known");
    for key in keys {
        match key.open(note) {
            Ok(text) => {
                let c = Checkpoint::parse(text).map_err(|e| e.to_string())?;
                if c.origin != origin {
                    return Err(format!(
                        "it is a checkpoint of another log ({:?}, not {origin:?})",
                        c.origin
                    ));
                }
                return Ok(c);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Readers of the ledger at once. Reading and decoding the rows is most of the work, and
/// each reader's queries run on a connection (and, on SQLite, a thread) of their own.
const READERS: u64 = 2;

/// Reads the ledger in batches of [`BATCH`], `READERS` tasks at a time, into `to`: batch `n`
/// by reader `n % READERS`. A reader stops after a short batch (the end, or a gap), or when
/// nobody listens any more.
fn read_batches(
    store: &Store,
    to: tokio::sync::mpsc::Sender<(u64, Result<Vec<LedgerEntry>, store::Error>)>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..READERS)
        .map(|first| {
            let (store, to) = (store.clone(), to.clone());
            crate::app::spawn_owned(async move {
                let mut n = first;
                loop {
                    let batch = store.ledger_range(n * BATCH, (n + 1) * BATCH).await;
                    let last = batch.as_ref().map_or(true, |b| (b.len() as u64) < BATCH);
                    if to.send((n, batch)).await.is_err() || last {
                        return;
                    }
                    n += READERS;
                }
            })
        })
        .collect()
}

/// Recomputes the ledger in `store` and checks it against its tiles, its signed checkpoints
/// and `given`.
pub async fn verify(store: &Store, given: &[GivenCheckpoint]) -> Result<Report, store::Error> {
    let mut report = Report::default();
    let mut tree = MemoryTree::default();
    let (to, mut from) = tokio::sync::mpsc::channel(2 * READERS as usize);
    let readers = read_batches(store, to);
    let checked = async {
        let mut tile: Option<(u64, Vec<u8>)> = None;
        let mut waiting: std::collections::BTreeMap<u64, Vec<LedgerEntry>> =
            std::collections::BTreeMap::new();
        let mut next = 0;
        while let Some((n, batch)) = from.recv().await {
            waiting.insert(n, batch?);
            while let Some(batch) = waiting.remove(&next) {
                next += 1;
                for entry in &batch {
                    check_entry(store, entry, &mut tree, &mut tile, &mut report).await?;
                }
                if (batch.len() as u64) < BATCH {
                    return Ok(());
                }
            }
        }
        Ok::<(), store::Error>(())
    }
    .await;
    drop(from);
    for reader in readers {
        let _ = reader.await;
    }
    checked?;
    report.entries = tree.size();
    report.root = tree.root(tree.size()).expect("its own size");
    // A gap stops the read: whatever follows it is missing as far as the log goes.
    if u64::try_from(store.ledger_len().await?).unwrap_or(0) > tree.size() {
        report.findings.push(Finding::Missing { seq: tree.size() });
    }
    let own = store.checkpoints().await?;
    let mut all: Vec<(u64, Hash, String)> = Vec::new();
    for c in &own {
        let root = Hash::try_from(&c.root[..]).unwrap_or([0; 32]);
        all.push((c.size, root, "signed by this log".into()));
    }
    for g in given {
        all.push((g.checkpoint.size, g.checkpoint.root, g.source.clone()));
    }
    report.checkpoints = all.len();
    for (size, root, source) in all {
        if size > tree.size() {
            report.findings.push(Finding::Truncated {
                size,
                entries: tree.size(),
                source,
            });
        } else if tree.root(size).expect("within the tree") != root {
            report
                .findings
                .push(Finding::CheckpointMismatch { size, source });
        }
    }
    Ok(report)
}

/// Holds one entry, the next of `tree`, against its leaf hash and its tile.
async fn check_entry(
    store: &Store,
    entry: &LedgerEntry,
    tree: &mut MemoryTree,
    tile: &mut Option<(u64, Vec<u8>)>,
    report: &mut Report,
) -> Result<(), store::Error> {
    let seq = tree.size();
    let leaf: Hash = merkle::leaf(&super::canonical(&entry.record));
    if entry.record.leaf_hash[..] != leaf[..] {
        report.findings.push(Finding::FieldsChanged { seq });
    }
    // The tile written when this entry was logged, if its tile is full.
    let index = seq / TILE_WIDTH;
    if tile.as_ref().is_none_or(|(i, _)| *i != index) {
        *tile = store
            .log_tile(0, index)
            .await?
            .map(|hashes| (index, hashes));
    }
    if let Some((_, hashes)) = tile {
        let at = ((seq % TILE_WIDTH) * 32) as usize;
        if hashes.get(at..at + 32) != Some(&leaf[..]) {
            report.findings.push(Finding::NotAsLogged { seq });
        }
    }
    tree.push(leaf);
    Ok(())
}
