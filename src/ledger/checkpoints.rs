//! Signing checkpoints of the ledger's tree as it grows. One server at a time signs (the
//! `LogCheckpoints` lead); it reads what every writer committed, and before signing a new
//! size it checks that the tree still has the root of the last checkpoint signed, so the log
//! never signs two checkpoints that disagree, across restarts and across servers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio_util::sync::CancellationToken;

use super::note::{Checkpoint, NoteSigner, NoteVerifier};
use super::tree::{TiledTree, TreeError};
use crate::ca::Kek;
use crate::clock::Clock;
use crate::store::{Lead, Leader, Store, StoredCheckpoint, StoredLogKey};

/// How often new entries are looked for and, when there are some, a checkpoint signed.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Why no checkpoint could be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("the checkpoint signing key: {0}")]
    Key(String),
    /// The stored ledger no longer has the root a signed checkpoint gave it: entries were
    /// changed or removed under the log. Nothing more is signed until an operator looks.
    #[error(
        "the ledger no longer matches the checkpoint of size {size}: entries before it were \
         changed or removed; no checkpoint is signed until this is resolved (idmint audit verify)"
    )]
    Diverged { size: u64 },
}

/// The log's origin line and key name for a trust domain.
pub fn origin(trust_domain: &crate::spiffe::TrustDomain) -> String {
    format!("{}/idmint/ledger", trust_domain.as_str())
}

/// The context a signing key's seed is sealed under.
fn seal_context(verifier: &str) -> Vec<u8> {
    format!("idmint log key {verifier}").into_bytes()
}

/// The key-encryption key at `path`, made when missing while no signing key is sealed with
/// one yet (a CA in upstream mode has sealed nothing before).
pub async fn kek(store: &Store, path: &std::path::Path) -> Result<Kek, CheckpointError> {
    let key_error = |e: crate::ca::Error| CheckpointError::Key(e.to_string());
    match Kek::load(path) {
        Err(crate::ca::Error::KekMissing(_)) if store.log_keys().await?.is_empty() => {
            Kek::create(path).map_err(key_error)
        }
        other => other.map_err(key_error),
    }
}

/// The checkpoint signing keys of one log: the current one opened with the KEK, the first
/// made when there is none, and a new one made on rotation. Retired keys stay, so that the
/// checkpoints they signed can still be checked.
#[derive(Clone)]
pub struct LogKeys {
    store: Store,
    kek: Arc<Kek>,
    origin: String,
}

impl LogKeys {
    /// The keys of `origin`'s log in `store`, sealed with `kek`.
    pub fn new(store: Store, kek: Kek, origin: String) -> LogKeys {
        LogKeys {
            store,
            kek: Arc::new(kek),
            origin,
        }
    }

    /// The key-encryption key the signing keys are sealed with (the CA's).
    pub fn kek(&self) -> Arc<Kek> {
        self.kek.clone()
    }

    /// The log's origin line (and its keys' name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A new key, and its stored form (the seed sealed with the KEK).
    fn make(&self, now_ms: i64) -> Result<StoredLogKey, CheckpointError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(seed.as_mut())
            .map_err(|_| CheckpointError::Key("no randomness for a new key".into()))?;
        let signer = NoteSigner::from_seed(&self.origin, seed.as_ref())
            .map_err(|e| CheckpointError::Key(e.to_string()))?;
        let verifier = signer.verifier().encode();
        let sealed_seed = self
            .kek
            .seal(&seal_context(&verifier), seed.as_ref())
            .map_err(|e| CheckpointError::Key(e.to_string()))?;
        Ok(StoredLogKey {
            verifier,
            sealed_seed,
            created_at_ms: now_ms,
            retired_at_ms: None,
        })
    }

    /// The current key's verifier, as stored.
    pub async fn current_verifier(&self) -> Result<Option<String>, CheckpointError> {
        let keys = self.store.log_keys().await?;
        Ok(keys
            .into_iter()
            .find(|k| k.retired_at_ms.is_none())
            .map(|k| k.verifier))
    }

    /// The current key, opened; made and stored first when there is none.
    pub async fn current(&self, now_ms: i64) -> Result<NoteSigner, CheckpointError> {
        let keys = self.store.log_keys().await?;
        let current = match keys.into_iter().find(|k| k.retired_at_ms.is_none()) {
            Some(k) => k,
            None => self.store.insert_first_log_key(&self.make(now_ms)?).await?,
        };
        self.open(&current)
    }

    fn open(&self, key: &StoredLogKey) -> Result<NoteSigner, CheckpointError> {
        let key_error = |e: &dyn std::fmt::Display| CheckpointError::Key(e.to_string());
        let verifier = NoteVerifier::parse(&key.verifier).map_err(|e| key_error(&e))?;
        let seed = self
            .kek
            .open(&seal_context(&key.verifier), &key.sealed_seed)
            .map_err(|e| key_error(&e))?;
        let signer = NoteSigner::from_seed(verifier.name(), &seed).map_err(|e| key_error(&e))?;
        if signer.verifier() != verifier {
            return Err(CheckpointError::Key(format!(
                "the stored seed does not make the key {}",
                key.verifier
            )));
        }
        Ok(signer)
    }

    /// Retires the current key and makes a new one, which signs from the next checkpoint on.
    /// The retired key's verifier and the new one's.
    pub async fn rotate(&self, now_ms: i64) -> Result<(String, String), CheckpointError> {
        let new = self.make(now_ms)?;
        let old = self.store.rotate_log_key(&new, now_ms).await?;
        Ok((old.unwrap_or_default(), new.verifier))
    }
}

