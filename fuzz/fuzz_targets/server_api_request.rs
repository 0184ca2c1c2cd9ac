#![no_main]
//! See `idmint::fuzz::server_api_request`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idmint::fuzz::server_api_request(data));
