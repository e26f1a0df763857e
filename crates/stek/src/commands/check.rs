//! `stek check`: validates the config and the environment, and prints what to fix.
//!
//! One line per check, each starting with what was checked:
//!
//! - `LABEL: ok (what was found)`
//! - `LABEL: warning: ...` (worth knowing; does not fail the check)
//! - `LABEL: PROBLEM: what is wrong; fix: what to do`
//!
//! Exit 0 when no check found a problem, 1 otherwise. A config that does not load is returned
//! as an error, which the caller maps to exit 2. Nothing is changed on the machine or in the
//! store (whether this node's etcd user may compact is asked with a compaction at revision 1,
//! which removes nothing), and no message holds the content of a secret file.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use nix::unistd::{Group, User};
use stek_node::config::{Coordination, EtcdAccess};
use stek_node::writer::{WriteError, WriteOptions};
use stek_node::{Config, ConfigError, Target};
use stek_store::{Coordinator, RingSlot, Snapshot};

/// How long the store may take to answer a snapshot (connection included).
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one Raft peer may take to resolve and accept a TCP connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let mut report = Report::default();
    report.add(
        &format!("config {}", path.display()),
        Finding::Ok(format!(
            "cluster \"{}\", node \"{}\", interval {}, retain {}",
            config.cluster,
            config.node_id,
            humantime::format_duration(config.policy.interval),
            config.policy.retain
        )),
    );
    if config.targets.is_empty() {
        report.add(
            "targets",
            Finding::Warning("no [[target]] sections: this node writes keys for no server".into()),
        );
    }
    for t in &config.targets {
        check_target(t, &mut report);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(check_store(&config, &mut report));
    Ok(report.finish())
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Finding {
    Ok(String),
    Warning(String),
    Problem { what: String, fix: String },
}

impl Finding {
    fn problem(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::Problem {
            what: what.into(),
            fix: fix.into(),
        }
    }
}

/// Prints each finding as it comes (network checks take a while) and counts the problems.
#[derive(Debug, Default)]
struct Report {
    checks: usize,
    problems: usize,
    warnings: usize,
}

impl Report {
    fn add(&mut self, label: &str, finding: Finding) {
        self.checks += 1;
        match finding {
            Finding::Ok(detail) => println!("{label}: ok ({detail})"),
            Finding::Warning(text) => {
                self.warnings += 1;
                println!("{label}: warning: {text}");
            }
            Finding::Problem { what, fix } => {
                self.problems += 1;
                println!("{label}: PROBLEM: {what}; fix: {fix}");
            }
        }
    }

    fn finish(self) -> ExitCode {
        if self.problems > 0 {
            println!(
                "{} problem(s), {} warning(s) in {} checks: fix the problems above and run stek check again",
                self.problems, self.warnings, self.checks
            );
            ExitCode::from(1)
        } else {
            println!(
                "no problem in {} checks ({} warning(s))",
                self.checks, self.warnings
            );
            ExitCode::SUCCESS
        }
    }
}

fn check_target(t: &Target, report: &mut Report) {
    let label = format!(
        "target[{}] {} {}",
        t.index,
        t.format.info().name,
        t.path.display()
    );
    report.add(&label, directory_finding(t, t.preflight()));
    if let Some(finding) = ownership_finding(&t.write) {
        report.add(&label, finding);
    }
    for (key, cmd) in [("reload", &t.reload), ("verify", &t.verify)] {
        if let Some(program) = cmd.as_ref().and_then(|c| c.argv.first()) {
            let found = find_program(program, std::env::var_os("PATH"));
            report.add(&label, program_finding(t.index, key, program, found));
        }
    }
    for w in t.warnings() {
        report.add(&label, Finding::Warning(w));
    }
}

/// The target directory: exists, closed to others, on a RAM disk (the writer's own preflight).
fn directory_finding(t: &Target, preflight: Result<String, WriteError>) -> Finding {
    let dir = t.directory();
    let mount = |p: &Path| format!("mount -t tmpfs -o size=1m,mode=0700 tmpfs {}", p.display());
    match preflight {
        Ok(fs) if fs == "tmpfs" || fs == "ramfs" => Finding::Ok(format!(
            "directory {} is private, on {fs}",
            dir.display()
        )),
        Ok(fs) => Finding::Warning(format!(
            "directory {} is private but on {fs}: ticket keys touch persistent storage (allow_persistent_storage = true)",
            dir.display()
        )),
        Err(WriteError::NotRamDisk { path, fs }) => Finding::problem(
            format!(
                "directory {} is on {fs}, not on a RAM disk: ticket keys would touch persistent storage",
                path.display()
            ),
            format!(
                "{} (add noswap on Linux 6.4+), or set allow_persistent_storage = true in target[{}] if you accept keys on disk",
                mount(&path),
                t.index
            ),
        ),
        Err(WriteError::MissingDir { path }) => Finding::problem(
            format!("directory {} does not exist", path.display()),
            format!("mkdir -p {} && {}", path.display(), mount(&path)),
        ),
        Err(WriteError::OpenToOthers { path, mode }) => Finding::problem(
            format!(
                "directory {} has mode {mode:o}: other users can read or replace the ticket keys in it",
                path.display()
            ),
            format!("chmod o-rwx {}", path.display()),
        ),
        Err(WriteError::Io {
            op,
            path,
            source,
            hint,
        }) => {
            let hint = hint.trim_start_matches(" (").trim_end_matches(')');
            Finding::problem(
                format!("cannot {op} {}: {source}", path.display()),
                if hint.is_empty() {
                    format!(
                        "make {} a directory that the user stek runs as can reach",
                        path.display()
                    )
                } else {
                    hint.to_owned()
                },
            )
        }
    }
}

/// Owner and group of the written files. Names were resolved when the config loaded (an unknown
/// name is a config error); a numeric id may have no entry on this machine.
fn ownership_finding(opts: &WriteOptions) -> Option<Finding> {
    if opts.owner.is_none() && opts.group.is_none() {
        return None;
    }
    let mut found = Vec::new();
    let mut unknown = Vec::new();
    if let Some(uid) = opts.owner {
        match User::from_uid(uid) {
            Ok(Some(u)) => found.push(format!("owner {} (uid {uid})", u.name)),
            _ => unknown.push(format!("owner uid {uid}")),
        }
    }
    if let Some(gid) = opts.group {
        match Group::from_gid(gid) {
            Ok(Some(g)) => found.push(format!("group {} (gid {gid})", g.name)),
            _ => unknown.push(format!("group gid {gid}")),
        }
    }
    Some(if unknown.is_empty() {
        Finding::Ok(format!("files get {}", found.join(", ")))
    } else {
        Finding::Warning(format!(
            "{} has no entry on this machine: the files get a bare number; check it is the server's",
            unknown.join(" and ")
        ))
    })
}

/// Where `program` would be run from: an executable file at its path (with a `/`) or in `path`.
fn find_program(program: &str, path: Option<OsString>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(&path?)
        .map(|d| d.join(program))
        .find(|p| executable(p))
}

fn program_finding(index: usize, key: &str, program: &str, found: Option<PathBuf>) -> Finding {
    match found {
        Some(p) if p.as_os_str() == program => {
            Finding::Ok(format!("{key} program {program} is executable"))
        }
        Some(p) => Finding::Ok(format!("{key} program {program} is {}", p.display())),
        None if program.contains('/') => Finding::problem(
            format!("{key} program \"{program}\" is not installed: no executable file there"),
            format!("install it, or correct target[{index}].{key}"),
        ),
        None => Finding::problem(
            format!("{key} program \"{program}\" is not installed or not in PATH"),
            format!(
                "install it, or give its absolute path in target[{index}].{key} (the node's PATH may differ from this shell's)"
            ),
        ),
    }
}

async fn check_store(config: &Config, report: &mut Report) {
    check_identity(config, report);
    report.add(
        "state dir",
        private_dir_finding(&config.state_dir, true, "state_dir"),
    );
    match &config.coordination {
        Coordination::Etcd { endpoints, access } => {
            check_etcd(config, endpoints, access, report).await
        }
        Coordination::Raft {
            listen,
            peers,
            data_dir,
            client,
        } => {
            if !client {
                report.add(
                    "raft data dir",
                    private_dir_finding(data_dir, false, "[raft] data_dir"),
                );
            }
            check_raft(config, listen, peers, report).await
        }
    }
}

/// A directory the node keeps private state in: missing (the node creates it 0700), or owned
/// by this user and closed to others; `ram` if it must be on tmpfs or ramfs.
fn private_dir_finding(dir: &std::path::Path, ram: bool, key: &str) -> Finding {
    use std::os::unix::fs::MetadataExt;
    let shown = dir.display();
    // The directory, or the nearest ancestor that exists (where the node would create it).
    let ram_problem = |at: &std::path::Path| -> Option<Finding> {
        let fs = stek_node::writer::fs_name(nix::sys::statfs::statfs(at).ok()?.filesystem_type());
        (ram && fs != "tmpfs" && fs != "ramfs").then(|| {
            Finding::problem(
                format!(
                    "{shown} is on {fs}, not a RAM disk: the sealing key would outlive a reboot"
                ),
                format!("point {key} at a tmpfs directory (the default is under /run)"),
            )
        })
    };
    let meta = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(problem) = dir.ancestors().find(|a| a.exists()).and_then(ram_problem) {
                return problem;
            }
            return Finding::Ok(format!(
                "{shown} does not exist yet; the node creates it, mode 0700"
            ));
        }
        Err(e) => {
            return Finding::problem(
                format!("{shown}: {e}"),
                format!("fix {key} or the directory's permissions"),
            )
        }
        Ok(m) => m,
    };
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid || meta.mode() & 0o077 != 0 {
        return Finding::problem(
            format!(
                "{shown} is owned by uid {} with mode {:o}",
                meta.uid(),
                meta.mode() & 0o7777
            ),
            format!("chown it to the user stek runs as and chmod 700 {shown}"),
        );
    }
    if let Some(problem) = ram_problem(dir) {
        return problem;
    }
    Finding::Ok(format!("{shown}, private"))
}

