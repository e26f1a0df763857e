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

use stek_core::{decide_at, Decision, KeyRing, OsKeySource, RingDigest};
use stek_store as stek_coord; // the stek_coord:: paths below: stek-store since the split
use stek_store::seal::{DataKey, MemberKey, MemberKeyId, SealError, SealedCopy};
use stek_store::{
    ChangeStream, CoordError, Coordinator, KeepAlive, MemberRecord, RingSlot, Snapshot, StoredRing,
    Term,
};
use stek_trust::identity::NodeIdentity;
use tracing::{debug, error, info, warn};

use crate::admin::{unix, ErrorLabels, MemberLabels, Metrics, TargetLabels};
use crate::config::Config;
use crate::engine::floor::{self, Floor};
use crate::engine::follow::{self, ApplyRetry, OwnWrite};
use crate::engine::housekeeping;
use crate::engine::read::{self, Carried, FullReads, Read, ReadInputs, RESYNC};
use crate::engine::role::Role;
use crate::engine::{self, ratchet, Election, Held, LeaderView, Pace, Step, Why};
use crate::state::Sealing;

/// How many distinct rejections a node remembers having logged (each is logged once).
const MAX_LOGGED: usize = 4096;
/// Backoff bounds for store errors and failed applies.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

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
        own_identity_error: None,
        pace: Pace::default(),
        newest_seen: sealing.floor().map_or(0, |f| f.generation),
        requests_seen: BTreeSet::new(),
        sealing,
        accepted: None,
        state_error: None,
        role: Role::Joining,
        opened: None,
        history: stek_core::KeyHistory::new(),
        data_key: None,
        seal_error: None,
        applied: None,
        last_error: None,
        written_at: 0,
        read_fresh: false,
        apply_retry: ApplyRetry::default(),
        logged: BTreeSet::new(),
        last_wait: None,
        held_since: None,
        clock_paused_until: None,
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
        if node.role.lease().is_none() {
            keepalive = None;
            watch = None;
            match node.join().await {
                Ok(mut k) => {
                    node.held_since = None;
                    // A lost lease says the store is down at once, even while a read waits
                    // out its leader search.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let lost = std::mem::replace(&mut k.lost, rx);
                    let metrics = node.metrics.clone();
                    tokio::spawn(async move {
                        let reason = lost.await.unwrap_or_else(|_| "keep-alive stopped".into());
                        metrics.store_up.set(0);
                        let _ = tx.send(reason);
                    });
                    keepalive = Some(k);
                }
                Err(CoordError::Held { node_id, holder }) => {
                    // A SIGKILLed process's lease lives out its TTL; one renewed beyond that
                    // belongs to a second live process with this node id.
                    let since = *node.held_since.get_or_insert_with(Instant::now);
                    let patience = config.lease_ttl * 2 + Duration::from_secs(2);
                    if since.elapsed() >= patience {
                        error!(target: "audit", node = %node_id, "node id held by another live process ({holder}) for {patience:?}: refusing to run beside it");
                        return Err(NodeError::NodeIdHeld { node_id, holder });
                    }
                    node.metrics.store_up.set(0);
                    warn!("node id {node_id} is held by another live process ({holder}); waiting up to {patience:?} for its lease to expire (a process killed a moment ago) before refusing to start");
                    if sleep_or_shutdown(BACKOFF_MIN, &mut shutdown).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    node.metrics.store_up.set(0);
                    warn!("cannot join the cluster: {e}; retrying in {backoff:?}");
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        // Which read this pass makes is the planner's ([`read::plan`]); the runtime counts the
        // members once (a request that carries no record: on failure the window is the
        // widest, and the read that follows says what is wrong with the store) and reads.
        let leading = node.role.leads();
        if full_reads.needs_count() {
            let members = node.coord.member_count().await.ok().flatten();
            full_reads.place_first(members, spread(), Instant::now());
        }
        let full_due = full_reads.due(leading, Instant::now());
        let counts_instead = !leading && full_reads.counts_instead();
        let carried = watch
            .as_ref()
            .filter(|_| !full_due || (counts_instead && !want_full))
            .and_then(|w| w.snapshot());
        let plan = read::plan(&ReadInputs {
            leading,
            want_full,
            full_due,
            carried: carried.as_ref().map(|s| Carried {
                revision: s.revision,
                partial: s.partial,
            }),
            written_at: node.written_at,
            read_fresh: node.read_fresh,
            counts_instead,
        });
        let from_events = matches!(plan, Read::Carried | Read::Follower { carried: true, .. });
        let read = match (plan, carried) {
            (Read::Follower { carried: true, .. }, carried) => node.read_as_follower(carried).await,
            (Read::Follower { carried: false, .. }, _) => node.read_as_follower(None).await,
            (Read::Carried, Some(s)) => Ok(node.authenticated(s)),
            (Read::Carried | Read::Full, _) => match node.coord.snapshot().await {
                Ok(s) => Ok(node.authenticated(s)),
                Err(e) => Err(e),
            },
        };
        let snap = match read {
            Ok(s) => {
                if !s.partial && !from_events {
                    full_reads.read_everything(s.members.len(), Instant::now());
                }
                if !from_events {
                    node.read_fresh = false;
                }
                want_full = false;
                node.metrics.store_up.set(1);
                if matches!(plan, Read::Follower { count: true, .. }) {
                    node.count_members(&mut full_reads).await;
                }
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
        let wake = node.reconcile(&snap).await;
        // A leader watches every change; a follower only its own records, the ring and the
        // leader. A change of role changes the watch.
        if watch_all != node.role.leads() {
            watch = None;
        }
        if watch.is_none() {
            watch_all = node.role.leads();
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
        // The next full read is a reason to wake too, not only the next RESYNC.
        let full_at = full_reads.next_at(leading, Instant::now());
        let deadline =
            tokio::time::Instant::from_std(wake.min(Instant::now() + RESYNC).min(full_at));
        let read_at = snap.revision;
        // Wait for a reason to read again. Changes the last read already saw are skipped: the
        // watch queues every change made while we read, and with N members a rotation brings N
        // acknowledgements, so reading again for each would cost the leader O(N) reads of N
        // records. A follower also sleeps through changes that cannot concern it (other
        // members' acknowledgements and leases, requests). The leader reads on every new change.
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
                        // A leader waits out the events of its own last write up to the one
                        // that completes it (the ring, or the last batch of copies): a pass
                        // before it would find what the watch carried behind that write, and
                        // read everything again (N records) instead.
                        let own_write = node.role.leads() && change.revision > 0 && change.revision < node.written_at;
                        let new = change.revision == 0 || change.revision > read_at;
                        if new && !own_write && (node.role.leads() || change.concerns_follower(&config.node_id)) {
                            want_full = change.needs_full_read(&config.node_id);
                            // One pass covers every change already queued behind this one:
                            // N acknowledgements that arrive together cost the leader one
                            // pass over N members, not N passes.
                            if let Some(w) = watch.as_mut() {
                                match drain_queued(w, node.role.leads(), &config.node_id).await {
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
                    if let Some(term) = node.role.lease_ended() {
                        // The leadership was bound to that lease: it is gone with it, whether
                        // or not the store hears the resignation.
                        info!(target: "audit", node = %config.node_id, term = term.0, "leadership lost: the liveness lease ended");
                        let _ = tokio::time::timeout(Duration::from_secs(3), node.coord.resign(term)).await;
                    }
                    break;
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    node.leave().await;
    Ok(())
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
                if leading || change.concerns_follower(node_id) {
                    want_full |= change.needs_full_read(node_id);
                }
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
    /// Why this node's own certificate no longer verifies (expired, revoked): it then never
    /// leads, so it never writes a ring the others would refuse.
    own_identity_error: Option<String>,
    /// When this leader last made each rate-limited kind of write.
    pace: Pace,
    /// The newest valid ring generation this node has seen (its floor at the start, then
    /// every valid ring read): an older ring is a replay, never applied (no rollback).
    newest_seen: u64,
    /// Rotation requests already audited.
    requests_seen: BTreeSet<String>,
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
    /// Where it stands: joining, a follower under its lease, or the leader of a term (with
    /// what it keeps only while it leads).
    role: Role,
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
    /// The store revision of this node's last ring write: what a watch carried is used only
    /// once it includes that write (a pass right after a write must not decide on the ring
    /// it replaced).
    written_at: i64,
    /// The next pass reads the store rather than take what the watch carried (after a
    /// refused write).
    read_fresh: bool,
    /// When a failed apply is tried again.
    apply_retry: ApplyRetry,
    /// Rejections already logged (key, error), so each is logged once.
    logged: BTreeSet<(String, String)>,
    /// The last "rotation waits" message, logged when it changes.
    last_wait: Option<String>,
    /// Since when another live process holds this node id (joining waits for its lease).
    held_since: Option<Instant>,
    /// Until when this node does not campaign: its clock was measured ahead of its members'
    /// by more than [`stek_coord::clock::CLOCK_BOUND`].
    clock_paused_until: Option<Instant>,
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

/// What an announcement signs: the key and the floor it is announced with.
type Announced = (MemberKeyId, Option<(u64, RingDigest)>);

impl<C: Coordinator> Node<'_, C> {
    fn record(&self) -> MemberRecord {
        let mut record = self.bare_record();
        if let Some((cert, _, sig)) = &self.enrollment {
            record.certificate = Some(cert.clone());
            record.key_signature = Some(sig.clone());
        }
        record
    }

    fn announced(&self) -> Announced {
        (
            self.sealing.announced().public().id(),
            self.sealing.floor().map(|f| (f.generation, f.digest)),
        )
    }

    /// With `[identity]`, signs the key this node announces with its floor, once per change.
    fn enroll(&mut self) {
        let Some(pki) = self.pki else { return };
        let announced = self.announced();
        if self
            .enrollment
            .as_ref()
            .is_some_and(|(_, a, _)| *a == announced)
        {
            return;
        }
        let mut enrolled = self.bare_record();
        enrolled.enroll(&self.config.cluster, &pki.creds);
        self.enrollment = enrolled
            .certificate
            .zip(enrolled.key_signature)
            .map(|(cert, sig)| (cert, announced, sig));
    }

    fn bare_record(&self) -> MemberRecord {
        MemberRecord {
            node_id: self.config.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            targets: self
                .config
                .targets
                .iter()
                .map(|t| t.format.info().name.to_owned())
                .collect(),
            applied_generation: self.applied.as_ref().map_or(0, KeyRing::generation),
            applied_digest: self.applied.as_ref().map(|r| r.digest().to_string()),
            last_error: match &self.seal_error {
                Some(f)
                    if !matches!(f.error, SealError::NoCopy { .. } | SealError::Ahead { .. }) =>
                {
                    Some(format!("generation {}: {}", f.generation, f.error))
                }
                _ => self.state_error.clone().or_else(|| self.last_error.clone()),
            }
            .as_deref()
            .map(stek_coord::records::cut_error),
            updated_at_ms: u64::try_from(
                self.clock
                    .now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
            public_key: Some(self.sealing.announced().public().to_base64()),
            unsealable_generation: self
                .seal_error
                .as_ref()
                .filter(|f| f.leader_cannot_see())
                .map(|f| f.generation),
            certificate: None,
            key_signature: None,
            instance: Some(self.sealing.instance().to_owned()),
            floor_generation: self.sealing.floor().map(|f| f.generation),
            floor_digest: self.sealing.floor().map(|f| f.digest.to_string()),
        }
    }

    /// What this node may act on in a read: with `[identity]`, only a ring its writer signed
    /// and members whose enrollment verifies ([`Snapshot::authenticate`]); and never a ring
    /// its rollback floor refuses ([`floor::admit`]: older than one it accepted, before or
    /// since a restart, or not written by the leader of its term).
    fn authenticated(&mut self, mut snap: Snapshot) -> Snapshot {
        if let Some(pki) = self.pki {
            snap.authenticate(&pki.trust, self.clock.now());
        }
        if let RingSlot::Valid(stored) = &snap.ring {
            match floor::admit(
                self.newest_seen,
                self.sealing.floor(),
                snap.leader.as_ref(),
                stored,
            ) {
                Ok(()) => self.newest_seen = stored.ring.generation(),
                Err(e) => {
                    self.burn_next_if_it_opens(stored);
                    snap.rejected.push(("ring".into(), e.clone()));
                    snap.ring = RingSlot::Rejected(e);
                }
            }
        }
        snap
    }

    /// A ring this node refuses whose copy opens with the key it announced: a leader sealed an
    /// old ring to the key this node keeps next, which would open it once it is `current`
    /// ([`ratchet::on_refused`]). The key is erased and another announced.
    fn burn_next_if_it_opens(&mut self, stored: &StoredRing) {
        let Some(next) = self.sealing.roles().next else {
            return;
        };
        let opens = stored
            .copy_for(&self.config.node_id)
            .filter(|c| c.recipient == next)
            .and_then(|_| self.sealing.key(next))
            .is_some_and(|k| {
                stored
                    .open(&self.config.cluster, &self.config.node_id, k)
                    .is_ok()
            });
        if !opens {
            return;
        }
        let actions = ratchet::on_refused(self.sealing.roles(), next);
        match self.sealing.perform(&actions) {
            Ok(()) => {
                warn!(target: "audit", node = %self.config.node_id, generation = stored.ring.generation(), "a copy of a ring this node refuses was sealed to the key it announced: that key is erased and another announced");
                self.enroll();
            }
            Err(e) => error!("cannot erase the key a refused ring was sealed to: {e}"),
        }
    }

    /// A follower's read: its own records, the ring and the leader. If that shows no other
    /// leader (an election to join) or a ring it cannot open (it may have to defer to a member
    /// that can), it reads everything, as those decisions need every member.
    /// A follower's view: its own keys (`carried` by its watch's events, or read), and
    /// everything when it cannot open the ring as they show it.
    async fn read_as_follower(
        &mut self,
        carried: Option<Snapshot>,
    ) -> Result<Snapshot, CoordError> {
        // The events of its six keys come in order per key, not across keys: a ring may come
        // before the copy written just ahead of it, or before the leader key of the term it
        // was written in. What the watch carried is used only when it holds this ring's keys
        // or their copy, and the leader of the ring's term or a later one; otherwise it reads,
        // at one revision (the floor judges a ring's term against the leadership).
        let me = self.config.node_id.as_str();
        let usable = |s: &Snapshot| match &s.ring {
            RingSlot::Valid(stored) => read::follower_may_use_carried(
                Some(stored.term),
                stored.copy_is_for_this_ring(me).is_ok()
                    || self.held().plaintext(&stored.ring).is_some(),
                s.leader.as_ref().map(|l| l.term.0),
            ),
            _ => read::follower_may_use_carried(None, false, None),
        };
        let snap = match carried.filter(|s| usable(s)) {
            Some(s) => s,
            None => self.coord.snapshot_of_member(me).await?,
        };
        let snap = self.authenticated(snap);
        let other_leader = snap
            .leader
            .as_ref()
            .is_some_and(|l| l.node_id != self.config.node_id);
        // With another leader, a follower follows whatever every other member shows: its own
        // records, the ring and its copy are all it acts on. It used to read everything when
        // it could not open the ring too, but only an election (no leader) defers to a member
        // that can; at N = 1000 every member that joined before its copy was sealed read every
        // member's record, an O(N^2) start.
        if !read::follower_needs_everything(snap.partial, other_leader) {
            return Ok(snap);
        }
        let snap = self.coord.snapshot().await?;
        Ok(self.authenticated(snap))
    }

    /// A follower's scheduled count of the members ([`read::FullReads::counts_instead`]): its
    /// membership figures from two numbers rather than every member's record.
    async fn count_members(&mut self, full_reads: &mut FullReads) {
        let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        match self.coord.member_counts().await {
            Ok(Some(c)) => {
                self.metrics.members.set(gauge(c.members));
                self.metrics.members_live.set(gauge(c.live));
                full_reads.counted(c.members, Instant::now());
            }
            // Counted again at the next interval, not on every pass.
            Ok(None) => full_reads.counted(full_reads.members().unwrap_or(0), Instant::now()),
            Err(e) => {
                debug!("cannot count the members: {e}");
                full_reads.counted(full_reads.members().unwrap_or(0), Instant::now());
            }
        }
    }

    async fn join(&mut self) -> Result<KeepAlive, CoordError> {
        let lease = self.coord.grant_lease(self.config.lease_ttl).await?;
        let keepalive = self.coord.keep_alive(lease, self.config.lease_ttl).await?;
        self.coord.register(lease, &self.record()).await?;
        info!(target: "audit", node = %self.config.node_id, "member joined");
        self.role.joined(lease);
        Ok(keepalive)
    }

    async fn leave(&mut self) {
        let limit = Duration::from_secs(3);
        if let Some(term) = self.role.step_down() {
            match tokio::time::timeout(limit, self.coord.resign(term)).await {
                Ok(Ok(())) => {
                    info!(target: "audit", node = %self.config.node_id, "leadership released")
                }
                _ => warn!("could not release the leadership; it ends when the lease expires"),
            }
        }
        if let Some(lease) = self.role.lease() {
            self.role.lease_ended();
            match tokio::time::timeout(limit, self.coord.revoke(lease)).await {
                Ok(Ok(())) => info!(target: "audit", node = %self.config.node_id, "member left"),
                _ => warn!("could not revoke the lease; the member expires with it"),
            }
        }
    }

    /// One pass over a snapshot; returns when to wake at the latest.
    async fn reconcile(&mut self, snap: &Snapshot) -> Instant {
        let mut wake = Instant::now() + RESYNC;
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
        if let RingSlot::Valid(stored) = &snap.ring {
            self.open(stored);
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
            if follow::should_apply(
                self.opened.as_ref().map(|r| r.digest()),
                self.applied.as_ref().map(|r| r.digest()),
                stored.ring.digest(),
                self.apply_retry.due(Instant::now()),
            ) {
                if let Some(ring) = self.opened.clone() {
                    self.apply(&ring).await;
                }
            }
            if let Some(t) = self.apply_retry.at {
                wake = wake.min(t);
            }
        }
        // A rejected ring was logged above; the files on disk stay as they are.
        // Make sure the store holds our latest acknowledgement (it may have failed before).
        let mine = snap
            .members
            .iter()
            .find(|m| m.record.node_id == self.config.node_id);
        let want = self.record();
        if let Some(write) = follow::own_record(mine, &want, self.role.lease()) {
            let written = match write {
                OwnWrite::Register(lease) => self.coord.register(lease, &want).await,
                OwnWrite::Ack => self.coord.ack(&want).await,
            };
            if let Err(e) = written {
                warn!(
                    "cannot acknowledge generation {}: {e}",
                    want.applied_generation
                );
                wake = wake.min(Instant::now() + BACKOFF_MIN);
            }
        }
        if let Some(t) = self.lead(snap).await {
            wake = wake.min(t);
        }
        self.observe(snap);
        wake
    }

    /// Updates the metrics and the readiness from a pass over `snap`.
    fn observe(&mut self, snap: &Snapshot) {
        let m = &self.metrics;
        let now = self.clock.now();
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.leader.set(i64::from(self.role.leads()));
        m.ring_rejected
            .set(i64::from(matches!(snap.ring, RingSlot::Rejected(_))));
        if !snap.partial {
            m.members_refused.set(gauge(snap.refused.len() as u64));
        }
        let applied = self.applied.as_ref().map_or(0, KeyRing::generation);
        m.applied_generation.set(gauge(applied));
        if !snap.partial {
            m.members.set(gauge(snap.members.len() as u64));
            m.members_live
                .set(gauge(snap.members.iter().filter(|m| m.live).count() as u64));
            m.rotation_blocker.clear();
            m.rotation_blocked.set(0);
        }
        let RingSlot::Valid(stored) = &snap.ring else {
            m.sealed_copy_ok.set(0);
            m.set_ready(Err(match &snap.ring {
                RingSlot::Rejected(e) => format!("the stored ring is malformed ({e})"),
                _ => "no ring in the store yet".into(),
            }));
            return;
        };
        let ring = &stored.ring;
        m.ring_generation.set(gauge(ring.generation()));
        // The active key's age by its stamp, but never less than how long this node has seen
        // it active: a key stamped in the future by a fast clock still ages, so the alert on
        // a key kept too long still fires.
        let fingerprint = ring.active().fingerprint();
        let seen = match &self.active_seen {
            Some((f, since)) if *f == fingerprint => since.elapsed(),
            _ => {
                self.active_seen = Some((fingerprint, Instant::now()));
                Duration::ZERO
            }
        };
        let stamped = now
            .duration_since(ring.active().created_at)
            .unwrap_or_default();
        m.active_key_age.set(stamped.max(seen).as_secs_f64());
        m.ring_clock_ahead
            .set(stek_coord::clock::ring_ahead(stored, now).as_secs_f64());
        let started = ring
            .next_rotation_at()
            .checked_sub(stored.policy.interval)
            .unwrap_or(ring.next_rotation_at());
        m.last_rotation.set(unix(started));
        m.next_rotation.set(unix(ring.next_rotation_at()));
        let digest = ring.digest();
        let opened = self.opened.as_ref().is_some_and(|r| r.digest() == digest);
        m.sealed_copy_ok.set(i64::from(opened));
        let views = snap.member_views();
        if snap.partial {
            // Membership figures stay as the last full read left them.
        } else if let Decision::Wait { blocked_by, .. } = decide_at(
            now,
            Some(ring),
            &stored.policy,
            &views,
            !snap.requests.is_empty(),
        ) {
            m.rotation_blocked.set(1);
            for b in blocked_by {
                m.rotation_blocker
                    .get_or_create(&MemberLabels { member: b.member })
                    .set(1);
            }
        }
        m.set_ready(follow::readiness(
            self.applied.as_ref().map(|r| (r.generation(), r.digest())),
            (ring.generation(), digest),
            self.seal_error.as_ref().map(|f| {
                format!(
                    "cannot open its copy of generation {}: {}",
                    f.generation, f.error
                )
            }),
            self.last_error.as_deref(),
        ));
    }

    /// Opens this node's copy of a stored ring it has not opened yet, and tries again when
    /// its copy changes (the leader seals one for a member that joined, or replaces one that
    /// did not open).
    fn open(&mut self, stored: &StoredRing) {
        let generation = stored.ring.generation();
        let digest = stored.ring.digest();
        let copy = stored.copy_for(&self.config.node_id);
        if !follow::should_open(
            self.opened.as_ref().map(|r| r.digest()),
            self.seal_error
                .as_ref()
                .map(|f| (f.digest, f.copy.as_ref())),
            digest,
            copy,
        ) {
            return;
        }
        let floor_covers = self
            .sealing
            .floor()
            .is_some_and(|f| f.generation >= generation);
        let failure = |error| SealFailure {
            generation,
            digest,
            copy: copy.cloned(),
            error,
            floor_covers,
        };
        // A copy of another ring is waited out (the leader reseals); with [identity], a copy
        // is opened only if the ring's writer signed it; and only with a key this node still
        // holds (the one it announced, or the one that opened its floor's ring).
        let announced = self.sealing.announced().public().id();
        let opened = stored
            .copy_is_for_this_ring(&self.config.node_id)
            .and_then(|()| match self.pki {
                Some(pki) => stored.verify_copy(
                    &self.config.cluster,
                    &self.config.node_id,
                    &pki.trust,
                    self.clock.now(),
                ),
                None => Ok(()),
            })
            .and_then(|()| {
                let recipient = copy.map_or(announced, |c| c.recipient);
                let key = ratchet::opening_key(
                    self.sealing.roles(),
                    self.sealing.floor(),
                    generation,
                    digest,
                    recipient,
                )
                .and_then(|k| self.sealing.key(k))
                .ok_or(SealError::OtherRecipient {
                    copy: recipient,
                    mine: announced,
                })?;
                stored
                    .open_keeping_key(&self.config.cluster, &self.config.node_id, key)
                    .map(|(ring, data)| (ring, data, recipient))
            });
        match opened {
            Ok((ring, key, with)) => {
                // The floor is on the RAM disk, and a key no ring needs any more is erased,
                // before anything is applied; a step that fails leaves the ring unopened, to
                // be tried again, while the node serves the keys it has.
                let actions = ratchet::on_open(self.sealing.roles(), Floor::of(stored, with));
                if let Err(e) = self.sealing.perform(&actions) {
                    let e = format!("cannot record generation {generation} in the state directory: {e}; keeping the keys on disk");
                    if self.state_error.as_ref() != Some(&e) {
                        error!("{e}");
                    }
                    self.state_error = Some(e);
                    return;
                }
                self.state_error = None;
                if actions.contains(&ratchet::Action::Promote) {
                    debug!(generation, opened_with = %with, announced = %self.sealing.announced().public().id(), "sealing key ratcheted: the key before is erased");
                }
                self.enroll();
                debug!(generation, "opened this node's sealed copy of the ring");
                self.history.remember(&ring);
                self.opened = Some(ring);
                self.data_key = Some(key);
                self.seal_error = None;
                self.accepted = Some(stored.clone());
            }
            // A copy of another write is logged as an error: it is left by a leader that
            // failed between its copies and its ring (rare), or put there by a writer of the
            // store, which must show.
            Err(e @ (SealError::NoCopy { .. } | SealError::Ahead { .. })) => {
                info!(generation, "{e}");
                self.seal_error = Some(failure(e));
            }
            Err(e) => {
                error!(generation, "{e}; keeping the keys on disk");
                self.seal_error = Some(failure(e));
            }
        }
    }

    async fn apply(&mut self, ring: &KeyRing) {
        if let Some(applied) = &self.applied {
            if applied.keys() == ring.keys() {
                // Resealed (a member joined, or a copy was replaced): same keys, same files.
                debug!(
                    generation = ring.generation(),
                    "same keys as the applied ring; nothing to write"
                );
                self.applied = Some(ring.clone());
                return;
            }
        }
        let mut failures = Vec::new();
        for t in &self.config.targets {
            let target = TargetLabels {
                target: t.index.to_string(),
                format: t.format.info().name.to_owned(),
            };
            match t.apply(ring).await {
                Ok(applied) => {
                    if let Some(d) = applied.reload {
                        self.metrics
                            .reload_duration
                            .get_or_create(&target)
                            .observe(d.as_secs_f64());
                    }
                }
                Err(e) => {
                    self.metrics
                        .target_errors
                        .get_or_create(&ErrorLabels {
                            target: target.target,
                            format: target.format,
                            stage: e.stage().to_owned(),
                        })
                        .inc();
                    failures.push(e.to_string());
                }
            }
        }
        if failures.is_empty() {
            let keys: Vec<String> = ring
                .keys()
                .iter()
                .map(|k| k.fingerprint().to_string())
                .collect();
            info!(generation = ring.generation(), active = %ring.active().fingerprint(), keys = %keys.join(","), "applied ring to every target");
            self.applied = Some(ring.clone());
            self.last_error = None;
            self.apply_retry.succeeded();
        } else {
            let msg = failures.join("; ");
            let wait = self.apply_retry.failed(Instant::now());
            error!(
                generation = ring.generation(),
                "ring not applied: {msg}; retrying in {wait:?}"
            );
            self.last_error = Some(format!("generation {}: {msg}", ring.generation()));
        }
    }

    /// The leader's part; returns when it wants to decide again.
    async fn lead(&mut self, snap: &Snapshot) -> Option<Instant> {
        let me = self.config.node_id.clone();
        if let Some(pki) = self.pki {
            // A node whose own certificate no longer verifies (expired, revoked) would write
            // rings every other node refuses: it steps down and never campaigns.
            match pki.trust.verify(pki.creds.cert_der(), self.clock.now()) {
                Ok(_) => self.own_identity_error = None,
                Err(e) => {
                    let e = e.to_string();
                    if self.own_identity_error.as_ref() != Some(&e) {
                        error!(target: "audit", node = %me, "this node's own certificate does not verify ({e}); it does not lead until it gets a valid one (stek ca issue, then restart)");
                        self.own_identity_error = Some(e);
                    }
                    if let Some(term) = self.role.step_down() {
                        let _ = self.coord.resign(term).await;
                    }
                    return Some(Instant::now() + BACKOFF_MAX);
                }
            }
        }
        let paused = self.clock_paused_until.is_some_and(|t| Instant::now() < t);
        match engine::election(&me, &self.role, snap, self.held(), paused) {
            Election::Follow => return None,
            Election::Abstain(why) => {
                debug!("not campaigning: {why}");
                return None;
            }
            Election::Campaign => {
                let lease = self.role.lease()?;
                match self.coord.campaign(lease, &me).await {
                    Ok(Some(term)) => {
                        info!(target: "audit", node = %me, term = term.0, "leader elected");
                        self.role.elected(term);
                        // Decide on a fresh read that includes our own leader key (a term is
                        // the revision that wrote it): what a watch carried from before it
                        // would show no leader, and this node would drop the term it just won.
                        self.written_at = self.written_at.max(term.0);
                        return Some(Instant::now());
                    }
                    Ok(None) => return None,
                    Err(e) => {
                        warn!("campaign failed: {e}");
                        return Some(Instant::now() + BACKOFF_MIN);
                    }
                }
            }
            Election::Adopt(term) => {
                // Our campaign was applied but its reply was lost (a timeout, a retry that
                // answered "not elected"): the leadership under our own lease is ours.
                info!(target: "audit", node = %me, term = term.0, "leader elected (campaign reply was lost)");
                self.role.elected(term);
            }
            Election::Lost(term) => {
                self.role.step_down();
                info!(target: "audit", node = %me, term = term.0, "leadership lost");
                if snap.leader.is_none() {
                    // Its leader key is gone (its lease ended): campaign on the next pass.
                    return Some(Instant::now());
                }
                return None;
            }
            Election::Lead(_) => {}
        }
        let term = self.role.term()?;
        self.audit_membership(snap);
        self.forget_the_dead(term, snap).await;
        let now = self.clock.now();
        let mono = Instant::now();
        // Requests rotate at most once per min_request_interval ([`engine::pace`]).
        let requests_due = self
            .pace
            .requests_due(now, mono, self.config.min_request_interval);
        if !snap.requests.is_empty() && now < requests_due {
            let msg = format!(
                "rotation requested; requests rotate at most once per {} ([rotation] min_request_interval): next at {}",
                humantime_serde::re::humantime::format_duration(self.config.min_request_interval),
                humantime_serde::re::humantime::format_rfc3339_seconds(requests_due)
            );
            if self.last_wait.as_deref() != Some(msg.as_str()) {
                info!("{msg}");
                self.last_wait = Some(msg);
            }
        }
        // The ring to put back over a replayed or broken one, unless its own signature no
        // longer verifies (its writer's certificate expired): then it is written anew.
        let accepted = self
            .accepted
            .as_ref()
            .filter(|a| self.pki.is_none_or(|pki| a.verify(&pki.trust, now).is_ok()));
        let view = LeaderView {
            me: &me,
            snap,
            held: self.held(),
            newest_seen: self.newest_seen,
            floor: self.sealing.floor(),
            accepted,
            policy: self.config.policy,
            now,
            mono,
            pace: self.pace,
            min_request_interval: self.config.min_request_interval,
            data_key_write: self.data_key.as_ref().map(DataKey::write),
            signer: self.pki.map(|p| p.creds.cert_der()),
            history: &self.history,
        };
        let step = engine::leader_step(&view, &mut OsKeySource);
        self.pace.performing(&step, mono);
        let after =
            |d: SystemTime| Some(Instant::now() + d.duration_since(now).unwrap_or_default());
        match step {
            Step::StepDown { ahead } => {
                // Keys stamped in the members' future: their key-age figures and any later
                // leader's schedule would be off by as much. Let a member with a sane clock lead.
                error!(target: "audit", node = %me, term = term.0, ahead_seconds = ahead.as_secs(), "this leader's clock is ahead of its members' by {ahead:?} (their acknowledgements are stamped before its ring); it stops leading for {:?}; fix its time source (chrony, systemd-timesyncd)", stek_coord::clock::CLOCK_COOLDOWN);
                self.clock_paused_until = Some(Instant::now() + stek_coord::clock::CLOCK_COOLDOWN);
                if let Err(e) = self.coord.resign(term).await {
                    warn!("could not release the leadership: {e}");
                }
                self.role.step_down();
                Some(Instant::now() + BACKOFF_MIN)
            }
            Step::HandOver { to, why } => self.hand_over(term, &to, &why).await,
            Step::Restore { stored, why } => {
                let generation = stored.ring.generation();
                match self
                    .coord
                    .write_ring(term, snap.ring_revision, &stored, &[])
                    .await
                {
                    Ok(revision) => {
                        self.written_at = self.written_at.max(revision);
                        warn!(target: "audit", generation, leader = %me, "{why}: put back the ring this leader accepted last (generation {generation}), unchanged");
                    }
                    Err(e) => self.write_failed(e),
                }
                Some(Instant::now() + BACKOFF_MIN)
            }
            Step::SealCopies { members } => {
                match self.seal_copies(term, snap, &members).await {
                    Ok(Some(generation)) => info!(
                        generation,
                        "sealed a copy of the stored ring for {}",
                        members.join(", ")
                    ),
                    Ok(None) => {}
                    Err(e) => self.write_failed(e),
                }
                Some(Instant::now() + BACKOFF_MIN)
            }
            Step::Stuck { why } => {
                if self.logged.insert(("ring-repair".into(), why.clone())) {
                    error!("{why}, and no live member holds keys to rewrite it with; an operator must restore it or delete it (a new ring is then made)");
                }
                Some(Instant::now() + BACKOFF_MAX)
            }
            Step::Failed { why } => {
                error!("{why}");
                Some(Instant::now() + BACKOFF_MAX)
            }
            Step::Write {
                ring,
                served,
                why,
                before,
            } => {
                match self.write(term, &ring, snap, &served).await {
                    Ok(revision) => {
                        self.written(&why, before.as_ref(), &ring, snap, revision)
                            .await
                    }
                    Err(e) => self.write_failed(e),
                }
                Some(Instant::now() + BACKOFF_MIN)
            }
            Step::Wait { decision, until } => {
                match decision {
                    Some(Decision::Wait { reason, blocked_by }) => {
                        let who: Vec<String> = blocked_by.iter().map(ToString::to_string).collect();
                        let msg = format!("{reason:?} rotation waits for {}", who.join(", "));
                        if self.last_wait.as_deref() != Some(msg.as_str()) {
                            warn!("{msg}");
                            self.last_wait = Some(msg);
                        }
                    }
                    Some(Decision::Idle { .. }) if snap.requests.is_empty() => {
                        self.last_wait = None
                    }
                    _ => {}
                }
                after(until)
            }
        }
    }

    /// The keys this node holds.
    fn held(&self) -> Held<'_> {
        Held {
            opened: self.opened.as_ref(),
            applied: self.applied.as_ref(),
        }
    }

    /// After a leader write landed: the audit trail, the counters, and the history purge.
    async fn written(
        &mut self,
        why: &Why,
        before: Option<&KeyRing>,
        ring: &KeyRing,
        snap: &Snapshot,
        revision: i64,
    ) {
        let me = self.config.node_id.clone();
        self.pace.written(why, Instant::now());
        match why {
            Why::Decision(decision) => {
                self.last_wait = None;
                if matches!(decision, Decision::Rotate(_)) {
                    self.metrics.rotations.inc();
                }
                audit_decision(decision, before, ring, &me, &snap.requested_by);
                self.purge(before, ring, revision).await;
            }
            Why::WriteBack(why) => {
                warn!(target: "audit", generation = ring.generation(), leader = %me, "{why}: rewrote the last valid ring this leader holds")
            }
            Why::Rekey => {
                error!(target: "audit", generation = ring.generation(), leader = %me, active = %ring.active().fingerprint(), "no live member can open the stored ring (every member that held it has restarted): created new keys; tickets issued before now will not resume");
                // The new active key encrypts from now on, unstaged: an activation like any
                // other for whoever reads the audit trail.
                let active = ring.active();
                info!(target: "audit", epoch = active.epoch, fingerprint = %active.fingerprint(), generation = ring.generation(), leader = %me, reason = "re-key", "key activated");
                self.purge(None, ring, revision).await;
            }
            Why::Reseal(lacking) => info!(
                generation = ring.generation(),
                "sealed the ring for {}",
                lacking.join(", ")
            ),
        }
    }

    /// Audits, as the leader sees them, members that stopped being live and rotation requests.
    fn audit_membership(&mut self, snap: &Snapshot) {
        let live: BTreeSet<String> = snap
            .members
            .iter()
            .filter(|m| m.live)
            .map(|m| m.record.node_id.clone())
            .collect();
        if let Some(lead) = self.role.leadership() {
            if !lead.live_seen.is_empty() {
                for gone in lead.live_seen.difference(&live) {
                    info!(target: "audit", member = %gone, leader = %self.config.node_id, "member expired: its liveness lease ended (it left, or stopped renewing)");
                }
            }
            lead.live_seen = live;
        }
        for (key, by) in &snap.requested_by {
            if self.requests_seen.insert(key.clone()) {
                info!(target: "audit", requested_by = %by, request = %key, leader = %self.config.node_id, "rotation requested");
            }
        }
        self.requests_seen
            .retain(|k| snap.requests.iter().any(|r| r == k));
    }

    /// Removes the records of members this leader has seen dead for `forget_dead_after`
    /// ([`housekeeping::dead_to_forget`]), so the store does not grow with every box that ever
    /// ran. The store removes a record only while no liveness lease holds for it.
    async fn forget_the_dead(&mut self, term: Term, snap: &Snapshot) {
        let Some(lead) = self.role.leadership() else {
            return;
        };
        let due = housekeeping::dead_to_forget(
            &mut lead.dead_since,
            snap,
            Instant::now(),
            self.config.forget_dead_after,
        );
        for id in due {
            match self.coord.forget_member(term, &id).await {
                Ok(true) => {
                    info!(target: "audit", member = %id, leader = %self.config.node_id, after = ?self.config.forget_dead_after, "member forgotten: dead for [rotation] forget_dead_after; its record is removed");
                    if let Some(lead) = self.role.leadership() {
                        lead.dead_since.remove(&id);
                    }
                }
                Ok(false) => {
                    if let Some(lead) = self.role.leadership() {
                        lead.dead_since.remove(&id);
                    }
                }
                Err(e) => warn!("could not remove the record of dead member {id}: {e}"),
            }
        }
    }

    /// Gives the leadership up so that `holder` takes it.
    async fn hand_over(&mut self, term: Term, holder: &str, why: &str) -> Option<Instant> {
        info!(target: "audit", node = %self.config.node_id, term = term.0, "leadership released: {why}; {holder} holds keys and should lead");
        if let Err(e) = self.coord.resign(term).await {
            warn!("could not release the leadership: {e}");
        }
        self.role.step_down();
        Some(Instant::now() + BACKOFF_MIN)
    }

    /// Seals a copy of the stored ring for each of `members` and stores those copies alone,
    /// fenced on the term and the ring ([`Coordinator::write_copies`]). Returns the ring's
    /// generation, or None when no copy could be sealed.
    async fn seal_copies(
        &mut self,
        term: Term,
        snap: &Snapshot,
        members: &[String],
    ) -> Result<Option<u64>, CoordError> {
        let (Some(stored), Some(key)) = (snap.valid_ring(), self.data_key.as_ref()) else {
            return Ok(None);
        };
        let recipients: Vec<(String, MemberKey)> = snap
            .members
            .iter()
            .filter(|m| m.live && members.contains(&m.record.node_id))
            .filter_map(|m| Some((m.record.node_id.clone(), m.record.sealing_key()?)))
            .collect();
        let (records, failed) = stored.seal_more_copies(
            &self.config.cluster,
            key,
            &recipients,
            self.pki.map(|p| &p.creds),
        );
        for e in failed {
            if self.logged.insert(("seal".into(), e.to_string())) {
                error!("{e}");
            }
        }
        if records.is_empty() {
            return Ok(None);
        }
        let revision = self
            .coord
            .write_copies(term, snap.ring_revision, &records)
            .await?;
        self.written_at = self.written_at.max(revision);
        Ok(Some(stored.ring.generation()))
    }

    /// Seals `ring` for every live member that published a public key and writes it.
    async fn write(
        &mut self,
        term: Term,
        ring: &KeyRing,
        snap: &Snapshot,
        served: &[String],
    ) -> Result<i64, CoordError> {
        let recipients: Vec<(String, MemberKey)> = snap
            .members
            .iter()
            .filter(|m| m.live)
            .filter_map(|m| Some((m.record.node_id.clone(), m.record.sealing_key()?)))
            .collect();
        let (mut stored, failed) = StoredRing::seal(
            &self.config.cluster,
            ring,
            &self.config.policy,
            &self.config.node_id,
            &recipients,
        );
        stored.term = term.0;
        if let Some(current) = snap.valid_ring() {
            stored.keep_copies_of(current);
        }
        if let Some(pki) = self.pki {
            stored.sign(&self.config.cluster, &pki.creds);
        }
        for e in failed {
            if self.logged.insert(("seal".into(), e.to_string())) {
                error!("{e}");
            }
        }
        let written = self
            .coord
            .write_ring(term, snap.ring_revision, &stored, served)
            .await;
        if let Ok(revision) = written {
            self.written_at = self.written_at.max(revision);
        }
        written
    }

    /// After a write that removed keys, compacts the store's history up to it when the config
    /// allows ([`housekeeping::purge_after`]), so that no old revision still holds their
    /// sealed copies.
    async fn purge(&mut self, before: Option<&KeyRing>, after: &KeyRing, revision: i64) {
        let Some(dropped) =
            housekeeping::purge_after(before, after, self.config.compact_history, revision)
        else {
            return;
        };
        match self.coord.purge_history(revision).await {
            Ok(true) => {
                info!(target: "audit", revision, epochs = ?dropped, "store history compacted: no revision before this ring is readable")
            }
            Ok(false) => {
                debug!(revision, epochs = ?dropped, "the store purges its own history after a write that drops keys")
            }
            Err(e) => warn!("could not compact the store's history up to revision {revision}: {e}; the next key drop tries again"),
        }
    }

    fn write_failed(&mut self, e: CoordError) {
        let refusal = housekeeping::after_failed_write(&e);
        self.read_fresh |= refusal.read_fresh;
        if refusal.leadership_lost {
            self.role.step_down();
        }
        match e {
            CoordError::Fenced(term) => {
                warn!(target: "audit", term = term.0, "leadership lost: the store refused a write");
            }
            CoordError::Conflict => {
                info!(
                    "the ring changed since this decision was read; deciding again on a fresh read"
                )
            }
            other => warn!("leader write failed: {other}"),
        }
    }
}

fn audit_decision(
    decision: &Decision,
    before: Option<&KeyRing>,
    ring: &KeyRing,
    leader: &str,
    requested_by: &[(String, String)],
) {
    let generation = ring.generation();
    match decision {
        Decision::Bootstrap => {
            for k in ring.keys() {
                info!(target: "audit", epoch = k.epoch, fingerprint = %k.fingerprint(), state = %k.state, generation, leader, "key created at bootstrap");
            }
        }
        Decision::Rotate(reason) => {
            let by: Vec<&str> = requested_by.iter().map(|(_, b)| b.as_str()).collect();
            let active = ring.active();
            info!(target: "audit", epoch = active.epoch, fingerprint = %active.fingerprint(), generation, leader, reason = ?reason, requested_by = ?by, "key activated");
            if let Some(prev) = before.map(KeyRing::active) {
                info!(target: "audit", epoch = prev.epoch, fingerprint = %prev.fingerprint(), generation, leader, "key retired");
            }
            if let Some(s) = ring.staged() {
                info!(target: "audit", epoch = s.epoch, fingerprint = %s.fingerprint(), generation, leader, "key staged");
            }
        }
        Decision::Reschedule { at } => {
            let was = before.map(|b| {
                humantime_serde::re::humantime::format_rfc3339_seconds(b.next_rotation_at())
                    .to_string()
            });
            warn!(target: "audit", generation, leader, was = ?was, now_due = %humantime_serde::re::humantime::format_rfc3339_seconds(*at), "rotation rescheduled: the stored schedule was more than two intervals ahead of this leader's clock (a leader with a fast clock wrote it?)");
        }
        _ => {}
    }
    for gone in before
        .into_iter()
        .flat_map(KeyRing::keys)
        .filter(|k| !ring.keys().iter().any(|n| n.epoch == k.epoch))
    {
        info!(target: "audit", epoch = gone.epoch, fingerprint = %gone.fingerprint(), generation, leader, "key dropped");
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
