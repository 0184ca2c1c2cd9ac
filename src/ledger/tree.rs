//! The ledger's Merkle tree kept as C2SP tlog tiles: full tiles of 256 hashes are written to
//! the store once the ledger completes them, and only the incomplete right edge of each tile
//! level is held in memory. Appending reads the new entries' leaf hashes in seq order; a
//! restart restores the edge from the stored tiles, so no pass over the whole ledger is made.

use std::collections::HashMap;

use super::merkle::{self, Hash, Subtrees};
use crate::store::{self, Store};

/// Tree levels per tile: a tile holds 2^8 = 256 hashes of one level.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes per full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
/// Ledger entries read per round trip when catching up.
const READ_BATCH: u64 = 4096;

/// Why the tree could not be read or kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    #[error(transparent)]
    Store(#[from] store::Error),
    /// What is stored does not make a tree: a hash of the wrong length, tiles missing.
    #[error("the stored log is inconsistent: {0}")]
    Inconsistent(String),
    #[error("{0}")]
    OutOfRange(String),
}

/// A stored full tile's hashes; `None` when its bytes are not 256 hashes.
pub(crate) fn full_tile(bytes: &[u8]) -> Option<Vec<Hash>> {
    if bytes.len() as u64 != TILE_WIDTH * 32 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect(),
    )
}

/// The root of `2^k` consecutive hashes of one level.
pub(crate) fn reduce(level: &[Hash]) -> Hash {
    debug_assert!(level.len().is_power_of_two());
    let mut row = level.to_vec();
    while row.len() > 1 {
        row = row
            .chunks_exact(2)
            .map(|p| merkle::node(&p[0], &p[1]))
            .collect();
    }
    row[0]
}

/// The tree over the ledger as far as it has been read.
pub struct TiledTree {
    store: Store,
    size: u64,
    /// For each tile level `L`, the hashes of tree level `8L` not yet in a full tile.
    edge: Vec<Vec<Hash>>,
}

impl TiledTree {
    /// The tree as the stored full tiles leave it; [`TiledTree::catch_up`] reads on from there.
    pub async fn load(store: Store) -> Result<TiledTree, TreeError> {
        let full_leaves = store.log_tile_count(0).await?;
        let size = full_leaves * TILE_WIDTH;
        let mut edge = vec![Vec::new()];
        // Above level 0, the edge holds the roots of the full tiles below not yet under a full
        // tile of their own.
        let mut level = 1u8;
        while size >> (TILE_HEIGHT * u32::from(level)) > 0 {
            let below = size >> (TILE_HEIGHT * u32::from(level - 1)) >> TILE_HEIGHT;
            let full_here = store.log_tile_count(level).await?;
            if full_here != below >> TILE_HEIGHT {
                return Err(TreeError::Inconsistent(format!(
                    "tile level {level} has {full_here} full tiles where {} belong",
                    below >> TILE_HEIGHT
                )));
            }
            let from = full_here * TILE_WIDTH;
            let tiles = store.log_tiles(level - 1, from, below).await?;
            if tiles.len() as u64 != below - from {
                return Err(TreeError::Inconsistent(format!(
                    "tile level {} lacks tiles {from} to {below}",
                    level - 1
                )));
            }
            let mut roots = Vec::with_capacity(tiles.len());
            for (at, tile) in (from..).zip(&tiles) {
                let tile = full_tile(tile).ok_or_else(|| {
                    TreeError::Inconsistent(format!(
                        "tile {}/{at} is {} bytes, not 256 hashes",
                        level - 1,
                        tile.len()
                    ))
                })?;
                roots.push(reduce(&tile));
            }
            edge.push(roots);
            level += 1;
        }
        Ok(TiledTree { store, size, edge })
    }

    /// How many entries the tree holds.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the tree as read so far.
    pub fn root(&self) -> Hash {
        // The perfect subtrees of the edge, largest first: each level's incomplete tile splits
        // by the bits of its length.
        let mut peaks = Vec::new();
        for row in self.edge.iter().rev() {
            let mut at = 0;
            for bit in (0..TILE_HEIGHT).rev() {
                let len = 1usize << bit;
                if row.len() & len != 0 {
                    peaks.push(reduce(&row[at..at + len]));
                    at += len;
                }
            }
        }
        merkle::root_of_peaks(&peaks)
    }

