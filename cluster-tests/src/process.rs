//! Test servers as processes: a server counts as up only when it listens on its ports itself,
//! and a failure message carries its exit status and the tail of its log. Ports come from
//! [`crate::ports`].
//!
//! **Up.** [`Server::wait_listening`] waits until a process of the server's own process group
//! holds a listening socket on every port it was given (read from `/proc/<pid>/net/tcp*` and
//! the group's file descriptors, so it works inside a test network namespace too). A port that
//! merely accepts is not enough: another process may be the one answering.
//!
//! **Dead.** Every live [`Server`] is registered; [`exited_servers`] describes the calling
//! test's servers that have exited (status and log tail), and the harness's timeouts include
//! it, so a test that times out because a server died says so. A server is reaped only when it
//! is dropped, so its process group id is never another process's when the drop signals it.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Lines of a server's log shown when it fails.
const LOG_TAIL: usize = 25;

/// Whether servers started from now on die with the thread that starts them.
static DIE_WITH_STARTER: AtomicBool = AtomicBool::new(false);

/// From now on, every server started gets SIGKILL when the thread that started it ends, which
/// for the main thread is however the process ends: a panic, a signal, a closed pipe. For a
/// program such as stek-bench that starts its servers on its main thread, so that no etcd or
/// node outlives it. Not for tests: a test's helper threads end before its servers should.
pub fn kill_servers_when_their_starter_ends() {
    DIE_WITH_STARTER.store(true, Ordering::SeqCst);
}

/// The inodes of the TCP sockets listening on `port` in `pid`'s network namespace.
fn listening_inodes(pid: u32, port: u16) -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        for f in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            let listens = f.len() > 9 && f[3] == "0A";
            let on_port = f.get(1).and_then(|a| a.rsplit_once(':')).map(|(_, p)| p)
                == Some(&format!("{port:04X}"));
            if listens && on_port {
                inodes.extend(f[9].parse::<u64>().ok());
            }
        }
    }
    inodes
}

/// Every process id, with its process group.
fn processes() -> Vec<(u32, u32)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
            let rest = &stat[stat.rfind(')')? + 1..];
            let pgrp = rest.split_whitespace().nth(2)?.parse().ok()?;
            Some((pid, pgrp))
        })
        .collect()
}

/// Whether `pid` holds one of `inodes` as an open socket.
fn holds_any(pid: u32, inodes: &BTreeSet<u64>) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .any(|inode: u64| inodes.contains(&inode))
}

/// Who listens on `port` in `pid`'s network namespace, for failure messages.
fn describe_listeners(pid: u32, port: u16) -> String {
    let inodes = listening_inodes(pid, port);
    if inodes.is_empty() {
        return format!("nothing listens on port {port}");
    }
    let holders: Vec<String> = processes()
        .into_iter()
        .filter(|&(p, _)| holds_any(p, &inodes))
        .map(|(p, _)| {
            let cmd = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            format!("pid {p} ({})", cmd.trim())
        })
        .collect();
    format!("port {port} is held by {}", holders.join(", "))
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the registry of live servers knows of a [`Server`]: enough to report it, nothing to
/// lock (a report never waits for a server that is being stopped).
#[derive(Debug)]
struct Proc {
    name: String,
    /// The test (thread) that started it: a timeout reports only its own test's servers.
    test: Option<String>,
    pid: u32,
    log: PathBuf,
    /// Set before the process is reaped, after which its pid may belong to another process.
    reaped: AtomicBool,
}

impl Proc {
    /// How it ended, once it did. The process is not reaped (`WNOWAIT`): until the [`Server`]
    /// is dropped its pid, and so its process group id, cannot be given to another process,
    /// so the group signals of `Drop` never reach a stranger.
    fn exit_status(&self) -> Option<String> {
        if self.reaped.load(Ordering::SeqCst) {
            return None;
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(Pid::from_raw(self.pid as i32)), flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(format!("exit status: {code}")),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                Some(format!("signal: {} ({signal})", signal as i32))
            }
            _ => None,
        }
    }

    fn exited_report(&self, status: &str) -> String {
        format!(
            "{} (pid {}) exited with {status}; the last lines of {}:\n{}",
            self.name,
            self.pid,
            self.log.display(),
            tail(&fs::read_to_string(&self.log).unwrap_or_default(), LOG_TAIL)
        )
    }
}

