//! The node loop: keep a liveness lease, watch the cluster's keyspace, apply every new ring to
//! every target and acknowledge it, and, while leading, make the rotation decisions.
//!
//! Every wake-up (a watch event, a timer, a lost lease) reads the store again and reconciles
//! against it, so a broken or compacted watch needs no special recovery, and a record that is
//! malformed is simply never applied. A leader reads everything; a follower reads its own
//! records, the ring and the leader, and everything when a decision needs every member (see
//! `Node::read_as_follower`) and on the schedule of `engine::read`. When the store is unreachable nothing on
//! disk changes (I4): the node keeps its files and retries with backoff.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stek_core::{KeyRing, RingDigest};
use stek_store::seal::{DataKey, SealError, SealedCopy};
use stek_store::{ChangeStream, CoordError, Coordinator, KeepAlive, Snapshot, StoredRing};
use stek_trust::identity::NodeIdentity;
use tracing::{debug, error, info, warn};

use crate::admin::Metrics;
use crate::config::Config;
use crate::engine::follow::{self, ApplyRetry, OwnWrite};
use crate::engine::lead::{Event, Leading, Now, BACKOFF_MAX, BACKOFF_MIN};
use crate::engine::read::{self, FullReads, OnChange, RESYNC};
use crate::engine::{self, Held};
use crate::state::Sealing;

mod apply;
mod leader;
mod lease;
mod observe;
mod reading;
mod record;

use lease::Joined;
use record::Announced;

/// How many distinct rejections a node remembers having logged (each is logged once).
const MAX_LOGGED: usize = 4096;
/// How long a leader that gives its term up waits for the store to hear it.
const RESIGN_LIMIT: Duration = Duration::from_secs(3);

/// Runs a node with the sealing keys and rollback floor `sealing` (its state directory, loaded)
/// until `shutdown` resolves; then resigns and revokes its lease at once. Keeps
/// `metrics` (served by [`crate::admin`]) current on every pass. With `identity`
/// (`[identity]`), the node signs its member record and every ring it writes, and acts only on
/// rings its leader signed and members whose enrollment verifies.
pub async fn run<C: Coordinator>(
    config: &Config,
    coord: C,
    metrics: Arc<Metrics>,
    identity: Option<&NodeIdentity>,
    sealing: Sealing,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    run_with(
        config,
        coord,
        metrics,
        identity,
        sealing,
        Arc::new(SystemClock),
        shutdown,
    )
    .await
}