/// What the metrics show of the log.
#[derive(Debug, Default)]
pub struct LogStatus {
    signed: AtomicU64,
    diverged: AtomicBool,
}

impl LogStatus {
    /// Checkpoints this process signed.
    pub fn signed(&self) -> u64 {
        self.signed.load(Ordering::Relaxed)
    }

    /// Whether signing stopped because the ledger no longer matches a checkpoint.
    pub fn diverged(&self) -> bool {
        self.diverged.load(Ordering::Relaxed)
    }
}

/// Follows the ledger and signs checkpoints of it.
pub struct Checkpointer {
    store: Store,
    tree: TiledTree,
    keys: LogKeys,
    signer: NoteSigner,
    clock: Clock,
    status: Arc<LogStatus>,
}

impl Checkpointer {
    /// A checkpointer over `store`'s ledger signing with the current key of `keys`.
    pub async fn new(
        store: Store,
        keys: LogKeys,
        clock: Clock,
        status: Arc<LogStatus>,
    ) -> Result<Checkpointer, CheckpointError> {
        let tree = TiledTree::load(store.clone()).await?;
        let signer = keys.current(crate::clock::unix_ms(clock.now())).await?;
        Ok(Checkpointer {
            store,
            tree,
            keys,
            signer,
            clock,
            status,
        })
    }

    /// Reads the entries committed since and signs a checkpoint of the tree when it grew past
    /// the last one signed (or none was signed yet). The checkpoint signed, if any.
    pub async fn step(&mut self) -> Result<Option<StoredCheckpoint>, CheckpointError> {
        self.tree.catch_up().await?;
        let size = self.tree.size();
        // Read each time: another server may have signed while this one did not lead.
        let last = self.store.latest_checkpoint().await?;
        if let Some(last) = &last {
            // What a checkpoint covers was committed before it was signed, and the tree has
            // read every entry there is: a checkpoint past it means entries were removed.
            let root = match last.size > size {
                true => None,
                false => Some(self.tree.root_at(last.size).await?),
            };
            if root.is_none_or(|root| root[..] != last.root[..]) {
                self.status.diverged.store(true, Ordering::Relaxed);
                return Err(CheckpointError::Diverged { size: last.size });
            }
            self.status.diverged.store(false, Ordering::Relaxed);
            if last.size == size {
                return Ok(None);
            }
        }
        // A rotation (on any server) takes effect at the next checkpoint.
        let current = self.keys.current_verifier().await?;
        if current.as_deref() != Some(self.signer.verifier().encode().as_str()) {
            let now_ms = crate::clock::unix_ms(self.clock.now());
            self.signer = self.keys.current(now_ms).await?;
        }
        let checkpoint = Checkpoint {
            origin: self.keys.origin().to_string(),
            size,
            root: self.tree.root(),
        };
        let stored = StoredCheckpoint {
            size,
            root: checkpoint.root.to_vec(),
            note: self.signer.sign(&checkpoint.body()),
            signed_at_ms: crate::clock::unix_ms(self.clock.now()),
        };
        if !self.store.insert_checkpoint(&stored).await? {
            // Another server signed this size meanwhile; the next step checks it agrees.
            return Ok(None);
        }
        self.status.signed.fetch_add(1, Ordering::Relaxed);
        Ok(Some(stored))
    }
}

/// Signs checkpoints with the current key of `keys` while this server holds the lead, until
/// `cancel`.
pub async fn run(
    store: Store,
    keys: LogKeys,
    clock: Clock,
    status: Arc<LogStatus>,
    cancel: CancellationToken,
) {
    let mut leading: Option<(Leader, Checkpointer)> = None;
    let mut last_error = String::new();
    loop {
        let result = async {
            if let Some((leader, _)) = &mut leading {
                if !leader.still_leads().await {
                    leading = None;
                }
            }
            if leading.is_none() {
                let Some(leader) = store.try_lead(Lead::LogCheckpoints).await? else {
                    return Ok(());
                };
                let checkpointer =
                    Checkpointer::new(store.clone(), keys.clone(), clock.clone(), status.clone())
                        .await?;
                leading = Some((leader, checkpointer));
            }
            let (_, checkpointer) = leading.as_mut().expect("set above");
            checkpointer.step().await.map(|_| ())
        }
        .await;
        match result {
            Ok(()) => last_error.clear(),
            Err(e) => {
                // Said once per cause, not every second.
                let text = e.to_string();
                if text != last_error {
                    tracing::error!(error = %text, "cannot sign a ledger checkpoint");
                    last_error = text;
                }
                if !matches!(e, CheckpointError::Diverged { .. }) {
                    leading = None;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
        }
    }
}
