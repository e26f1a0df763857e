//! One module per subcommand; each returns the process exit code.

use std::process::ExitCode;

use stek_node::ConfigError;

use crate::cli::Command;

mod check;
mod cluster;
mod demo;
mod formats;
mod node;
mod snippet;

/// Runs a subcommand.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Node { config } => node::run(&config),
        Command::Status { config, json } => cluster::status(&config, json),
        Command::Rotate {
            config,
            wait,
            timeout,
        } => cluster::rotate(&config, wait, timeout),
        Command::Check { config } => check::run(&config),
        Command::Snippet { config } => snippet::run(&config),
        Command::Formats => formats::run(),
        Command::Demo {
            rotations,
            interval,
            retain,
            dir,
            keep,
        } => demo::run(demo::Options {
            rotations,
            interval,
            retain: usize::try_from(retain)?,
            dir,
            keep,
        }),
    }
}

/// Exit codes: 2 for a configuration the operator must fix, 1 for everything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<ConfigError>().is_some() {
        2
    } else {
        1
    }
}
