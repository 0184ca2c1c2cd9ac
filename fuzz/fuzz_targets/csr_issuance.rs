#![no_main]
//! A CSR through issuance; what is issued must be strict DER that re-encodes byte for byte.

use libfuzzer_sys::fuzz_target;
use x509_cert::der::{Decode, Encode};

fuzz_target!(|data: &[u8]| {
    if let Some(der) = idmint::fuzz::csr_issuance(data) {
        let cert = x509_cert::Certificate::from_der(&der).expect("strict DER");
        assert_eq!(cert.to_der().expect("re-encodes"), der, "canonical DER");
    }
});
