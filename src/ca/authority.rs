//! The CA in use: its roots, its signing intermediate, and leaf issuance.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use super::leaf::{self, LeafSpec};
use super::serial::random_serial;
use super::{csr, encode_hex, sha256_hex, CaCert, CaKey, Error, Principal, Settings};
use crate::ids::Ttl;
use crate::placement::Placement;

/// A loaded, ready CA. Rotation replaces what it signs with and trusts while it serves; each
/// replacement bumps a generation number that watchers (the trust bundle) follow.
pub struct CertificateAuthority {
    settings: Settings,
    // The signing state and its generation change together under one lock, so that no reader
    // sees the roots of one generation labelled with another.
    current: RwLock<(Arc<Signing>, u64)>,
    generation: watch::Sender<u64>,
    signer: watch::Sender<String>,
}

/// The trust bundle as published at one generation, read as one value: a bundle is never
/// labelled with a generation whose roots it does not hold, so an acknowledgement of it never
/// credits a sidecar with roots it lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedBundle {
    /// Every root, PEM: what `bundle.pem` and `ROOTCA` carry.
    pub roots_pem: String,
    /// The generation these roots were published at.
    pub generation: u64,
    /// The fingerprint of the intermediate signing at that generation.
    pub signing_ca_sha256: String,
}

/// What the CA signs with and publishes at one moment.
pub struct Signing {
    /// The trust bundle: roots that sign, roots about to, and retired roots still needed.
    pub roots: Vec<CaCert>,
    /// The signing intermediate, then any intermediates above it (upstream mode).
    pub chain: Vec<CaCert>,
    /// The signing intermediate's key (shared by the states a rotation moves through).
    pub key: Arc<CaKey>,
}

/// A principal's credential (see [`Principal`]), with the key made for it.
pub struct Credential {
    /// The certificate and what is recorded about it.
    pub issued: Issued,
    /// Its private key, PKCS#8 DER; wiped on drop.
    pub key_pkcs8: zeroize::Zeroizing<Vec<u8>>,
}

impl Credential {
    /// The certificate and the intermediates after it, PEM: what a TLS peer presents.
    pub fn chain_pem(&self) -> String {
        std::iter::once(&self.issued.cert_der)
            .chain(&self.issued.chain_der)
            .map(|d| super::cert_pem(d))
            .collect()
    }

    /// The private key, PKCS#8 PEM; wiped on drop.
    pub fn key_pem(&self) -> zeroize::Zeroizing<String> {
        super::private_key_pem(&self.key_pkcs8)
    }
}

/// One issued leaf and the facts recorded about it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf, DER.
    pub cert_der: Vec<u8>,
    /// The intermediates to send after it, signing CA first.
    pub chain_der: Vec<Vec<u8>>,
    /// Serial, lowercase hex.
    pub serial_hex: String,
    /// The SPIFFE ID in its URI SAN.
    pub spiffe_id: String,
    /// The validity written.
    pub validity: Validity,
    /// SHA-256 of the certified SubjectPublicKeyInfo, hex.
    pub public_key_sha256: String,
    /// SHA-256 fingerprint of the signing CA certificate, hex.
    pub issuer_fingerprint: String,
}

/// A leaf's validity window, and whether the CA's expiry shortened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start (backdated slightly).
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
    /// True when `not_after` was cut to the issuing CA's expiry.
    pub capped: bool,
}

/// The validity of a leaf with lifetime `ttl` issued at `now` by a CA valid over
/// `ca_not_before..ca_not_after`, its start set back by `backdate` so that a peer whose clock
/// lags by that much accepts it. A TTL longer than the CA's whole life is refused; one that
/// would outlive the CA's remaining life is capped to it. Times are whole seconds, as a
/// certificate holds them, so what the caller is told is what the certificate says.
pub fn leaf_validity(
    ttl: Ttl,
    ca_not_before: OffsetDateTime,
    ca_not_after: OffsetDateTime,
    now: OffsetDateTime,
    backdate: Duration,
) -> Result<Validity, Error> {
    let ca_life = ca_not_after - ca_not_before;
    if ttl.duration() > ca_life {
        return Err(Error::TtlBeyondCa {
            requested: ttl,
            limit: format!("{}s", ca_life.whole_seconds()),
        });
    }
    if now >= ca_not_after {
        return Err(Error::CaExpired(ca_not_after.to_string()));
    }
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let wanted_end = now + ttl.duration();
    Ok(Validity {
        not_before: (now - backdate).max(ca_not_before),
        not_after: wanted_end.min(ca_not_after),
        capped: wanted_end > ca_not_after,
    })
}