/// `[identity]`: the files load, the CA is this cluster's, the certificate names this node, is
/// valid and not revoked; or `insecure = true`, said plainly.
fn check_identity(config: &Config, report: &mut Report) {
    let Some(files) = &config.identity else {
        if config.insecure {
            report.add(
                "identity",
                Finding::Warning("insecure = true: no [identity], so anyone who can reach the store or a peer can enroll and read every ticket key; make certificates with `stek ca` (docs/security.md)".into()),
            );
        } else {
            report.add(
                "identity",
                Finding::Ok(
                    "single box: the one-node group listens only on a root-only Unix socket".into(),
                ),
            );
        }
        return;
    };
    let role = stek_trust::identity::Role::Member(config.node_id.clone());
    match files.load(&config.path, &config.cluster, &role) {
        Ok((_, id)) => report.add(
            "identity",
            Finding::Ok(format!(
                "{} is member {}'s certificate (serial {}) from the CA in {}; the key is its own and closed to other users",
                files.cert_file.display(),
                config.node_id,
                id.creds.serial(),
                files.ca_file.display()
            )),
        ),
        Err(e) => report.add("identity", file_finding(&e)),
    }
}

/// A file the config names could not be used. [`EtcdAccess::read`] and `IdentityFiles::load` decide
/// (a secret file readable by others is refused there); this only splits their message into
/// what is wrong and the command that fixes it.
fn file_finding(e: &ConfigError) -> Finding {
    match e {
        ConfigError::Invalid { key, message, .. } => match message.split_once(": run ") {
            Some((what, command)) => Finding::problem(format!("{key}: {what}"), command),
            None => Finding::problem(
                format!("{key}: {message}"),
                format!("correct {key}, or the file it names (it must exist and be readable by the user stek runs as)"),
            ),
        },
        other => Finding::problem(other.to_string(), "correct the config"),
    }
}

