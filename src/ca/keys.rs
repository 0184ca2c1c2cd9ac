//! CA signing keys: ECDSA P-256 (generated or loaded) and RSA (loaded, upstream mode).

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use zeroize::Zeroizing;

use super::Error;

/// The signature algorithm a CA key signs with, as written into certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureScheme {
    /// ecdsa-with-SHA256, for a P-256 key.
    EcdsaP256Sha256,
    /// sha256WithRSAEncryption (PKCS#1 v1.5), for an RSA key.
    RsaPkcs1Sha256,
}

impl SignatureScheme {
    /// The DER AlgorithmIdentifier for this scheme.
    pub fn algorithm_identifier(self, w: yasna::DERWriter<'_>) {
        w.write_sequence(|w| match self {
            SignatureScheme::EcdsaP256Sha256 => {
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(&[
                        1, 2, 840, 10045, 4, 3, 2,
                    ]));
            }
            SignatureScheme::RsaPkcs1Sha256 => {
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(&[
                        1, 2, 840, 113549, 1, 1, 11,
                    ]));
                w.next().write_null();
            }
        })
    }
}

/// A CA private key. ring keeps the key material; the PKCS#8 copy kept for sealing is zeroized
/// on drop.
pub struct CaKey {
    inner: Inner,
    pkcs8: Option<Zeroizing<Vec<u8>>>,
    rng: SystemRandom,
}

enum Inner {
    EcdsaP256(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaKey({})", self.describe())
    }
}

impl CaKey {
    /// A fresh ECDSA P-256 key.
    pub fn generate_p256() -> Result<CaKey, Error> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| Error::Random)?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// A key from PKCS#8 DER (ECDSA P-256 or RSA).
    pub fn from_pkcs8(der: &[u8]) -> Result<CaKey, Error> {
        let rng = SystemRandom::new();
        let inner =
            match EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng) {
                Ok(pair) => Inner::EcdsaP256(pair),
                Err(ec_err) => match RsaKeyPair::from_pkcs8(der) {
                    Ok(pair) => Inner::Rsa(pair),
                    Err(rsa_err) => {
                        return Err(Error::UnsupportedCaKey(format!(
                            "not an ECDSA P-256 key ({ec_err}) nor an RSA key ({rsa_err})"
                        )))
                    }
                },
            };
        let key = CaKey {
            inner,
            pkcs8: Some(Zeroizing::new(der.to_vec())),
            rng,
        };
        key.check_size()?;
        Ok(key)
    }

    /// A key from a PEM file's text: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<CaKey, Error> {
        let mut key = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| Error::UnsupportedCaKey(format!("no private key found in PEM: {e}")))?;
        let loaded = Self::from_der(&key);
        zeroize::Zeroize::zeroize(&mut key);
        loaded
    }

    fn from_der(key: &PrivateKeyDer<'_>) -> Result<CaKey, Error> {
        match key {
            PrivateKeyDer::Pkcs8(der) => Self::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Sec1(der) => {
                // ring reads EC keys only as PKCS#8, so wrap the SEC1 structure in one.
                let wrapped = Zeroizing::new(wrap_sec1_p256(der.secret_sec1_der()));
                Self::from_pkcs8(&wrapped)
            }
            PrivateKeyDer::Pkcs1(der) => {
                let pair = RsaKeyPair::from_der(der.secret_pkcs1_der())
                    .map_err(|e| Error::UnsupportedCaKey(format!("RSA key rejected: {e}")))?;
                let key = CaKey {
                    inner: Inner::Rsa(pair),
                    pkcs8: None,
                    rng: SystemRandom::new(),
                };
                key.check_size()?;
                Ok(key)
            }
            _ => Err(Error::UnsupportedCaKey("unknown private key format".into())),
        }
    }

    fn check_size(&self) -> Result<(), Error> {
        if let Inner::Rsa(pair) = &self.inner {
            let bits = pair.public().modulus_len() * 8;
            if !(2048..=4096).contains(&bits) {
                return Err(Error::UnsupportedCaKey(format!(
                    "RSA-{bits}; RSA CA keys must be 2048 to 4096 bits"
                )));
            }
        }
        Ok(())
    }

    /// The PKCS#8 encoding, when this key was generated or loaded as PKCS#8.
    pub fn pkcs8_der(&self) -> Option<&[u8]> {
        self.pkcs8.as_deref().map(|v| v.as_slice())
    }

    /// The raw public key, as in a SubjectPublicKeyInfo's BIT STRING.
    pub fn public_key_raw(&self) -> &[u8] {
        match &self.inner {
            Inner::EcdsaP256(pair) => pair.public_key().as_ref(),
            Inner::Rsa(pair) => pair.public_key().as_ref(),
        }
    }

    /// The scheme this key signs with.
    pub fn scheme(&self) -> SignatureScheme {
        match &self.inner {
            Inner::EcdsaP256(_) => SignatureScheme::EcdsaP256Sha256,
            Inner::Rsa(_) => SignatureScheme::RsaPkcs1Sha256,
        }
    }

    /// A short human description, e.g. "ECDSA P-256" or "RSA-3072".
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::EcdsaP256(_) => "ECDSA P-256".into(),
            Inner::Rsa(pair) => format!("RSA-{}", pair.public().modulus_len() * 8),
        }
    }

    /// Signs `msg` (a DER TBS structure) with this key's scheme.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.inner {
            Inner::EcdsaP256(pair) => pair
                .sign(&self.rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| Error::Signing),
            Inner::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)
                    .map_err(|_| Error::Signing)?;
                Ok(sig)
            }
        }
    }
}

impl rcgen::PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        self.public_key_raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.scheme() {
            SignatureScheme::EcdsaP256Sha256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            SignatureScheme::RsaPkcs1Sha256 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        CaKey::sign(self, msg).map_err(|_| rcgen::Error::RingUnspecified)
    }
}

/// PKCS#8 PrivateKeyInfo around a SEC1 ECPrivateKey, naming P-256. ring then checks that the
/// key really is on P-256 and carries its public key.
fn wrap_sec1_p256(sec1: &[u8]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(0);
            w.next().write_sequence(|w| {
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(&[
                        1, 2, 840, 10045, 2, 1,
                    ]));
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(&[
                        1, 2, 840, 10045, 3, 1, 7,
                    ]));
            });
            w.next().write_bytes(sec1);
        })
    })
}
