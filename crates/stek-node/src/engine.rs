//! The leader's decisions, pure: given what the store shows ([`Snapshot`]), the keys this node
//! holds, and the time, [`leader_step`] says what to do next, and the runtime
//! ([`crate::node`]) does it: write a ring, hand the leadership over, step down, or wait.
//! Like openraft's split of its Engine from its Runtime, nothing here awaits, reads a clock,
//! or draws randomness except through the [`KeySource`] it is given, so every decision is
//! tested with plain values (see the tests below and `tests/scenarios.rs` for the runtime).

use std::time::{Duration, Instant, SystemTime};

use stek_core::{decide_at, next_ring, Decision, KeyRing, KeySource, Policy, RingMeta};
use stek_store::seal::{SealError, WriteId};
use stek_store::{Member, RingSlot, Snapshot, StoredRing, Term};

#[cfg(test)]
pub(crate) mod fixtures;
pub mod floor;
pub mod follow;
pub mod housekeeping;
pub mod lead;
pub mod pace;
pub mod ratchet;
pub mod read;
pub mod role;
#[cfg(test)]
mod scenarios;

use floor::Floor;
pub use floor::MAX_GENERATION_STEP;
pub use pace::Pace;
pub use role::Role;

/// What the leader knows when it decides.
#[derive(Debug, Clone, Copy)]
pub struct LeaderView<'a> {
    /// This node's id.
    pub me: &'a str,
    /// The store, as this node may act on it (authenticated, replays refused).
    pub snap: &'a Snapshot,
    /// The keys this node holds: the ring it last opened and the ring it last applied.
    pub held: Held<'a>,
    /// The newest generation this node accepted (its floor, or a newer valid ring it saw).
    pub newest_seen: u64,
    /// The newest ring this node accepted, kept across restarts ([`Floor`]).
    pub floor: Option<&'a Floor>,
    /// That ring as the store held it when this node accepted it (its copies included): put
    /// back unchanged over a ring that was replayed, restored from a backup, deleted or
    /// broken, so that no new generation is written per attack.
    pub accepted: Option<&'a StoredRing>,
    /// The rotation policy.
    pub policy: Policy,
    /// Now, by this node's clock.
    pub now: SystemTime,
    /// Now, by the runtime's monotonic clock (for the rate limits).
    pub mono: Instant,
    /// When this leader last made each rate-limited kind of write ([`Pace`]).
    pub pace: Pace,
    /// Requests rotate at most once this often (`[rotation] min_request_interval`).
    pub min_request_interval: Duration,
    /// The write whose data key this node holds (it opened that write's copy): as the ring's
    /// writer it can seal one more copy of it without writing it again.
    pub data_key_write: Option<WriteId>,
    /// The certificate this node signs with (`[identity]`; None: insecure): members accept
    /// only copies signed with the ring's own certificate.
    pub signer: Option<&'a [u8]>,
    /// The names of keys in the rings this node opened: a new key with one of them is refused
    /// as the sign of a random source that repeats itself (see [`stek_core::weak`]).
    pub history: &'a stek_core::KeyHistory,
}

/// What a node does about the leadership on a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Election {
    /// Nobody leads: campaign.
    Campaign,
    /// Nobody leads, but this node should not (its clock was found fast, or `holder` can
    /// open the ring and it cannot): wait.
    Abstain(String),
    /// The store shows this node leading under its own lease though the reply to its
    /// campaign was lost: the leadership is its own, in `term`.
    Adopt(Term),
    /// It still leads: decide ([`leader_step`]).
    Lead(Term),
    /// It led, and the store shows another leader (or none under its term): it leads no more.
    Lost(Term),
    /// Someone else leads, or this node is not live: nothing to do.
    Follow,
}

/// The leadership decision of a node in `role` (pure). `clock_paused`: this node's clock was
/// found ahead of its members' a while ago.
pub fn election(
    me: &str,
    role: &Role,
    snap: &Snapshot,
    held: Held<'_>,
    clock_paused: bool,
) -> Election {
    match (&snap.leader, role) {
        (_, Role::Joining) => Election::Follow,
        (None, Role::Leader { term, .. }) => Election::Lost(*term),
        (None, Role::Follower { .. }) => {
            if clock_paused {
                Election::Abstain("this node's clock was found ahead of its members'".into())
            } else if let Some(holder) = defer_to(me, held, snap) {
                Election::Abstain(format!("this node cannot open the ring but {holder} can"))
            } else {
                Election::Campaign
            }
        }
        (Some(l), Role::Leader { term, .. }) if l.node_id == me && l.term == *term => {
            Election::Lead(*term)
        }
        (Some(_), Role::Leader { term, .. }) => Election::Lost(*term),
        (Some(l), Role::Follower { lease }) if l.node_id == me && l.lease == *lease => {
            Election::Adopt(l.term)
        }
        (Some(_), Role::Follower { .. }) => Election::Follow,
    }
}

/// The rings whose key bytes this node holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held<'a> {
    /// The last ring it opened from its sealed copy.
    pub opened: Option<&'a KeyRing>,
    /// The last ring it applied to every target.
    pub applied: Option<&'a KeyRing>,
}

impl Held<'_> {
    fn any(&self) -> Option<&KeyRing> {
        self.opened.or(self.applied)
    }

    /// The stored ring with its key bytes: a ring this node holds with the same digest (never
    /// the same generation alone), or the same keys found among the rings it holds.
    pub fn plaintext(&self, meta: &RingMeta) -> Option<KeyRing> {
        let known: Vec<&KeyRing> = self
            .opened
            .iter()
            .chain(self.applied.iter())
            .copied()
            .collect();
        let digest = meta.digest();
        if let Some(r) = known.iter().find(|r| r.digest() == digest) {
            return Some((*r).clone());
        }
        meta.with_keys(|k| {
            known.iter().find_map(|r| {
                r.keys()
                    .iter()
                    .find(|x| x.epoch == k.epoch && x.fingerprint() == k.key)
                    .map(|x| x.key.clone())
            })
        })
    }
}

/// Why the leader writes a ring: the runtime logs each as its audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// The rotation decision ([`decide_at`]): a bootstrap, rotation, drop or reschedule.
    Decision(Decision),
    /// The ring is missing or rejected; the keys this leader holds are written back.
    WriteBack(String),
    /// No live member can open the stored ring: new keys, continuing the numbering.
    Rekey,
    /// The same keys, sealed again for members that lack a usable copy.
    Reseal(Vec<String>),
}