async fn check_etcd(
    config: &Config,
    endpoints: &[String],
    access: &EtcdAccess,
    report: &mut Report,
) {
    // One read per group of files, so that every unusable file is reported, not only the first.
    let mut groups = Vec::new();
    if let Some(ca) = &access.ca_file {
        let only = EtcdAccess {
            ca_file: Some(ca.clone()),
            ..EtcdAccess::default()
        };
        groups.push((
            "etcd ca_file",
            only,
            format!("{} is readable", ca.display()),
        ));
    }
    if let Some((cert, key)) = &access.client_cert {
        let only = EtcdAccess {
            client_cert: Some((cert.clone(), key.clone())),
            ..EtcdAccess::default()
        };
        let ok = format!(
            "{} and {} are readable, the key is closed to other users",
            cert.display(),
            key.display()
        );
        groups.push(("etcd cert_file, key_file", only, ok));
    }
    if let Some((user, file)) = &access.user {
        let only = EtcdAccess {
            user: Some((user.clone(), file.clone())),
            ..EtcdAccess::default()
        };
        let ok = format!(
            "user {user}, {} is readable and closed to other users",
            file.display()
        );
        groups.push(("etcd user, password_file", only, ok));
    }
    let mut files_ok = true;
    for (label, only, ok) in groups {
        match only.read(&config.path) {
            Ok(_secrets) => report.add(label, Finding::Ok(ok)),
            Err(e) => {
                files_ok = false;
                report.add(label, file_finding(&e));
            }
        }
    }
    let label = format!("etcd {}", endpoints.join(", "));
    if !files_ok {
        report.add(
            &label,
            Finding::Warning("not contacted until the files above are fixed".into()),
        );
        return;
    }
    let attempt = async {
        let etcd = super::connect::connect_etcd(config, endpoints, access).await?;
        let snap = etcd.snapshot().await?;
        anyhow::Ok((etcd, snap))
    };
    let fix = "start etcd, or correct [etcd] endpoints (and ca_file, cert_file/key_file, user/password_file when etcd uses TLS or auth); `etcdctl --endpoints=... endpoint health` shows what etcd says";
    let (finding, etcd) = match tokio::time::timeout(STORE_TIMEOUT, attempt).await {
        Ok(Ok((etcd, snap))) => (snapshot_finding(&config.cluster, &snap), Some(etcd)),
        Ok(Err(e)) => (Finding::problem(format!("{e:#}"), fix), None),
        Err(_) => (
            Finding::problem(
                format!(
                    "no answer from [{}] within {}",
                    endpoints.join(", "),
                    humantime::format_duration(STORE_TIMEOUT)
                ),
                fix,
            ),
            None,
        ),
    };
    report.add(&label, finding);
    if let Some(etcd) = etcd {
        report.add("etcd history", history_finding(config, &etcd).await);
    }
}

