//! The log as C2SP tlog-tiles serve it: the latest checkpoint, hash tiles (full ones from the
//! store, partial ones made from what they cover) and entry bundles, addressed by the paths
//! the specification gives them, so a generic tlog client can follow and check the ledger.

use super::tree::{full_tile, reduce, TILE_WIDTH};
use crate::store::{self, Store};

/// What a path under `tile/` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TilePath {
    /// Hashes of tile level `level`, tile `index`, `width` of them (256: a full tile).
    Hashes { level: u8, index: u64, width: u16 },
    /// The entries under level-0 tile `index`.
    Entries { index: u64, width: u16 },
}

/// The most tile levels a tree of 2^64 entries needs.
const MAX_LEVEL: u8 = 63;

impl TilePath {
    /// Reads `<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`, where N is written in groups of
    /// three digits, all but the last prefixed with `x`.
    pub fn parse(path: &str) -> Option<TilePath> {
        let (kind, rest) = path.split_once('/')?;
        let (number, width) = match rest.split_once(".p/") {
            Some((n, w)) => {
                let w: u16 = decimal(w)?.try_into().ok()?;
                if !(1..TILE_WIDTH as u16).contains(&w) {
                    return None;
                }
                (n, w)
            }
            None => (rest, TILE_WIDTH as u16),
        };
        let index = index(number)?;
        if kind == "entries" {
            return Some(TilePath::Entries { index, width });
        }
        let level: u8 = decimal(kind)?.try_into().ok()?;
        (level <= MAX_LEVEL).then_some(TilePath::Hashes {
            level,
            index,
            width,
        })
    }

    /// The path, as [`TilePath::parse`] reads it.
    pub fn render(&self) -> String {
        let (kind, index, width) = match self {
            TilePath::Hashes {
                level,
                index,
                width,
            } => (level.to_string(), *index, *width),
            TilePath::Entries { index, width } => ("entries".to_string(), *index, *width),
        };
        let mut groups = Vec::new();
        let mut n = index;
        loop {
            groups.push(n % 1000);
            n /= 1000;
            if n == 0 {
                break;
            }
        }
        let mut parts: Vec<String> = groups.iter().rev().map(|g| format!("x{g:03}")).collect();
        let last = parts.last_mut().expect("one group at least");
        last.remove(0);
        let mut out = format!("{kind}/{}", parts.join("/"));
        if u64::from(width) != TILE_WIDTH {
            out.push_str(&format!(".p/{width}"));
        }
        out
    }
}

/// A decimal with no sign and no leading zero.
fn decimal(s: &str) -> Option<u64> {
    let canonical = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s.len() == 1 || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// A tile index: `x001/x234/067` is 1234067; each group is exactly three digits.
fn index(s: &str) -> Option<u64> {
    let groups: Vec<&str> = s.split('/').collect();
    let (last, rest) = groups.split_last()?;
    let mut n: u64 = 0;
    for (i, g) in rest.iter().chain(std::iter::once(last)).enumerate() {
        let digits = if i < rest.len() {
            g.strip_prefix('x')?
        } else {
            g
        };
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n = n.checked_mul(1000)?.checked_add(digits.parse().ok()?)?;
    }
    // No leading zero groups: the encoding of a number is unique.
    if !rest.is_empty() && rest[0] == "x000" {
        return None;
    }
    Some(n)
}

/// Reads the log for serving.
impl super::AuditLog {
    /// The latest signed checkpoint, as a note.
    pub async fn checkpoint(&self) -> Result<Option<String>, store::Error> {
        Ok(self.store().latest_checkpoint().await?.map(|c| c.note))
    }

    /// The latest signed checkpoint, as stored.
    pub async fn latest_checkpoint(&self) -> Result<Option<store::StoredCheckpoint>, store::Error> {
        self.store().latest_checkpoint().await
    }

    /// The seq the next entry gets: the ledger's size when it has no gap.
    pub async fn next_seq(&self) -> Result<u64, store::Error> {
        self.store().ledger_next_seq().await
    }

    /// The verifier keys of the checkpoint signing keys, current first.
    pub async fn verifier_keys(&self) -> Result<Vec<String>, store::Error> {
        let mut keys = self.store().log_keys().await?;
        keys.sort_by_key(|k| {
            (
                k.retired_at_ms.is_some(),
                std::cmp::Reverse(k.created_at_ms),
            )
        });
        Ok(keys.into_iter().map(|k| k.verifier).collect())
    }

    /// The bytes at `path`, or `None` when the log does not hold them (yet).
    pub async fn tile(&self, path: TilePath) -> Result<Option<Vec<u8>>, store::Error> {
        let store = self.store();
        match path {
            TilePath::Hashes {
                level,
                index,
                width,
            } => hash_tile(store, level, index, width).await,
            TilePath::Entries { index, width } => {
                let from = index.saturating_mul(TILE_WIDTH);
                let entries = store.ledger_range(from, from + u64::from(width)).await?;
                if entries.len() != usize::from(width) {
                    return Ok(None);
                }
                let mut out = Vec::new();
                for e in &entries {
                    let data = super::canonical(&e.record);
                    let len = u16::try_from(data.len())
                        .map_err(|_| store::Error::BadValue("ledger entry over 64 KiB"))?;
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(&data);
                }
                Ok(Some(out))
            }
        }
    }
}

async fn hash_tile(
    store: &Store,
    level: u8,
    index: u64,
    width: u16,
) -> Result<Option<Vec<u8>>, store::Error> {
    if let Some(full) = store.log_tile(level, index).await? {
        // A partial tile is the start of the full one.
        let hashes = full_tile(&full).ok_or(store::Error::BadValue("log_tiles.hashes"))?;
        return Ok(Some(hashes[..usize::from(width)].concat()));
    }
    if u64::from(width) == TILE_WIDTH {
        return Ok(None);
    }
    let from = index.saturating_mul(TILE_WIDTH);
    let to = from + u64::from(width);
    if level == 0 {
        let leaves = store.leaf_hashes(from, u64::from(width)).await?;
        if leaves.len() != usize::from(width) || leaves.iter().any(|h| h.len() != 32) {
            return Ok(None);
        }
        return Ok(Some(leaves.concat()));
    }
    // Each hash of a partial tile above level 0 is the root of a full tile below.
    let below = store.log_tiles(level - 1, from, to).await?;
    if below.len() != usize::from(width) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(usize::from(width) * 32);
    for tile in &below {
        let hashes = full_tile(tile).ok_or(store::Error::BadValue("log_tiles.hashes"))?;
        out.extend_from_slice(&reduce(&hashes));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_and_render_as_the_specification_writes_them() {
        for (text, path) in [
            (
                "0/x001/x234/067",
                TilePath::Hashes {
                    level: 0,
                    index: 1_234_067,
                    width: 256,
                },
            ),
            (
                "2/000.p/7",
                TilePath::Hashes {
                    level: 2,
                    index: 0,
                    width: 7,
                },
            ),
            (
                "entries/x001/000.p/255",
                TilePath::Entries {
                    index: 1000,
                    width: 255,
                },
            ),
        ] {
            assert_eq!(TilePath::parse(text), Some(path), "{text}");
            assert_eq!(path.render(), text);
        }
        for bad in [
            "0/1234067",
            "0/x000/067",
            "0/001/x234",
            "0/12",
            "00/000",
            "64/000",
            "0/000.p/256",
            "0/000.p/0",
            "0/000.p/07",
            "entries/000.p/",
            "0/x1/000",
            "-1/000",
            "0",
        ] {
            assert_eq!(TilePath::parse(bad), None, "{bad}");
        }
    }
}