/// Every live server, so that a timeout anywhere can say which of them died.
static LIVE: Mutex<Vec<Weak<Proc>>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<Weak<Proc>>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// One paragraph per server started by the calling test (every server, outside a named test
/// thread) that has exited: its status and log tail. Empty when they all run.
pub fn exited_servers() -> String {
    let test = std::thread::current().name().map(str::to_owned);
    let procs: Vec<Arc<Proc>> = {
        let mut live = live();
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    };
    procs
        .iter()
        .filter(|p| test.is_none() || p.test == test)
        .filter_map(|p| Some(p.exited_report(&p.exit_status()?)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// For a timeout message: "; meanwhile these servers exited: ..." or nothing.
pub fn exited_note() -> String {
    let exited = exited_servers();
    if exited.is_empty() {
        String::new()
    } else {
        format!("; meanwhile these servers exited:\n{exited}")
    }
}

/// A server process in its own process group; SIGTERM then SIGKILL to the group on drop.
#[derive(Debug)]
pub struct Server {
    proc: Arc<Proc>,
    child: Child,
}

/// `cmd` run by util-linux's `setpriv --pdeathsig KILL`, which sets the signal and execs it
/// (the setting survives exec): the same program, arguments, environment and directory.
fn with_parent_death_signal(cmd: &Command) -> Command {
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args(["--pdeathsig", "KILL", "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

impl Server {
    /// Starts `cmd` in a new process group with stdout/stderr to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let out = fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out.try_clone().expect("duplicate the log's descriptor");
        if DIE_WITH_STARTER.load(Ordering::SeqCst) {
            cmd = with_parent_death_signal(&cmd);
        }
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let proc = Arc::new(Proc {
            name: name.to_owned(),
            test: std::thread::current().name().map(str::to_owned),
            pid: child.id(),
            log,
            reaped: AtomicBool::new(false),
        });
        live().push(Arc::downgrade(&proc));
        Self { proc, child }
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    /// The output captured so far, for failure messages.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.proc.log.clone()
    }

    /// How it ended ("exit status: 1", "signal: 9 (SIGKILL)"), once it did.
    pub fn exit_status(&self) -> Option<String> {
        self.proc.exit_status()
    }

    /// Panics with the exit status and the log's tail if the process already exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.proc.exit_status() {
            panic!("{}", self.proc.exited_report(&status));
        }
    }

    /// Whether a process of this server's group listens on `port` (in its network namespace).
    pub fn listens_on(&self, port: u16) -> bool {
        group_listens(self.pid(), port)
    }

    /// Waits until `ready()`, checking every 50 ms that the server still runs. Panics with its
    /// exit status and log tail if it exits first, or with its log tail after `within`.
    pub fn wait_for(&mut self, within: Duration, what: &str, ready: impl FnMut() -> bool) {
        if !self.ready_before_exit(within, ready) {
            self.timed_out(within, what, "");
        }
    }

    /// Waits until this server itself listens on every one of `ports`. Panics with its exit
    /// status and log tail if it exits first, or, after `within`, with who holds each port.
    pub fn wait_listening(&mut self, ports: &[u16], within: Duration) {
        let pid = self.pid();
        if !self.ready_before_exit(within, || ports.iter().all(|&p| group_listens(pid, p))) {
            let who: Vec<String> = ports
                .iter()
                .filter(|&&p| !group_listens(pid, p))
                .map(|&p| describe_listeners(pid, p))
                .collect();
            self.timed_out(
                within,
                &format!("it to listen on {ports:?}"),
                &who.join("; "),
            );
        }
    }

    fn ready_before_exit(&mut self, within: Duration, mut ready: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            self.assert_running();
            if ready() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn timed_out(&self, within: Duration, what: &str, detail: &str) -> ! {
        let p = &self.proc;
        panic!(
            "{} (pid {}) runs, but timed out after {within:?} waiting for {what}{}{detail}; the last lines of {}:\n{}",
            p.name,
            p.pid,
            if detail.is_empty() { "" } else { ": " },
            p.log.display(),
            tail(&fs::read_to_string(&p.log).unwrap_or_default(), LOG_TAIL)
        );
    }
}

/// Whether a process of process group `pgid` holds a socket listening on `port`, in the
/// network namespace of the group's leader.
fn group_listens(pgid: u32, port: u16) -> bool {
    let inodes = listening_inodes(pgid, port);
    !inodes.is_empty()
        && processes()
            .into_iter()
            .filter(|&(_, group)| group == pgid)
            .any(|(p, _)| holds_any(p, &inodes))
}

impl Drop for Server {
    fn drop(&mut self) {
        // The process is still unreaped here, so its group id is still its own.
        let pgid = Pid::from_raw(self.proc.pid as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.proc.exit_status().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        self.proc.reaped.store(true, Ordering::SeqCst);
        let _ = self.child.wait();
    }
}

/// Whether `path` is a Unix socket that accepts a connection now.
pub fn socket_accepts(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::free_port;
    use std::net::TcpListener;

    #[test]
    fn a_server_is_up_only_when_it_listens_itself_and_its_death_is_reported() {
        let port = free_port();
        // Someone else listens on the port: accepting is not enough.
        let squatter = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let log = std::env::temp_dir().join(format!("stek-proc-test-{}.log", std::process::id()));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo starting; sleep 30"]);
        let mut s = Server::spawn("sleeper", cmd, log.clone());
        assert!(!s.listens_on(port));
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.wait_listening(&[port], Duration::from_millis(300))
        }))
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("is held by pid"), "{msg}");
        assert!(msg.contains("starting"), "{msg}");
        drop(squatter);

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo bind failed: Address already in use; exit 3"]);
        let mut dead = Server::spawn("quitter", cmd, log.with_extension("2"));
        let start = Instant::now();
        while dead.exit_status().is_none() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Seen as exited, yet not reaped: its pid (and group id) stays its own until the drop,
        // so the drop's group signals cannot reach a process that reused the pid.
        let stat = fs::read_to_string(format!("/proc/{}/stat", dead.pid())).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .next();
        assert_eq!(state, Some("Z"), "{stat}");
        let report = exited_servers();
        assert!(report.contains("quitter"), "{report}");
        assert!(report.contains("exit status: 3"), "{report}");
        assert!(report.contains("Address already in use"), "{report}");
        assert!(!report.contains("sleeper"), "{report}");
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            dead.wait_listening(&[port], Duration::from_secs(5))
        }))
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("exited with exit status: 3"), "{msg}");
        drop(dead);
        drop(s);
        let _ = fs::remove_file(&log);
        let _ = fs::remove_file(log.with_extension("2"));
    }

    /// Not a test: the listener that `a_listening_server_is_recognised_as_itself` starts as a
    /// process of its own (this test binary, run again), when STEK_TEST_LISTEN names a port.
    #[test]
    #[ignore = "a helper process, started by another test"]
    fn listen_helper() {
        if let Some(port) = std::env::var("STEK_TEST_LISTEN")
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
        {
            let _l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            std::thread::sleep(Duration::from_secs(30));
        }
    }

    #[test]
    fn a_listening_server_is_recognised_as_itself() {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("stek-proc-listen-{}.log", std::process::id()));
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "process::tests::listen_helper",
            "--ignored",
            "--nocapture",
        ])
        .env("STEK_TEST_LISTEN", port.to_string());
        let mut s = Server::spawn("listener", cmd, log.clone());
        s.wait_listening(&[port], Duration::from_secs(10));
        assert!(s.listens_on(port));
        drop(s);
        let _ = fs::remove_file(&log);
    }
}