/// The leader's next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// This leader's clock is ahead of its members' by `ahead`: stop leading for a while.
    StepDown {
        /// How far ahead.
        ahead: Duration,
    },
    /// Give the leadership up so that `to`, which holds keys this node lacks, leads.
    HandOver {
        /// Who should lead.
        to: String,
        /// Why.
        why: String,
    },
    /// Seal and write `ring`, deleting the `served` requests with it.
    Write {
        /// The ring.
        ring: KeyRing,
        /// Rotation requests it serves (and unreadable ones it takes away).
        served: Vec<String>,
        /// Why.
        why: Why,
        /// The ring it replaces, when this node holds its keys (for the audit trail and the
        /// history purge).
        before: Option<KeyRing>,
    },
    /// Put `stored`, the ring this node accepted last, back into the store unchanged (the
    /// same generation, the same copies, its writer's signature): the stored ring was
    /// replaced by an older one, deleted or broken. Nodes that hold it apply nothing.
    Restore {
        /// The ring record and its copies.
        stored: StoredRing,
        /// What happened to the stored ring.
        why: String,
    },
    /// Seal a copy of the stored ring, unchanged, for each of `members` (live, with a public
    /// key, and no copy of this write sealed to it), and store only those copies: a member
    /// that joins costs one copy, not a ring write every member applies again.
    SealCopies {
        /// The members.
        members: Vec<String>,
    },
    /// The ring record is rejected and no live member holds keys to write back: an operator
    /// must act.
    Stuck {
        /// What is wrong.
        why: String,
    },
    /// The decision cannot be computed (a bug or a hand-edited ring).
    Failed {
        /// Why.
        why: String,
    },
    /// Nothing to write now; decide again after `retry` (a rotation that waits for members, a
    /// reseal that waits for its rate limit) or at `until`.
    Wait {
        /// The rotation decision, when there was one (`Decision::Wait` names the blockers).
        decision: Option<Decision>,
        /// When to decide again at the latest.
        until: SystemTime,
    },
}

