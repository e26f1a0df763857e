//! The leader's decision: given the ring, the members and the time, what to do next.
//!
//! Pure: no clock, no store, no randomness. The runtime calls [`decide_at`], performs the
//! decision (a fenced store write, or nothing) and calls again when something changes.

use std::time::SystemTime;

use crate::key::KeySource;
use crate::ring::{KeyMaterial, KeyRing, Policy, RingError};
use crate::weak::KeyHistory;

/// What the leader knows about one member at the moment it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The member's node id.
    pub id: String,
    /// Whether its liveness lease is still held. Dead members never block (I7).
    pub live: bool,
    /// The highest ring generation it acknowledged (0 if none).
    pub applied_generation: u64,
    /// The last apply error it reported, shown when it blocks a rotation.
    pub last_error: Option<String>,
}

/// Why a rotation happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateReason {
    /// The schedule's time came.
    Scheduled,
    /// Someone asked (`stek rotate`).
    Requested,
}

/// A live member that has not acknowledged the generation a step needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// Who.
    pub member: String,
    /// What it has applied.
    pub applied_generation: u64,
    /// What it must apply first.
    pub needed_generation: u64,
    /// Its last reported error, if any.
    pub last_error: Option<String>,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe_blocker(
            &self.member,
            self.applied_generation,
            self.needed_generation,
            self.last_error.as_deref(),
        ))
    }
}

/// "n3 (applied 4, needs 5: reload failed ...)": how logs, `status` and `rotate` name a member
/// that blocks a step.
pub fn describe_blocker(
    member: &str,
    applied: u64,
    needed: u64,
    last_error: Option<&str>,
) -> String {
    match last_error {
        Some(e) => format!("{member} (applied {applied}, needs {needed}: {e})"),
        None => format!("{member} (applied {applied}, needs {needed})"),
    }
}

/// The leader's next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No ring exists yet: create one active and one staged key together.
    Bootstrap,
    /// Activate the staged key, retire the active one, stage a fresh key.
    Rotate(RotateReason),
    /// Remove these retiring keys (beyond `retain`); every live member has applied the ring in
    /// which their successors became active.
    Drop(Vec<u64>),
    /// A rotation is due but some live member has not acknowledged the staged key.
    Wait {
        /// Why the rotation is due.
        reason: RotateReason,
        /// Who blocks it.
        blocked_by: Vec<Blocker>,
    },
    /// The ring's next rotation is further than two intervals ahead of this leader's clock
    /// (a leader whose clock ran fast wrote it, or the policy's interval was shortened): the
    /// same keys, with the next rotation one interval from now. A leader never schedules
    /// further ahead than that, so one fast clock cannot stop rotation for everyone.
    Reschedule {
        /// The new next rotation time.
        at: SystemTime,
    },
    /// Nothing to do until this time (or until a request or a member change).
    Idle {
        /// The scheduled rotation time.
        until: SystemTime,
    },
}

/// Decides the leader's next step at `now`.
///
/// Rules (rotation.md): a key is activated only once every live member acknowledged a ring that
/// holds it as staged (I1); a retiring key is dropped only once every live member applied the
/// ring in which its successor became active (I2), which the staged acknowledgement already
/// implies for the keys a rotation drops.
pub fn decide_at<K: KeyMaterial>(
    now: SystemTime,
    ring: Option<&KeyRing<K>>,
    policy: &Policy,
    members: &[MemberView],
    rotation_requested: bool,
) -> Decision {
    let Some(ring) = ring else {
        return Decision::Bootstrap;
    };

    let droppable: Vec<u64> = ring
        .retiring()
        .skip(policy.retain)
        .filter(|k| {
            let needed = k.retired_in.unwrap_or(ring.generation());
            blockers(members, needed).is_empty()
        })
        .map(|k| k.epoch)
        .collect();
    if !droppable.is_empty() {
        return Decision::Drop(droppable);
    }

    let horizon = policy
        .interval
        .checked_mul(2)
        .and_then(|d| now.checked_add(d));
    if horizon.is_some_and(|h| ring.next_rotation_at() > h) && !rotation_requested {
        if let Some(at) = now.checked_add(policy.interval) {
            return Decision::Reschedule { at };
        }
    }

    let reason = if rotation_requested {
        RotateReason::Requested
    } else if now >= ring.next_rotation_at() {
        RotateReason::Scheduled
    } else {
        return Decision::Idle {
            until: ring.next_rotation_at(),
        };
    };

    let Some(staged) = ring.staged() else {
        // Only a ring repaired by hand lacks a staged key. Activating needs one that every
        // member holds, so this "rotation" only stages a fresh key (see `next_ring`); the
        // activation happens at the next decision, once that key is acknowledged.
        return Decision::Rotate(reason);
    };
    let blocked_by = blockers(members, staged.staged_in);
    if blocked_by.is_empty() {
        Decision::Rotate(reason)
    } else {
        Decision::Wait { reason, blocked_by }
    }
}

