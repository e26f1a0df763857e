//! The `stek` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    stek::main()
}
