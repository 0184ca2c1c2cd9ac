//! The cell's own credential: read from the directory `idmint cell enroll` wrote, renewed
//! through the server before it expires (with a key made here each time), and kept beside the
//! server's current trust bundle. A renewal replaces certificate and key so that a crash at any
//! moment leaves a pair that belongs together on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use super::remote::RemoteAuthority;
use crate::ca::{Principal, Settings};
use crate::clock::Clock;
use crate::files::{self, write_atomic};
use crate::ids::CellId;
use crate::renewal::{Keeper, Kept, Renewer, Schedule};
use crate::spiffe::TrustDomain;

/// The cell's certificate and the intermediates after it.
const CHAIN: &str = "cell.pem";
/// Its private key (0600).
const KEY: &str = "cell.key";
/// The roots the server's certificate chains to.
const BUNDLE: &str = "bundle.pem";
/// What a replacement is written as before it takes the place of `CHAIN` and `KEY`.
const NEXT: &str = "next";

/// Why a cell credential could not be read, stored or renewed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of the credential cannot be read.
    #[error("cannot read {} (made by `idmint cell enroll`): {io}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        io: std::io::Error,
    },
    /// A half-done replacement cannot be finished.
    #[error("cannot finish replacing {}: {io}", path.display())]
    Replace {
        /// The file being moved into place or dropped.
        path: PathBuf,
        /// Why.
        io: std::io::Error,
    },
    /// The private key is readable by every local user, so it proves nothing.
    #[error("{} is readable by every user (mode {mode:o}); make it readable by the agent alone (chmod 600) and start again", path.display())]
    KeyExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Enrolling would overwrite a credential.
    #[error("{} already exists; enroll into an empty directory", .0.display())]
    Exists(PathBuf),
    /// Writing a file failed; what was there stands.
    #[error(transparent)]
    Write(#[from] files::Error),
    /// `cell.pem` holds no readable certificate.
    #[error("cell.pem: {0}")]
    Unreadable(&'static str),
    /// `cell.pem` is a certificate, but not of a cell of this trust domain.
    #[error("cell.pem is not a cell credential of trust domain {0}")]
    NotACellCredential(TrustDomain),
    /// The new key or its CSR could not be made.
    #[error(transparent)]
    Key(#[from] super::Error),
    /// The server did not renew the credential.
    #[error("the server did not renew the cell credential: {0}")]
    Server(#[from] crate::api::Error),
    /// The server's credential certifies another key or another cell.
    #[error("the server's renewed credential is not for this cell's new key")]
    NotOurs,
    /// The connection to the server cannot take up the new credential or bundle.
    #[error("cannot reconnect with the new credential: {0}")]
    Reconnect(#[from] tonic::transport::Error),
}

/// A cell credential as read from its directory.
pub struct CellCredential {
    /// Certificate and intermediates, PEM.
    pub chain_pem: String,
    /// Private key, PEM.
    pub key_pem: Zeroizing<String>,
    /// Trust bundle, PEM.
    pub roots_pem: String,
    /// The cell it names.
    pub cell: CellId,
    /// Its validity.
    pub not_before: OffsetDateTime,
    /// Its expiry.
    pub not_after: OffsetDateTime,
    /// SHA-256 (hex) of the intermediate that issued it, when the chain includes it.
    pub issuer_sha256: Option<String>,
    /// Its serial, lowercase hex.
    pub serial_hex: String,
}

/// The directory holding a cell credential.
#[derive(Clone, Debug)]
pub struct CredentialDir(PathBuf);

impl CredentialDir {
    /// The credential in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CredentialDir(dir.into())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn next(&self, name: &str) -> PathBuf {
        self.0.join(format!("{name}.{NEXT}"))
    }

    /// Creates the directory for a new credential; refuses one that already holds any of its
    /// files, so enrolling never overwrites a credential.
    pub fn create_empty(&self) -> Result<(), Error> {
        files::create_private_dir(&self.0)?;
        if let Some(name) = [CHAIN, KEY, BUNDLE].iter().find(|f| self.path(f).exists()) {
            return Err(Error::Exists(self.path(name)));
        }
        Ok(())
    }

    /// Writes a newly enrolled credential and the trust bundle: what `idmint cell enroll`
    /// hands a cell.
    pub fn write(&self, cred: &crate::ca::Credential, roots_pem: &str) -> Result<(), Error> {
        write_atomic(&self.path(KEY), cred.key_pem().as_bytes(), 0o600)?;
        write_atomic(&self.path(CHAIN), cred.chain_pem().as_bytes(), 0o644)?;
        self.store_bundle(roots_pem)
    }

    /// Reads the credential, first finishing a replacement a crash interrupted. It must be a
    /// cell credential of `settings`' trust domain.
    pub fn load(&self, settings: &Settings) -> Result<CellCredential, Error> {
        self.finish_replacement()?;
        let read = |name: &str| {
            let path = self.path(name);
            std::fs::read_to_string(&path).map_err(|io| Error::Read { path, io })
        };
        let (chain_pem, key_pem, roots_pem) = (read(CHAIN)?, read(KEY)?, read(BUNDLE)?);
        let key_path = self.path(KEY);
        if let Some(mode) = files::readable_by_all(&key_path) {
            return Err(Error::KeyExposed {
                path: key_path,
                mode,
            });
        }
        let facts = facts_of(&chain_pem, settings)?;
        Ok(CellCredential {
            chain_pem,
            key_pem: Zeroizing::new(key_pem),
            roots_pem,
            cell: facts.cell,
            not_before: facts.not_before,
            not_after: facts.not_after,
            issuer_sha256: facts.issuer_sha256,
            serial_hex: facts.serial_hex,
        })
    }

    /// Writes both halves of the replacement in full, then moves them into place key first.
    /// [`CredentialDir::finish_replacement`] completes whatever a crash left.
    fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), Error> {
        write_atomic(&self.next(KEY), key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.next(CHAIN), chain_pem.as_bytes(), 0o644)?;
        self.finish_replacement()
    }

    /// A complete next certificate means both halves were written: move what is left of
    /// them into place. A next key alone was never paired with its certificate: drop it,
    /// the current pair is whole.
    fn finish_replacement(&self) -> Result<(), Error> {
        let failed = |path: &Path| {
            let path = path.to_path_buf();
            move |io| Error::Replace { path, io }
        };
        let rename = |from: &Path, to: &Path| std::fs::rename(from, to).map_err(failed(from));
        let (next_chain, next_key) = (self.next(CHAIN), self.next(KEY));
        if next_chain.exists() {
            if next_key.exists() {
                rename(&next_key, &self.path(KEY))?;
            }
            rename(&next_chain, &self.path(CHAIN))?;
        } else if next_key.exists() {
            std::fs::remove_file(&next_key).map_err(failed(&next_key))?;
        } else {
            return Ok(());
        }
        Ok(files::sync_parent(&self.path(KEY))?)
    }

    fn store_bundle(&self, roots_pem: &str) -> Result<(), Error> {
        Ok(write_atomic(
            &self.path(BUNDLE),
            roots_pem.as_bytes(),
            0o644,
        )?)
    }
}

struct Facts {
    cell: CellId,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    spki_der: Vec<u8>,
    issuer_sha256: Option<String>,
    serial_hex: String,
}

/// What the first certificate of `chain_pem` says (the cell, validity and public key), and
/// which intermediate after it issued it.
fn facts_of(chain_pem: &str, settings: &Settings) -> Result<Facts, Error> {
    let mut pems = x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes());
    let pem = pems
        .next()
        .ok_or(Error::Unreadable("it holds no certificate"))?
        .map_err(|_| Error::Unreadable("it is not PEM"))?;
    let issuer_sha256 = pems
        .next()
        .and_then(Result::ok)
        .map(|p| crate::ca::sha256_hex(&p.contents));
    let (_, cert) = X509Certificate::from_der(&pem.contents)
        .map_err(|_| Error::Unreadable("its certificate is not X.509"))?;
    let Ok(Principal::Cell(cell)) = Principal::of_certificate(&cert, settings) else {
        return Err(Error::NotACellCredential(settings.trust_domain.clone()));
    };
    let time = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp())
            .map_err(|_| Error::Unreadable("its validity is out of range"))
    };
    Ok(Facts {
        cell,
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
        spki_der: cert.tbs_certificate.subject_pki.raw.to_vec(),
        issuer_sha256,
        serial_hex: crate::ca::encode_hex(cert.raw_serial()),
    })
}

