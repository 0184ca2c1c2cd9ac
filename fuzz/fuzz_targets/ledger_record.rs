#![no_main]
//! See `idmint::fuzz::ledger_record`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idmint::fuzz::ledger_record(data));
