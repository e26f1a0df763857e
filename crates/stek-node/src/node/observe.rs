//! The metrics and the readiness, updated from each pass.

use std::time::Duration;

use stek_core::{decide_at, Decision, KeyRing};
use stek_store::{Coordinator, RingSlot, Snapshot};

use super::Node;
use crate::admin::{unix, MemberLabels};
use crate::engine::follow::{self};
use crate::engine::lead::Now;

impl<C: Coordinator> Node<'_, C> {
    /// Updates the metrics and the readiness from a pass over `snap` begun `at`.
    pub(super) fn observe(&mut self, snap: &Snapshot, at: Now) {
        let m = &self.metrics;
        let now = at.wall;
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.leader.set(i64::from(self.leading.role.leads()));
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
            Some((f, since)) if *f == fingerprint => at.mono.saturating_duration_since(*since),
            _ => {
                self.active_seen = Some((fingerprint, at.mono));
                Duration::ZERO
            }
        };
        let stamped = now
            .duration_since(ring.active().created_at)
            .unwrap_or_default();
        m.active_key_age.set(stamped.max(seen).as_secs_f64());
        m.ring_clock_ahead
            .set(stek_store::clock::ring_ahead(stored, now).as_secs_f64());
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
}
