//! `stek demo`: a local cluster doing real rotations on the embedded coordinator, with a live
//! view, and (when nginx and openssl are installed) one nginx per peer to show a ticket from
//! one box resuming on another.

use std::fs;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stek_core::Fingerprint;
use stek_raft::client::RaftClient;
use stek_store::{Coordinator, Snapshot};

pub struct Options {
    pub peers: usize,
    pub rotations: u64,
    pub interval: Duration,
    pub nginx: bool,
    pub keep: bool,
}

/// Everything the demo started: stopped and removed on every exit path (even a closed stdout).
struct Demo {
    dir: PathBuf,
    keep: bool,
    /// Name, log file, process.
    children: Vec<(String, PathBuf, Child)>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, _, child) in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Never panics: stdout may be a closed pipe (`stek demo | head`).
        let mut out = io::stdout();
        if self.keep {
            let _ = writeln!(out, "kept {}", self.dir.display());
        } else if fs::remove_dir_all(&self.dir).is_ok() {
            let _ = writeln!(out, "removed {}", self.dir.display());
        }
    }
}

/// A port nothing listens on now, never one handed out before in this run, for a peer's
/// listener to bind next. Taken below the kernel's ephemeral range, so that no outgoing
/// connection (the peers connect to each other as they start) can be given it first.
fn free_port(taken: &mut std::collections::BTreeSet<u16>) -> anyhow::Result<u16> {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 11000 {
        // Below 20000: stek's own tests reserve ports from 20000 up.
        let (low, span) = (10000u32, u32::from(ephemeral_low.min(20000)) - 10000);
        // Another demo on this machine starts elsewhere in the range.
        let start = std::process::id().wrapping_mul(7919) % span;
        for i in 0..span {
            let port = (low + (start + i) % span) as u16;
            if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                taken.insert(port);
                return Ok(port);
            }
        }
    }
    // No room below the ephemeral range: let the kernel choose.
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if taken.insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1")
}

