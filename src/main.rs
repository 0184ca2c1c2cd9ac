//! The `idmint` binary: parse the command line and run.

fn main() -> std::process::ExitCode {
    idmint::cli::main()
}