/// `[etcd] compact_history`: off (with the reason's cost), or on and whether this node's user
/// may compact. Warnings only: the node runs either way, keeping more history than it should.
async fn history_finding(config: &Config, etcd: &stek_etcd::Etcd) -> Finding {
    use super::history::Compaction;
    if let Some(warning) = config.history_kept_warning() {
        return Finding::Warning(warning);
    }
    match super::history::compaction(config, etcd).await {
        Ok(Compaction::Granted) => Finding::Ok(
            "compact_history: this node's etcd user may compact; the leader compacts etcd's history after every ring write that drops keys".into(),
        ),
        Ok(Compaction::Denied(warning)) => Finding::Warning(warning),
        Err(e) => Finding::Warning(format!(
            "could not ask etcd whether this node's user may compact: {e}"
        )),
    }
}

/// What the store holds for this cluster: leader, ring generation, members.
fn snapshot_finding(cluster: &str, snap: &Snapshot) -> Finding {
    let leader = match &snap.leader {
        Some(l) => format!("leader {}", l.node_id),
        None => format!("no leader (no node of cluster \"{cluster}\" is running)"),
    };
    let ring = match &snap.ring {
        RingSlot::Valid(s) => format!("ring generation {}", s.ring.generation()),
        RingSlot::Absent => "no ring yet (the first leader creates it)".to_owned(),
        RingSlot::Rejected(e) => {
            return Finding::Warning(format!(
                "answered, {leader}, but the stored ring record is rejected: {e}; see stek status"
            ))
        }
    };
    let live = snap.members.iter().filter(|m| m.live).count();
    Finding::Ok(format!(
        "answered: {leader}, {ring}, {} member(s), {live} live",
        snap.members.len()
    ))
}

