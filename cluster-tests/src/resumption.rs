//! The resumption client of the soak and the fault suite: threads that take a ticket from one
//! box and resume it on another over TLS 1.2 and 1.3, and judge every attempt against the key
//! files of the box that resumed it:
//!
//! - inside the decrypt window: the ticket's key was in that box's files for at least `settle`
//!   before the attempt and until after it; it must resume;
//! - outside: the key had been gone from that box's files for `gone`; it must not resume;
//! - anything else (the key arrived or left around the attempt) is counted, not judged.
//!
//! A watcher thread reads every box's files every 50 ms, so "for at least" is judged on a
//! dense history, not only on what the clients happened to read.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::tls::{resume, take_ticket, ticket_bytes, Handshake, Session, Tls};

/// A key name (the first 16 bytes of a ticket, and of every key).
pub type Name = [u8; 16];

/// Where stek writes one server's keys.
#[derive(Debug, Clone)]
pub enum Keys {
    /// nginx slot files in a directory.
    NginxDir(PathBuf),
    /// HAProxy's base64 key file.
    HaproxyFile(PathBuf),
}

impl Keys {
    /// The key names in the files now.
    pub fn names(&self) -> BTreeSet<Name> {
        let mut out = BTreeSet::new();
        let mut add = |bytes: &[u8]| {
            if let Some(n) = bytes.get(..16) {
                out.insert(n.try_into().expect("16 bytes"));
            }
        };
        match self {
            Keys::NginxDir(dir) => {
                for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    add(&std::fs::read(e.path()).unwrap_or_default());
                }
            }
            Keys::HaproxyFile(path) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                for line in text.lines() {
                    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(line) {
                        add(&bytes);
                    }
                }
            }
        }
        out
    }
}

/// One TLS server on 127.0.0.1 and its key files.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its TLS port.
    pub port: u16,
    /// Its keys.
    pub keys: Keys,
}

/// Servers by kind, one per box: a ticket from `groups[k][a]` is resumed on `groups[k][b]`.
pub type Fleet = Vec<Vec<Endpoint>>;

/// How attempts are judged; `None` in [`Clients::start`] counts without judging (baselines).
#[derive(Debug, Clone, Copy)]
pub struct Judging {
    /// How long a key must have been on the resuming box's disk to count as inside.
    pub settle: Duration,
    /// How long a key must have been gone from it to count as outside.
    pub gone: Duration,
}

/// What the clients counted. `attempts`/`resumed` count fresh tickets (resumed on another box
/// right after they were issued); the window counts cover fresh and aged tickets alike.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Fresh tickets tried on another box.
    pub attempts: u64,
    /// Of which resumed.
    pub resumed: u64,
    /// Tickets seconds old tried on another box.
    pub aged_attempts: u64,
    /// Of which resumed.
    pub aged_resumed: u64,
    /// Attempts inside the decrypt window.
    pub inside: u64,
    /// Of which not resumed: lost tickets (must be 0).
    pub inside_failed: u64,
    /// Attempts outside the window.
    pub outside: u64,
    /// Of which resumed: a dropped key still decrypting (must be 0).
    pub outside_resumed: u64,
    /// Attempts around a key's arrival or departure.
    pub undecided: u64,
    /// Attempts outside the window on a box marked stale ([`Clients::set_stale`]): its server
    /// may still hold keys its files no longer do.
    pub stale_outside: u64,
    /// Of which resumed.
    pub stale_outside_resumed: u64,
}

impl Tally {
    /// Resumed / attempts, fresh tickets.
    pub fn rate(&self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            self.resumed as f64 / self.attempts as f64
        }
    }

    /// What was counted after `earlier` (a copy of this tally taken before).
    pub fn since(&self, earlier: &Tally) -> Tally {
        Tally {
            attempts: self.attempts - earlier.attempts,
            resumed: self.resumed - earlier.resumed,
            aged_attempts: self.aged_attempts - earlier.aged_attempts,
            aged_resumed: self.aged_resumed - earlier.aged_resumed,
            inside: self.inside - earlier.inside,
            inside_failed: self.inside_failed - earlier.inside_failed,
            outside: self.outside - earlier.outside,
            outside_resumed: self.outside_resumed - earlier.outside_resumed,
            undecided: self.undecided - earlier.undecided,
            stale_outside: self.stale_outside - earlier.stale_outside,
            stale_outside_resumed: self.stale_outside_resumed - earlier.stale_outside_resumed,
        }
    }
}

