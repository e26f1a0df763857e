//! The `stek status --json` document (docs/status.md): one typed struct that the CLI prints,
//! the tests read back and the documentation's example must parse as. Fields are only ever
//! added.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use stek_core::{decide_at, Decision, Policy};

use crate::{RingSlot, Snapshot};

/// The documented `stek status --json` document (docs/status.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub cluster: String,
    pub leader: Option<String>,
    /// The leadership's term: the store refuses ring writes under any other.
    pub leader_term: Option<i64>,
    pub generation: Option<u64>,
    pub next_rotation_at: Option<String>,
    pub rotation: RotationStatus,
    pub members: Vec<MemberStatus>,
    pub keys: Vec<KeyStatus>,
    pub pending_requests: usize,
    pub rejected_records: Vec<Rejected>,
    /// Member records whose certificate or key signature does not verify: no key is sealed
    /// for them and they do not count for rotations.
    pub refused_members: Vec<RefusedMember>,
    /// Who signed the stored ring, when it verified (`[identity]`).
    pub ring_signed_by: Option<String>,
    /// The config runs with `insecure = true` and no `[identity]`.
    pub insecure: bool,
    /// How far the stored ring's stamps are ahead of this machine's clock, in whole seconds
    /// (0 normally): its writer's clock ran at least that far ahead.
    pub ring_clock_ahead_seconds: u64,
    /// How far the ring's writer's clock is ahead of the members, from the stamps of their
    /// acknowledgements of the ring (the smallest offset); null until every live member other
    /// than the writer acknowledged it.
    pub writer_clock_ahead_seconds: Option<u64>,
    /// Why live members refuse the stored ring, when its generation is below the rollback
    /// floor some of them report (a replayed ring, or a store restored from a backup).
    #[serde(default)]
    pub refused_ring: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusedMember {
    pub node_id: String,
    pub live: bool,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationStatus {
    /// idle | due | waiting | no-ring | bad-ring
    pub state: String,
    pub blocked_by: Vec<Blocked>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blocked {
    pub node_id: String,
    pub applied_generation: u64,
    pub needed_generation: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberStatus {
    pub node_id: String,
    pub live: bool,
    pub applied_generation: u64,
    pub last_error: Option<String>,
    pub version: String,
    pub targets: Vec<String>,
    /// The stored ring holds a copy sealed to this member's current public key.
    pub sealed_copy: bool,
    /// Its acknowledgement names the stored ring (generation and digest).
    pub applied_stored_ring: bool,
    /// Its rollback floor: the newest ring generation it accepted (kept across restarts of
    /// its process); it refuses any older ring.
    #[serde(default)]
    pub floor_generation: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyStatus {
    pub epoch: u64,
    pub state: String,
    pub fingerprint: String,
    pub age_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejected {
    pub key: String,
    pub error: String,
}

pub fn status_of(
    cluster: &str,
    snap: &Snapshot,
    config_policy: &Policy,
    now: SystemTime,
) -> Status {
    let (ring, policy) = match &snap.ring {
        RingSlot::Valid(s) => (Some(&s.ring), s.policy),
        _ => (None, *config_policy),
    };
    let members = snap.member_views();
    let (state, blocked_by) = match (&snap.ring, ring) {
        (RingSlot::Rejected(_), _) => ("bad-ring", Vec::new()),
        (_, None) => ("no-ring", Vec::new()),
        (_, Some(r)) => match decide_at(now, Some(r), &policy, &members, !snap.requests.is_empty())
        {
            Decision::Wait { blocked_by, .. } => (
                "waiting",
                blocked_by
                    .into_iter()
                    .map(|b| Blocked {
                        node_id: b.member,
                        applied_generation: b.applied_generation,
                        needed_generation: b.needed_generation,
                        last_error: b.last_error,
                    })
                    .collect(),
            ),
            Decision::Idle { .. } => ("idle", Vec::new()),
            _ => ("due", Vec::new()),
        },
    };
    Status {
        cluster: cluster.to_owned(),
        leader: snap.leader.as_ref().map(|l| l.node_id.clone()),
        leader_term: snap.leader.as_ref().map(|l| l.term.0),
        generation: ring.map(|r| r.generation()),
        next_rotation_at: ring
            .map(|r| humantime::format_rfc3339_seconds(r.next_rotation_at()).to_string()),
        rotation: RotationStatus {
            state: state.to_owned(),
            blocked_by,
        },
        members: snap
            .members
            .iter()
            .map(|m| MemberStatus {
                node_id: m.record.node_id.clone(),
                live: m.live,
                applied_generation: m.record.applied_generation,
                last_error: m.record.last_error.clone(),
                version: m.record.version.clone(),
                targets: m.record.targets.clone(),
                sealed_copy: match &snap.ring {
                    RingSlot::Valid(s) => s.usable_copy_for(&m.record),
                    _ => false,
                },
                applied_stored_ring: snap
                    .valid_ring()
                    .is_some_and(|s| m.record.acknowledges(&s.ring)),
                floor_generation: m.record.floor_generation,
            })
            .collect(),
        keys: ring
            .map(|r| {
                r.keys()
                    .iter()
                    .rev()
                    .map(|k| KeyStatus {
                        epoch: k.epoch,
                        state: k.state.to_string(),
                        fingerprint: k.fingerprint().to_string(),
                        age_seconds: now
                            .duration_since(k.created_at)
                            .unwrap_or_default()
                            .as_secs(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        pending_requests: snap.requests.len(),
        refused_members: snap
            .refused
            .iter()
            .map(|r| RefusedMember {
                node_id: r.node_id.clone(),
                live: r.live,
                reason: r.reason.clone(),
            })
            .collect(),
        ring_signed_by: None,
        insecure: false,
        ring_clock_ahead_seconds: snap
            .valid_ring()
            .map_or(0, |r| crate::clock::ring_ahead(r, now).as_secs()),
        writer_clock_ahead_seconds: snap.valid_ring().and_then(|r| {
            crate::clock::writer_ahead_of_members(r, &snap.members).map(|d| d.as_secs())
        }),
        refused_ring: refused_ring(snap),
        rejected_records: snap
            .rejected
            .iter()
            .map(|(k, e)| Rejected {
                key: k.clone(),
                error: e.to_string(),
            })
            .collect(),
    }
}

/// Which live members refuse the stored ring, and why: its generation is below their floors.
fn refused_ring(snap: &Snapshot) -> Option<String> {
    let g = snap.valid_ring()?.ring.generation();
    let above: Vec<String> = snap
        .members
        .iter()
        .filter(|m| m.live && m.record.floor_generation.is_some_and(|f| f > g))
        .map(|m| {
            format!(
                "{} (floor {})",
                m.record.node_id,
                m.record.floor_generation.unwrap_or(0)
            )
        })
        .collect();
    (!above.is_empty()).then(|| {
        format!(
            "generation {g} is older than a ring these members accepted: {}; they refuse it and keep their keys (a replayed ring, or a store restored from a backup). The leader puts back the ring it accepted, or, when no live member holds keys any more, makes new keys numbered above every floor (docs/troubleshooting.md, 4.4)",
            above.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Member, MemberRecord, StoredRing};
    use std::time::Duration;
    use stek_core::{KeyHistory, KeyRing, OsKeySource};

    /// A stored ring below live members' floors is named, with who refuses it; a dead
    /// member's floor, or a floor at or below the ring, names nothing.
    #[test]
    fn status_says_which_live_members_refuse_an_older_stored_ring() {
        let p = Policy {
            interval: Duration::from_secs(60),
            retain: 1,
        };
        let ring = KeyRing::bootstrap(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
            .unwrap()
            .renumbered(3);
        let member = |id: &str, floor: Option<u64>, live: bool| Member {
            record: MemberRecord {
                node_id: id.into(),
                floor_generation: floor,
                ..MemberRecord::default()
            },
            live,
        };
        let mut snap = crate::RawSnapshot::default().check();
        snap.ring = RingSlot::Valid(StoredRing::seal("c", &ring, &p, "n1", &[]).0);
        snap.members = vec![
            member("n1", Some(7), true),
            member("n2", Some(3), true),
            member("n3", Some(9), false),
        ];
        let s = status_of("c", &snap, &p, SystemTime::now());
        let why = s.refused_ring.expect("named");
        assert!(
            why.contains("generation 3") && why.contains("n1 (floor 7)"),
            "{why}"
        );
        assert!(!why.contains("n2") && !why.contains("n3"), "{why}");
        assert_eq!(s.members[0].floor_generation, Some(7));
        snap.members.truncate(2);
        snap.members[0] = member("n1", Some(3), true);
        assert_eq!(
            status_of("c", &snap, &p, SystemTime::now()).refused_ring,
            None
        );
    }
}