/// The wall clock a node reads: the system's, or a test's.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// [`run`], reading the wall clock from `clock` (a test runs a node whose clock is off).
pub async fn run_with<C: Coordinator>(
    config: &Config,
    coord: C,
    metrics: Arc<Metrics>,
    identity: Option<&NodeIdentity>,
    sealing: Sealing,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    metrics
        .insecure
        .set(i64::from(config.insecure && identity.is_none()));
    let mut node = Node {
        config,
        coord,
        metrics,
        pki: identity,
        enrollment: None,
        newest_seen: sealing.floor().map_or(0, |f| f.generation),
        sealing,
        accepted: None,
        state_error: None,
        leading: Leading::default(),
        opened: None,
        history: stek_core::KeyHistory::new(),
        data_key: None,
        seal_error: None,
        applied: None,
        last_error: None,
        apply_retry: ApplyRetry::default(),
        logged: BTreeSet::new(),
        held_since: None,
        clock,
        active_seen: None,
    };
    node.enroll();
    let mut keepalive: Option<KeepAlive> = None;
    let mut watch: Option<C::Watch> = None;
    let mut backoff = BACKOFF_MIN;
    // What each pass reads, and when a full read is due, is planned by `engine::read`: a
    // follower its own records, the ring and the leader; everything on a schedule that spreads
    // a fleet started together, or when the leadership or the keyspace's shape may have
    // changed. Until its first full read a follower's membership figures are 0.
    let mut want_full = false;
    let mut full_reads = FullReads::default();
    let mut watch_all = false;
    tokio::pin!(shutdown);
    info!(node = %config.node_id, cluster = %config.cluster, targets = config.targets.len(), instance = %node.sealing.instance(), announced_key = %node.sealing.announced().public().id(), floor = node.sealing.floor().map_or(0, |f| f.generation), "stek node starting");
    'run: loop {
        // Lease and registration.
        if node.leading.role.lease().is_none() {
            keepalive = None;
            watch = None;
            match node.join(backoff).await {
                Joined::Live(k) => keepalive = Some(k),
                Joined::Refused(e) => return Err(e),
                Joined::Retry { after, back_off } => {
                    if sleep_or_shutdown(after, &mut shutdown).await {
                        break;
                    }
                    if back_off {
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    continue;
                }
            }
        }
        let read = node.read(watch.as_mut(), want_full, &mut full_reads).await;
        let snap = match read {
            Ok(s) => {
                want_full = false;
                s
            }
            Err(e) => {
                node.metrics.store_up.set(0);
                warn!("{e}; keeping the keys on disk, retrying in {backoff:?}");
                watch = None;
                want_full = true;
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let wake = node.reconcile(&snap, node.now()).await;
        // A leader watches every change; a follower only its own records, the ring and the
        // leader. A change of role changes the watch.
        if watch_all != node.leading.role.leads() {
            watch = None;
        }
        if watch.is_none() {
            watch_all = node.leading.role.leads();
            let w = if watch_all {
                node.coord.watch(snap.revision).await
            } else {
                node.coord
                    .watch_member(snap.revision, &config.node_id)
                    .await
            };
            match w {
                Ok(w) => watch = Some(w),
                Err(e) => warn!("cannot watch the keyspace: {e}"),
            }
        }
        let deadline = tokio::time::Instant::from_std(read::next_pass_at(
            wake,
            &full_reads,
            node.leading.role.leads(),
            Instant::now(),
        ));
        let read_at = snap.revision;
        // Wait for a reason to read again ([`read::on_change`]).
        loop {
            let lost = async {
                match keepalive.as_mut() {
                    Some(k) => (&mut k.lost)
                        .await
                        .unwrap_or_else(|_| "keep-alive stopped".into()),
                    None => std::future::pending().await,
                }
            };
            let changed = async {
                match watch.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break 'run,
                r = changed => match r {
                    Ok(change) => {
                        let leading = node.leading.role.leads();
                        let seen = facts(&change, &config.node_id);
                        if let OnChange::Pass { want_full: full } = read::on_change(seen, leading, read_at, node.leading.written_at) {
                            want_full = full;
                            // One pass covers every change already queued behind this one:
                            // N acknowledgements that arrive together cost the leader one
                            // pass over N members, not N passes.
                            if let Some(w) = watch.as_mut() {
                                match drain_queued(w, node.leading.role.leads(), &config.node_id).await {
                                    Ok(more) => want_full |= more,
                                    Err(e) => {
                                        debug!("{e}");
                                        watch = None;
                                        want_full = true;
                                    }
                                }
                            }
                            break;
                        }
                    }
                    Err(e) => {
                        debug!("{e}");
                        watch = None;
                        want_full = true;
                        break;
                    }
                },
                reason = lost => {
                    warn!("liveness lease lost ({reason}); rejoining");
                    // The store did not renew it: until a read succeeds again, say it is down.
                    node.metrics.store_up.set(0);
                    want_full = true;
                    let now = node.now();
                    let plan = node.leading.on(Event::LeaseLost, now, &node.settings());
                    node.perform(plan, &snap, now).await;
                    break;
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    node.leave().await;
    Ok(())
}

/// What the engine needs of a change the watch delivered.
fn facts(change: &stek_store::Change, node_id: &str) -> read::Change {
    read::Change {
        revision: change.revision,
        concerns_follower: change.concerns_follower(node_id),
        needs_full_read: change.needs_full_read(node_id),
    }
}

/// At most this many queued watch responses are taken into one pass.
const MAX_DRAINED: usize = 1024;

/// Takes the changes `watch` has already received (without waiting for more, and at most
/// [`MAX_DRAINED`]), so that the pass about to run covers them: their events are in the
/// watch's snapshot once taken. Returns whether one of them asks for a full read; an error is
/// a broken watch.
async fn drain_queued<W: ChangeStream>(
    watch: &mut W,
    leading: bool,
    node_id: &str,
) -> Result<bool, CoordError> {
    let mut want_full = false;
    for _ in 0..MAX_DRAINED {
        match watch.queued().await {
            Some(Ok(change)) => {
                want_full |= read::queued_wants_full(facts(&change, node_id), leading)
            }
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    Ok(want_full)
}

/// A number in [0, 1), different in every process (std's hash seed comes from the OS): to
/// spread boxes' timers, not a secret.
fn spread() -> f64 {
    use std::hash::BuildHasher;
    let n = std::collections::hash_map::RandomState::new().hash_one(0u8);
    (n >> 11) as f64 / (1u64 << 53) as f64
}

/// Why a node stopped by itself.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A second live process holds this node id.
    #[error("node id \"{node_id}\" is held by another live process ({holder}); two processes with one node_id would answer for each other. Give each box its own node_id, or stop the other process")]
    NodeIdHeld {
        /// The node id.
        node_id: String,
        /// Who holds it.
        holder: String,
    },
}

/// Sleeps; returns true if shutdown came first.
async fn sleep_or_shutdown(
    d: Duration,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    tokio::select! {
        _ = shutdown.as_mut() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

struct Node<'a, C> {
    config: &'a Config,
    coord: C,
    metrics: Arc<Metrics>,
    /// `[identity]`: signs this node's records and rings, verifies everyone else's.
    pki: Option<&'a NodeIdentity>,
    /// The signed announcement of the key this node announces, with its floor (certificate,
    /// what was signed, signature), made again only when those change: ECDSA signatures differ
    /// every time, and the record must not change on every pass.
    enrollment: Option<(String, Announced, String)>,
    /// The newest valid ring generation this node has seen (its floor at the start, then
    /// every valid ring read): an older ring is a replay, never applied (no rollback).
    newest_seen: u64,
    /// This node's sealing keys (they ratchet) and rollback floor, in `state_dir` on the RAM
    /// disk: a restarted process opens its copy again and refuses older rings; a reboot
    /// forgets both.
    sealing: Sealing,
    /// The ring this node accepted last, as the store held it (its copies included): what a
    /// leader puts back over a replayed, restored, deleted or broken ring.
    accepted: Option<StoredRing>,
    /// Why the state directory could not take the last ratchet step (the floor or a key could
    /// not be written): the ring is not applied until it can.
    state_error: Option<String>,
    /// Where it stands (joining, a follower under its lease, or the leader of a term) and
    /// what the engine keeps about leading ([`Leading`]).
    leading: Leading,
    /// The last ring this node opened from its own sealed copy. A leader also rewrites it over
    /// a malformed record.
    opened: Option<KeyRing>,
    /// The names of the keys of every ring this node opened (the newest 4096): as leader, it
    /// refuses a new key with one of them (a random source that repeats itself).
    history: stek_core::KeyHistory,
    /// The data key of the write `opened` came from: as that ring's writer, this node seals
    /// one more copy of it for a member that joins, without writing the ring again.
    data_key: Option<DataKey>,
    /// Why this node's copy of the stored ring did not open.
    seal_error: Option<SealFailure>,
    /// The last ring applied to every target.
    applied: Option<KeyRing>,
    /// Why the last apply failed.
    last_error: Option<String>,
    /// When a failed apply is tried again.
    apply_retry: ApplyRetry,
    /// Rejections already logged (key, error), so each is logged once.
    logged: BTreeSet<(String, String)>,
    /// Since when another live process holds this node id (joining waits for its lease).
    held_since: Option<Instant>,
    /// The wall clock.
    clock: Arc<dyn Clock>,
    /// The active key's fingerprint, and since when this node has seen it active.
    active_seen: Option<(stek_core::Fingerprint, Instant)>,
}

/// Why this node's copy of the stored ring did not open, and which copy it tried.
struct SealFailure {
    /// The ring's generation.
    generation: u64,
    /// The ring's digest.
    digest: RingDigest,
    /// The copy tried (None: there was none). A different copy is tried again.
    copy: Option<SealedCopy>,
    /// Why.
    error: SealError,
    /// This node's floor is at or above the ring's generation: the leader takes it to hold
    /// the key that opened it and seals it no copy (`StoredRing::may_seal_to`).
    floor_covers: bool,
}

impl SealFailure {
    /// Whether the member record says so ([`engine::reports_unsealable`]).
    fn leader_cannot_see(&self) -> bool {
        engine::reports_unsealable(&self.error, self.floor_covers)
    }
}

impl<C: Coordinator> Node<'_, C> {
    /// The keys this node holds.
    fn held(&self) -> Held<'_> {
        Held {
            opened: self.opened.as_ref(),
            applied: self.applied.as_ref(),
        }
    }

    /// Now, by both clocks.
    fn now(&self) -> Now {
        Now {
            wall: self.clock.now(),
            mono: Instant::now(),
        }
    }

    /// One pass over a snapshot, begun at `now`; returns when to wake at the latest.
    async fn reconcile(&mut self, snap: &Snapshot, now: Now) -> Instant {
        let mut wake = now.mono + RESYNC;
        if self.logged.len() > MAX_LOGGED {
            // Bounded: a store that keeps producing new bad records cannot grow this set; an
            // old rejection still present is logged once more.
            self.logged.clear();
        }
        for (key, e) in &snap.rejected {
            if self.logged.insert((key.clone(), e.to_string())) {
                error!(key = %key, "rejected a record from the store: {e}; it is not applied");
            }
        }
        for r in &snap.refused {
            if self
                .logged
                .insert((format!("members/{}", r.node_id), r.reason.clone()))
            {
                error!(target: "audit", member = %r.node_id, live = r.live, "member refused: {}; no key is sealed for it and it does not count for rotations", r.reason);
            }
        }
        let stored = snap.valid_ring();
        if let Some(stored) = stored {
            // Copies of this write sealed since (a member that joined) are put back with the
            // ring too; a copy of another write (replayed, or left by a write that did not
            // land) never replaces one. A follower's read holds its own copy only, a
            // leader's every one.
            if let Some(a) = self
                .accepted
                .as_mut()
                .filter(|a| !snap.partial && a.write_id() == stored.write_id())
            {
                a.keep_copies_of_this_write(stored);
            }
        }
        // The member's part, one step at a time as [`follow::next`] picks it: open, apply,
        // acknowledge (a rejected ring was logged above; the files on disk stay as they are).
        let mut done = follow::Done::default();
        for _ in 0..4 {
            let step = follow::next(&follow::Facts {
                stored: stored.map(|s| (s.ring.digest(), s.copy_for(&self.config.node_id))),
                opened: self.opened.as_ref().map(|r| r.digest()),
                applied: self.applied.as_ref().map(|r| r.digest()),
                failed: self
                    .seal_error
                    .as_ref()
                    .map(|f| (f.digest, f.copy.as_ref())),
                retry_due: self.apply_retry.due(now.mono),
                mine: snap
                    .members
                    .iter()
                    .find(|m| m.record.node_id == self.config.node_id),
                want: &self.record(),
                lease: self.leading.role.lease(),
                done,
            });
            match (step, stored) {
                (Some(follow::Step::Open), Some(stored)) => {
                    self.open(stored, now.wall);
                    done.open = true;
                }
                (Some(follow::Step::Apply), _) => {
                    if let Some(ring) = self.opened.clone() {
                        self.apply(&ring).await;
                    }
                    done.apply = true;
                }
                (Some(follow::Step::Record(write)), _) => {
                    let want = self.record();
                    let written = match write {
                        OwnWrite::Register(lease) => self.coord.register(lease, &want).await,
                        OwnWrite::Ack => self.coord.ack(&want).await,
                    };
                    if let Err(e) = written {
                        warn!(
                            "cannot acknowledge generation {}: {e}",
                            want.applied_generation
                        );
                        wake = wake.min(now.mono + BACKOFF_MIN);
                    }
                    done.record = true;
                }
                (Some(follow::Step::Open), None) | (None, _) => break,
            }
        }
        if stored.is_some() {
            if let Some(t) = self.apply_retry.at {
                wake = wake.min(t);
            }
        }
        // Applying may have taken a while (reloads): the leader decides at the time it decides.
        if let Some(t) = self.lead(snap, self.now()).await {
            wake = wake.min(t);
        }
        self.observe(snap, now);
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_in_the_unit_interval() {
        for _ in 0..100 {
            let s = spread();
            assert!((0.0..1.0).contains(&s), "{s}");
        }
    }
}
