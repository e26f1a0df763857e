//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// stek rotates TLS session ticket keys and hands them to every TLS server on the box
/// (nginx, HAProxy, Traffic Server, httpd, dnsdist, Envoy), so that a ticket issued by one box
/// resumes on another while keys rotate often enough to keep forward secrecy.
#[derive(Debug, Parser)]
#[command(name = "stek", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// More detail in logs (-v debug and Raft warnings, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a peer: keep a liveness lease, follow the cluster's ring, write it for every target
    /// and reload the servers; lead rotations when elected.
    ///
    /// Stops on SIGTERM or Ctrl-C, releasing the leadership and the lease at once.
    Node {
        /// The node's TOML config.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },

    /// Show the leader, every member, every key and the rotation schedule.
    ///
    /// When a rotation is due but waiting, says which member blocks it and why.
    Status {
        /// The node's TOML config (for the store's address and the cluster name).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,

        /// Print one JSON document (documented in docs/status.md).
        #[arg(long)]
        json: bool,

        #[command(flatten)]
        cert: CertArgs,
    },

    /// Ask the leader to rotate now.
    ///
    /// With --wait, exits 0 once every live member has applied the ring in which the new key is
    /// active, and 1 with the reason if that does not happen within --timeout.
    Rotate {
        /// The node's TOML config (for the store's address and the cluster name).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,

        /// Wait until every live member applied the rotation.
        #[arg(long)]
        wait: bool,

        /// How long --wait may take.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,

        #[command(flatten)]
        cert: CertArgs,
    },

    /// Validate a config file and the environment; print what to fix.
    ///
    /// One line per check: the config; each target directory (exists, on a RAM disk, closed to
    /// other users); reload and verify programs; the owner and group files get; secret files
    /// (client key, password, peer key) closed to others; the store (etcd answers with its
    /// leader and ring; or which Raft peers answer). Exits 0 when everything is usable
    /// (warnings allowed), 1 when something must be fixed, 2 when the config is invalid.
    Check {
        /// The node's TOML config.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },

    /// Print, for every target, the server configuration lines that read stek's files.
    Snippet {
        /// The node's TOML config.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },

    /// List the server formats stek writes: layout, key sizes and which key encrypts.
    Formats,

    /// Run a local cluster: peers on loopback with the embedded coordinator, rotating.
    ///
    /// Starts --peers `stek node` processes that coordinate through their own Raft group (no
    /// external service), with key directories in a new private directory on /dev/shm, and a
    /// rotation interval of --interval. Shows the leader, the ring and each peer's applied
    /// generation live. If nginx and openssl are installed, it also starts one nginx per peer
    /// and, after every rotation, resumes a ticket from one box on another. Ends with exit 0 once
    /// every peer has applied --rotations rotations; Ctrl-C stops it early. Everything it
    /// started is stopped and its directory removed (unless --keep).
    Demo {
        /// How many peers.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=7))]
        peers: u32,

        /// How many rotations every peer must apply before the demo ends.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        rotations: u32,

        /// Time between rotations (at least 1s).
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        interval: Duration,

        /// Do not start nginx even if it is installed.
        #[arg(long)]
        no_nginx: bool,

        /// Leave the directory (configs, logs, key files) in place at the end.
        #[arg(long)]
        keep: bool,
    },

    /// List, add or remove the embedded coordinator's Raft peers.
    ///
    /// A group keeps at most five voters; further peers are non-voting learners, and boxes
    /// beyond that can run with `[raft] client = true` (no peer at all). Adding and removing a
    /// peer takes an operator certificate (--cert/--key); a learner takes a removed voter's
    /// place.
    Peers {
        #[command(subcommand)]
        command: PeersCommand,
    },

    /// Make the cluster's CA and its certificates (members and operators).
    ///
    /// Every member's `[identity]` names the CA and its own certificate: members sign their
    /// records and rings with it, and talk to each other over mutual TLS with it. Keep ca.key
    /// offline once the certificates are issued. Walk-through: docs/security.md.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },

    /// Print a shell completion script.
    ///
    /// bash: `stek completions bash > /etc/bash_completion.d/stek`;
    /// zsh: `stek completions zsh > "${fpath[1]}/_stek"`;
    /// fish: `stek completions fish > ~/.config/fish/completions/stek.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the manual page (roff), e.g. `stek man > /usr/local/share/man/man1/stek.1`.
    Man,
}

/// A certificate to present instead of the config's `[identity]` one.
#[derive(Debug, Clone, clap::Args)]
pub struct CertArgs {
    /// An operator's certificate (`stek ca issue --operator`), used instead of this box's
    /// member certificate: presented to the embedded coordinator's peers (it may read and
    /// request rotations, and add or remove Raft peers), and signing `stek rotate`'s request (with etcd too).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Its key (mode 600).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// `stek peers` subcommands.
#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Print the group's voters and learners (raft id, address), and its leader.
    List {
        /// A node's TOML config (for the peers' addresses and the cluster's CA).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        cert: CertArgs,
    },
    /// Add a peer to the running group: start the new box first (its config lists the
    /// running peers and itself in `[raft] peers`, its certificate names it and ADDR's host);
    /// it becomes a learner, catches up, then a voter while the group has fewer than five.
    Add {
        /// The new peer's node id.
        node_id: String,
        /// Where the other peers reach it (host:port, its `[raft] listen`).
        addr: String,
        /// A node's TOML config (for the peers' addresses and the cluster's CA).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        cert: CertArgs,
    },
    /// Remove a peer from the group, e.g. a box being retired or one whose Raft data was lost
    /// (start it again, then `stek peers add` it). Stop the box first.
    ///
    /// The Raft leader refuses to remove a voter if fewer than three voters would remain
    /// (fewer than the group's founding voters, if it was founded with one or two), counting
    /// a learner promoted in its place, unless --below-voter-floor is given.
    Remove {
        /// The peer's node id.
        node_id: String,
        /// Remove a voter even if fewer than three voters (or the group's founding voters, if
        /// fewer) would remain. Risky: a group of fewer than three voters loses its majority,
        /// and stops rotating, with one box down; and this flag is all a stolen operator
        /// certificate needs to shrink the group to one voter, so the leader logs each such
        /// removal. Add a peer first if you can. Takes an operator certificate.
        #[arg(long)]
        below_voter_floor: bool,
        /// A node's TOML config (for the peers' addresses and the cluster's CA).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        cert: CertArgs,
    },
}

/// `stek ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make a new CA for one cluster: DIR/ca.pem (the certificate every node trusts) and
    /// DIR/ca.key (mode 0600, to keep offline). Refuses to overwrite either.
    Init {
        /// The cluster it is for (the nodes' `cluster`).
        #[arg(long, value_name = "NAME")]
        cluster: String,
        /// The directory to write to (made 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// How long the CA is valid.
        #[arg(long, default_value = "3650d", value_parser = parse_duration)]
        valid_for: Duration,
    },

    /// Issue a member's certificate (--node ID) or an operator's (--operator NAME): DIR2/ID.pem
    /// and DIR2/ID.key (0600). A member's names the cluster and the node id, and with --host the
    /// names or IPs its Raft listener is reached at; an operator's can only read the cluster's
    /// state and request rotations, never act as a member. Refuses to overwrite.
    Issue {
        /// The directory holding ca.pem and ca.key.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The member's node id.
        #[arg(
            long,
            value_name = "ID",
            conflicts_with = "operator",
            required_unless_present = "operator"
        )]
        node: Option<String>,
        /// The operator's name.
        #[arg(long, value_name = "NAME")]
        operator: Option<String>,
        /// A DNS name or IP address peers reach this member's Raft listener at (repeatable).
        #[arg(long, value_name = "H", conflicts_with = "operator")]
        host: Vec<String>,
        /// The directory to write to (made 0700 if missing).
        #[arg(long, value_name = "DIR2")]
        out: PathBuf,
        /// How long the certificate is valid.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        valid_for: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 2s, 500ms, 1m)"))
}

/// Sets up tracing on stderr.
pub fn init_logging(cli: &Cli) {
    // openraft reports every unreachable peer as an error many times a second; stek reports
    // what matters (quorum lost, store unreachable) itself. -v brings Raft's own logs back.
    let default = match cli.verbose {
        0 => "info,openraft=off",
        1 => "debug,openraft=warn",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_and_the_man_page_cover_every_subcommand() {
        let mut cmd = Cli::command();
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "stek", &mut out);
            let text = String::from_utf8(out).unwrap();
            for n in &names {
                assert!(text.contains(n.as_str()), "{shell:?} completion lacks {n}");
            }
        }
        let mut roff = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut roff)
            .unwrap();
        let roff = String::from_utf8(roff).unwrap();
        assert!(
            roff.starts_with(".ie") || roff.contains(".TH stek"),
            "{roff}"
        );
        for n in &names {
            assert!(roff.contains(n.as_str()), "man page lacks {n}");
        }
    }

    #[test]
    fn bad_durations_explain_the_format() {
        let err = Cli::try_parse_from(["stek", "demo", "--interval", "soon"]).unwrap_err();
        assert!(err.to_string().contains("use e.g. 2s"), "{err}");
    }
}
