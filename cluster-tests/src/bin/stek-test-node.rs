//! The `stek` CLI built inside this package, so cluster tests always run the current code
//! (`CARGO_BIN_EXE_stek-test-node`) rather than whatever `target/` happens to hold.

fn main() -> std::process::ExitCode {
    stek::main()
}
