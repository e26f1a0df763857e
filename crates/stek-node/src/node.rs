//! The node loop: keep a liveness lease, watch the cluster's keyspace, apply every new ring to
//! every target and acknowledge it, and, while leading, make the rotation decisions.
//!
//! Every wake-up (a watch event, a timer, a lost lease) re-reads the whole keyspace and
//! reconciles against it, so a broken or compacted watch needs no special recovery, and a
//! record that is malformed is simply never applied. When the store is unreachable nothing on
//! disk changes (I4): the node keeps its files and retries with backoff.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use stek_coord::{
    ChangeStream, CoordError, Coordinator, KeepAlive, LeaseId, MemberRecord, RingSlot, Snapshot,
    StoredRing, Term,
};
use stek_core::{decide_at, next_ring, Decision, KeyRing, OsKeySource};
use tracing::{debug, error, info, warn};

use crate::config::Config;

/// How often the node re-reads everything even without an event.
const RESYNC: Duration = Duration::from_secs(10);
/// Backoff bounds for store errors and failed applies.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Runs a node until `shutdown` resolves; then resigns and revokes its lease at once.
pub async fn run<C: Coordinator>(config: &Config, coord: C, shutdown: impl Future<Output = ()>) {
    let mut node = Node {
        config,
        coord,
        lease: None,
        term: None,
        applied: None,
        last_error: None,
        last_good: None,
        apply_retry: None,
        apply_backoff: BACKOFF_MIN,
        logged: BTreeSet::new(),
        last_wait: None,
    };
    let mut keepalive: Option<KeepAlive> = None;
    let mut watch: Option<C::Watch> = None;
    let mut backoff = BACKOFF_MIN;
    tokio::pin!(shutdown);
    info!(node = %config.node_id, cluster = %config.cluster, targets = config.targets.len(), "stek node starting");
    loop {
        // Lease and registration.
        if node.lease.is_none() {
            keepalive = None;
            watch = None;
            match node.join().await {
                Ok(k) => keepalive = Some(k),
                Err(e) => {
                    warn!("cannot join the cluster: {e}; retrying in {backoff:?}");
                    if sleep_or_shutdown(backoff, &mut shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let snap = match node.coord.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                warn!("{e}; keeping the keys on disk, retrying in {backoff:?}");
                watch = None;
                if sleep_or_shutdown(backoff, &mut shutdown).await {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let wake = node.reconcile(&snap).await;
        if watch.is_none() {
            match node.coord.watch(snap.revision).await {
                Ok(w) => watch = Some(w),
                Err(e) => warn!("cannot watch the keyspace: {e}"),
            }
        }
        let deadline = tokio::time::Instant::from_std(wake.min(Instant::now() + RESYNC));
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
                Some(w) => w.changed().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            r = changed => {
                if let Err(e) = r {
                    debug!("{e}");
                    watch = None;
                }
            }
            reason = lost => {
                warn!("liveness lease lost ({reason}); rejoining");
                node.lease = None;
                if let Some(term) = node.term.take() {
                    let _ = node.coord.resign(term).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    node.leave().await;
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
    lease: Option<LeaseId>,
    term: Option<Term>,
    /// The last ring applied to every target.
    applied: Option<KeyRing>,
    /// Why the last apply failed.
    last_error: Option<String>,
    /// The last valid ring seen in the store: a leader rewrites it over a malformed record.
    last_good: Option<StoredRing>,
    apply_retry: Option<Instant>,
    apply_backoff: Duration,
    /// Rejections already logged (key, error), so each is logged once.
    logged: BTreeSet<(String, String)>,
    /// The last "rotation waits" message, logged when it changes.
    last_wait: Option<String>,
}

impl<C: Coordinator> Node<'_, C> {
    fn record(&self) -> MemberRecord {
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
            last_error: self.last_error.clone(),
            updated_at_ms: MemberRecord::now_ms(),
        }
    }

    async fn join(&mut self) -> Result<KeepAlive, CoordError> {
        let lease = self.coord.grant_lease(self.config.lease_ttl).await?;
        let keepalive = self.coord.keep_alive(lease, self.config.lease_ttl).await?;
        self.coord.register(lease, &self.record()).await?;
        info!(target: "audit", node = %self.config.node_id, "member joined");
        self.lease = Some(lease);
        Ok(keepalive)
    }

    async fn leave(&mut self) {
        let limit = Duration::from_secs(3);
        if let Some(term) = self.term.take() {
            match tokio::time::timeout(limit, self.coord.resign(term)).await {
                Ok(Ok(())) => {
                    info!(target: "audit", node = %self.config.node_id, "leadership released")
                }
                _ => warn!("could not release the leadership; it ends when the lease expires"),
            }
        }
        if let Some(lease) = self.lease.take() {
            match tokio::time::timeout(limit, self.coord.revoke(lease)).await {
                Ok(Ok(())) => info!(target: "audit", node = %self.config.node_id, "member left"),
                _ => warn!("could not revoke the lease; the member expires with it"),
            }
        }
    }

    /// One pass over a snapshot; returns when to wake at the latest.
    async fn reconcile(&mut self, snap: &Snapshot) -> Instant {
        let mut wake = Instant::now() + RESYNC;
        for (key, e) in &snap.rejected {
            if self.logged.insert((key.clone(), e.to_string())) {
                error!(key = %key, "rejected a record from the store: {e}; it is not applied");
            }
        }
        match &snap.ring {
            RingSlot::Valid(stored) => {
                self.last_good = Some(stored.clone());
                let current = self.applied.as_ref().map(KeyRing::generation);
                let retry_due = self.apply_retry.is_none_or(|t| Instant::now() >= t);
                if current != Some(stored.ring.generation()) && retry_due {
                    self.apply(&stored.ring).await;
                }
                if let Some(t) = self.apply_retry {
                    wake = wake.min(t);
                }
            }
            RingSlot::Rejected(_) => {
                // Logged above; the files on disk stay as they are.
            }
            RingSlot::Absent => {}
        }
        // Make sure the store holds our latest acknowledgement (it may have failed before).
        let mine = snap
            .members
            .iter()
            .find(|m| m.record.node_id == self.config.node_id);
        let want = self.record();
        let stale = mine.is_none_or(|m| {
            m.record.applied_generation != want.applied_generation
                || m.record.last_error != want.last_error
                || !m.live
        });
        if stale {
            let written = match (mine.is_some_and(|m| m.live), self.lease) {
                (false, Some(lease)) => self.coord.register(lease, &want).await,
                _ => self.coord.ack(&want).await,
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
        wake
    }

    async fn apply(&mut self, ring: &KeyRing) {
        let mut failures = Vec::new();
        for t in &self.config.targets {
            if let Err(e) = t.apply(ring).await {
                failures.push(e.to_string());
            }
        }
        if failures.is_empty() {
            info!(generation = ring.generation(), active = %ring.active().fingerprint(), "applied ring to every target");
            self.applied = Some(ring.clone());
            self.last_error = None;
            self.apply_retry = None;
            self.apply_backoff = BACKOFF_MIN;
        } else {
            let msg = failures.join("; ");
            error!(
                generation = ring.generation(),
                "ring not applied: {msg}; retrying in {:?}", self.apply_backoff
            );
            self.last_error = Some(format!("generation {}: {msg}", ring.generation()));
            self.apply_retry = Some(Instant::now() + self.apply_backoff);
            self.apply_backoff = (self.apply_backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The leader's part; returns when it wants to decide again.
    async fn lead(&mut self, snap: &Snapshot) -> Option<Instant> {
        let me = &self.config.node_id;
        match (&snap.leader, self.term) {
            (None, _) => {
                self.term = None;
                let lease = self.lease?;
                match self.coord.campaign(lease, me).await {
                    Ok(Some(term)) => {
                        info!(target: "audit", node = %me, term = term.0, "leader elected");
                        self.term = Some(term);
                        // Decide on a fresh read that includes our own leader key.
                        return Some(Instant::now());
                    }
                    Ok(None) => return None,
                    Err(e) => {
                        warn!("campaign failed: {e}");
                        return Some(Instant::now() + BACKOFF_MIN);
                    }
                }
            }
            (Some(l), Some(term)) if l.node_id == *me && l.term == term => {}
            (Some(l), None) if l.node_id == *me && Some(l.lease) == self.lease => {
                // Our campaign was applied but its reply was lost (a timeout, a retry that
                // answered "not elected"): the leadership under our own lease is ours.
                info!(target: "audit", node = %me, term = l.term.0, "leader elected (campaign reply was lost)");
                self.term = Some(l.term);
            }
            (Some(_), Some(term)) => {
                info!(target: "audit", node = %me, term = term.0, "leadership lost");
                self.term = None;
                return None;
            }
            (Some(_), None) => return None,
        }
        let term = self.term?;
        let policy = self.config.policy;
        let now = SystemTime::now();
        let ring = match &snap.ring {
            RingSlot::Valid(s) => Some(&s.ring),
            RingSlot::Absent => None,
            RingSlot::Rejected(e) => {
                // Never bootstrap over a bad record: nodes would switch to keys nobody else
                // holds. Rewrite the last good ring instead (next generation, same keys).
                let Some(good) = self.last_good.clone() else {
                    error!("the ring record is malformed ({e}) and this leader has never seen a valid one; an operator must restore it");
                    return Some(Instant::now() + BACKOFF_MAX);
                };
                let repaired = good
                    .ring
                    .with_next_rotation_at(good.ring.next_rotation_at());
                let repaired = renumber_after(repaired, snap);
                match self
                    .coord
                    .write_ring(term, me, &repaired, &good.policy, &[])
                    .await
                {
                    Ok(()) => warn!(
                        generation = repaired.generation(),
                        "replaced a malformed ring record with the last valid ring"
                    ),
                    Err(e) => self.write_failed(e),
                }
                return Some(Instant::now() + BACKOFF_MIN);
            }
        };
        let members = snap.member_views();
        let decision = decide_at(now, ring, &policy, &members, !snap.requests.is_empty());
        let next = match next_ring(&decision, ring, now, &policy, &mut OsKeySource) {
            Ok(n) => n,
            Err(e) => {
                error!("cannot compute the next ring: {e}");
                return Some(Instant::now() + BACKOFF_MAX);
            }
        };
        match (&decision, next) {
            (_, Some(new)) => {
                let served: &[String] = if matches!(decision, Decision::Rotate(_)) {
                    &snap.requests
                } else {
                    &[]
                };
                match self.coord.write_ring(term, me, &new, &policy, served).await {
                    Ok(()) => {
                        self.last_wait = None;
                        audit_decision(&decision, &new, me, served.len());
                    }
                    Err(e) => self.write_failed(e),
                }
                Some(Instant::now() + BACKOFF_MIN)
            }
            (Decision::Idle { until }, None) => {
                self.last_wait = None;
                let left = until.duration_since(now).unwrap_or_default();
                Some(Instant::now() + left)
            }
            (Decision::Wait { reason, blocked_by }, None) => {
                let who: Vec<String> = blocked_by.iter().map(ToString::to_string).collect();
                let msg = format!("{reason:?} rotation waits for {}", who.join(", "));
                if self.last_wait.as_deref() != Some(msg.as_str()) {
                    warn!("{msg}");
                    self.last_wait = Some(msg);
                }
                Some(Instant::now() + Duration::from_secs(1))
            }
            (_, None) => Some(Instant::now() + BACKOFF_MIN),
        }
    }

    fn write_failed(&mut self, e: CoordError) {
        match e {
            CoordError::Fenced(term) => {
                warn!(target: "audit", term = term.0, "leadership lost: the store refused a write");
                self.term = None;
            }
            other => warn!("leader write failed: {other}"),
        }
    }
}

/// A repaired ring must have a generation above every generation members acknowledged, so
/// that they apply it and acknowledge again.
fn renumber_after(ring: KeyRing, snap: &Snapshot) -> KeyRing {
    let highest = snap
        .members
        .iter()
        .map(|m| m.record.applied_generation)
        .max()
        .unwrap_or(0);
    let mut r = ring;
    while r.generation() <= highest {
        r = r.with_next_rotation_at(r.next_rotation_at());
    }
    r
}

fn audit_decision(decision: &Decision, ring: &KeyRing, leader: &str, served: usize) {
    match decision {
        Decision::Bootstrap => {
            for k in ring.keys() {
                info!(target: "audit", epoch = k.epoch, fingerprint = %k.fingerprint(), state = %k.state, generation = ring.generation(), leader, "key created at bootstrap");
            }
        }
        Decision::Rotate(reason) => {
            let active = ring.active();
            info!(target: "audit", epoch = active.epoch, fingerprint = %active.fingerprint(), generation = ring.generation(), leader, reason = ?reason, requests = served, "key activated");
            if let Some(s) = ring.staged() {
                info!(target: "audit", epoch = s.epoch, fingerprint = %s.fingerprint(), generation = ring.generation(), "key staged");
            }
        }
        Decision::Drop(epochs) => {
            info!(target: "audit", epochs = ?epochs, generation = ring.generation(), leader, "keys dropped");
        }
        _ => {}
    }
}