/// A cell's credential in use: on disk, and in the connection to the server.
pub struct CellIdentity {
    dir: CredentialDir,
    settings: Settings,
    remote: RemoteAuthority,
    current: Mutex<CellCredential>,
}

impl CellIdentity {
    /// `current`, loaded from `dir`, as `remote` presents it.
    pub fn new(
        dir: CredentialDir,
        settings: Settings,
        remote: RemoteAuthority,
        current: CellCredential,
    ) -> Self {
        CellIdentity {
            dir,
            settings,
            remote,
            current: Mutex::new(current),
        }
    }

    /// The connection to the server that presents this credential.
    pub fn remote(&self) -> &RemoteAuthority {
        &self.remote
    }

    /// When the credential in use expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.lock().not_after
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CellCredential> {
        self.current.lock().expect("never poisoned")
    }

    /// Has the server certify a new key for this cell, stores the pair and uses it from the
    /// next call on. Returns the new serial.
    pub async fn renew(&self) -> Result<String, Error> {
        let (key_der, csr) = super::new_key_and_csr()?;
        let wanted_spki = crate::ca::csr::check(&csr)
            .map_err(super::Error::from)?
            .spki_der;
        let renewed = self.remote.renew_credential(csr).await?;
        let facts = facts_of(&renewed.chain_pem, &self.settings)?;
        let mut current = self.lock();
        // Storing a certificate for another key or cell would lock this cell out.
        if facts.spki_der != wanted_spki || facts.cell != current.cell {
            return Err(Error::NotOurs);
        }
        let key_pem = crate::ca::private_key_pem(&key_der);
        self.dir.replace(&renewed.chain_pem, &key_pem)?;
        current.chain_pem = renewed.chain_pem;
        current.key_pem = key_pem;
        (current.not_before, current.not_after) = (facts.not_before, facts.not_after);
        current.issuer_sha256 = facts.issuer_sha256;
        current.serial_hex = facts.serial_hex;
        self.remote
            .reconnect(&current.chain_pem, &current.key_pem, &current.roots_pem)?;
        Ok(renewed.serial_hex)
    }