/// When a box's files held which key names.
type Snapshots = VecDeque<(Instant, BTreeSet<Name>)>;

/// Key-name snapshots per endpoint (by group, then box) over the last 20 s.
#[derive(Default)]
struct Seen {
    history: Vec<Vec<Snapshots>>,
}

impl Seen {
    fn record(&mut self, kind: usize, box_: usize, names: BTreeSet<Name>) {
        let h = &mut self.history[kind][box_];
        h.push_back((Instant::now(), names));
        while h
            .front()
            .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(20))
        {
            h.pop_front();
        }
    }

    /// Whether `has(names)` held in every snapshot since `from` and a snapshot at or before
    /// `from` exists (so the history covers the span).
    fn held_since(
        &self,
        kind: usize,
        box_: usize,
        from: Instant,
        has: impl Fn(&BTreeSet<Name>) -> bool,
    ) -> bool {
        let h = &self.history[kind][box_];
        // The last snapshot at or before `from`, and every later one.
        let Some(start) = h.iter().rposition(|(t, _)| *t <= from) else {
            return false;
        };
        h.iter().skip(start).all(|(_, n)| has(n))
    }
}

fn ticket_name(s: &Session) -> Option<Name> {
    let bytes = ticket_bytes(&s.path)?;
    bytes.get(..16).map(|b| b.try_into().expect("16 bytes"))
}

/// Client threads (each one TLS client at a time).
const CLIENTS: usize = 3;
/// Attempts per thread at most (the stop flag ends them sooner).
const MAX_ATTEMPTS: u32 = 100_000;

/// Resumption clients running in the background until [`Clients::stop`].
#[derive(Debug)]
pub struct Clients {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    stale: Arc<Mutex<BTreeSet<usize>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Clients {
    /// Starts the watcher and [`CLIENTS`] client threads against `fleet`; session files go to
    /// `dir`.
    pub fn start(dir: &Path, fleet: Fleet, judging: Option<Judging>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stale = Arc::new(Mutex::new(BTreeSet::new()));
        let fleet = Arc::new(fleet);
        let seen = Arc::new(Mutex::new(Seen {
            history: fleet
                .iter()
                .map(|g| vec![VecDeque::new(); g.len()])
                .collect(),
        }));
        let mut threads = Vec::new();
        {
            let (fleet, stop, seen) = (fleet.clone(), stop.clone(), seen.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (k, group) in fleet.iter().enumerate() {
                        for (b, e) in group.iter().enumerate() {
                            let names = e.keys.names();
                            seen.lock().unwrap().record(k, b, names);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }));
        }
        for t in 0..CLIENTS {
            let shared = Shared {
                fleet: fleet.clone(),
                stop: stop.clone(),
                seen: seen.clone(),
                tally: tally.clone(),
                stale: stale.clone(),
            };
            let dir = dir.to_owned();
            threads.push(std::thread::spawn(move || {
                client(t, &dir, &shared, judging)
            }));
        }
        Self {
            stop,
            tally,
            stale,
            threads,
        }
    }

    /// Marks box `b` (in every group) as stale, or no longer: its server may hold other keys
    /// than its files (a reload that hangs), so "outside the window" is not judged there but
    /// counted apart.
    pub fn set_stale(&self, b: usize, stale: bool) {
        let mut s = self.stale.lock().unwrap();
        if stale {
            s.insert(b);
        } else {
            s.remove(&b);
        }
    }

    /// What was counted so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    /// Stops every thread; the final count.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let t = self.tally.lock().unwrap().clone();
        t
    }
}

