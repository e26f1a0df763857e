//! `stek ca init` and `stek ca issue`: the cluster's own PKI (stek_trust::identity does the
//! X.509 work with rcgen; this writes the files, never over existing ones, keys 0600).

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use stek_trust::identity::{self, Role};

use crate::cli::CaCommand;

pub fn run(command: CaCommand) -> anyhow::Result<ExitCode> {
    match command {
        CaCommand::Init {
            cluster,
            out,
            valid_for,
        } => {
            check_name("--cluster", &cluster)?;
            let (cert, key) = (out.join("ca.pem"), out.join("ca.key"));
            refuse_existing(&[&cert, &key])?;
            let issued = identity::init_ca(&cluster, valid_for)?;
            make_dir(&out)?;
            write_new(&key, issued.key.as_bytes(), 0o600)?;
            write_new(&cert, issued.cert.as_bytes(), 0o644)?;
            println!(
                "wrote {} (give it to every node as [identity] ca_file) and {} (mode 600: keep it offline)",
                cert.display(),
                key.display()
            );
            println!(
                "next: stek ca issue --ca {} --node <node id> --host <its Raft address> --out <dir>",
                out.display()
            );
        }
        CaCommand::Issue {
            ca,
            node,
            operator,
            host,
            out,
            valid_for,
        } => {
            let role = match (node, operator) {
                (Some(id), None) => Role::Member(id),
                (None, Some(name)) => Role::Operator(name),
                _ => bail!("give --node ID for a member, or --operator NAME for an operator"),
            };
            let name = match &role {
                Role::Member(n) | Role::Operator(n) => n.clone(),
            };
            check_name(
                if role.member().is_some() {
                    "--node"
                } else {
                    "--operator"
                },
                &name,
            )?;
            let ca_cert = std::fs::read_to_string(ca.join("ca.pem"))
                .with_context(|| format!("cannot read {}", ca.join("ca.pem").display()))?;
            let ca_key = zeroize::Zeroizing::new(
                std::fs::read_to_string(ca.join("ca.key"))
                    .with_context(|| format!("cannot read {}", ca.join("ca.key").display()))?,
            );
            let (cert, key) = (
                out.join(format!("{name}.pem")),
                out.join(format!("{name}.key")),
            );
            refuse_existing(&[&cert, &key])?;
            let issued = identity::issue(&ca_cert, &ca_key, &role, &host, valid_for)?;
            make_dir(&out)?;
            write_new(&key, issued.key.as_bytes(), 0o600)?;
            write_new(&cert, issued.cert.as_bytes(), 0o644)?;
            let cluster = identity::ca_cluster(&ca_cert)?;
            println!(
                "wrote {} ({role} of cluster {cluster}) and {} (mode 600)",
                cert.display(),
                key.display()
            );
            if role.member().is_some() {
                println!(
                    "in {name}'s config:\n[identity]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
                    ca.join("ca.pem").display(),
                    cert.display(),
                    key.display()
                );
            } else {
                println!(
                    "use it with: stek status --config <a node's config> --cert {} --key {}",
                    cert.display(),
                    key.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The same rule as a config's `cluster` and `node_id`.
fn check_name(flag: &str, s: &str) -> anyhow::Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("{flag} \"{s}\" is not a valid name; use 1 to 128 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

fn refuse_existing(paths: &[&Path]) -> anyhow::Result<()> {
    for p in paths {
        if std::fs::symlink_metadata(p).is_ok() {
            bail!(
                "{} already exists; stek ca never overwrites a certificate or key: move it away first",
                p.display()
            );
        }
    }
    Ok(())
}

fn make_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// Creates `path` with `mode` (never following a link, never over an existing file).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
