#![no_main]
//! See `idmint::fuzz::config_text`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idmint::fuzz::config_text(data));