fn blockers(members: &[MemberView], needed: u64) -> Vec<Blocker> {
    members
        .iter()
        .filter(|m| m.live && m.applied_generation < needed)
        .map(|m| Blocker {
            member: m.id.clone(),
            applied_generation: m.applied_generation,
            needed_generation: needed,
            last_error: m.last_error.clone(),
        })
        .collect()
}

/// The ring a decision produces, or `None` when the decision writes nothing. A new key is
/// refused if weak ([`crate::weak`]), `history` holding the names of keys seen before: the
/// error ([`RingError::WeakKey`]) says why, and nothing is to be written.
pub fn next_ring(
    decision: &Decision,
    ring: Option<&KeyRing>,
    now: SystemTime,
    policy: &Policy,
    source: &mut dyn KeySource,
    history: &KeyHistory,
) -> Result<Option<KeyRing>, RingError> {
    match (decision, ring) {
        (Decision::Bootstrap, _) => KeyRing::bootstrap(now, policy, source, history).map(Some),
        (Decision::Rotate(_), Some(ring)) if ring.staged().is_none() => {
            // Repair a ring that lost its staged key: stage one without activating anything.
            restage(ring, now, source, history).map(Some)
        }
        (Decision::Rotate(_), Some(ring)) => ring.rotated(now, policy, source, history).map(Some),
        (Decision::Drop(epochs), Some(ring)) => Ok(Some(ring.dropping(epochs))),
        (Decision::Reschedule { at }, Some(ring)) => Ok(Some(ring.with_next_rotation_at(*at))),
        (Decision::Wait { .. } | Decision::Idle { .. }, _) => Ok(None),
        (Decision::Rotate(_) | Decision::Drop(_) | Decision::Reschedule { .. }, None) => Ok(None),
    }
}

