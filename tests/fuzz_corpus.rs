//! The fuzz targets' committed corpus (seeds, and every input that once found a defect)
//! replayed through the same entry points `make fuzz` runs, so what was fixed stays fixed;
//! what csr_issuance issues is read with the strict DER reader.

// The shared helpers wait on real processes with real deadlines.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;

use common::strict_der;

fn replay(target: &str, input: &[u8], what: &str) {
    if target == "csr_issuance" {
        if let Some(der) = idmint::fuzz::csr_issuance(input) {
            strict_der::certificate(what, &der);
        }
        return;
    }
    assert!(idmint::fuzz::run(target, input), "no target {target}");
}

#[test]
fn every_committed_input_of_every_target_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for target in idmint::fuzz::TARGETS {
        let dir = root.join(target);
        let inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!inputs.is_empty(), "{target} has a seed corpus");
        for path in inputs {
            let input = std::fs::read(&path).unwrap();
            replay(target, &input, &path.display().to_string());
        }
    }
}

#[test]
fn fresh_seeds_run_clean_and_reach_issuance() {
    let mut issued = 0;
    for (target, input) in idmint::fuzz::seeds() {
        if target == "csr_issuance" && idmint::fuzz::csr_issuance(&input).is_some() {
            issued += 1;
        }
        replay(target, &input, target);
    }
    assert_eq!(issued, 2, "both CSR seeds (DER and PEM) are certified");
}
