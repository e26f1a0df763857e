//! One module per subcommand; each returns the process exit code.

use std::process::ExitCode;

use stek_node::ConfigError;

use crate::cli::Command;

mod ca;
mod check;
mod connect;
mod demo;
mod formats;
mod history;
mod node;
mod peers;
mod snippet;
mod status;

/// Runs a subcommand.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Node { config } => node::run(&config),
        Command::Status { config, json, cert } => status::status(&config, json, &access(cert)),
        Command::Rotate {
            config,
            wait,
            timeout,
            cert,
        } => status::rotate(&config, wait, timeout, &access(cert)),
        Command::Check { config } => check::run(&config),
        Command::Ca { command } => ca::run(command),
        Command::Peers { command } => match command {
            crate::cli::PeersCommand::List { config, cert } => {
                peers::peers_list(&config, &access(cert))
            }
            crate::cli::PeersCommand::Add {
                node_id,
                addr,
                config,
                cert,
            } => peers::peers_add(&config, &node_id, &addr, &access(cert)),
            crate::cli::PeersCommand::Remove {
                node_id,
                below_voter_floor,
                config,
                cert,
            } => peers::peers_remove(&config, &node_id, below_voter_floor, &access(cert)),
        },
        Command::Snippet { config } => snippet::run(&config),
        Command::Formats => formats::run(),
        Command::Completions { shell } => {
            let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "stek", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let cmd = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            peers,
            rotations,
            interval,
            no_nginx,
            keep,
        } => demo::run(demo::Options {
            peers: usize::try_from(peers)?,
            rotations: u64::from(rotations),
            interval,
            nginx: !no_nginx,
            keep,
        }),
    }
}

fn access(cert: crate::cli::CertArgs) -> connect::Access {
    connect::Access {
        operator: cert.cert.zip(cert.key),
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
