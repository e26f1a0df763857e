//! `stek ca init` and `stek ca issue`: the cluster's own PKI (stek_trust::identity does the
//! X.509 work with rcgen; this writes the files, never over existing ones, keys 0600).
//!
//! The directories it writes into and the CA directory it reads from must be its user's and
//! closed to writes by others, and `ca.key` its user's and closed to others altogether: another
//! local user who could swap files there could have a certificate issued with a CA key of their
//! own choosing, or plant a file where a key is about to be written. A directory that does not
//! exist yet is made mode 0700 (with its missing parents) and then checked like any other.

use std::fs::{DirBuilder, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
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
            own_dir(&out, true)?;
            let (cert, key) = (out.join("ca.pem"), out.join("ca.key"));
            refuse_existing(&[&cert, &key])?;
            let issued = identity::init_ca(&cluster, valid_for)?;
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
            own_dir(&ca, false)?;
            let ca_cert = std::fs::read_to_string(ca.join("ca.pem"))
                .with_context(|| format!("cannot read {}", ca.join("ca.pem").display()))?;
            let ca_key = read_ca_key(&ca.join("ca.key"))?;
            own_dir(&out, true)?;
            let (cert, key) = (
                out.join(format!("{name}.pem")),
                out.join(format!("{name}.key")),
            );
            refuse_existing(&[&cert, &key])?;
            let issued = identity::issue(&ca_cert, &ca_key, &role, &host, valid_for)?;
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

/// What `stat` says of a path, as far as the rules below need. Kept apart from the reading so
/// that each rule is a function of it and of who runs `stek ca`, tested as a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Facts {
    kind: Kind,
    uid: u32,
    /// The permission bits (`mode & 0o7777`).
    mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Other,
}