/// The leader's next step: see [`Step`]. Pure.
pub fn leader_step(v: &LeaderView<'_>, keys: &mut dyn KeySource) -> Step {
    let snap = v.snap;
    if let Some(ahead) = snap
        .valid_ring()
        .filter(|r| r.written_by == v.me)
        .and_then(|r| stek_store::clock::writer_ahead_of_members(r, &snap.members))
        .filter(|a| *a > stek_store::clock::CLOCK_BOUND)
    {
        return Step::StepDown { ahead };
    }
    let (ring, stored) = match &snap.ring {
        RingSlot::Valid(stored) => match v.held.plaintext(&stored.ring) {
            Some(ring) => {
                if let Some(step) = behind_acks(v, stored, keys) {
                    return step;
                }
                (Some(ring), Some(stored))
            }
            None => return cannot_open(v, stored, keys),
        },
        RingSlot::Absent | RingSlot::Rejected(_) => {
            // Never bootstrap over a missing or bad record while keys are held: nodes would
            // switch to keys nobody else holds. Put back the ring this node accepted last
            // (unchanged: no new generation per replay), or write back the last ring it
            // opened (same keys, a generation above any seen), or hand over to a member that
            // holds keys; new keys only when nobody does.
            let why = match &snap.ring {
                RingSlot::Rejected(e) => format!("the ring record is rejected ({e})"),
                _ => "the ring record is missing".to_owned(),
            };
            // A live member ahead of the ring this node holds: one that applied a newer ring
            // holds keys this node lacks, and leads instead; one whose floor is ahead accepted a
            // ring it no longer holds (it restarted). Writing this node's keys back over either
            // would put back keys that member dropped.
            let held = v.held.any();
            let ceiling = v.newest_seen.saturating_add(MAX_GENERATION_STEP);
            let held_generation = held.map_or(0, KeyRing::generation);
            let newer_holder = (held.is_some())
                .then(|| key_holder_within(v.me, snap, held_generation, ceiling))
                .flatten();
            let newer_floor = held.is_some_and(|h| floor_ahead(v.me, snap, &h.meta(), ceiling));
            if newer_holder.is_none() && !newer_floor {
                if let Some(step) = restore(v, &why) {
                    return step;
                }
                if let Some(good) = held {
                    let ring = renumber_after(
                        good.with_next_rotation_at(good.next_rotation_at()),
                        snap,
                        v.newest_seen,
                    );
                    return Step::Write {
                        ring,
                        served: Vec::new(),
                        why: Why::WriteBack(why),
                        before: None,
                    };
                }
            }
            if let Some(to) =
                newer_holder.or_else(|| held.is_none().then(|| key_holder(v.me, snap, 0)).flatten())
            {
                return Step::HandOver { to, why };
            }
            if newer_floor || v.floor.is_some() {
                // Nobody live holds keys as new as a ring this node or another member
                // accepted (they restarted, after the store was restored from a backup or a
                // ring replayed): those keys are gone with the processes that held them. New
                // keys, numbered above every floor, epochs above what this node knew.
                if !v.pace.rekey_rested(v.mono) {
                    return Step::Wait {
                        decision: None,
                        until: v.now + Duration::from_secs(1),
                    };
                }
                let (generation, last_epoch) = [
                    v.floor.map(|f| (f.generation, f.last_epoch)),
                    held.map(|h| (h.generation(), h.last_epoch())),
                ]
                .into_iter()
                .flatten()
                .fold((0, 0), |(g, e), (g2, e2)| (g.max(g2), e.max(e2)));
                let rekeyed = match KeyRing::rekeyed_from(
                    generation,
                    last_epoch,
                    &[],
                    v.now,
                    &v.policy,
                    keys,
                    v.history,
                ) {
                    Ok(ring) => ring,
                    Err(e) => return rekey_failed(e),
                };
                return Step::Write {
                    ring: renumber_after(rekeyed, snap, v.newest_seen),
                    served: snap.requests.clone(),
                    why: Why::Rekey,
                    before: None,
                };
            }
            if matches!(snap.ring, RingSlot::Rejected(_)) {
                return Step::Stuck { why };
            }
            (None, None)
        }
    };
    let requests_due = v.pace.requests_due(v.now, v.mono, v.min_request_interval);
    let requested = !snap.requests.is_empty() && v.now >= requests_due;
    let decision = decide_at(
        v.now,
        ring.as_ref(),
        &v.policy,
        &snap.member_views(),
        requested,
    );
    let next = match next_ring(&decision, ring.as_ref(), v.now, &v.policy, keys, v.history) {
        // A first ring numbers above every generation a member ever acknowledged (the ring was
        // deleted, or the store restored empty): no old acknowledgement can count for it, and
        // no node takes it for a replay.
        Ok(Some(n)) if matches!(decision, Decision::Bootstrap) => {
            Some(renumber_after(n, snap, v.newest_seen))
        }
        Ok(n) => n,
        Err(e) => {
            return Step::Failed {
                why: format!("cannot compute the next ring: {e}"),
            }
        }
    };
    if let Some(new) = next {
        // Every write numbers above every acknowledgement (for a rotation of a ring that all
        // acknowledged, that is the next generation anyway): no two rings share a generation.
        let new = renumber_after(new, snap, v.newest_seen);
        // A rotation serves every pending request, and takes unreadable ones away with them.
        let served = if matches!(decision, Decision::Rotate(_)) {
            snap.requests
                .iter()
                .chain(&snap.unreadable_requests)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        return Step::Write {
            ring: new,
            served,
            why: Why::Decision(decision),
            before: ring,
        };
    }
    // Nothing to change in the ring; seal it again if a live member lacks a usable copy (it
    // joined, restarted, or reported that its copy does not open).
    if let (Some(ring), Some(stored)) = (&ring, stored) {
        let mut lacking = lacking_copies(stored, &snap.members);
        // A member that says its copy of this generation does not open (tampered, sealed with
        // a data key that does not open the ring, or sealed to a key it no longer holds after
        // it accepted this generation) gets a whole new write: a fresh data key, a generation
        // above every floor. One that merely has no copy of this write gets one.
        let reported: Vec<String> = snap
            .members
            .iter()
            .filter(|m| {
                m.live
                    && m.record.sealing_key().is_some()
                    && m.record.unsealable_generation == Some(stored.ring.generation())
            })
            .map(|m| m.record.node_id.clone())
            .collect();
        let reseal_rested = v.pace.reseal_rested(v.mono);
        if !lacking.is_empty() && reseal_rested && seals_copies(v, stored) && reported.is_empty() {
            return Step::SealCopies { members: lacking };
        }
        for r in reported {
            if !lacking.contains(&r) {
                lacking.push(r);
            }
        }
        if !lacking.is_empty() && reseal_rested {
            return Step::Write {
                ring: renumber_after(
                    ring.with_next_rotation_at(ring.next_rotation_at()),
                    snap,
                    v.newest_seen,
                ),
                served: Vec::new(),
                why: Why::Reseal(lacking),
                before: Some(ring.clone()),
            };
        }
        if !lacking.is_empty() {
            return Step::Wait {
                decision: None,
                until: v.now + Duration::from_secs(1),
            };
        }
    }
    let until = match &decision {
        Decision::Idle { until } if snap.requests.is_empty() => *until,
        Decision::Idle { until } => (*until).min(requests_due),
        _ => v.now + Duration::from_secs(1),
    };
    Step::Wait {
        decision: Some(decision),
        until,
    }
}

/// Whether this leader can seal more copies of `stored` without writing it again: it wrote it,
/// holds the data key of that write, and (with `[identity]`) signs with the certificate the
/// ring was signed with (members check a copy's signature with the ring's).
pub fn seals_copies(v: &LeaderView<'_>, stored: &StoredRing) -> bool {
    stored.written_by == v.me
        && v.data_key_write == Some(stored.write_id())
        && match (v.signer, &stored.signature) {
            (None, _) => true,
            (Some(mine), Some(sig)) => sig.certificate == mine,
            (Some(_), None) => false,
        }
}

/// The ring this node accepted last, put back unchanged over a missing or rejected one: when
/// it still holds its keys and no live member acknowledged or accepted a newer generation
/// (that member holds keys this node lacks, and leads instead).
///
/// Only a ring this node would accept itself: not below a newer ring it saw since (its own
/// floor would refuse it), and not of a term after the current leadership's (after a store
/// restored from a backup numbered its terms again, every node would refuse it as from the
/// future): then the keys are written back in this leader's own term instead.
fn restore(v: &LeaderView<'_>, why: &str) -> Option<Step> {
    let accepted = v.accepted?;
    v.held.plaintext(&accepted.ring)?;
    let generation = accepted.ring.generation();
    let ceiling = v.newest_seen.saturating_add(MAX_GENERATION_STEP);
    let newer = key_holder_within(v.me, v.snap, generation, ceiling).is_some()
        || floor_ahead(v.me, v.snap, &accepted.ring, ceiling);
    let future = v
        .snap
        .leader
        .as_ref()
        .is_some_and(|l| accepted.term > l.term.0);
    (!newer && !future && generation >= v.newest_seen).then(|| Step::Restore {
        stored: accepted.clone(),
        why: why.to_owned(),
    })
}

/// A live member other than `me` that applied a generation above `above` (and not above
/// `ceiling`, a forgery's mark): it holds keys newer than `above`.
fn key_holder_within(me: &str, snap: &Snapshot, above: u64, ceiling: u64) -> Option<String> {
    snap.members
        .iter()
        .filter(|m| m.live && m.record.node_id != me)
        .filter(|m| m.record.applied_generation <= ceiling)
        .find(|m| m.record.applied_generation > above)
        .map(|m| m.record.node_id.clone())
}

/// Whether a live member other than `me` accepted a ring newer than `ring`, or another ring
/// of its generation (its floor; not above `ceiling`).
fn floor_ahead(me: &str, snap: &Snapshot, ring: &RingMeta, ceiling: u64) -> bool {
    snap.members.iter().any(|m| {
        m.live
            && m.record.node_id != me
            && m.record.floor_generation.is_some_and(|f| f <= ceiling)
            && m.record.floor_is_ahead_of(ring)
    })
}

/// Whether a member reports its copy of a ring as unopenable (`unsealable_generation`), so
/// that the leader writes the ring anew: when only it can tell (its copy is there, made for
/// this write and sealed to the key it announces, and still does not open: tampered,
/// replayed, unsigned), or when its floor covers the ring's generation (`floor_covers`: the
/// leader takes it to hold the key that opened it and seals it nothing) while its copy is
/// missing, of another write or sealed to a key it no longer holds. Otherwise the leader sees
/// a missing copy, one of another write or for another key, and seals one more copy.
pub fn reports_unsealable(error: &SealError, floor_covers: bool) -> bool {
    match error {
        SealError::Ahead { .. } => false,
        SealError::NoCopy { .. }
        | SealError::OtherRing { .. }
        | SealError::OtherRecipient { .. } => floor_covers,
        _ => true,
    }
}

/// A stored ring older than what was acknowledged (the store was restored from a backup, or
/// an old ring replayed into it), which this node can open because it restarted and holds
/// nothing newer: acting on it (a rotation, a reseal) would put keys back that were dropped.
/// If this node itself had applied a newer ring (its own record says so), it restarted since,
/// and so may every member that applied it: new keys, numbered above every acknowledgement
/// (tickets from before do not resume, as after a power loss; nothing dropped comes back, and
/// no two restarted nodes hand the leadership to each other for ever). Otherwise a live
/// member that applied the newer ring holds its keys: hand over to it (it refuses the old
/// ring as a rollback and writes its own back).
fn behind_acks(v: &LeaderView<'_>, stored: &StoredRing, keys: &mut dyn KeySource) -> Option<Step> {
    let generation = stored.ring.generation();
    let ceiling = v
        .newest_seen
        .max(generation)
        .saturating_add(MAX_GENERATION_STEP);
    let mine = v
        .snap
        .members
        .iter()
        .find(|m| m.record.node_id == v.me)
        .map_or(0, |m| m.record.applied_generation);
    if mine > generation && mine <= ceiling {
        let rekeyed = match KeyRing::rekeyed(&stored.ring, v.now, &v.policy, keys, v.history) {
            Ok(ring) => ring,
            Err(e) => return Some(rekey_failed(e)),
        };
        return Some(Step::Write {
            ring: renumber_after(rekeyed, v.snap, v.newest_seen),
            served: v.snap.requests.clone(),
            why: Why::Rekey,
            before: None,
        });
    }
    let others = || {
        v.snap
            .members
            .iter()
            .filter(|m| m.live && m.record.node_id != v.me)
    };
    if let Some(to) = others()
        .filter(|m| m.record.applied_generation > generation)
        .find(|m| m.record.applied_generation <= ceiling)
    {
        return Some(Step::HandOver {
            to: to.record.node_id.clone(),
            why: format!(
                "the stored ring (generation {generation}) is older than generation {}, which live members applied: the store was restored or an old ring replayed",
                to.record.applied_generation
            ),
        });
    }
    // A live member accepted a newer ring, or another ring of this generation (its floor),
    // but holds its keys no more (it restarted): it refuses the stored one, and nobody can
    // bring the newer keys back. A rotation or reseal on the stored ring would put back keys
    // that member dropped: new keys. At most one such re-key a minute: a member's floor is
    // its own to sign, and a compromised one could otherwise re-key at every pass.
    if !floor_ahead(v.me, v.snap, &stored.ring, ceiling) {
        return None;
    }
    if !v.pace.rekey_rested(v.mono) {
        return Some(Step::Wait {
            decision: None,
            until: v.now + Duration::from_secs(1),
        });
    }
    let rekeyed = match KeyRing::rekeyed(&stored.ring, v.now, &v.policy, keys, v.history) {
        Ok(ring) => ring,
        Err(e) => return Some(rekey_failed(e)),
    };
    Some(Step::Write {
        ring: renumber_after(rekeyed, v.snap, v.newest_seen),
        served: v.snap.requests.clone(),
        why: Why::Rekey,
        before: None,
    })
}

/// Leading while this node cannot open the stored ring: hand over to a member that can, or,
/// if no live member can, start new keys (the old keys are gone with the processes that held
/// them), numbered above every acknowledgement.
fn cannot_open(v: &LeaderView<'_>, stored: &StoredRing, keys: &mut dyn KeySource) -> Step {
    if let Some(to) = defer_to(v.me, v.held, v.snap) {
        return Step::HandOver {
            to,
            why: "this node cannot open the ring".into(),
        };
    }
    let rekeyed = match KeyRing::rekeyed(&stored.ring, v.now, &v.policy, keys, v.history) {
        Ok(ring) => ring,
        Err(e) => return rekey_failed(e),
    };
    Step::Write {
        ring: renumber_after(rekeyed, v.snap, v.newest_seen),
        served: v.snap.requests.clone(),
        why: Why::Rekey,
        before: None,
    }
}

/// New keys could not be drawn (a weak key was refused): nothing is written, and the next pass
/// tries again.
fn rekey_failed(e: stek_core::ring::RingError) -> Step {
    Step::Failed {
        why: format!("cannot make new keys: {e}"),
    }
}

/// A live member other than `me` that should lead instead, because `me` cannot open the
/// stored ring and it can (a usable copy), or because it acknowledged a newer generation than
/// the store holds (the ring was replayed, restored from a backup or deleted) and `me` holds
/// no keys of its own.
pub fn defer_to(me: &str, held: Held<'_>, snap: &Snapshot) -> Option<String> {
    let stored = match &snap.ring {
        RingSlot::Valid(stored) => stored,
        _ if held.any().is_some() => return None,
        _ => return key_holder(me, snap, 0),
    };
    if held.plaintext(&stored.ring).is_some() {
        return None;
    }
    snap.members
        .iter()
        .filter(|m| m.live && m.record.node_id != me)
        .find(|m| stored.usable_copy_for(&m.record))
        .map(|m| m.record.node_id.clone())
        .or_else(|| key_holder(me, snap, stored.ring.generation()))
}

/// A live member other than `me` that acknowledged a generation above `above`: it holds keys
/// the store no longer shows.
fn key_holder(me: &str, snap: &Snapshot, above: u64) -> Option<String> {
    snap.members
        .iter()
        .filter(|m| m.live && m.record.node_id != me)
        .find(|m| m.record.applied_generation > above)
        .map(|m| m.record.node_id.clone())
}

/// Live members with a public key but no usable copy of the stored ring, that a copy of it may
/// be sealed for ([`StoredRing::may_seal_to`]: none whose floor is at or above it).
pub fn lacking_copies(stored: &StoredRing, members: &[Member]) -> Vec<String> {
    members
        .iter()
        .filter(|m| {
            m.live
                && m.record.sealing_key().is_some()
                && !stored.usable_copy_for(&m.record)
                && stored.may_seal_to(&m.record)
        })
        .map(|m| m.record.node_id.clone())
        .collect()
}

/// A repaired ring must have a generation above every generation members acknowledged, so
/// that they apply it and acknowledge again, and above every member's rollback floor and
/// `floor` (the newest this node saw), so that no node takes it for a replay. Acknowledgements are unsigned: one more than
/// [`MAX_GENERATION_STEP`] above `floor` is ignored, so a forged one cannot push the ring to
/// the end of the numbering. One step, whatever the numbers (saturating, never wrapping).
pub fn renumber_after(ring: KeyRing, snap: &Snapshot, floor: u64) -> KeyRing {
    let ceiling = floor.saturating_add(MAX_GENERATION_STEP);
    let highest = snap
        .members
        .iter()
        .flat_map(|m| {
            [
                m.record.applied_generation,
                m.record.floor_generation.unwrap_or(0),
            ]
        })
        .filter(|g| *g <= ceiling)
        .max()
        .unwrap_or(0)
        .max(floor);
    ring.renumbered(highest.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use stek_core::{KeyState, OsKeySource};
    use stek_store::seal::Identity;
    use stek_store::LeaseId;
    use stek_store::RecordError;

    #[test]
    fn a_repaired_ring_numbers_above_every_ack_and_ignores_absurd_ones() {
        let ring = ring_at(1, t(0));
        let acks = |gs: &[u64]| {
            let ms: Vec<M> = gs.iter().map(|g| m("x").applied(*g)).collect();
            snap(None, &ms)
        };
        assert_eq!(
            renumber_after(ring.clone(), &acks(&[3, 7, 5]), 0).generation(),
            8
        );
        assert_eq!(
            renumber_after(ring.clone(), &acks(&[3]), 10).generation(),
            11
        );
        let absurd = acks(&[4, u64::MAX, u64::MAX - 1]);
        assert_eq!(renumber_after(ring.clone(), &absurd, 2).generation(), 5);
        assert_eq!(
            renumber_after(ring, &acks(&[]), u64::MAX).generation(),
            u64::MAX,
            "saturates, never wraps"
        );
    }

    #[test]
    fn a_repaired_ring_numbers_above_every_members_floor_too() {
        let ring = ring_at(1, t(0));
        let s = snap(None, &[m("a").applied(3).floor(9), m("b").floor(u64::MAX)]);
        assert_eq!(renumber_after(ring, &s, 2).generation(), 10);
    }

    /// A view with the ring this node accepted last (`accepted`) and its floor.
    fn step_with(
        snap: &Snapshot,
        held: Held<'_>,
        accepted: Option<&StoredRing>,
        floor: Option<&Floor>,
    ) -> Step {
        let v = LeaderView {
            newest_seen: floor.map_or(0, |f| f.generation),
            accepted,
            floor,
            ..view(snap, held, t(10))
        };
        leader_step(&v, &mut OsKeySource)
    }

    /// Over a missing ring, or one refused (a replay below the floor, another ring of its
    /// generation, a broken record), the leader puts back the ring it accepted, unchanged; if
    /// a live member accepted a newer one, it writes its keys above every floor instead; and
    /// when nobody holds keys any more (every node restarted after the store was restored),
    /// it makes new keys numbered above every floor and its epochs above its own floor's.
    #[test]
    fn a_replayed_deleted_or_broken_ring_is_put_back_or_rekeyed_above_every_floor() {
        let held = ring_at(5, t(0));
        let me = m(ME).acked(&held);
        let accepted = StoredRing::seal("c", &held, &policy(), ME, &[]).0;
        let opened = Held {
            opened: Some(&held),
            applied: Some(&held),
        };
        let floor = Floor::of(&accepted, Identity::generate().public().id());
        let replayed = RingSlot::Rejected(RecordError::Rollback { got: 3, seen: 5 });
        let aliased = RingSlot::Rejected(RecordError::Aliased {
            generation: 5,
            accepted: "x".into(),
        });
        for slot in [RingSlot::Absent, replayed.clone(), aliased] {
            let mut s = snap(None, &[m(ME).acked(&held), m("n2").acked(&held)]);
            s.ring = slot;
            match step_with(&s, opened, Some(&accepted), Some(&floor)) {
                Step::Restore { stored, .. } => assert_eq!(stored, accepted),
                other => panic!("expected the ring put back, got {other:?}"),
            }
        }
        // A member accepted generation 7 (its floor) and holds its keys no more: putting 5
        // back, or 5's keys at a new generation, would put back keys it dropped. New keys,
        // above every floor.
        let mut s = snap(None, &[me, m("n2").floor(7)]);
        s.ring = replayed.clone();
        let (ring, _, why) = written(step_with(&s, opened, Some(&accepted), Some(&floor)));
        assert_eq!(why, Why::Rekey);
        assert_eq!(ring.generation(), 8);
        assert!(ring
            .keys()
            .iter()
            .all(|k| !held.keys().iter().any(|h| h.key == k.key)));
        // Nobody holds keys (every node restarted): new keys above every floor (n2's: 9).
        let mut s = snap(None, &[m(ME), m("n2").floor(9)]);
        s.ring = replayed.clone();
        let (ring, served, why) = written(step_with(&s, Held::default(), None, Some(&floor)));
        assert_eq!(why, Why::Rekey);
        assert!(served.is_empty());
        assert_eq!(ring.generation(), 10);
        assert_eq!(ring.active().epoch, held.last_epoch() + 1, "epochs go on");
        assert!(ring
            .keys()
            .iter()
            .all(|k| !held.keys().iter().any(|h| h.key == k.key)));
        // No floor (this node rebooted) and a rejected ring nobody holds: an operator acts.
        assert!(matches!(
            step_with(&s, Held::default(), None, None),
            Step::Stuck { .. }
        ));
    }

    /// The put-back only ever writes a ring every node takes: not one below a ring this node
    /// saw since (its own floor would refuse it), nor one of a term after the leadership's (a
    /// store restored from a backup numbered its terms again): then the keys are written back
    /// in the leader's own term.
    #[test]
    fn the_ring_put_back_is_one_every_node_takes() {
        let held = ring_at(5, t(0));
        let opened = Held {
            opened: Some(&held),
            applied: Some(&held),
        };
        let mut accepted = StoredRing::seal("c", &held, &policy(), ME, &[]).0;
        accepted.term = 40;
        let floor = Floor::of(&accepted, Identity::generate().public().id());
        let mut s = snap(None, &[m(ME).acked(&held)]);
        s.ring = RingSlot::Rejected(RecordError::Rollback { got: 3, seen: 5 });
        let lead = |term: i64| stek_store::Leader {
            node_id: ME.into(),
            term: Term(term),
            lease: LeaseId(1),
        };
        s.leader = Some(lead(50));
        assert!(matches!(
            step_with(&s, opened, Some(&accepted), Some(&floor)),
            Step::Restore { .. }
        ));
        // Terms numbered again: this leader's term (7) is below the ring's (40).
        s.leader = Some(lead(7));
        let (ring, _, why) = written(step_with(&s, opened, Some(&accepted), Some(&floor)));
        assert!(matches!(why, Why::WriteBack(_)), "{why:?}");
        assert_eq!(ring.keys(), held.keys());
        // A newer ring seen since (its copy lost before it opened): not put back below it.
        s.leader = Some(lead(50));
        let v = LeaderView {
            newest_seen: 6,
            accepted: Some(&accepted),
            floor: Some(&floor),
            ..view(&s, opened, t(10))
        };
        assert!(!matches!(
            leader_step(&v, &mut OsKeySource),
            Step::Restore { .. }
        ));
    }

    /// A member whose floor is another ring of the stored generation refuses the stored ring
    /// (I11): the leader makes new keys above it, at most once a minute (a member's floor is
    /// its own to sign).
    #[test]
    fn a_floor_of_another_ring_of_the_stored_generation_makes_the_leader_rekey_at_most_once_a_minute(
    ) {
        let r = ring_at(3, t(0));
        let other = ring_at(3, t(0));
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        let mut n2 = m("n2").floor(3).member();
        n2.record.floor_digest = Some(other.digest().to_string());
        let mut s = snap(Some((&r, ME, &[ME])), &[m(ME).acked(&r)]);
        s.members.push(n2.clone());
        let (ring, _, why) = written(step(&s, held, t(10)));
        assert_eq!(why, Why::Rekey);
        assert_eq!(ring.generation(), 4);
        let v = LeaderView {
            newest_seen: 3,
            pace: Pace {
                last_rekey: Some(mono()),
                ..Pace::default()
            },
            ..view(&s, held, t(10))
        };
        assert!(matches!(
            leader_step(&v, &mut OsKeySource),
            Step::Wait { decision: None, .. }
        ));
        // The same digest: nothing to do.
        n2.record.floor_digest = Some(r.digest().to_string());
        s.members[1] = n2;
        assert!(!matches!(step(&s, held, t(10)), Step::Write { .. }));
    }

    #[test]
    fn who_reports_a_copy_as_unopenable() {
        let covered = [true, false];
        type Row = (SealError, [bool; 2]);
        let rows: Vec<Row> = vec![
            (SealError::NoCopy { generation: 3 }, [true, false]),
            (
                SealError::OtherRing {
                    made_for: 2,
                    ring: 3,
                },
                [true, false],
            ),
            (
                SealError::OtherRecipient {
                    copy: Identity::generate().public().id(),
                    mine: Identity::generate().public().id(),
                },
                [true, false],
            ),
            (
                SealError::Ahead {
                    made_for: 4,
                    ring: 3,
                },
                [false, false],
            ),
            (SealError::DoesNotOpen, [true, true]),
            (SealError::KeysDoNotMatch, [true, true]),
            (
                SealError::Replayed {
                    made_for: 2,
                    ring: 3,
                },
                [true, true],
            ),
            (SealError::Unsigned("x".into()), [true, true]),
        ];
        for (error, expect) in rows {
            for (floor_covers, want) in covered.into_iter().zip(expect) {
                assert_eq!(
                    reports_unsealable(&error, floor_covers),
                    want,
                    "{error:?}, floor covers: {floor_covers}"
                );
            }
        }
    }

    #[test]
    fn a_missing_ring_is_written_back_with_the_keys_held_above_every_ack() {
        let held = ring_at(5, t(0));
        let opened = Held {
            opened: Some(&held),
            applied: None,
        };
        // A dead member's acknowledgement of 7 counts for the numbering, not for who leads.
        let s = snap(None, &[m(ME).acked(&held), m("n2").applied(7).dead()]);
        let (ring, _, why) = written(step(&s, opened, t(10)));
        assert!(matches!(why, Why::WriteBack(_)));
        assert_eq!(ring.generation(), 8);
        assert_eq!(ring.keys(), held.keys());
        // A live member that applied 7 holds keys newer than 5: writing 5's back would put
        // back keys it dropped. It leads instead.
        let s = snap(None, &[m(ME).acked(&held), m("n2").applied(7)]);
        assert_eq!(
            step(&s, opened, t(10)),
            Step::HandOver {
                to: "n2".into(),
                why: "the ring record is missing".into()
            }
        );
    }

    #[test]
    fn a_missing_ring_without_keys_here_is_handed_to_a_member_that_holds_some() {
        let s = snap(None, &[m(ME), m("n2").applied(3)]);
        assert_eq!(
            step(&s, Held::default(), t(0)),
            Step::HandOver {
                to: "n2".into(),
                why: "the ring record is missing".into()
            }
        );
    }

    #[test]
    fn a_rejected_ring_nobody_holds_keys_for_is_never_bootstrapped_over() {
        let mut s = snap(None, &[m(ME), m("n2")]);
        s.ring = RingSlot::Rejected(RecordError::UnknownKey);
        assert!(matches!(
            step(&s, Held::default(), t(0)),
            Step::Stuck { .. }
        ));
    }

    #[test]
    fn a_first_ring_numbers_above_acknowledgements_of_dead_members() {
        let s = snap(None, &[m(ME), m("gone").applied(9).dead()]);
        let (ring, _, why) = written(step(&s, Held::default(), t(0)));
        assert_eq!(why, Why::Decision(Decision::Bootstrap));
        assert_eq!(ring.generation(), 10);
    }

    /// The leader holds a ring of generation 4; the store holds another ring of generation 4
    /// that no live member can open. Taking its own ring for the stored one would rotate keys
    /// nobody else holds; it makes new keys instead, numbered above every acknowledgement.
    #[test]
    fn the_leaders_own_ring_of_a_generation_is_not_the_stored_ring_of_that_generation() {
        let mine = ring_at(4, t(0));
        let stored = ring_at(4, t(0));
        assert_ne!(mine.digest(), stored.digest());
        let s = snap(
            Some((&stored, ME, &[])),
            &[m(ME).acked(&mine), m("n2").acked(&mine)],
        );
        let (ring, _, why) = written(step(
            &s,
            Held {
                opened: Some(&mine),
                applied: Some(&mine),
            },
            t(4000),
        ));
        assert_eq!(why, Why::Rekey);
        assert_eq!(ring.generation(), 5);
        assert!(ring.keys().iter().all(|k| mine
            .keys()
            .iter()
            .all(|x| x.epoch != k.epoch || x.key != k.key)));
    }

    #[test]
    fn an_acknowledgement_of_another_ring_blocks_the_rotation() {
        let r = ring_at(4, t(0));
        let other = ring_at(4, t(0));
        let s = snap(
            Some((&r, ME, &[ME, "n2"])),
            &[m(ME).acked(&r), m("n2").acked(&other)],
        );
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        match step(&s, held, t(3600)) {
            Step::Wait {
                decision: Some(Decision::Wait { blocked_by, .. }),
                ..
            } => assert_eq!(blocked_by[0].member, "n2"),
            other => panic!("n2 applied another ring: the rotation must wait, got {other:?}"),
        }
        let s = snap(
            Some((&r, ME, &[ME, "n2"])),
            &[m(ME).acked(&r), m("n2").acked(&r)],
        );
        let (next, _, why) = written(step(&s, held, t(3600)));
        assert!(matches!(why, Why::Decision(Decision::Rotate(_))));
        assert_eq!(next.active().epoch, r.staged().unwrap().epoch);
    }

    #[test]
    fn a_leader_whose_clock_is_ahead_of_its_members_steps_down() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let r = ring_at(2, t(0) + year);
        let s = snap(
            Some((&r, ME, &[ME, "n2", "n3"])),
            &[
                m(ME).acked(&r),
                m("n2").acked(&r).at(t(5)),
                m("n3").acked(&r).at(t(6)),
            ],
        );
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        match step(&s, held, t(0) + year) {
            Step::StepDown { ahead } => assert!(ahead > year - Duration::from_secs(60)),
            other => panic!("expected a step down, got {other:?}"),
        }
        // Another leader, reading the same store with a sane clock, pulls the schedule back.
        let v = LeaderView {
            me: "n2",
            ..view(&s, held, t(10))
        };
        let (ring, _, why) = written(leader_step(&v, &mut OsKeySource));
        assert!(matches!(why, Why::Decision(Decision::Reschedule { .. })));
        assert_eq!(ring.next_rotation_at(), t(10) + policy().interval);
        assert_eq!(ring.keys(), r.keys());
    }

    #[test]
    fn a_rotation_serves_every_pending_request_and_takes_unreadable_ones_away() {
        let r = ring_at(3, t(0));
        let mut s = snap(Some((&r, ME, &[ME])), &[m(ME).acked(&r)]);
        s.requests = (0..200)
            .map(|i| format!("/stek/c/requests/{i:04}"))
            .collect();
        s.unreadable_requests = vec!["/stek/c/requests/bad".into()];
        let held = Held {
            opened: Some(&r),
            applied: None,
        };
        let (_, served, why) = written(step(&s, held, t(10)));
        assert_eq!(
            why,
            Why::Decision(Decision::Rotate(
                stek_core::rotation::RotateReason::Requested
            ))
        );
        assert_eq!(served.len(), 201);
        // Within min_request_interval the requests wait, until the earlier of the schedule and
        // the interval's end.
        let v = LeaderView {
            pace: Pace {
                last_requested_rotation: Some(mono()),
                ..Pace::default()
            },
            ..view(&s, held, t(10))
        };
        match leader_step(&v, &mut OsKeySource) {
            Step::Wait { until, .. } => assert_eq!(until, t(70)),
            other => panic!("requests wait for min_request_interval, got {other:?}"),
        }
    }

    #[test]
    fn a_member_without_a_copy_is_resealed_for_at_most_once_a_second() {
        let r = ring_at(3, t(0));
        let s = snap(Some((&r, ME, &[ME])), &[m(ME).acked(&r), m("new")]);
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        let (ring, _, why) = written(step(&s, held, t(10)));
        assert_eq!(why, Why::Reseal(vec!["new".into()]));
        assert_eq!(ring.keys(), r.keys());
        assert_eq!(ring.generation(), 4);
        let v = LeaderView {
            pace: Pace {
                last_reseal: Some(mono()),
                ..Pace::default()
            },
            ..view(&s, held, t(10))
        };
        assert_eq!(
            leader_step(&v, &mut OsKeySource),
            Step::Wait {
                decision: None,
                until: t(11)
            }
        );
    }

    #[test]
    fn a_member_that_joins_gets_one_copy_and_one_whose_copy_fails_gets_a_new_write() {
        let r = ring_at(3, t(0));
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        fn view<'a>(
            s: &'a Snapshot,
            held: Held<'a>,
            seals_copies: bool,
            rested: bool,
        ) -> LeaderView<'a> {
            LeaderView {
                pace: Pace {
                    last_reseal: (!rested).then(mono),
                    ..Pace::default()
                },
                data_key_write: if seals_copies { writer_of(s) } else { None },
                ..super::tests::view(s, held, t(10))
            }
        }
        // The writer, holding the data key: the member that joined gets a copy of the stored
        // ring; the ring is not written again.
        let s = snap(Some((&r, ME, &[ME])), &[m(ME).acked(&r), m("new")]);
        assert_eq!(
            leader_step(&view(&s, held, true, true), &mut OsKeySource),
            Step::SealCopies {
                members: vec!["new".into()]
            }
        );
        // At most once a second, like a reseal.
        assert!(matches!(
            leader_step(&view(&s, held, true, false), &mut OsKeySource),
            Step::Wait { .. }
        ));
        // A leader that cannot (another wrote the ring, or it lacks the data key) reseals.
        let (ring, _, why) = written(leader_step(&view(&s, held, false, true), &mut OsKeySource));
        assert_eq!(why, Why::Reseal(vec!["new".into()]));
        assert_eq!(ring.generation(), 4);
        // A member that reports its copy of this generation does not open gets a new write,
        // with a fresh data key, even from a leader that could seal it one more copy.
        let mut s = snap(Some((&r, ME, &[ME, "bad"])), &[m(ME).acked(&r), m("bad")]);
        let generation = s.valid_ring().unwrap().ring.generation();
        s.members[1].record.unsealable_generation = Some(generation);
        let (ring, _, why) = written(leader_step(&view(&s, held, true, true), &mut OsKeySource));
        assert_eq!(why, Why::Reseal(vec!["bad".into()]));
        assert_eq!(ring.keys(), r.keys());
        assert_eq!(ring.generation(), 4);
    }

    /// I12: a copy of a ring is never sealed to the announced key of a member that accepted
    /// that generation or a newer one (its floor): that key outlives the ring, and would open
    /// it later. A restarted member whose floor is the stored ring needs no copy; one that
    /// says it cannot open it gets a new write above every floor; one whose floor is above
    /// the stored ring (it restarted after the store went back) makes the leader re-key.
    #[test]
    fn no_copy_of_an_accepted_ring_is_sealed_to_a_members_next_key() {
        let r = ring_at(3, t(0));
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        let view = |s: &'_ Snapshot| -> Step {
            let v = LeaderView {
                newest_seen: 3,
                data_key_write: writer_of(s),
                ..view(s, held, t(10))
            };
            leader_step(&v, &mut OsKeySource)
        };
        // n2 restarted: its acknowledgement is gone, its copy names the key before the one it
        // announces, its floor is the stored ring: no copy.
        let s = snap(Some((&r, ME, &[ME])), &[m(ME).acked(&r), m("n2").floor(3)]);
        assert!(lacking_copies(s.valid_ring().unwrap(), &s.members).is_empty());
        assert!(matches!(view(&s), Step::Wait { .. }), "{:?}", view(&s));
        // ... and it cannot open it after all (its key is gone): a new write, above its floor.
        let mut s = s;
        s.members[1].record.unsealable_generation = Some(3);
        let (ring, _, why) = written(view(&s));
        assert_eq!(why, Why::Reseal(vec!["n2".into()]));
        assert_eq!(ring.generation(), 4);
        assert_eq!(ring.keys(), r.keys());
        // n2's floor is above the stored ring (the store went back, n2 restarted): nothing
        // sealed to it for this ring, and the leader makes new keys rather than build on it.
        let s = snap(Some((&r, ME, &[ME])), &[m(ME).acked(&r), m("n2").floor(5)]);
        assert!(lacking_copies(s.valid_ring().unwrap(), &s.members).is_empty());
        let (ring, _, why) = written(view(&s));
        assert_eq!(why, Why::Rekey);
        assert_eq!(ring.generation(), 6);
        assert!(ring
            .keys()
            .iter()
            .all(|k| !r.keys().iter().any(|o| o.key == k.key)));
        // A member with no floor (a joiner, or after a reboot) gets its copy.
        let s = snap(Some((&r, ME, &[ME])), &[m(ME).acked(&r), m("n3")]);
        assert_eq!(
            view(&s),
            Step::SealCopies {
                members: vec!["n3".into()]
            }
        );
    }

    #[test]
    fn a_leader_that_cannot_open_the_ring_hands_over_to_a_member_that_can() {
        let r = ring_at(3, t(0));
        let s = snap(Some((&r, ME, &["n2"])), &[m(ME), m("n2").acked(&r)]);
        assert!(matches!(
            step(&s, Held::default(), t(10)),
            Step::HandOver { to, .. } if to == "n2"
        ));
        assert_eq!(
            defer_to(ME, Held::default(), &s),
            Some("n2".to_owned()),
            "and does not campaign while it can"
        );
    }

    #[test]
    fn staged_keys_activate_only_after_every_live_member_acknowledged() {
        let r = ring_at(3, t(0));
        assert!(r.keys().iter().any(|k| k.state == KeyState::Staged));
        let s = snap(
            Some((&r, ME, &[ME, "n2"])),
            // The staged key came with the ring's first generation; n2 applied none yet.
            &[m(ME).acked(&r), m("n2")],
        );
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        assert!(matches!(
            step(&s, held, t(3600)),
            Step::Wait {
                decision: Some(Decision::Wait { .. }),
                ..
            }
        ));
    }

    /// A restarted leader that can open an older ring the store went back to (a restore) must
    /// not rotate or reseal on it: a live member applied a newer ring; it leads instead.
    #[test]
    fn a_ring_older_than_what_live_members_applied_is_never_built_on() {
        let old = ring_at(4, t(0));
        let s = snap(
            Some((&old, ME, &[ME, "n2", "new"])),
            &[m(ME).acked(&old), m("n2").applied(5), m("new")],
        );
        let held = Held {
            opened: Some(&old),
            applied: None,
        };
        assert!(matches!(
            step(&s, held, t(3600)),
            Step::HandOver { to, .. } if to == "n2"
        ));
        // This node applied generation 5 too and restarted (it holds only the old ring): so
        // may every member have; new keys, above every acknowledgement, never the old ones.
        let restarted = snap(
            Some((&old, ME, &[ME, "n2"])),
            &[m(ME).applied(5), m("n2").applied(5)],
        );
        let (ring, _, why) = written(step(&restarted, held, t(3600)));
        assert_eq!(why, Why::Rekey);
        assert_eq!(ring.generation(), 6);
        assert!(ring.keys().iter().all(|k| k.epoch > old.last_epoch()));
        let mut gone = snap(
            Some((&old, ME, &[ME])),
            &[m(ME).acked(&old), m("n2").applied(5)],
        );
        gone.members[1].live = false;
        assert!(
            !matches!(step(&gone, held, t(3600)), Step::HandOver { .. }),
            "a dead member's acknowledgement is no reason to stop"
        );
    }

    /// A key source that gives only zeros (a buffer never filled).
    struct Zeros;
    impl KeySource for Zeros {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), stek_core::KeySourceError> {
            buf.fill(0);
            Ok(())
        }
    }

    /// A key source whose reads fail.
    struct Failing;
    impl KeySource for Failing {
        fn fill(&mut self, _: &mut [u8]) -> Result<(), stek_core::KeySourceError> {
            Err(stek_core::KeySourceError::Os(
                "Function not implemented (os error 38)".into(),
            ))
        }
    }

    /// A key source that gives one key over and over (a generator restored from a snapshot).
    struct Replay(Vec<u8>, usize);
    impl KeySource for Replay {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), stek_core::KeySourceError> {
            for b in buf {
                *b = self.0[self.1 % self.0.len()];
                self.1 += 1;
            }
            Ok(())
        }
    }

    /// Wherever the leader draws keys (a bootstrap, a rotation, a rekey), a weak key fails the
    /// step: nothing is written, and the reason names what was wrong.
    #[test]
    fn a_weak_key_fails_the_step_with_a_reason_that_names_it() {
        let r = ring_at(3, t(0));
        let old = ring_at(4, t(0));
        let seen = ring_at(2, t(0));
        let mut history = stek_core::KeyHistory::new();
        history.remember(&seen);
        let mine = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        let old_only = Held {
            opened: Some(&old),
            applied: None,
        };
        // (situation, store, keys held, when, how the reason starts)
        let situations = [
            (
                "bootstrap",
                snap(None, &[m(ME)]),
                Held::default(),
                t(0),
                "cannot compute the next ring: refused the new key for epoch 1: ",
            ),
            (
                "rotation",
                snap(Some((&r, ME, &[ME])), &[m(ME).acked(&r)]),
                mine,
                t(3600),
                "cannot compute the next ring: refused the new key for epoch 3: ",
            ),
            (
                "rekey, nobody can open the ring",
                snap(Some((&r, ME, &[])), &[m(ME)]),
                Held::default(),
                t(10),
                "cannot make new keys: refused the new key for epoch 3: ",
            ),
            (
                "rekey, the store went back",
                snap(Some((&old, ME, &[ME])), &[m(ME).applied(5)]),
                old_only,
                t(10),
                "cannot make new keys: refused the new key for epoch 3: ",
            ),
        ];
        let replay_seen = || {
            let k = &seen.active().key;
            Replay([&k.name()[..], k.aes256(), k.hmac256()].concat(), 0)
        };
        // (a fresh source for each situation, the history, what the reason says)
        type MakeSource<'a> = Box<dyn Fn() -> Box<dyn KeySource> + 'a>;
        let sources: [(MakeSource<'_>, &stek_core::KeyHistory, &str); 3] = [
            (
                Box::new(|| Box::new(Zeros)),
                &NO_HISTORY,
                "its name is all zeros",
            ),
            (
                Box::new(|| Box::new(Failing)),
                &NO_HISTORY,
                "the operating system's random source (getrandom) failed",
            ),
            (
                Box::new(move || Box::new(replay_seen())),
                &history,
                &format!(
                    "its name (key {}) already named an earlier key of this cluster",
                    seen.active().fingerprint()
                ),
            ),
        ];
        for (situation, snap, held, now, starts) in &situations {
            for (source, history, says) in &sources {
                let v = LeaderView {
                    history,
                    ..view(snap, *held, *now)
                };
                let Step::Failed { why } = leader_step(&v, &mut *source()) else {
                    panic!("{situation}, {says}: expected a failed step");
                };
                assert!(why.starts_with(starts), "{situation}: {why}");
                assert!(why.contains(says), "{situation}: {why}");
                assert!(
                    why.contains(
                        "the leader wrote nothing and the nodes keep serving the keys they have"
                    ),
                    "{situation}: {why}"
                );
            }
            // A working source writes.
            let v = LeaderView {
                history: &history,
                ..view(snap, *held, *now)
            };
            assert!(
                matches!(leader_step(&v, &mut OsKeySource), Step::Write { .. }),
                "{situation}"
            );
        }
    }

    #[test]
    fn the_leadership_decision_follows_the_role_and_the_store() {
        let r = ring_at(3, t(0));
        let lease = LeaseId(7);
        let term = Term(11);
        let follower = &Role::Follower { lease };
        let leader = &Role::Leader {
            lease,
            term,
            leadership: role::Leadership::default(),
        };
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        let mut s = snap(
            Some((&r, ME, &[ME, "n2"])),
            &[m(ME).acked(&r), m("n2").acked(&r)],
        );
        assert_eq!(
            election(ME, &Role::Joining, &s, held, false),
            Election::Follow
        );
        assert_eq!(election(ME, follower, &s, held, false), Election::Campaign);
        assert!(matches!(
            election(ME, follower, &s, held, true),
            Election::Abstain(_)
        ));
        assert_eq!(
            election(ME, leader, &s, held, false),
            Election::Lost(term),
            "no leader key under its term: it leads no more"
        );
        // Cannot open the ring, n2 can: it does not campaign.
        let sealed_for_n2 = snap(Some((&r, ME, &["n2"])), &[m(ME), m("n2").acked(&r)]);
        assert!(matches!(
            election(ME, follower, &sealed_for_n2, Held::default(), false),
            Election::Abstain(why) if why.contains("n2")
        ));
        s.leader = Some(stek_store::Leader {
            node_id: ME.into(),
            term,
            lease,
        });
        assert_eq!(election(ME, leader, &s, held, false), Election::Lead(term));
        assert_eq!(
            election(ME, follower, &s, held, false),
            Election::Adopt(term),
            "its campaign landed but the reply was lost"
        );
        s.leader.as_mut().unwrap().lease = LeaseId(8);
        assert_eq!(
            election(ME, follower, &s, held, false),
            Election::Follow,
            "its node id under another lease: an earlier process's leadership, not its own"
        );
        s.leader = Some(stek_store::Leader {
            node_id: "n2".into(),
            term: Term(12),
            lease: LeaseId(9),
        });
        assert_eq!(election(ME, leader, &s, held, false), Election::Lost(term));
        assert_eq!(election(ME, follower, &s, held, false), Election::Follow);
    }
}
