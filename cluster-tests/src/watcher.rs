//! The continuous checker of the fault suite: it reads the key files of several boxes every
//! 50 ms while faults come and go, and checks I1 and I2 between the boxes the suite counts as
//! healthy (running, reachable, caught up).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::resumption::{Keys, Name};

/// The continuous checker: every 50 ms it reads the key files of every box the suite counts
/// as healthy (running, reachable, caught up) and checks, between them:
/// - staging (I1): when a key first encrypts on some box, every healthy box already has it;
/// - coverage (I1, I2): every box's encrypting key is in every other box's files; a lack that
///   lasts under a second is a box between two renames of one apply, and is not counted.
#[derive(Debug)]
pub struct Watcher {
    state: Arc<Mutex<WatchState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct WatchState {
    excluded: BTreeSet<usize>,
    samples: u64,
    violations: Vec<String>,
}

fn slot0(dir: &Path) -> Option<Name> {
    let b = std::fs::read(dir.join("0.key")).ok()?;
    b.get(..16).map(|n| n.try_into().unwrap())
}

fn fp(n: &Name) -> String {
    stek_core::Fingerprint::of_name(n).to_string()
}

impl Watcher {
    /// Starts watching `boxes` (a name and an nginx slot directory each).
    pub fn start(boxes: Vec<(String, PathBuf)>) -> Self {
        let state = Arc::new(Mutex::new(WatchState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Where each key was first seen, by box, and when it first encrypted anywhere.
            let mut first_had: BTreeMap<(usize, Name), u64> = BTreeMap::new();
            let mut encrypting: BTreeSet<Name> = BTreeSet::new();
            let mut lacking_since: BTreeMap<(usize, usize, Name), Instant> = BTreeMap::new();
            let mut tick: u64 = 0;
            while !sp.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                tick += 1;
                let excluded = st.lock().unwrap().excluded.clone();
                let read = || -> Vec<(Option<Name>, BTreeSet<Name>)> {
                    boxes
                        .iter()
                        .map(|(_, d)| (slot0(d), Keys::NginxDir(d.clone()).names()))
                        .collect()
                };
                let view = read();
                for (i, (_, names)) in view.iter().enumerate() {
                    for n in names {
                        first_had.entry((i, *n)).or_insert(tick);
                    }
                }
                // Only a view that did not move while it was read is judged.
                if read() != view {
                    continue;
                }
                let healthy: Vec<usize> =
                    (0..boxes.len()).filter(|i| !excluded.contains(i)).collect();
                let mut found = Vec::new();
                for &a in &healthy {
                    let Some(k) = view[a].0 else { continue };
                    if encrypting.insert(k) {
                        for &b in &healthy {
                            if first_had.get(&(b, k)).is_none_or(|t| *t > tick) {
                                found.push(format!(
                                    "I1: {} encrypts with {} before {} had it",
                                    boxes[a].0,
                                    fp(&k),
                                    boxes[b].0
                                ));
                            }
                        }
                    }
                }
                let mut lacking_now = BTreeSet::new();
                for &a in &healthy {
                    let Some(k) = view[a].0 else { continue };
                    for &b in &healthy {
                        if !view[b].1.contains(&k) {
                            lacking_now.insert((a, b, k));
                            let since =
                                *lacking_since.entry((a, b, k)).or_insert_with(Instant::now);
                            if since.elapsed() >= Duration::from_secs(1) {
                                found.push(format!(
                                    "I1/I2: {} encrypts with {}, which {} has lacked for 1 s",
                                    boxes[a].0,
                                    fp(&k),
                                    boxes[b].0
                                ));
                                lacking_since
                                    .insert((a, b, k), Instant::now() + Duration::from_secs(3600));
                            }
                        }
                    }
                }
                lacking_since.retain(|k, _| lacking_now.contains(k));
                let mut s = st.lock().unwrap();
                s.samples += 1;
                for f in found {
                    tracing::error!("{f}");
                    s.violations.push(f);
                }
            }
        });
        Self {
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops judging box `i` (cut off, frozen, killed, or catching up).
    pub fn exclude(&self, i: usize) {
        self.state.lock().unwrap().excluded.insert(i);
    }

    /// Judges every box again.
    pub fn include_all(&self) {
        self.state.lock().unwrap().excluded.clear();
    }

    /// The violations found since the last call.
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().violations)
    }

    /// Stops; the number of views judged.
    pub fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let samples = self.state.lock().unwrap().samples;
        samples
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestDir;

    fn write(dir: &Path, slots: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        for (i, n) in slots.iter().enumerate() {
            std::fs::write(dir.join(format!("{i}.key")), [*n; 80]).unwrap();
        }
    }

    fn watch(t: &TestDir, a: &[u8], b: &[u8], exclude_b: bool) -> Vec<String> {
        let (da, db) = (t.join("a"), t.join("b"));
        write(&da, a);
        write(&db, b);
        let mut w = Watcher::start(vec![("a".into(), da), ("b".into(), db)]);
        if exclude_b {
            w.exclude(1);
        }
        std::thread::sleep(Duration::from_millis(1600));
        let found = w.take_violations();
        assert!(w.stop() >= 5, "the watcher judged views");
        found
    }

    #[test]
    fn a_box_encrypting_with_a_key_another_lacks_is_a_violation() {
        let t = TestDir::new("watcher-bad");
        let found = watch(&t, &[1, 2], &[2, 3], false);
        assert!(
            found.iter().any(|v| v.starts_with("I1: a encrypts with")),
            "staging: {found:?}"
        );
        assert!(
            found
                .iter()
                .any(|v| v.contains("which b has lacked for 1 s")),
            "coverage: {found:?}"
        );
    }

    #[test]
    fn boxes_holding_each_others_keys_pass_and_excluded_boxes_are_not_judged() {
        let t = TestDir::new("watcher-good");
        assert_eq!(
            watch(&t, &[1, 2, 3], &[2, 1, 3], false),
            Vec::<String>::new()
        );
        let t = TestDir::new("watcher-excluded");
        assert_eq!(watch(&t, &[1, 2], &[2, 3], true), Vec::<String>::new());
    }
}