impl Facts {
    fn of(meta: &Metadata) -> Self {
        let kind = if meta.is_dir() {
            Kind::Dir
        } else if meta.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        Self {
            kind,
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        }
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// A directory `stek ca` writes into or reads the CA from must belong to the user running it
/// (root included: a directory of uid 1000 is that user's door) and be closed to writes by
/// group and others, who could otherwise swap or plant the files written or read there.
fn dir_verdict(dir: &Path, facts: Facts, euid: u32) -> anyhow::Result<()> {
    let d = dir.display();
    if facts.kind != Kind::Dir {
        bail!("{d} is not a directory; give a directory (stek ca makes it, mode 700, if it does not exist)");
    }
    if facts.uid != euid {
        bail!(
            "{d} belongs to uid {}, not to uid {euid} who runs stek ca: its owner could swap the files stek ca writes or reads there; use a directory of your own, or `chown {euid} {d}` if it should be yours",
            facts.uid
        );
    }
    if facts.mode & 0o022 != 0 {
        bail!(
            "{d} has mode {:04o}: group or others can write in it and could swap the files stek ca writes or reads there; run `chmod 700 {d}` (or at least `chmod go-w {d}`), or use another directory",
            facts.mode
        );
    }
    Ok(())
}

/// `ca.key` must be a regular file of the user running `stek ca`, closed to group and others:
/// a key another user could have written or read is not one to sign with.
fn key_verdict(key: &Path, facts: Facts, euid: u32) -> anyhow::Result<()> {
    let k = key.display();
    if facts.kind != Kind::File {
        bail!("{k} is not a regular file; give the directory where `stek ca init` wrote ca.key");
    }
    if facts.uid != euid {
        bail!(
            "{k} belongs to uid {}, not to uid {euid} who runs stek ca: stek ca signs only with a CA key of its own user; if the key is yours, `chown {euid} {k}`, otherwise do not use it",
            facts.uid
        );
    }
    if facts.mode & 0o077 != 0 {
        bail!(
            "{k} has mode {:04o}: group or others can read or change the cluster CA's key; run `chmod 600 {k}`, and if anyone else may have read it, make a new CA (`stek ca init`): whoever holds it can issue certificates for this cluster",
            facts.mode
        );
    }
    Ok(())
}

/// Makes `dir` (mode 0700, with missing parents) when `create` and it does not exist, then
/// checks it. A symbolic link is followed: what is checked is the directory written into.
fn own_dir(dir: &Path, create: bool) -> anyhow::Result<()> {
    if create && std::fs::symlink_metadata(dir).is_err() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Checked after making it too: a directory someone else made first is theirs.
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    dir_verdict(dir, Facts::of(&meta), euid())
}

/// Reads `ca.key`, checked on the open file (never through a link), so that what is read is
/// what was checked.
fn read_ca_key(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let mut f = match OpenOptions::new()
        .read(true)
        // Non-blocking: a FIFO in its place must not hang `stek ca` before it is refused.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "{} is a symbolic link; stek ca reads the CA key only from a file in the CA directory itself: put ca.key there",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let meta = f
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    key_verdict(path, Facts::of(&meta), euid())?;
    // Room for all of it at once: a buffer grown while reading leaves copies of the key behind.
    let size = usize::try_from(meta.len()).unwrap_or(0).min(1 << 20);
    let mut key = zeroize::Zeroizing::new(String::with_capacity(size + 1));
    f.read_to_string(&mut key)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(key)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kind: Kind, uid: u32, mode: u32) -> Facts {
        Facts { kind, uid, mode }
    }

    /// Each row: what stat says, who runs `stek ca`, and the refusal (a part of its message), or
    /// `None` when the directory is accepted.
    #[test]
    fn a_directory_another_user_owns_or_others_can_write_is_refused() {
        let rows: &[(Facts, u32, Option<&str>)] = &[
            // The usual: made by `stek ca`, or the operator's own 0700/0755 directory.
            (facts(Kind::Dir, 0, 0o700), 0, None),
            (facts(Kind::Dir, 0, 0o755), 0, None),
            (facts(Kind::Dir, 1000, 0o750), 1000, None),
            // Writable by group or others: they could swap ca.key or plant a link.
            (
                facts(Kind::Dir, 0, 0o777),
                0,
                Some("has mode 0777: group or others can write"),
            ),
            (facts(Kind::Dir, 0, 0o1777), 0, Some("has mode 1777")),
            (facts(Kind::Dir, 1000, 0o770), 1000, Some("`chmod 700 ")),
            (facts(Kind::Dir, 1000, 0o702), 1000, Some("has mode 0702")),
            // Another user's, even when root runs stek ca: uid 1000 could swap files in it.
            (
                facts(Kind::Dir, 1000, 0o700),
                0,
                Some("belongs to uid 1000, not to uid 0"),
            ),
            (
                facts(Kind::Dir, 0, 0o755),
                1000,
                Some("belongs to uid 0, not to uid 1000"),
            ),
            (facts(Kind::Dir, 65534, 0o755), 0, Some("`chown 0 /ca`")),
            (facts(Kind::File, 0, 0o700), 0, Some("is not a directory")),
        ];
        for (f, euid, want) in rows {
            let got = dir_verdict(Path::new("/ca"), *f, *euid);
            match (want, got) {
                (None, Ok(())) => {}
                (Some(want), Err(e)) => {
                    let e = e.to_string();
                    assert!(e.contains(want), "{f:?} as uid {euid}: {e}");
                    assert!(e.starts_with("/ca "), "names the path: {e}");
                }
                (want, got) => panic!("{f:?} as uid {euid}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_ca_key_another_user_owns_or_others_can_read_is_refused() {
        let rows: &[(Facts, u32, Option<&str>)] = &[
            (facts(Kind::File, 0, 0o600), 0, None),
            (facts(Kind::File, 0, 0o400), 0, None),
            (facts(Kind::File, 1000, 0o600), 1000, None),
            (
                facts(Kind::File, 0, 0o644),
                0,
                Some("has mode 0644: group or others can read or change"),
            ),
            (
                facts(Kind::File, 0, 0o640),
                0,
                Some("`chmod 600 /ca/ca.key`"),
            ),
            (facts(Kind::File, 0, 0o602), 0, Some("make a new CA")),
            // Written by another user: a CA key of their choosing.
            (
                facts(Kind::File, 65534, 0o600),
                0,
                Some("belongs to uid 65534, not to uid 0"),
            ),
            (
                facts(Kind::File, 0, 0o600),
                1000,
                Some("belongs to uid 0, not to uid 1000"),
            ),
            (
                facts(Kind::Other, 0, 0o600),
                0,
                Some("is not a regular file"),
            ),
            (facts(Kind::Dir, 0, 0o700), 0, Some("is not a regular file")),
        ];
        for (f, euid, want) in rows {
            let got = key_verdict(Path::new("/ca/ca.key"), *f, *euid);
            match (want, got) {
                (None, Ok(())) => {}
                (Some(want), Err(e)) => {
                    let e = e.to_string();
                    assert!(e.contains(want), "{f:?} as uid {euid}: {e}");
                    assert!(e.starts_with("/ca/ca.key "), "names the path: {e}");
                }
                (want, got) => panic!("{f:?} as uid {euid}: wanted {want:?}, got {got:?}"),
            }
        }
    }
}
