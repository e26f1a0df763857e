//! The `stek` command line as a library, so the binary stays a one-liner and test harnesses
//! can build the very same CLI.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;

/// Parses the command line, runs the command, and maps the outcome to an exit code:
/// 0 success, 1 failure, 2 a configuration the operator must fix.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(&cli);
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(commands::exit_code(&e))
        }
    }
}
