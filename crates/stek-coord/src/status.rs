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
