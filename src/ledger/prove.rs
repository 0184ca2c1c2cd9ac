//! Inclusion proofs of ledger entries, in a form a third party checks offline with the log's
//! public key and nothing of idmint: the checkpoint note, the entry's bytes, its index and the
//! hashes that lead from its leaf hash to the checkpoint's root.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::merkle::{self, Hash};
use super::note::{Checkpoint, NoteVerifier};
use super::tree::{TiledTree, TreeError};
use crate::store::LedgerEntry;

/// An inclusion proof, as `idmint audit prove` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// The entry's index in the log (its seq).
    pub index: u64,
    /// The size of the tree the proof is for.
    pub tree_size: u64,
    /// The entry's canonical encoding, base64; its leaf hash is SHA-256(0x00 || entry).
    pub entry: String,
    /// The hashes from the leaf up, base64.
    pub proof: Vec<String>,
    /// The signed checkpoint of `tree_size` entries.
    pub checkpoint: String,
}

/// Why a proof cannot be made or does not hold.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProveError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("{0}")]
    Invalid(String),
}

/// The proof of `entry` in the tree of `checkpoint` (its note `note`), made from `tree`.
pub async fn prove(
    tree: &TiledTree,
    entry: &LedgerEntry,
    checkpoint: &Checkpoint,
    note: &str,
) -> Result<InclusionProof, ProveError> {
    let index = u64::try_from(entry.seq).map_err(|_| ProveError::Invalid("bad seq".into()))?;
    if index >= checkpoint.size {
        return Err(ProveError::Invalid(format!(
            "entry {index} came after the checkpoint ({} entries); take a newer checkpoint",
            checkpoint.size
        )));
    }
    if checkpoint.size > tree.size() {
        return Err(ProveError::Invalid(format!(
            "the checkpoint has {} entries and the ledger {}: entries were removed, or the \
             checkpoint is of another log (idmint audit verify)",
            checkpoint.size,
            tree.size()
        )));
    }
    if tree.root_at(checkpoint.size).await? != checkpoint.root {
        return Err(ProveError::Invalid(format!(
            "the ledger no longer has the root of the checkpoint of {} entries (idmint audit verify)",
            checkpoint.size
        )));
    }
    let size = checkpoint.size;
    let path = tree
        .with_subtrees(|v| merkle::inclusion_proof(v, index, size))
        .await?;
    let data = super::canonical(&entry.record);
    let proof = InclusionProof {
        index,
        tree_size: size,
        entry: B64.encode(&data),
        proof: path.iter().map(|h| B64.encode(h)).collect(),
        checkpoint: note.to_string(),
    };
    Ok(proof)
}

/// Checks `proof` with the log's key `key`: the checkpoint's signature, and the path from the
/// entry to its root. The entry's bytes when it holds.
pub fn check(proof: &InclusionProof, key: &NoteVerifier) -> Result<Vec<u8>, ProveError> {
    let bad = |why: String| ProveError::Invalid(why);
    let text = key
        .open(&proof.checkpoint)
        .map_err(|e| bad(e.to_string()))?;
    let checkpoint = Checkpoint::parse(text).map_err(|e| bad(e.to_string()))?;
    if checkpoint.size != proof.tree_size {
        return Err(bad(format!(
            "the proof is for {} entries, its checkpoint for {}",
            proof.tree_size, checkpoint.size
        )));
    }
    let entry = B64
        .decode(&proof.entry)
        .map_err(|_| bad("the entry is not base64".into()))?;
    let path = proof
        .proof
        .iter()
        .map(|h| {
            B64.decode(h)
                .ok()
                .and_then(|h| Hash::try_from(h).ok())
                .ok_or_else(|| bad("a proof hash is not a base64 SHA-256 hash".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    merkle::verify_inclusion(
        &merkle::leaf(&entry),
        proof.index,
        proof.tree_size,
        &path,
        &checkpoint.root,
    )
    .map_err(|e| bad(format!("the proof does not hold: {e}")))?;
    Ok(entry)
}