/// The last lines of a child's log, for the message when it exits.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Writes a secret file, mode 0600 from its creation.
fn write_private(p: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("cannot create {}", p.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Makes the demo's own directory, mode 0700. One that already exists is refused, whoever made
/// it and whatever it is (directory, link, file): the demo writes a CA key, certificates and
/// configs there and trusts what it reads back, and a path made before the demo ran (its name
/// is predictable) may be another local user's, holding links or files of their choosing.
fn fresh_dir(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => bail!(
            "{d} already exists: stek demo works only in a directory it has just made itself, since one made before (perhaps by another local user) could hold links or files the demo would trust; check who made it (`ls -la {d}`) and remove it (`rm -r {d}`), or run stek demo again (each run uses /dev/shm/stek-demo-<its process id>)",
            d = p.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", p.display())),
    }
    // Exactly 0700 whatever the umask left.
    fs::set_permissions(p, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", p.display()))?;
    Ok(())
}

/// A directory inside the demo's own (made by [`fresh_dir`], so nobody else can have put one
/// there), mode 0700.
fn private_dir(p: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", p.display()))?;
    Ok(())
}

struct Peer {
    name: String,
    dir: PathBuf,
    raft: String,
    /// Its admin listener (/metrics, /healthz, /readyz).
    admin: String,
    tls_port: Option<u16>,
}

pub fn run(o: Options) -> anyhow::Result<ExitCode> {
    if o.interval < Duration::from_secs(1) {
        bail!("--interval must be at least 1s");
    }
    let dir = PathBuf::from(format!("/dev/shm/stek-demo-{}", std::process::id()));
    // Before `Demo` exists: a directory refused here is not the demo's to remove.
    fresh_dir(&dir)?;
    let mut demo = Demo {
        dir: dir.clone(),
        keep: o.keep,
        children: Vec::new(),
    };
    let tls = o.nginx && in_path("nginx") && in_path("openssl");
    let mut taken = std::collections::BTreeSet::new();
    let peers: Vec<Peer> = (1..=o.peers)
        .map(|i| {
            Ok(Peer {
                name: format!("n{i}"),
                dir: dir.join(format!("n{i}")),
                raft: format!("127.0.0.1:{}", free_port(&mut taken)?),
                admin: format!("127.0.0.1:{}", free_port(&mut taken)?),
                tls_port: if tls {
                    Some(free_port(&mut taken)?)
                } else {
                    None
                },
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let table: Vec<String> = peers
        .iter()
        .map(|p| format!("{} = \"{}\"", p.name, p.raft))
        .collect();
    let (cert, key) = if tls {
        self_signed(&dir)?
    } else {
        (PathBuf::new(), PathBuf::new())
    };
    let exe = std::env::current_exe().context("cannot find the stek binary")?;
    // A throwaway cluster CA and a member certificate per peer, in the demo's own directory:
    // peers talk over mutual TLS and sign what they write, as a real cluster does.
    let pki = dir.join("pki");
    private_dir(&pki)?;
    let ca = stek_trust::identity::init_ca("demo", Duration::from_secs(86_400))?;
    write_private(&pki.join("ca.key"), ca.key.as_bytes())?;
    fs::write(pki.join("ca.pem"), &ca.cert)?;
    for p in &peers {
        private_dir(&p.dir.join("keys"))?;
        let member = stek_trust::identity::issue(
            &ca.cert,
            &ca.key,
            &stek_trust::identity::Role::Member(p.name.clone()),
            &["127.0.0.1".to_owned()],
            Duration::from_secs(86_400),
        )?;
        fs::write(p.dir.join("member.pem"), &member.cert)?;
        write_private(&p.dir.join("member.key"), member.key.as_bytes())?;
        let d = p.dir.display();
        let reload = if tls {
            write_nginx_conf(p, &cert, &key)?;
            // nginx starts once the first keys exist; until then there is nothing to reload.
            format!(
                "reload = [\"sh\", \"-c\", \"if [ -e {d}/nginx.pid ]; then exec nginx -p {d}/ -c {d}/nginx.conf -s reload; fi\"]\n"
            )
        } else {
            String::new()
        };
        fs::write(
            p.dir.join("stek.toml"),
            format!(
                "cluster = \"demo\"\nnode_id = \"{name}\"\nstate_dir = \"{d}/state\"\n[raft]\nlisten = \"{raft}\"\ndata_dir = \"{d}/raft\"\npeers = {{ {table} }}\n\
                 [identity]\nca_file = \"{ca}\"\ncert_file = \"{d}/member.pem\"\nkey_file = \"{d}/member.key\"\n\
                 [admin]\nlisten = \"{admin}\"\n\
                 [rotation]\ninterval = \"{interval}\"\nretain = 1\nlease_ttl = \"3s\"\n\
                 [[target]]\nformat = \"nginx\"\npath = \"{d}/keys\"\n{reload}\
                 [[target]]\nformat = \"haproxy\"\npath = \"{d}/keys/haproxy.keys\"\n",
                name = p.name,
                ca = pki.join("ca.pem").display(),
                raft = p.raft,
                admin = p.admin,
                table = table.join(", "),
                interval = humantime::format_duration(o.interval),
            ),
        )?;
        let log = fs::File::create(p.dir.join("node.log"))?;
        let child = Command::new(&exe)
            .args(["node", "--config"])
            .arg(p.dir.join("stek.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start a stek node")?;
        demo.children
            .push((p.name.clone(), p.dir.join("node.log"), child));
    }
    println!(
        "stek demo: {} peers on the embedded coordinator (Raft on {}), rotating every {}, in {}",
        o.peers,
        peers
            .iter()
            .map(|p| p.raft.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        humantime::format_duration(o.interval),
        dir.display()
    );
    println!(
        "metrics: {}",
        peers
            .iter()
            .map(|p| format!("http://{}/metrics", p.admin))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if tls {
        println!(
            "nginx per peer on 127.0.0.1:{}",
            peers
                .iter()
                .filter_map(|p| p.tls_port)
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", 127.0.0.1:")
        );
    } else {
        println!("(nginx or openssl not installed, or --no-nginx: key files only, no TLS check)");
    }
    println!("Ctrl-C stops the demo and removes what it created.\n");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The demo watches the group as an operator: its certificate reads, nothing more.
    let operator = stek_trust::identity::issue(
        &ca.cert,
        &ca.key,
        &stek_trust::identity::Role::Operator("demo".into()),
        &[],
        Duration::from_secs(86_400),
    )?;
    let trust = stek_trust::identity::Trust::new(ca.cert.as_bytes(), "demo", &[])?;
    let operator_tls = stek_raft::tls::PeerTls::trusted(
        ca.cert.as_bytes(),
        operator.cert.as_bytes(),
        operator.key.as_bytes(),
        trust,
    )
    .map_err(anyhow::Error::msg)?;
    let client = RaftClient::new("demo", peers.iter().map(|p| p.raft.clone()).collect(), None)
        .with_tls(Some(operator_tls));
    let limit =
        o.interval * u32::try_from(o.rotations + 3).unwrap_or(u32::MAX) + Duration::from_secs(60);
    let started = Instant::now();
    let mut nginx_started = false;
    let mut last_epoch = 0;
    let mut resumed = 0u32;
    let mut failed = 0u32;
    let mut probe = 0usize;
    let outcome = rt.block_on(async {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tokio::signal::ctrl_c() => return Ok::<_, anyhow::Error>(false),
            }
            for (name, log, child) in &mut demo.children {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "{name} exited with {status}; the last lines of {}:\n{}",
                        log.display(),
                        log_tail(log)
                    );
                }
            }
            if started.elapsed() > limit {
                bail!(
                    "the peers did not reach {} rotations within {}",
                    o.rotations,
                    humantime::format_duration(limit)
                );
            }
            let Ok(snap) = client.snapshot().await else {
                continue;
            };
            if tls && !nginx_started && peers.iter().all(|p| p.dir.join("keys/0.key").exists()) {
                for p in &peers {
                    let d = format!("{}/", p.dir.display());
                    let log = p.dir.join("nginx.log");
                    let out = fs::File::create(&log)?;
                    let child = Command::new("nginx")
                        .args(["-p", &d, "-c"])
                        .arg(p.dir.join("nginx.conf"))
                        .stdin(Stdio::null())
                        .stdout(out.try_clone()?)
                        .stderr(out)
                        .spawn()
                        .context("cannot start nginx")?;
                    demo.children
                        .push((format!("nginx-{}", p.name), log, child));
                }
                nginx_started = true;
            }
            let Some(stored) = snap.valid_ring() else {
                continue;
            };
            let epoch = stored.ring.active().epoch;
            let applied = |s: &Snapshot| -> bool {
                s.members.iter().filter(|m| m.live).count() == peers.len()
                    && s.members
                        .iter()
                        .all(|m| m.record.applied_generation == stored.ring.generation())
            };
            if epoch != last_epoch && applied(&snap) {
                last_epoch = epoch;
                if view(&snap, started.elapsed()).is_err() {
                    // Nobody reads any more (closed pipe): stop and clean up quietly.
                    return Ok(false);
                }
                if nginx_started {
                    // A ticket from one box, resumed on the next one.
                    let from = &peers[probe % peers.len()];
                    let to = &peers[(probe + 1) % peers.len()];
                    probe += 1;
                    match cross_box(&dir, from, to) {
                        Ok((true, fp)) => {
                            resumed += 1;
                            let _ = writeln!(
                                io::stdout(),
                                "  ticket from {} (key {fp}) resumed on {}: yes",
                                from.name,
                                to.name
                            );
                        }
                        Ok((false, fp)) => {
                            failed += 1;
                            let _ = writeln!(
                                io::stdout(),
                                "  ticket from {} (key {fp}) resumed on {}: NO",
                                from.name,
                                to.name
                            );
                        }
                        Err(e) => {
                            let _ = writeln!(io::stdout(), "  resumption check skipped: {e}");
                        }
                    }
                }
                if epoch > o.rotations {
                    return Ok(true);
                }
            }
        }
    })?;
    let rotations = last_epoch.saturating_sub(1);
    let mut out = io::stdout();
    let _ = writeln!(
        out,
        "\n{rotations} rotation(s) applied by every peer in {:.1}s{}",
        started.elapsed().as_secs_f64(),
        if nginx_started {
            format!("; cross-box resumption: {resumed} resumed, {failed} failed")
        } else {
            String::new()
        }
    );
    if !outcome {
        let _ = writeln!(out, "interrupted");
    }
    if failed > 0 {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn view(snap: &Snapshot, at: Duration) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let Some(stored) = snap.valid_ring() else {
        return Ok(());
    };
    let applied: Vec<String> = snap
        .members
        .iter()
        .map(|m| {
            format!(
                "{}:{}{}",
                m.record.node_id,
                m.record.applied_generation,
                if m.live { "" } else { "(down)" }
            )
        })
        .collect();
    let keys: Vec<String> = stored
        .ring
        .keys()
        .iter()
        .rev()
        .map(|k| format!("{} {} {}", k.epoch, k.state, k.fingerprint()))
        .collect();
    writeln!(
        out,
        "[{:>5.1}s] leader {} | generation {} | applied {} | keys: {}",
        at.as_secs_f64(),
        snap.leader.as_ref().map_or("-", |l| l.node_id.as_str()),
        stored.ring.generation(),
        applied.join(" "),
        keys.join(", ")
    )?;
    out.flush()
}

fn self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("openssl could not make a self-signed certificate");
    }
    Ok((cert, key))
}

fn write_nginx_conf(p: &Peer, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let d = p.dir.display();
    let format = stek_core::formats::build(
        "nginx",
        &stek_core::FormatOptions {
            key_size: None,
            slots: None,
            retain: 1,
        },
    )?;
    let snippet = format.snippet(&format!("{d}/keys"));
    fs::write(
        p.dir.join("nginx.conf"),
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n\
             fastcgi_temp_path {d}/tmp-fcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n\
             server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
             ssl_session_cache off;\n{snippet}    location / {{ return 200 \"{name}\\n\"; }}\n  }}\n}}\n",
            port = p.tls_port.unwrap_or_default(),
            cert = cert.display(),
            key = key.display(),
            name = p.name,
        ),
    )?;
    Ok(())
}

/// Takes a TLS 1.2 ticket from `from`'s nginx and presents it to `to`'s; returns whether it
/// resumed, and the fingerprint of the key that encrypted it.
fn cross_box(dir: &Path, from: &Peer, to: &Peer) -> anyhow::Result<(bool, String)> {
    let sess = dir.join("probe-session.pem");
    let _ = fs::remove_file(&sess);
    let s_client = |port: u16, arg: &str| -> anyhow::Result<String> {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-tls1_2",
                arg,
            ])
            .arg(&sess)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    s_client(from.tls_port.unwrap_or_default(), "-sess_out")?;
    let dump = Command::new("openssl")
        .args(["sess_id", "-noout", "-text", "-in"])
        .arg(&sess)
        .output()?;
    let name = ticket_name(&String::from_utf8_lossy(&dump.stdout))
        .context("no session ticket from nginx")?;
    let out = s_client(to.tls_port.unwrap_or_default(), "-sess_in")?;
    Ok((
        out.contains("\nReused,"),
        Fingerprint::of_name(&name).to_string(),
    ))
}

fn ticket_name(dump: &str) -> Option<[u8; 16]> {
    let mut lines = dump
        .lines()
        .skip_while(|l| !l.trim().starts_with("TLS session ticket:"));
    lines.next()?;
    let first = lines.next()?;
    let hex: String = first.split_once(" - ")?.1.chars().take(47).collect();
    let bytes: Vec<u8> = hex
        .replace('-', " ")
        .split_whitespace()
        .filter_map(|t| u8::from_str_radix(t, 16).ok())
        .collect();
    let mut name = [0u8; 16];
    name.copy_from_slice(bytes.get(..16)?);
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A local user who guessed the demo's next path (`/dev/shm/stek-demo-<pid>`) and made it
    /// first (a directory with a planted file, a link to a directory of theirs, a file) gets it
    /// refused, left as it was, and the demo writes nothing there.
    #[test]
    fn a_demo_directory_made_before_the_demo_is_refused_and_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let theirs = root.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::write(theirs.join("ca.pem"), "planted").unwrap();
        let planted_dir = root.path().join("stek-demo-1");
        fs::create_dir(&planted_dir).unwrap();
        fs::write(planted_dir.join("ca.pem"), "planted").unwrap();
        fs::set_permissions(&planted_dir, fs::Permissions::from_mode(0o777)).unwrap();
        if nix::unistd::geteuid().is_root() {
            // As another user would have left it (root's demo used to chmod it and go on).
            std::os::unix::fs::chown(&planted_dir, Some(65534), Some(65534)).unwrap();
        }
        let link = root.path().join("stek-demo-2");
        std::os::unix::fs::symlink(&theirs, &link).unwrap();
        let file = root.path().join("stek-demo-3");
        fs::write(&file, "planted").unwrap();
        for p in [&planted_dir, &link, &file] {
            let before = fs::symlink_metadata(p).unwrap();
            let e = format!("{:#}", fresh_dir(p).unwrap_err());
            assert!(
                e.starts_with(&format!("{} already exists: ", p.display())),
                "{e}"
            );
            assert!(e.contains(&format!("`rm -r {}`", p.display())), "{e}");
            let after = fs::symlink_metadata(p).unwrap();
            assert_eq!(
                (after.uid(), after.mode(), after.ino()),
                (before.uid(), before.mode(), before.ino()),
                "{} is left as it was",
                p.display()
            );
        }
        assert_eq!(
            fs::read_dir(&planted_dir).unwrap().count(),
            1,
            "nothing written"
        );
        assert_eq!(fs::read_dir(&theirs).unwrap().count(), 1, "nothing written");
    }

    /// The default path still works: a path nobody made is made, mode 0700.
    #[test]
    fn a_fresh_demo_directory_is_made_private() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("stek-demo-4");
        fresh_dir(&p).unwrap();
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o7777, 0o700);
        assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
    }
}