impl CertificateAuthority {
    pub(super) fn new(settings: Settings, signing: Signing) -> Self {
        // From 1: a sidecar at generation 0 has acknowledged no bundle at all.
        let signer = watch::Sender::new(signing.chain[0].fingerprint.clone());
        CertificateAuthority {
            settings,
            current: RwLock::new((Arc::new(signing), 1)),
            generation: watch::Sender::new(1),
            signer,
        }
    }

    /// The settings this CA runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What the CA signs with and publishes now, and its generation.
    fn current(&self) -> (Arc<Signing>, u64) {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What the CA signs with and publishes now.
    pub fn signing(&self) -> Arc<Signing> {
        self.current().0
    }

    /// Replaces what the CA signs with and publishes; watchers see a new generation.
    pub fn replace(&self, signing: Signing) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let signer = signing.chain[0].fingerprint.clone();
        *current = (Arc::new(signing), current.1 + 1);
        // Sent under the lock, so watchers see generations in order.
        self.generation.send_replace(current.1);
        self.signer.send_if_modified(|s| {
            let changed = *s != signer;
            *s = signer;
            changed
        });
    }

    /// 1 + the number of replacements so far; a bundle built at generation g contains every
    /// root published up to g.
    pub fn generation(&self) -> u64 {
        self.current().1
    }

    /// The trust bundle and its generation, taken together.
    pub fn published(&self) -> PublishedBundle {
        let (signing, generation) = self.current();
        PublishedBundle {
            roots_pem: signing.roots.iter().map(|r| r.pem()).collect(),
            generation,
            signing_ca_sha256: signing.chain[0].fingerprint.clone(),
        }
    }

    /// Follows replacements.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Follows the fingerprint (SHA-256, hex) of the intermediate the CA signs with; it
    /// changes only when that intermediate does.
    pub fn signer(&self) -> watch::Receiver<String> {
        self.signer.subscribe()
    }

    /// The trust anchors: what relying parties must trust.
    pub fn roots(&self) -> Vec<CaCert> {
        self.signing().roots.clone()
    }

    /// The trust anchors as one PEM bundle: what `bundle.pem` and `ROOTCA` carry.
    pub fn roots_pem(&self) -> String {
        self.signing().roots.iter().map(|r| r.pem()).collect()
    }

    /// The signing intermediate.
    pub fn intermediate(&self) -> CaCert {
        self.signing().chain[0].clone()
    }

    /// The intermediates sent after a leaf, signing CA first.
    pub fn chain(&self) -> Vec<CaCert> {
        self.signing().chain.clone()
    }

    /// Whether signing takes long enough (an RSA key: milliseconds) to keep it off the async
    /// workers.
    pub fn signs_slowly(&self) -> bool {
        self.signing().key.scheme() == super::SignatureScheme::RsaPkcs1Sha256
    }

    /// A description of the signing key, e.g. "ECDSA P-256".
    pub fn key_description(&self) -> String {
        self.signing().key.describe()
    }

    /// Makes a key and a credential for `principal`, valid for `ttl` (capped at the signing
    /// intermediate's expiry, like a leaf).
    pub fn issue_principal(
        &self,
        principal: &Principal,
        ttl: Ttl,
        now: OffsetDateTime,
    ) -> Result<Credential, Error> {
        let key = CaKey::generate_p256()?;
        let issued = self.sign_principal(principal, &key, ttl, now)?;
        Ok(Credential {
            issued,
            key_pkcs8: zeroize::Zeroizing::new(
                key.pkcs8_der()
                    .expect("generated keys keep their PKCS#8")
                    .to_vec(),
            ),
        })
    }