/// How a Raft peer's address responded to a TCP connect.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    Answered,
    Silent(String),
    Unresolved(String),
}

async fn probe(addr: &str) -> Probe {
    if let Some(path) = addr.strip_prefix("unix:") {
        return match tokio::net::UnixStream::connect(path).await {
            Ok(_) => Probe::Answered,
            Err(e) => Probe::Silent(format!("{path}: {e}")),
        };
    }
    let resolved = match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::lookup_host(addr)).await {
        Ok(Ok(found)) => found.collect::<Vec<_>>(),
        Ok(Err(e)) => return Probe::Unresolved(e.to_string()),
        Err(_) => return Probe::Unresolved("the name lookup timed out".into()),
    };
    if resolved.is_empty() {
        return Probe::Unresolved("it resolves to no address".into());
    }
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&resolved[..])).await {
        Ok(Ok(_)) => Probe::Answered,
        Ok(Err(e)) => Probe::Silent(e.to_string()),
        Err(_) => Probe::Silent(format!(
            "no answer within {}",
            humantime::format_duration(PROBE_TIMEOUT)
        )),
    }
}

/// One peer's probe. Peers start one by one, so a silent peer (this one included: `check` runs
/// before `stek node`) is a warning; an address that does not resolve is a problem.
fn peer_finding(this_node: bool, id: &str, addr: &str, peers: usize, probe: &Probe) -> Finding {
    match (probe, this_node) {
        (Probe::Answered, true) => Finding::Ok(format!(
            "{addr} answers: this node is running, or something else listens there"
        )),
        (Probe::Answered, false) => Finding::Ok(format!("{addr} answers")),
        (Probe::Silent(why), true) => Finding::Warning(format!(
            "{addr} does not answer ({why}): this node is not running yet"
        )),
        (Probe::Silent(why), false) => Finding::Warning(format!(
            "{addr} does not answer ({why}): not started yet, or unreachable from here (address, firewall); the group needs a majority of its {peers} peers running"
        )),
        (Probe::Unresolved(why), _) => Finding::problem(
            format!("{addr} cannot be resolved: {why}"),
            format!("correct {id} in [raft] peers"),
        ),
    }
}

/// Whether this node could open its Raft listener (asked only when nothing answers there).
fn listen_finding(listen: &str, bound: io::Result<std::net::TcpListener>) -> Finding {
    let port = listen.rsplit_once(':').map_or("", |(_, p)| p);
    match bound {
        Ok(_) => Finding::Ok(format!("this node can listen on {listen}")),
        Err(e) => match e.kind() {
            io::ErrorKind::AddrNotAvailable => Finding::problem(
                format!("{listen} is not an address of this machine"),
                "set [raft] listen to an address of this machine, and this node's entry in peers to the address the others reach it at",
            ),
            io::ErrorKind::AddrInUse => Finding::problem(
                format!("{listen} is in use by another program"),
                format!("stop it (ss -ltnp 'sport = :{port}' names it), or choose another port in [raft] listen and peers"),
            ),
            io::ErrorKind::PermissionDenied => Finding::problem(
                format!("not allowed to listen on {listen}: {e}"),
                "use a port above 1023 in [raft] listen and peers, or give stek CAP_NET_BIND_SERVICE",
            ),
            _ => Finding::problem(
                format!("cannot listen on {listen}: {e}"),
                "correct [raft] listen",
            ),
        },
    }
}

