//! The key-encryption key (KEK) that seals CA private keys at rest (AES-256-GCM).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::Error;

/// A 256-bit key read from a file of 64 hexadecimal digits.
pub struct Kek {
    key: LessSafeKey,
    path: PathBuf,
}

impl Kek {
    /// Reads the KEK file. A missing, unreadable, malformed or world-readable file is an error
    /// naming the file.
    pub fn load(path: &Path) -> Result<Kek, Error> {
        if let Some(mode) = crate::files::readable_by_all(path) {
            return Err(Error::KekExposed(path.to_path_buf(), mode));
        }
        let raw = Zeroizing::new(std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::KekMissing(path.to_path_buf())
            } else {
                Error::KekUnreadable(path.to_path_buf(), e.to_string())
            }
        })?);
        let malformed = || Error::KekMalformed(path.to_path_buf());
        let text = std::str::from_utf8(&raw).map_err(|_| malformed())?;
        let bytes = Zeroizing::new(decode_hex(text.trim()).ok_or_else(malformed)?);
        if bytes.len() != 32 {
            return Err(Error::KekMalformed(path.to_path_buf()));
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).expect("32-byte AES key");
        Ok(Kek {
            key: LessSafeKey::new(key),
            path: path.to_path_buf(),
        })
    }

    /// Creates a new random KEK file with mode 0600. Refuses to replace an existing file.
    pub fn create(path: &Path) -> Result<Kek, Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| Error::Random)?;
        let hex = Zeroizing::new(encode_hex(bytes.as_ref()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            // The mode above is filtered by the umask; set it again explicitly.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(hex.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        };
        write().map_err(|e| Error::KekUnreadable(path.to_path_buf(), e.to_string()))?;
        Self::load(path)
    }

    /// The file this key came from, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encrypts `plaintext`, binding it to `context` (e.g. the CA certificate's fingerprint).
    /// Output: 12-byte random nonce, then ciphertext and tag.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body,
            )
            .map_err(|_| Error::Random)?;
        out.extend_from_slice(&body);
        body.fill(0);
        Ok(out)
    }

    /// Decrypts what [`Kek::seal`] produced under the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let wrong = || Error::KekWrong(self.path.clone());
        if sealed.len() < NONCE_LEN + 16 {
            return Err(wrong());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut buf = Zeroizing::new(body.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(context), &mut buf)
            .map_err(|_| wrong())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Lowercase hexadecimal of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Bytes of an even-length hexadecimal string, or `None`.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let kek = Kek::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = kek.seal(b"ctx", b"secret").unwrap();
        assert_eq!(&kek.open(b"ctx", &sealed).unwrap()[..], b"secret");
        assert!(matches!(
            kek.open(b"other", &sealed),
            Err(Error::KekWrong(_))
        ));
        assert!(
            Kek::create(&path).is_err(),
            "an existing KEK must not be replaced"
        );
        let other = Kek::create(&dir.path().join("kek2")).unwrap();
        assert!(matches!(
            other.open(b"ctx", &sealed),
            Err(Error::KekWrong(_))
        ));
    }
}