/// Runs clients for `d` while `during` runs on this thread every 100 ms.
pub fn clients_for(
    dir: &Path,
    fleet: Fleet,
    d: Duration,
    judging: Option<Judging>,
    mut during: impl FnMut(),
) -> Tally {
    let clients = Clients::start(dir, fleet, judging);
    let end = Instant::now() + d;
    while Instant::now() < end {
        during();
        std::thread::sleep(Duration::from_millis(100));
    }
    clients.stop()
}

/// What the client threads share.
struct Shared {
    fleet: Arc<Fleet>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    tally: Arc<Mutex<Tally>>,
    stale: Arc<Mutex<BTreeSet<usize>>>,
}

/// One client thread: a ticket from a random box, resumed on another; every other attempt
/// resumes an older session instead (seconds old: its key may be retiring, or gone).
fn client(t: usize, dir: &Path, shared: &Shared, judging: Option<Judging>) {
    let Shared {
        fleet,
        stop,
        seen,
        tally,
        stale,
    } = shared;
    // Sessions kept to be resumed later (aged tickets), oldest first.
    let mut pool: VecDeque<(Session, Name, usize, usize)> = VecDeque::new();
    for i in 0..MAX_ATTEMPTS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let kind = rand::random::<usize>() % fleet.len();
        let boxes = &fleet[kind];
        let a = rand::random::<usize>() % boxes.len();
        let tls = if rand::random() { Tls::V12 } else { Tls::V13 };
        let out = dir.join(format!("c{t}-{i}.pem"));
        let fresh = take_ticket(boxes[a].port, tls, &out);
        let Some(fresh_name) = ticket_name(&fresh) else {
            let _ = std::fs::remove_file(&out);
            continue;
        };
        pool.push_back((fresh.clone(), fresh_name, kind, a));
        while pool.len() > 24 {
            if let Some((old, ..)) = pool.pop_front() {
                let _ = std::fs::remove_file(&old.path);
            }
        }
        let aged = i % 2 == 1 && pool.len() > 4;
        let (session, name, kind, a) = if aged {
            pool[rand::random::<usize>() % (pool.len() - 1)].clone()
        } else {
            (fresh, fresh_name, kind, a)
        };
        let boxes = &fleet[kind];
        let b = (a + 1 + rand::random::<usize>() % (boxes.len() - 1)) % boxes.len();
        let started = Instant::now();
        let before = boxes[b].keys.names();
        let got = resume(boxes[b].port, &session);
        let after = boxes[b].keys.names();
        let reused = got == Handshake::Reused;
        let mut seen = seen.lock().unwrap();
        seen.record(kind, b, after.clone());
        let mut t = tally.lock().unwrap();
        if aged {
            t.aged_attempts += 1;
            t.aged_resumed += u64::from(reused);
        } else {
            t.attempts += 1;
            t.resumed += u64::from(reused);
        }
        let Some(j) = judging else { continue };
        let inside = before.contains(&name)
            && after.contains(&name)
            && seen.held_since(
                kind,
                b,
                started.checked_sub(j.settle).unwrap_or(started),
                |n| n.contains(&name),
            );
        let outside = !before.contains(&name)
            && !after.contains(&name)
            && seen.held_since(
                kind,
                b,
                started.checked_sub(j.gone).unwrap_or(started),
                |n| !n.contains(&name),
            );
        if inside {
            t.inside += 1;
            if !reused {
                t.inside_failed += 1;
                tracing::error!(
                    "inside the window, not resumed: group {kind} {tls:?} box {a} -> {b} (aged {aged})"
                );
            }
        } else if outside && stale.lock().unwrap().contains(&b) {
            t.stale_outside += 1;
            t.stale_outside_resumed += u64::from(reused);
        } else if outside {
            t.outside += 1;
            if reused {
                t.outside_resumed += 1;
                tracing::error!(
                    "outside the window, resumed: group {kind} {tls:?} box {a} -> {b} (aged {aged})"
                );
            }
        } else {
            t.undecided += 1;
        }
    }
    for (old, ..) in pool {
        let _ = std::fs::remove_file(&old.path);
    }
}
