//! Writes `idmint::fuzz::seeds()` into `corpus/<target>/`: the seed corpus, made once and
//! committed. `cargo run --example write_seeds` from `fuzz/`.

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (n, (target, input)) in idmint::fuzz::seeds().into_iter().enumerate() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(format!("seed-{n:02}")), input).expect("seed written");
    }
}