    /// Stores the server's new trust bundle and trusts it from the next call on.
    pub fn bundle_changed(&self, roots_pem: &str) -> Result<(), Error> {
        self.dir.store_bundle(roots_pem)?;
        let mut current = self.lock();
        current.roots_pem = roots_pem.to_string();
        self.remote
            .reconnect(&current.chain_pem, &current.key_pem, &current.roots_pem)?;
        Ok(())
    }

    /// What the credential in use says of its lifetime.
    fn term(&self) -> CellTerm {
        let c = self.lock();
        CellTerm {
            serial_hex: c.serial_hex.clone(),
            not_after: c.not_after,
            issuer_sha256: c.issuer_sha256.clone(),
        }
    }

    /// Keeps the credential current until `shutdown`: renewed on `schedule`, and at once when
    /// `signer` (the SHA-256 of the intermediate the CA signs with) is no longer the one that
    /// issued it, since the server refuses it once that intermediate's root is pruned.
    pub async fn keep_renewed(
        self: Arc<Self>,
        schedule: Schedule,
        clock: Clock,
        signer: tokio::sync::watch::Receiver<String>,
        shutdown: CancellationToken,
    ) {
        // When it was issued: its not-before is back-dated by the clock-skew allowance (or
        // less, under a younger CA), so add that back, but never past now.
        let issued =
            (self.lock().not_before + self.settings.clock_skew.duration()).min(clock.now());
        let current = self.term();
        Keeper::new(self, "cell credential", schedule, clock)
            .starting_with(current, issued)
            .following_signer(signer)
            .run(shutdown)
            .await
    }
}

/// The part of a cell credential its keeper follows.
pub struct CellTerm {
    serial_hex: String,
    not_after: OffsetDateTime,
    issuer_sha256: Option<String>,
}