    /// A credential for `principal` certifying the key of a CSR (DER or PEM), whose signature
    /// must verify; as with a leaf, nothing else is taken from it. How a principal renews the
    /// credential it holds without its key leaving its machine.
    pub fn certify_principal(
        &self,
        principal: &Principal,
        csr_bytes: &[u8],
        ttl: Ttl,
        now: OffsetDateTime,
    ) -> Result<Issued, Error> {
        let checked = csr::check(csr_bytes)?;
        let key = rcgen::SubjectPublicKeyInfo::from_der(&checked.spki_der).map_err(|e| {
            Error::Csr(csr::CsrError::UnsupportedKey(format!(
                "{:?} ({e})",
                checked.key_type
            )))
        })?;
        self.sign_principal(principal, &key, ttl, now)
    }

    fn sign_principal(
        &self,
        principal: &Principal,
        key: &impl rcgen::PublicKeyData,
        ttl: Ttl,
        now: OffsetDateTime,
    ) -> Result<Issued, Error> {
        let signing = self.signing();
        let issuer_cert = &signing.chain[0];
        let validity = leaf_validity(
            ttl,
            issuer_cert.not_before,
            issuer_cert.not_after,
            now,
            self.settings.clock_skew.duration(),
        )?;
        let params = super::principal::principal_params(
            &self.settings,
            principal,
            "idmint",
            validity.not_before,
            validity.not_after,
        )?;
        let issuer = rcgen::Issuer::from_ca_cert_der(
            &issuer_cert.der.as_slice().into(),
            signing.key.as_ref(),
        )?;
        let cert = params.signed_by(key, &issuer)?;
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| encode_hex(s.as_ref()))
            .unwrap_or_default();
        Ok(Issued {
            cert_der: cert.der().to_vec(),
            chain_der: signing.chain.iter().map(|c| c.der.clone()).collect(),
            serial_hex: serial,
            spiffe_id: principal.spiffe_id(&self.settings),
            validity,
            public_key_sha256: sha256_hex(&key.subject_public_key_info()),
            issuer_fingerprint: issuer_cert.fingerprint.clone(),
        })
    }

    /// Issues a leaf for `placement` from a CSR (DER or PEM). Only the CSR's public key is
    /// used, after its signature verifies; every other field is ours. `ttl` defaults to the
    /// configured leaf TTL.
    pub fn issue(
        &self,
        placement: &Placement,
        csr_bytes: &[u8],
        ttl: Option<Ttl>,
        now: OffsetDateTime,
    ) -> Result<Issued, Error> {
        let signing = self.signing();
        let issuer = &signing.chain[0];
        let validity = leaf_validity(
            ttl.unwrap_or(self.settings.leaf_ttl),
            issuer.not_before,
            issuer.not_after,
            now,
            self.settings.clock_skew.duration(),
        )?;
        let spiffe_id = self
            .settings
            .id_template
            .render(&self.settings.trust_domain, placement.id_values())?;
        let checked = csr::check(csr_bytes)?;
        let serial = random_serial(now)?;
        let spec = LeafSpec {
            serial: &serial,
            issuer_name_der: &issuer.subject_der,
            issuer_key_id: issuer.key_id.as_deref(),
            not_before: validity.not_before,
            not_after: validity.not_after,
            spiffe_id: spiffe_id.as_str(),
            placement,
            spki_der: &checked.spki_der,
            scheme: signing.key.scheme(),
        };
        let tbs = leaf::tbs_der(&spec);
        let signature = signing.key.sign(&tbs)?;
        Ok(Issued {
            cert_der: leaf::certificate_der(&tbs, signing.key.scheme(), &signature),
            chain_der: signing.chain.iter().map(|c| c.der.clone()).collect(),
            serial_hex: encode_hex(&serial),
            spiffe_id: spiffe_id.to_string(),
            validity,
            public_key_sha256: sha256_hex(&checked.spki_der),
            issuer_fingerprint: issuer.fingerprint.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::bootstrap::new_hierarchy;
    use crate::ca::Role;
    use time::macros::datetime;

    const SKEW: Duration = Duration::from_secs(30);

    fn ttl(s: &str) -> Ttl {
        s.parse().unwrap()
    }

    #[test]
    fn a_published_bundle_holds_the_roots_of_its_generation_while_rotations_race() {
        let settings = Settings::defaults();
        let now = crate::clock::Clock::system().now();
        let h = new_hierarchy(&settings, "idmint", now).unwrap();
        let extra = new_hierarchy(&settings, "idmint", now).unwrap();
        let root = CaCert::from_der(Role::Root, &h.root_der).unwrap();
        let other = CaCert::from_der(Role::Root, &extra.root_der).unwrap();
        let inter = CaCert::from_der(Role::Intermediate, &h.inter_der).unwrap();
        let key = Arc::new(h.inter_key);
        // Odd generations publish the one root, even ones both.
        let signing = |both: bool| Signing {
            roots: if both {
                vec![root.clone(), other.clone()]
            } else {
                vec![root.clone()]
            },
            chain: vec![inter.clone()],
            key: key.clone(),
        };
        let ca = CertificateAuthority::new(settings, signing(false));
        let other_pem = other.pem();
        std::thread::scope(|scope| {
            let replacing = scope.spawn(|| {
                for i in 0..20_000 {
                    ca.replace(signing(i % 2 == 0));
                }
            });
            let mut seen = 0;
            while !replacing.is_finished() || seen == 0 {
                let b = ca.published();
                assert_eq!(
                    b.roots_pem.contains(&other_pem),
                    b.generation % 2 == 0,
                    "generation {} labels the wrong roots",
                    b.generation
                );
                seen += 1;
            }
        });
        assert_eq!(ca.published().generation, 20_001);
        assert_eq!(
            *ca.watch().borrow(),
            20_001,
            "watchers saw the last generation"
        );
    }

    #[test]
    fn validity_within_ca_life() {
        let (start, end) = (
            datetime!(2026-01-01 0:00 UTC),
            datetime!(2026-02-01 0:00 UTC),
        );
        let now = datetime!(2026-01-10 12:00 UTC);
        let v = leaf_validity(ttl("1h"), start, end, now, SKEW).unwrap();
        assert_eq!(v.not_after, datetime!(2026-01-10 13:00 UTC));
        assert_eq!(v.not_before, datetime!(2026-01-10 11:59:30 UTC));
        assert!(!v.capped);
    }

    #[test]
    fn validity_is_in_whole_seconds_like_the_certificate() {
        let (start, end) = (
            datetime!(2026-01-01 0:00 UTC),
            datetime!(2026-02-01 0:00 UTC),
        );
        let now = datetime!(2026-01-10 12:00:00.75 UTC);
        let v = leaf_validity(ttl("1h"), start, end, now, SKEW).unwrap();
        assert_eq!(v.not_after, datetime!(2026-01-10 13:00 UTC));
        assert_eq!(v.not_before, datetime!(2026-01-10 11:59:30 UTC));
    }

    #[test]
    fn validity_capped_at_ca_expiry_and_never_before_ca_start() {
        let (start, end) = (
            datetime!(2026-01-01 0:00 UTC),
            datetime!(2026-01-01 2:00 UTC),
        );
        let v = leaf_validity(ttl("1h"), start, end, datetime!(2026-01-01 1:30 UTC), SKEW).unwrap();
        assert_eq!(v.not_after, end);
        assert!(v.capped);
        let v = leaf_validity(ttl("1h"), start, end, start, SKEW).unwrap();
        assert_eq!(v.not_before, start);
    }

    #[test]
    fn ttl_beyond_ca_life_and_expired_ca_are_refused() {
        let (start, end) = (
            datetime!(2026-01-01 0:00 UTC),
            datetime!(2026-01-02 0:00 UTC),
        );
        let r = leaf_validity(ttl("2d"), start, end, start, SKEW);
        assert!(matches!(r, Err(Error::TtlBeyondCa { .. })));
        let r = leaf_validity(ttl("1h"), start, end, end, SKEW);
        assert!(matches!(r, Err(Error::CaExpired(_))));
    }
}