fn restage(
    ring: &KeyRing,
    now: SystemTime,
    source: &mut dyn KeySource,
    history: &KeyHistory,
) -> Result<KeyRing, RingError> {
    use crate::ring::{KeyState, RingKey};
    let generation = ring.generation() + 1;
    let epoch = ring.last_epoch() + 1;
    let mut keys = ring.keys().to_vec();
    let key = crate::weak::fresh_key(source, epoch, &keys, history, &[])?;
    keys.push(RingKey {
        epoch,
        state: KeyState::Staged,
        created_at: now,
        staged_in: generation,
        retired_in: None,
        key,
    });
    Ok(KeyRing::from_parts_unchecked(
        generation,
        keys,
        epoch,
        ring.next_rotation_at(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::tests::seeded;
    use crate::ring::KeyState;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn policy(retain: usize) -> Policy {
        Policy {
            interval: Duration::from_secs(60),
            retain,
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn member(id: &str, live: bool, applied: u64) -> MemberView {
        MemberView {
            id: id.into(),
            live,
            applied_generation: applied,
            last_error: None,
        }
    }

    #[test]
    fn no_ring_means_bootstrap() {
        assert_eq!(
            decide_at::<crate::TicketKey>(t(0), None, &policy(1), &[], false),
            Decision::Bootstrap
        );
        let ring = next_ring(
            &Decision::Bootstrap,
            None,
            t(0),
            &policy(1),
            &mut seeded(1),
            &KeyHistory::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ring.generation(), 1);
    }

    #[test]
    fn idle_until_the_schedule_when_nothing_is_requested() {
        let p = policy(1);
        let ring = KeyRing::bootstrap(t(0), &p, &mut seeded(1), &KeyHistory::new()).unwrap();
        let all = [member("a", true, 1), member("b", true, 1)];
        assert_eq!(
            decide_at(t(59), Some(&ring), &p, &all, false),
            Decision::Idle { until: t(60) }
        );
        assert_eq!(
            next_ring(
                &Decision::Idle { until: t(60) },
                Some(&ring),
                t(59),
                &p,
                &mut seeded(2),
                &KeyHistory::new()
            ),
            Ok(None)
        );
    }

    #[test]
    fn rotates_when_due_and_every_live_member_acked_the_staged_key() {
        let p = policy(1);
        let ring = KeyRing::bootstrap(t(0), &p, &mut seeded(1), &KeyHistory::new()).unwrap();
        let all = [member("a", true, 1), member("b", true, 1)];
        assert_eq!(
            decide_at(t(60), Some(&ring), &p, &all, false),
            Decision::Rotate(RotateReason::Scheduled)
        );
        assert_eq!(
            decide_at(t(1), Some(&ring), &p, &all, true),
            Decision::Rotate(RotateReason::Requested)
        );
    }

    #[test]
    fn waits_for_a_live_member_that_has_not_acked_and_names_it() {
        let p = policy(1);
        let ring = KeyRing::bootstrap(t(0), &p, &mut seeded(1), &KeyHistory::new()).unwrap();
        let mut lagging = member("b", true, 0);
        lagging.last_error = Some("reload failed: exit status 1".into());
        let d = decide_at(
            t(60),
            Some(&ring),
            &p,
            &[member("a", true, 1), lagging],
            false,
        );
        let Decision::Wait { reason, blocked_by } = d else {
            panic!("expected Wait, got {d:?}");
        };
        assert_eq!(reason, RotateReason::Scheduled);
        assert_eq!(blocked_by.len(), 1);
        assert_eq!(blocked_by[0].member, "b");
        assert_eq!(blocked_by[0].needed_generation, 1);
        assert_eq!(
            blocked_by[0].last_error.as_deref(),
            Some("reload failed: exit status 1")
        );
    }

    #[test]
    fn a_blocker_reads_as_member_generations_and_error() {
        let b = Blocker {
            member: "n3".into(),
            applied_generation: 4,
            needed_generation: 5,
            last_error: Some("reload failed".into()),
        };
        assert_eq!(b.to_string(), "n3 (applied 4, needs 5: reload failed)");
        assert_eq!(
            describe_blocker("n1", 0, 1, None),
            "n1 (applied 0, needs 1)"
        );
    }

    #[test]
    fn a_dead_member_does_not_block() {
        let p = policy(1);
        let ring = KeyRing::bootstrap(t(0), &p, &mut seeded(1), &KeyHistory::new()).unwrap();
        let d = decide_at(
            t(60),
            Some(&ring),
            &p,
            &[member("a", true, 1), member("gone", false, 0)],
            false,
        );
        assert_eq!(d, Decision::Rotate(RotateReason::Scheduled));
    }

    #[test]
    fn drops_keys_beyond_a_lowered_retain_once_their_successors_are_acked() {
        let wide = policy(3);
        let mut src = seeded(1);
        let mut ring = KeyRing::bootstrap(t(0), &wide, &mut src, &KeyHistory::new()).unwrap();
        for i in 1..=3 {
            ring = ring
                .rotated(t(60 * i), &wide, &mut src, &KeyHistory::new())
                .unwrap();
        }
        assert_eq!(ring.retiring().count(), 3);
        let narrow = policy(1);
        // b lags behind the generation in which epoch 2 (successor of 1) became active.
        let lagging = [member("a", true, 4), member("b", true, 1)];
        let d = decide_at(t(200), Some(&ring), &narrow, &lagging, false);
        assert_eq!(
            d,
            Decision::Idle { until: t(240) },
            "nothing may be dropped yet"
        );
        let acked = [member("a", true, 4), member("b", true, 4)];
        let d = decide_at(t(200), Some(&ring), &narrow, &acked, false);
        assert_eq!(d, Decision::Drop(vec![2, 1]));
        let dropped = next_ring(
            &d,
            Some(&ring),
            t(200),
            &narrow,
            &mut src,
            &KeyHistory::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(dropped.retiring().count(), 1);
        assert_eq!(dropped.generation(), ring.generation() + 1);
        dropped.check(&narrow).unwrap();
    }

    #[test]
    fn regression_repair_after_dropping_the_staged_key_never_reuses_its_epoch() {
        let p = policy(1);
        let ring = KeyRing::bootstrap(t(0), &p, &mut seeded(1), &KeyHistory::new())
            .unwrap()
            .dropping(&[2]);
        assert!(ring.staged().is_none());
        let d = decide_at(t(60), Some(&ring), &p, &[member("a", true, 2)], false);
        let next = next_ring(
            &d,
            Some(&ring),
            t(60),
            &p,
            &mut seeded(2),
            &KeyHistory::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(next.active().epoch, 1, "nothing is activated by the repair");
        assert_eq!(next.staged().unwrap().epoch, 3);
        next.check(&p).unwrap();
    }

    /// A small simulated cluster: the leader follows `decide_at`, members apply the newest ring
    /// at random moments. After every step, I1 and I2 must hold across members: every key that
    /// some live member encrypts with is in every live member's applied ring, and so is every key
    /// under which tickets were issued within the last `retain` rotations.
    #[test]
    fn simulated_cluster_keeps_i1_and_i2_under_random_lag() {
        use rand::Rng;
        for seed in 0..20 {
            let p = policy(1 + (seed as usize % 3));
            let mut rng = seeded(seed);
            let mut src = seeded(1000 + seed);
            let ids = ["a", "b", "c"];
            let mut rings: BTreeMap<u64, KeyRing> = BTreeMap::new();
            let mut applied: BTreeMap<&str, u64> = ids.iter().map(|id| (*id, 0)).collect();
            let mut latest: Option<KeyRing> = None;
            // epoch -> the rotation count at which it stopped encrypting everywhere
            let mut activations = 0u64;
            let mut retired_at: BTreeMap<u64, u64> = BTreeMap::new();
            for step in 0..400u64 {
                let now = t(step * 7);
                let views: Vec<_> = ids.iter().map(|id| member(id, true, applied[id])).collect();
                let requested = rng.gen_bool(0.3);
                let d = decide_at(now, latest.as_ref(), &p, &views, requested);
                if let Some(next) =
                    next_ring(&d, latest.as_ref(), now, &p, &mut src, &KeyHistory::new()).unwrap()
                {
                    next.check(&p).unwrap();
                    if matches!(d, Decision::Rotate(_)) {
                        activations += 1;
                        if let Some(r) = next.retiring().next() {
                            retired_at.insert(r.epoch, activations);
                        }
                    }
                    rings.insert(next.generation(), next.clone());
                    latest = Some(next);
                }
                // Members apply the newest ring with some probability (they may lag for a while).
                for id in ids {
                    if rng.gen_bool(0.4) {
                        if let Some(l) = &latest {
                            applied.insert(id, l.generation());
                        }
                    }
                }
                // I1: whatever any member encrypts with, every member can decrypt.
                let member_rings: Vec<&KeyRing> = ids
                    .iter()
                    .filter_map(|id| rings.get(&applied[id]))
                    .collect();
                if member_rings.len() < ids.len() {
                    continue; // someone has not applied anything yet; nobody encrypts on its box
                }
                for enc in &member_rings {
                    let name = enc.active().key.name();
                    for dec in &member_rings {
                        assert!(
                            dec.keys().iter().any(|k| k.key.name() == name),
                            "seed {seed} step {step}: I1 broken: epoch {} not decryptable on generation {}",
                            enc.active().epoch,
                            dec.generation()
                        );
                    }
                }
                // I2: a key retired fewer than `retain` rotations ago is on every member.
                for (epoch, at) in &retired_at {
                    if activations - at < p.retain as u64 {
                        for r in &member_rings {
                            assert!(
                                r.keys().iter().any(|k| k.epoch == *epoch)
                                    || r.keys().iter().all(|k| k.epoch < *epoch),
                                "seed {seed} step {step}: I2 broken: epoch {epoch} missing from generation {}",
                                r.generation()
                            );
                        }
                    }
                }
            }
            assert!(
                activations > 10,
                "seed {seed}: only {activations} rotations happened"
            );
            assert!(latest
                .unwrap()
                .keys()
                .iter()
                .all(|k| k.state != KeyState::Retiring || k.retired_in.is_some()));
        }
    }

    #[test]
    fn a_schedule_far_in_this_leaders_future_is_pulled_back_to_one_interval() {
        let p = policy(1);
        let r = KeyRing::bootstrap(t(0), &p, &mut seeded(1), &KeyHistory::new()).unwrap();
        let members = [member("a", true, 1)];
        // A leader whose clock ran a year fast wrote the schedule.
        let year = Duration::from_secs(365 * 24 * 3600);
        let fast = KeyRing::bootstrap(t(0) + year, &p, &mut seeded(9), &KeyHistory::new()).unwrap();
        let decision = decide_at(t(10), Some(&fast), &p, &members, false);
        assert_eq!(
            decision,
            Decision::Reschedule {
                at: t(10) + p.interval
            }
        );
        let next = next_ring(
            &decision,
            Some(&fast),
            t(10),
            &p,
            &mut seeded(1),
            &KeyHistory::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(next.keys(), fast.keys(), "the same keys");
        assert_eq!(next.next_rotation_at(), t(10) + p.interval);
        assert_eq!(next.generation(), fast.generation() + 1);
        // Within two intervals: nothing to do but wait.
        assert!(matches!(
            decide_at(t(0), Some(&r), &p, &members, false),
            Decision::Idle { .. }
        ));
        // A request still rotates (its keys are then stamped with this leader's clock).
        assert!(matches!(
            decide_at(t(10), Some(&fast), &p, &members, true),
            Decision::Rotate(RotateReason::Requested)
        ));
    }
}