async fn check_raft(
    config: &Config,
    listen: &str,
    peers: &std::collections::BTreeMap<String, String>,
    report: &mut Report,
) {
    // A TLS problem is reported under "identity"; the group is then not asked.
    let tls_ok = super::connect::peer_tls(config).is_ok();
    let mut probes = tokio::task::JoinSet::new();
    for (id, addr) in peers {
        let (id, addr) = (id.clone(), addr.clone());
        probes.spawn(async move {
            let p = probe(&addr).await;
            (id, addr, p)
        });
    }
    let mut results = probes.join_all().await;
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut answered = 0;
    let mut this_silent = false;
    for (id, addr, p) in &results {
        let this_node = *id == config.node_id;
        if *p == Probe::Answered {
            answered += 1;
        } else if this_node {
            this_silent = true;
        }
        let label = if this_node {
            format!("raft peer {id} (this node)")
        } else {
            format!("raft peer {id}")
        };
        report.add(&label, peer_finding(this_node, id, addr, peers.len(), p));
    }
    if this_silent && !listen.starts_with("unix:") {
        report.add(
            "raft listen",
            listen_finding(listen, std::net::TcpListener::bind(listen)),
        );
    }
    if answered == 0 || !tls_ok {
        return;
    }
    // The same client every command uses (the TLS material was checked above).
    let attempt = async {
        let store =
            super::connect::connect(config, &super::connect::Access::default(), None).await?;
        anyhow::Ok(store.snapshot().await?)
    };
    let finding = match tokio::time::timeout(STORE_TIMEOUT, attempt).await {
        Ok(Ok(snap)) => snapshot_finding(&config.cluster, &snap),
        Ok(Err(e)) => Finding::Warning(format!(
            "peers answer, but the group did not: {e:#} (there is no leader until a majority of the {} peers runs)",
            peers.len()
        )),
        Err(_) => Finding::Warning(format!(
            "peers answer, but the group gave no answer within {} (no leader until a majority of the {} peers runs, or the peers' TLS settings differ)",
            humantime::format_duration(STORE_TIMEOUT),
            peers.len()
        )),
    };
    report.add("raft group", finding);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_message_splits_into_problem_and_command() {
        let e = ConfigError::Invalid {
            path: "/etc/stek/stek.toml".into(),
            key: "etcd.key_file".into(),
            message:
                "/k is readable by other users (mode 644); it holds a secret: run chmod 600 /k"
                    .into(),
        };
        assert_eq!(
            file_finding(&e),
            Finding::problem(
                "etcd.key_file: /k is readable by other users (mode 644); it holds a secret",
                "chmod 600 /k"
            )
        );
    }

    #[test]
    fn silent_peers_are_warnings_and_unresolvable_ones_problems() {
        let silent = Probe::Silent("refused".into());
        assert!(matches!(
            peer_finding(true, "a", "127.0.0.1:1", 3, &silent),
            Finding::Warning(w) if w.contains("this node is not running yet")
        ));
        assert!(matches!(
            peer_finding(false, "b", "127.0.0.1:2", 3, &silent),
            Finding::Warning(w) if w.contains("majority of its 3 peers")
        ));
        assert!(matches!(
            peer_finding(false, "c", "nowhere.invalid:3", 3, &Probe::Unresolved("no".into())),
            Finding::Problem { fix, .. } if fix == "correct c in [raft] peers"
        ));
    }

    #[test]
    fn a_busy_or_foreign_listen_address_is_a_problem() {
        let busy = listen_finding(
            "127.0.0.1:7701",
            Err(io::Error::from(io::ErrorKind::AddrInUse)),
        );
        assert!(
            matches!(&busy, Finding::Problem { fix, .. } if fix.contains("sport = :7701")),
            "{busy:?}"
        );
        let foreign = listen_finding(
            "10.255.0.1:7701",
            Err(io::Error::from(io::ErrorKind::AddrNotAvailable)),
        );
        assert!(
            matches!(&foreign, Finding::Problem { what, .. } if what.contains("not an address of this machine")),
            "{foreign:?}"
        );
    }

    #[test]
    fn programs_are_found_in_path_or_by_absolute_path() {
        let path = Some(OsString::from("/nonexistent:/bin:/usr/bin"));
        assert!(find_program("sh", path.clone()).is_some());
        assert!(find_program("stek-no-such-program", path.clone()).is_none());
        assert_eq!(
            find_program("/bin/sh", None),
            Some(PathBuf::from("/bin/sh"))
        );
        assert!(
            find_program("/etc/passwd", None).is_none(),
            "not executable"
        );
        assert!(find_program("sh", None).is_none(), "no PATH");
    }
}