impl Kept for CellTerm {
    fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    fn issuer_sha256(&self) -> Option<&str> {
        self.issuer_sha256.as_deref()
    }

    fn serial_hex(&self) -> &str {
        &self.serial_hex
    }
}

impl Renewer for Arc<CellIdentity> {
    type Cert = CellTerm;
    type Error = Error;

    async fn obtain(&self) -> Result<CellTerm, Error> {
        self.renew().await?;
        Ok(self.term())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two credentials for cell-1, as (chain, key) PEM.
    fn two_credentials(s: &Settings) -> [(String, String); 2] {
        let cells = ["cell-1".parse().unwrap()];
        let now = crate::clock::Clock::system().now();
        let make = || {
            let dev = crate::ca::dev_credentials(s, &cells, now).unwrap();
            let (_, pair) = &dev.cells[0];
            (pair.cert_pem.clone(), pair.key_pem.to_string())
        };
        [make(), make()]
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn an_interrupted_replacement_ends_with_a_matching_pair() {
        let s = Settings::defaults();
        let [(old_chain, old_key), (new_chain, new_key)] = two_credentials(&s);
        let tmp = tempfile::tempdir().unwrap();
        let dir = CredentialDir::new(tmp.path());
        let reset = || {
            for name in ["cell.pem.next", "cell.key.next"] {
                let _ = std::fs::remove_file(tmp.path().join(name));
            }
            std::fs::write(tmp.path().join(CHAIN), &old_chain).unwrap();
            write_key(&tmp.path().join(KEY), old_key.as_bytes());
            std::fs::write(tmp.path().join(BUNDLE), "roots").unwrap();
        };
        let pair = || (read(tmp.path(), CHAIN), read(tmp.path(), KEY));

        // Only the next key was written: the old pair stays.
        reset();
        write_key(&tmp.path().join("cell.key.next"), new_key.as_bytes());
        dir.load(&s).unwrap();
        assert_eq!(pair(), (old_chain.clone(), old_key.clone()));
        assert!(!tmp.path().join("cell.key.next").exists());

        // Both halves written, neither moved: the new pair.
        reset();
        write_key(&tmp.path().join("cell.key.next"), new_key.as_bytes());
        std::fs::write(tmp.path().join("cell.pem.next"), &new_chain).unwrap();
        let loaded = dir.load(&s).unwrap();
        assert_eq!(pair(), (new_chain.clone(), new_key.clone()));
        assert_eq!(loaded.chain_pem, new_chain);

        // The key already moved: the certificate follows.
        reset();
        write_key(&tmp.path().join(KEY), new_key.as_bytes());
        std::fs::write(tmp.path().join("cell.pem.next"), &new_chain).unwrap();
        dir.load(&s).unwrap();
        assert_eq!(pair(), (new_chain.clone(), new_key.clone()));

        // An uninterrupted replacement.
        reset();
        dir.replace(&new_chain, &new_key).unwrap();
        assert_eq!(pair(), (new_chain, new_key));
        assert!(!tmp.path().join("cell.pem.next").exists());
    }

    /// A key file as the agent writes it: readable by its owner alone.
    fn write_key(path: &Path, pem: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, pem).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn what_is_not_a_cell_credential_is_refused_by_name() {
        let s = Settings::defaults();
        let tmp = tempfile::tempdir().unwrap();
        let dir = CredentialDir::new(tmp.path());
        let err = dir.load(&s).err().expect("refused").to_string();
        assert!(
            err.contains("cell.pem") && err.contains("idmint cell enroll"),
            "{err}"
        );

        let dev = crate::ca::dev_credentials(&s, &[], crate::clock::Clock::system().now()).unwrap();
        std::fs::write(tmp.path().join(CHAIN), &dev.intermediate.cert_pem).unwrap();
        write_key(&tmp.path().join(KEY), dev.intermediate.key_pem.as_bytes());
        std::fs::write(tmp.path().join(BUNDLE), &dev.root.cert_pem).unwrap();
        let err = dir.load(&s).err().expect("refused").to_string();
        assert!(err.contains("not a cell credential"), "{err}");
    }
}
