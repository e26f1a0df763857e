//! The leader's part of a pass, performed: [`Leading::plan`] decides, this performs each
//! action, logs what the engine reports, and feeds the results back.

use std::collections::VecDeque;
use std::time::Instant;

use stek_core::{Decision, KeyRing, OsKeySource};
use stek_store::seal::{DataKey, MemberKey, SealError};
use stek_store::{CoordError, Coordinator, RingWriter, Snapshot, StoredRing, Term};
use tracing::{debug, error, info, warn};

use super::{Node, RESIGN_LIMIT};
use crate::engine::lead::{self, Action, Event, Now, Plan, Refused, Report, Resignation};
use crate::engine::{Held, Why};

impl<C: Coordinator> Node<'_, C> {
    /// The leader's part of a pass: [`Leading::plan`] decides, this performs the actions and
    /// feeds their results back; returns when to decide again at the latest.
    pub(super) async fn lead(&mut self, snap: &Snapshot, now: Now) -> Option<Instant> {
        let own_certificate = self
            .pki
            .and_then(|pki| pki.trust.verify(pki.creds.cert_der(), now.wall).err())
            .map(|e| e.to_string());
        let accepted_verifies = match (&self.accepted, self.pki) {
            (Some(a), Some(pki)) => a.verify(&pki.trust, now.wall).is_ok(),
            _ => true,
        };
        let inputs = lead::Inputs {
            me: &self.config.node_id,
            snap,
            held: Held {
                opened: self.opened.as_ref(),
                applied: self.applied.as_ref(),
            },
            newest_seen: self.newest_seen,
            floor: self.sealing.floor(),
            accepted: self.accepted.as_ref(),
            accepted_verifies,
            own_certificate: own_certificate.as_deref(),
            data_key_write: self.data_key.as_ref().map(DataKey::write),
            signer: self.pki.map(|p| p.creds.cert_der()),
            history: &self.history,
            settings: self.settings(),
        };
        let plan = self.leading.plan(&inputs, now, &mut OsKeySource);
        self.perform(plan, snap, now).await
    }

    pub(super) fn settings(&self) -> lead::Settings {
        lead::Settings {
            policy: self.config.policy,
            min_request_interval: self.config.min_request_interval,
            forget_dead_after: self.config.forget_dead_after,
            compact_history: self.config.compact_history,
        }
    }

    /// Performs `plan`'s actions in order, feeding each result back to the engine (which may
    /// add actions); returns the earliest wake-up asked for.
    pub(super) async fn perform(
        &mut self,
        plan: Plan,
        snap: &Snapshot,
        now: Now,
    ) -> Option<Instant> {
        let settings = self.settings();
        let mut wake = plan.wake_at;
        let mut queue: VecDeque<Action> = plan.actions.into();
        while let Some(action) = queue.pop_front() {
            for event in self.act(action, snap).await {
                let more = self.leading.on(event, now, &settings);
                wake = match (wake, more.wake_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                queue.extend(more.actions);
            }
        }
        wake
    }

    /// Performs one action; returns what came of it.
    async fn act(&mut self, action: Action, snap: &Snapshot) -> Vec<Event> {
        let written = |r: Result<i64, CoordError>, ok: &dyn Fn(i64) -> Event| match r {
            Ok(revision) => ok(revision),
            Err(e) => Event::Refused(e),
        };
        match action {
            Action::Report(r) => {
                self.report(r, snap);
                Vec::new()
            }
            Action::Resign { term, why } => {
                self.resign(term, why).await;
                Vec::new()
            }
            Action::Campaign { lease } => {
                let result = self.coord.campaign(lease, &self.config.node_id).await;
                vec![Event::Campaigned(result.map_err(|e| e.to_string()))]
            }
            Action::Forget { term, members } => self.forget(term, members).await,
            Action::Write {
                term,
                ring_revision,
                ring,
                served,
                why,
                before,
            } => {
                let r = self.write(term, ring_revision, &ring, snap, &served).await;
                vec![written(r, &|revision| Event::Wrote {
                    revision,
                    why: why.clone(),
                    before: before.clone(),
                    ring: ring.clone(),
                })]
            }
            Action::Restore {
                term,
                ring_revision,
                stored,
                why,
            } => {
                let r = self
                    .coord
                    .write_ring(term, ring_revision, &stored, &[])
                    .await;
                vec![written(r, &|revision| Event::Restored {
                    revision,
                    generation: stored.ring.generation(),
                    why: why.clone(),
                })]
            }
            Action::SealCopies {
                term,
                ring_revision,
                members,
            } => match self.seal_copies(term, ring_revision, snap, &members).await {
                Ok(Some((generation, revision))) => {
                    info!(
                        generation,
                        "sealed a copy of the stored ring for {}",
                        members.join(", ")
                    );
                    vec![Event::SealedCopies(Some(revision))]
                }
                Ok(None) => vec![Event::SealedCopies(None)],
                Err(e) => vec![Event::Refused(e)],
            },
            Action::Purge { revision, dropped } => {
                self.purge(revision, &dropped).await;
                Vec::new()
            }
        }
    }

    /// Logs what the engine reported.
    fn report(&mut self, report: Report, snap: &Snapshot) {
        let me = self.config.node_id.as_str();
        match report {
            Report::OwnCertificate(e) => {
                error!(target: "audit", node = %me, "this node's own certificate does not verify ({e}); it does not lead until it gets a valid one (stek ca issue, then restart)")
            }
            Report::NotCampaigning(why) => debug!("not campaigning: {why}"),
            Report::Elected {
                term,
                adopted: false,
            } => info!(target: "audit", node = %me, term = term.0, "leader elected"),
            Report::Elected {
                term,
                adopted: true,
            } => {
                info!(target: "audit", node = %me, term = term.0, "leader elected (campaign reply was lost)")
            }
            Report::LeadershipLost(term) => {
                info!(target: "audit", node = %me, term = term.0, "leadership lost")
            }
            Report::CampaignFailed(e) => warn!("campaign failed: {e}"),
            Report::Expired(gone) => {
                for member in gone {
                    info!(target: "audit", member = %member, leader = %me, "member expired: its liveness lease ended (it left, or stopped renewing)");
                }
            }
            Report::Requested(requests) => {
                for (key, by) in requests {
                    info!(target: "audit", requested_by = %by, request = %key, leader = %me, "rotation requested");
                }
            }
            Report::RequestsPaced { interval, next } => info!(
                "rotation requested; requests rotate at most once per {} ([rotation] min_request_interval): next at {}",
                humantime_serde::re::humantime::format_duration(interval),
                humantime_serde::re::humantime::format_rfc3339_seconds(next)
            ),
            Report::Waits(line) => warn!("{line}"),
            Report::Stuck(why) => {
                error!("{why}, and no live member holds keys to rewrite it with; an operator must restore it or delete it (a new ring is then made)")
            }
            Report::Failed(why) => error!("{why}"),
            Report::Written { why, before, ring } => {
                self.audit_write(&why, before.as_ref(), &ring, &snap.requested_by)
            }
            Report::Restored { generation, why } => {
                warn!(target: "audit", generation, leader = %me, "{why}: put back the ring this leader accepted last (generation {generation}), unchanged")
            }
            Report::Refused(Refused::Fenced(term)) => {
                warn!(target: "audit", term = term.0, "leadership lost: the store refused a write")
            }
            Report::Refused(Refused::Conflict) => {
                info!("the ring changed since this decision was read; deciding again on a fresh read")
            }
            Report::Refused(Refused::Failed(e)) => warn!("leader write failed: {e}"),
        }
    }

    /// The audit trail of a leader write that landed.
    fn audit_write(
        &self,
        why: &Why,
        before: Option<&KeyRing>,
        ring: &KeyRing,
        requested_by: &[(String, String)],
    ) {
        let me = self.config.node_id.as_str();
        match why {
            Why::Decision(decision) => {
                if matches!(decision, Decision::Rotate(_)) {
                    self.metrics.rotations.inc();
                }
                audit_decision(decision, before, ring, me, requested_by);
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
            }
            Why::Reseal(lacking) => info!(
                generation = ring.generation(),
                "sealed the ring for {}",
                lacking.join(", ")
            ),
        }
    }

    /// Gives `term` up, for `why` (the role has already stepped down).
    async fn resign(&mut self, term: Term, why: Resignation) {
        let me = self.config.node_id.as_str();
        match &why {
            Resignation::OwnCertificate => {}
            Resignation::ClockAhead { ahead } => {
                // Keys stamped in the members' future: their key-age figures and any later
                // leader's schedule would be off by as much. Let a member with a sane clock lead.
                error!(target: "audit", node = %me, term = term.0, ahead_seconds = ahead.as_secs(), "this leader's clock is ahead of its members' by {ahead:?} (their acknowledgements are stamped before its ring); it stops leading for {:?}; fix its time source (chrony, systemd-timesyncd)", stek_store::clock::CLOCK_COOLDOWN);
            }
            Resignation::HandOver { to, why } => {
                info!(target: "audit", node = %me, term = term.0, "leadership released: {why}; {to} holds keys and should lead");
            }
            Resignation::LeaseEnded => {
                info!(target: "audit", node = %me, term = term.0, "leadership lost: the liveness lease ended");
            }
        }
        match tokio::time::timeout(RESIGN_LIMIT, self.coord.resign(term)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("could not release the leadership: {e}"),
            Err(_) => warn!("could not release the leadership in {RESIGN_LIMIT:?}; it ends when the lease expires"),
        }
    }

    /// Removes the records of dead `members` ([`crate::engine::housekeeping::dead_to_forget`]), so the store
    /// does not grow with every box that ever ran. The store removes a record only while no
    /// liveness lease holds for it.
    async fn forget(&mut self, term: Term, members: Vec<String>) -> Vec<Event> {
        let mut events = Vec::new();
        for id in members {
            match self.coord.forget_member(term, &id).await {
                Ok(removed) => {
                    if removed {
                        info!(target: "audit", member = %id, leader = %self.config.node_id, after = ?self.config.forget_dead_after, "member forgotten: dead for [rotation] forget_dead_after; its record is removed");
                    }
                    events.push(Event::Forgot { member: id });
                }
                Err(e) => warn!("could not remove the record of dead member {id}: {e}"),
            }
        }
        events
    }

    /// Seals a copy of the stored ring for each of `members` and stores those copies alone,
    /// fenced on the term and the ring ([`Coordinator::write_copies`]). Returns the ring's
    /// generation and the write's revision, or None when no copy could be sealed.
    async fn seal_copies(
        &mut self,
        term: Term,
        ring_revision: i64,
        snap: &Snapshot,
        members: &[String],
    ) -> Result<Option<(u64, i64)>, CoordError> {
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
        self.log_seal_failures(failed);
        if records.is_empty() {
            return Ok(None);
        }
        let revision = self
            .coord
            .write_copies(term, ring_revision, &records)
            .await?;
        Ok(Some((stored.ring.generation(), revision)))
    }

    /// Seals `ring` for every live member that published a public key and writes it.
    async fn write(
        &mut self,
        term: Term,
        ring_revision: i64,
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
        let writer = RingWriter {
            cluster: &self.config.cluster,
            node_id: &self.config.node_id,
            policy: &self.config.policy,
            term: term.0,
            creds: self.pki.map(|p| &p.creds),
        };
        let (stored, failed) =
            StoredRing::seal_write(&writer, ring, &recipients, snap.valid_ring());
        self.log_seal_failures(failed);
        self.coord
            .write_ring(term, ring_revision, &stored, served)
            .await
    }

    fn log_seal_failures(&mut self, failed: Vec<SealError>) {
        for e in failed {
            if self.logged.insert(("seal".into(), e.to_string())) {
                error!("{e}");
            }
        }
    }

    /// Compacts the store's history up to `revision` ([`crate::engine::housekeeping::purge_after`]), so that
    /// no old revision still holds sealed copies of the `dropped` epochs.
    async fn purge(&mut self, revision: i64, dropped: &[u64]) {
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
