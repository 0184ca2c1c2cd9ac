//! Files replaced whole and durably: credentials, keys, trust bundles and instance files are
//! written through a temporary file, renamed into place, and the rename synced, so a reader or
//! a crash never sees half a file.

use std::io;
use std::path::{Path, PathBuf};

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Writing, syncing or renaming into place failed; the old contents stand.
    #[error("cannot write {}: {io}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        io: io::Error,
    },
    /// The directory could not be created or synced.
    #[error("cannot create or sync directory {}: {io}", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        io: io::Error,
    },
    /// The path ends in no file name.
    #[error("{} names no file", .0.display())]
    NoFileName(PathBuf),
    /// No random name for the temporary file could be made.
    #[error("the system random number generator failed")]
    NoRandom,
}

/// Writes `contents` to `path` through a temporary file and a rename, so readers never see a
/// partial file, and makes the rename durable. `mode` applies to the new file. The temporary
/// file has a name of its own (never followed if something is already there), so writers of
/// different files in one directory, or of one file at once, do not collide.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = temporary_beside(path)?;
    let written = (|| -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(io) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Write {
            path: path.to_path_buf(),
            io,
        });
    }
    sync_parent(path)
}

/// The longest path a Unix socket can be bound at: `sun_path` holds 108 bytes with the NUL.
pub const SOCKET_PATH_MAX: usize = 107;

/// The permission bits of `path` when every user may read it (a key there protects nothing);
/// `None` when they may not, or the file cannot be looked at (its reader says why).
pub fn readable_by_all(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o004 != 0).then_some(mode)
}

/// Makes renames and removals in `path`'s directory durable: without this a crash can undo a
/// rename that was already reported done.
pub fn sync_parent(path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|io| Error::Directory {
            path: dir.to_path_buf(),
            io,
        })
}

/// Creates `dir` and its parents.
pub fn create_dir_all(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|io| Error::Directory {
        path: dir.to_path_buf(),
        io,
    })
}

/// Creates `dir` (and any missing parents) with only its owner let in (0700): where a
/// credential's key is kept. A directory that exists already is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|io| Error::Directory {
            path: dir.to_path_buf(),
            io,
        })
}

/// A name for a temporary file in `path`'s directory that no other writer uses.
fn temporary_beside(path: &Path) -> Result<PathBuf, Error> {
    use ring::rand::SecureRandom;
    let mut tag = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut tag)
        .map_err(|_| Error::NoRandom)?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::NoFileName(path.to_path_buf()))?;
    Ok(path.with_file_name(format!(
        ".{}.{:016x}.tmp",
        name.to_string_lossy(),
        u64::from_be_bytes(tag)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_sharing_a_stem_written_at_once_keep_their_own_contents() {
        let dir = tempfile::tempdir().unwrap();
        // instance.crt and instance.key: the old fixed temporary name (instance.tmp) was shared.
        let writers: Vec<_> = ["crt", "key"]
            .into_iter()
            .map(|ext| {
                let path = dir.path().join(format!("instance.{ext}"));
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let body = format!("{ext} {i}");
                        write_atomic(&path, body.as_bytes(), 0o600).unwrap();
                        let read = std::fs::read_to_string(&path).unwrap();
                        assert!(read.starts_with(ext), "{path:?} holds {read:?}");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left.len(), 2, "no temporary file is left: {left:?}");
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file_and_the_old_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        write_atomic(&path, b"old", 0o644).unwrap();
        // A directory in the way of the rename.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(write_atomic(&blocked, b"new", 0o644).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, 2, "bundle.pem and the directory only");
    }
}
