//! Test fixtures for the engine's table tests: snapshots, members and rings built from plain
//! values, and a leader's view with every input at its default.

use std::time::{Duration, Instant, SystemTime};

use stek_core::{KeyRing, OsKeySource, Policy};
use stek_store::seal::{Identity, WriteId};
use stek_store::{Member, MemberRecord, RingSlot, Snapshot, StoredRing};

use super::{leader_step, Held, LeaderView, Pace, Step, Why};

pub(crate) const ME: &str = "n1";
pub(crate) static NO_HISTORY: stek_core::KeyHistory = stek_core::KeyHistory::new();

/// A leader's view of `snap` with `held`, at `now`: every other input at its default (no
/// floor, nothing accepted, nothing rate-limited); a test sets what it is about.
pub(crate) fn view<'a>(snap: &'a Snapshot, held: Held<'a>, now: SystemTime) -> LeaderView<'a> {
    LeaderView {
        me: ME,
        snap,
        held,
        newest_seen: 0,
        policy: policy(),
        now,
        mono: mono(),
        pace: Pace::default(),
        min_request_interval: Duration::from_secs(60),
        data_key_write: None,
        signer: None,
        accepted: None,
        floor: None,
        history: &NO_HISTORY,
    }
}

/// The monotonic now of every view: one instant for the whole test binary.
pub(crate) fn mono() -> Instant {
    static NOW: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *NOW.get_or_init(Instant::now)
}

/// The data key of the stored ring's write, as its writer holds it after opening its copy.
pub(crate) fn writer_of(s: &Snapshot) -> Option<WriteId> {
    s.valid_ring().map(StoredRing::write_id)
}

pub(crate) fn policy() -> Policy {
    Policy {
        interval: Duration::from_secs(3600),
        retain: 1,
    }
}

pub(crate) fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

pub(crate) fn ring_at(generation: u64, at: SystemTime) -> KeyRing {
    KeyRing::bootstrap(at, &policy(), &mut OsKeySource, &NO_HISTORY)
        .unwrap()
        .renumbered(generation)
        .to_millis()
}

pub(crate) struct M {
    pub(crate) id: &'static str,
    pub(crate) live: bool,
    pub(crate) acked: Option<(u64, Option<String>)>,
    pub(crate) key: Option<Identity>,
    pub(crate) at: SystemTime,
    pub(crate) floor: Option<u64>,
}

pub(crate) fn m(id: &'static str) -> M {
    M {
        id,
        live: true,
        acked: None,
        key: Some(Identity::generate()),
        at: t(0),
        floor: None,
    }
}

impl M {
    pub(crate) fn acked(mut self, ring: &KeyRing) -> Self {
        self.acked = Some((ring.generation(), Some(ring.digest().to_string())));
        self
    }
    pub(crate) fn applied(mut self, generation: u64) -> Self {
        self.acked = Some((generation, None));
        self
    }
    pub(crate) fn floor(mut self, generation: u64) -> Self {
        self.floor = Some(generation);
        self
    }
    pub(crate) fn dead(mut self) -> Self {
        self.live = false;
        self
    }
    pub(crate) fn at(mut self, when: SystemTime) -> Self {
        self.at = when;
        self
    }
    pub(crate) fn member(&self) -> Member {
        let (applied, digest) = self.acked.clone().unwrap_or((0, None));
        Member {
            record: MemberRecord {
                node_id: self.id.into(),
                version: String::new(),
                targets: Vec::new(),
                applied_generation: applied,
                last_error: None,
                updated_at_ms: u64::try_from(
                    self.at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .as_millis(),
                )
                .unwrap(),
                public_key: self.key.as_ref().map(|k| k.public().to_base64()),
                unsealable_generation: None,
                certificate: None,
                key_signature: None,
                applied_digest: digest,
                floor_generation: self.floor,
                instance: None,
                floor_digest: None,
            },
            live: self.live,
        }
    }
}

/// A snapshot of `ring` (sealed for the members listed in `sealed_for`, written by
/// `writer`) and `members`.
pub(crate) fn snap(ring: Option<(&KeyRing, &str, &[&str])>, members: &[M]) -> Snapshot {
    let slot = match ring {
        None => RingSlot::Absent,
        Some((r, writer, sealed_for)) => {
            let recipients: Vec<_> = members
                .iter()
                .filter(|x| sealed_for.contains(&x.id))
                .filter_map(|x| Some((x.id.to_owned(), *x.key.as_ref()?.public())))
                .collect();
            RingSlot::Valid(StoredRing::seal("c", r, &policy(), writer, &recipients).0)
        }
    };
    Snapshot {
        revision: 1,
        leader: None,
        ring: slot,
        ring_revision: 1,
        members: members.iter().map(M::member).collect(),
        requests: Vec::new(),
        unreadable_requests: Vec::new(),
        requested_by: Vec::new(),
        request_records: Vec::new(),
        rejected: Vec::new(),
        partial: false,
        refused: Vec::new(),
    }
}

pub(crate) fn step(snap: &Snapshot, held: Held<'_>, now: SystemTime) -> Step {
    let v = view(snap, held, now);
    leader_step(&v, &mut OsKeySource)
}

pub(crate) fn written(step: Step) -> (KeyRing, Vec<String>, Why) {
    match step {
        Step::Write {
            ring, served, why, ..
        } => (ring, served, why),
        other => panic!("expected a write, got {other:?}"),
    }
}
