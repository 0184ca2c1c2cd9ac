//! PKCS#10 CSR checks. From a CSR we keep only its public key, and only once its
//! self-signature proves the requester holds the private key.

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsrError {
    #[error("CSR is not a DER or PEM PKCS#10 request: {0}")]
    Malformed(String),
    #[error("CSR has {0} bytes of trailing data after the request")]
    TrailingData(usize),
    #[error("unsupported key type {0}; supported: ECDSA P-256, ECDSA P-384, RSA 2048-4096")]
    UnsupportedKey(String),
    #[error("unsupported CSR signature algorithm {0} for this key")]
    UnsupportedSignature(String),
    #[error("CSR signature does not verify with its own public key")]
    BadSignature,
}

/// The kinds of subject key we certify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKeyType {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA with the given modulus size in bits.
    Rsa(usize),
}

/// A CSR whose signature verified: all we take from it is the SubjectPublicKeyInfo.
#[derive(Clone, Debug)]
pub struct CheckedCsr {
    /// The DER SubjectPublicKeyInfo, copied unchanged into the certificate.
    pub spki_der: Vec<u8>,
    /// What kind of key it is.
    pub key_type: LeafKeyType,
}

/// Accepts a DER CSR, or PEM text holding one.
pub fn check(input: &[u8]) -> Result<CheckedCsr, CsrError> {
    let pem_der;
    let der = if input.starts_with(b"-----BEGIN") {
        use rustls_pki_types::pem::PemObject;
        pem_der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(input)
            .map_err(|e| CsrError::Malformed(format!("PEM: {e}")))?;
        pem_der.as_ref()
    } else {
        input
    };
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingData(rest.len()));
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let key_type = key_type(spki)?;
    let sig_oid = &csr.signature_algorithm.algorithm;
    let algorithm: &dyn VerificationAlgorithm = match key_type {
        // Tools pair curves and hashes freely (openssl signs P-384 requests with SHA-256).
        LeafKeyType::EcdsaP256 if *sig_oid == OID_SIG_ECDSA_WITH_SHA256 => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        LeafKeyType::EcdsaP256 if *sig_oid == OID_SIG_ECDSA_WITH_SHA384 => {
            &signature::ECDSA_P256_SHA384_ASN1
        }
        LeafKeyType::EcdsaP384 if *sig_oid == OID_SIG_ECDSA_WITH_SHA256 => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        LeafKeyType::EcdsaP384 if *sig_oid == OID_SIG_ECDSA_WITH_SHA384 => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        LeafKeyType::Rsa(_) if *sig_oid == OID_PKCS1_SHA256WITHRSA => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        LeafKeyType::Rsa(_) if *sig_oid == OID_PKCS1_SHA384WITHRSA => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        LeafKeyType::Rsa(_) if *sig_oid == OID_PKCS1_SHA512WITHRSA => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        _ => return Err(CsrError::UnsupportedSignature(sig_oid.to_id_string())),
    };
    UnparsedPublicKey::new(algorithm, spki.subject_public_key.data.as_ref())
        .verify(info.raw, csr.signature_value.data.as_ref())
        .map_err(|_| CsrError::BadSignature)?;
    Ok(CheckedCsr {
        spki_der: spki.raw.to_vec(),
        key_type,
    })
}

fn key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<LeafKeyType, CsrError> {
    let alg = &spki.algorithm;
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        return if curve == OID_EC_P256 {
            Ok(LeafKeyType::EcdsaP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(LeafKeyType::EcdsaP384)
        } else {
            Err(CsrError::UnsupportedKey(format!(
                "EC curve {}",
                curve.to_id_string()
            )))
        };
    }
    if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::Malformed("unreadable RSA public key".into())),
        };
        return if (2048..=4096).contains(&bits) {
            Ok(LeafKeyType::Rsa(bits))
        } else {
            Err(CsrError::UnsupportedKey(format!("RSA-{bits}")))
        };
    }
    let name = x509_parser::oid_registry::OidRegistry::default()
        .with_all_crypto()
        .get(&alg.algorithm)
        .map(|e| e.sn().to_string())
        .unwrap_or_else(|| alg.algorithm.to_id_string());
    Err(CsrError::UnsupportedKey(name))
}