    /// Reads the entries committed since, in seq order up to the first gap, and stores the
    /// tiles they complete. The number of entries added.
    pub async fn catch_up(&mut self) -> Result<u64, TreeError> {
        let mut added = 0;
        loop {
            let batch = self.store.leaf_hashes(self.size, READ_BATCH).await?;
            if batch.is_empty() {
                return Ok(added);
            }
            let n = batch.len() as u64;
            let mut completed = Vec::new();
            for leaf in &batch {
                let leaf: Hash = leaf.as_slice().try_into().map_err(|_| {
                    TreeError::Inconsistent(format!("entry {} has no 32-byte leaf hash", self.size))
                })?;
                self.push(leaf, &mut completed);
            }
            // Written before the size is taken as reached: a failure leaves nothing half done
            // that a reload would not redo.
            if let Err(e) = self.store.insert_log_tiles(&completed).await {
                *self = TiledTree::load(self.store.clone()).await?;
                return Err(e.into());
            }
            added += n;
            if n < READ_BATCH {
                return Ok(added);
            }
        }
    }

    fn push(&mut self, leaf: Hash, completed: &mut Vec<(u8, u64, Vec<u8>)>) {
        let mut hash = leaf;
        let mut level = 0;
        loop {
            if self.edge.len() == level {
                self.edge.push(Vec::new());
            }
            self.edge[level].push(hash);
            if self.edge[level].len() as u64 != TILE_WIDTH {
                break;
            }
            let row = std::mem::take(&mut self.edge[level]);
            let index = ((self.size + 1) >> (TILE_HEIGHT * (level as u32 + 1))) - 1;
            hash = reduce(&row);
            completed.push((level as u8, index, row.concat()));
            level += 1;
        }
        self.size += 1;
    }

    /// The hashes of tree level `8·level` held in memory, and the index of the first.
    fn edge_of(&self, level: u8) -> (u64, &[Hash]) {
        let row = self
            .edge
            .get(usize::from(level))
            .map_or(&[][..], Vec::as_slice);
        let first = (self.size >> (TILE_HEIGHT * u32::from(level))) - row.len() as u64;
        (first, row)
    }

    /// Runs `f` over the tree, loading the full tiles it asks for from the store as it goes.
    pub async fn with_subtrees<T>(
        &self,
        f: impl Fn(&View<'_>) -> Result<T, merkle::ProofError<Missing>>,
    ) -> Result<T, TreeError> {
        let mut view = View {
            tree: self,
            tiles: HashMap::new(),
        };
        loop {
            match f(&view) {
                Ok(t) => return Ok(t),
                Err(merkle::ProofError::OutOfRange(why)) => return Err(TreeError::OutOfRange(why)),
                Err(merkle::ProofError::Source(Missing::Tile(level, index))) => {
                    let tile = self.store.log_tile(level, index).await?.ok_or_else(|| {
                        TreeError::Inconsistent(format!("tile {level}/{index} is not stored"))
                    })?;
                    let hashes = full_tile(&tile).ok_or_else(|| {
                        TreeError::Inconsistent(format!(
                            "tile {level}/{index} is {} bytes, not 256 hashes",
                            tile.len()
                        ))
                    })?;
                    view.tiles.insert((level, index), hashes);
                }
                Err(merkle::ProofError::Source(Missing::Beyond(why))) => {
                    return Err(TreeError::OutOfRange(why))
                }
            }
        }
    }

    /// The root of the first `size` entries.
    pub async fn root_at(&self, size: u64) -> Result<Hash, TreeError> {
        if size > self.size {
            return Err(TreeError::OutOfRange(format!(
                "the tree holds {} entries, not {size}",
                self.size
            )));
        }
        if size == 0 {
            return Ok(merkle::empty_root());
        }
        self.with_subtrees(|v| v.range(0, size).map_err(merkle::ProofError::Source))
            .await
    }
}

/// What a [`View`] lacks to answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Missing {
    /// A full tile not loaded yet.
    Tile(u8, u64),
    /// A subtree past the tree's size.
    Beyond(String),
}

/// The tree's edge and the full tiles loaded so far.
pub struct View<'t> {
    tree: &'t TiledTree,
    tiles: HashMap<(u8, u64), Vec<Hash>>,
}

impl Subtrees for View<'_> {
    type Error = Missing;

    fn subtree(&self, level: u8, index: u64) -> Result<Hash, Missing> {
        let tile_level = (u32::from(level) / TILE_HEIGHT) as u8;
        let within = u32::from(level) % TILE_HEIGHT;
        // The 2^within hashes of tile level `tile_level` under this subtree: aligned, so all
        // in one tile.
        let first = index << within;
        let count = 1u64 << within;
        let (edge_first, edge) = self.tree.edge_of(tile_level);
        if first >= edge_first {
            let at = (first - edge_first) as usize;
            let row = edge
                .get(at..at + count as usize)
                .ok_or_else(|| Missing::Beyond(format!("subtree {level}/{index}")))?;
            return Ok(reduce(row));
        }
        let tile = first / TILE_WIDTH;
        let hashes = self
            .tiles
            .get(&(tile_level, tile))
            .ok_or(Missing::Tile(tile_level, tile))?;
        let at = (first % TILE_WIDTH) as usize;
        Ok(reduce(&hashes[at..at + count as usize]))
    }
}
