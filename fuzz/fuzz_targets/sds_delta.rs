#![no_main]
//! See `idmint::fuzz::sds_delta`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idmint::fuzz::sds_delta(data));
