//! What a pass reads, performed: a follower's own records or everything, the counts, and what
//! of it this node may act on (signatures, its rollback floor).

use std::time::Instant;

use stek_store::{ChangeStream, CoordError, Coordinator, RingSlot, Snapshot, StoredRing};
use tracing::{debug, error, warn};

use super::{spread, Node};
use crate::engine::floor::{self};
use crate::engine::ratchet;
use crate::engine::read::{self, Carried, FullReads, Read, ReadInputs};

impl<C: Coordinator> Node<'_, C> {
    /// The read a pass makes, as [`read::plan`] plans it: what `watch` carried, the follower's
    /// own records, or everything (`want_full`: the watch said the keyspace's shape changed);
    /// the runtime counts the members once (a request that carries no record: on failure the
    /// window is the widest, and the read that follows says what is wrong with the store).
    pub(super) async fn read(
        &mut self,
        watch: Option<&mut C::Watch>,
        want_full: bool,
        full_reads: &mut FullReads,
    ) -> Result<Snapshot, CoordError> {
        let leading = self.leading.role.leads();
        if full_reads.needs_count() {
            let members = self.coord.member_count().await.ok().flatten();
            full_reads.place_first(members, spread(), Instant::now());
        }
        let full_due = full_reads.due(leading, Instant::now());
        let counts_instead = !leading && full_reads.counts_instead();
        let carried = watch
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
            written_at: self.leading.written_at,
            read_fresh: self.leading.read_fresh,
            counts_instead,
        });
        let from_events = matches!(plan, Read::Carried | Read::Follower { carried: true, .. });
        let snap = match (plan, carried) {
            (Read::Follower { carried: true, .. }, carried) => {
                self.read_as_follower(carried).await?
            }
            (Read::Follower { carried: false, .. }, _) => self.read_as_follower(None).await?,
            (Read::Carried, Some(s)) => self.authenticated(s),
            (Read::Carried | Read::Full, _) => {
                let s = self.coord.snapshot().await?;
                self.authenticated(s)
            }
        };
        if !from_events {
            if !snap.partial {
                full_reads.read_everything(snap.members.len(), Instant::now());
            }
            self.leading.read_fresh = false;
        }
        self.metrics.store_up.set(1);
        if matches!(plan, Read::Follower { count: true, .. }) {
            self.count_members(full_reads).await;
        }
        Ok(snap)
    }

    /// What this node may act on in a read: with `[identity]`, only a ring its writer signed
    /// and members whose enrollment verifies ([`Snapshot::authenticate`]); and never a ring
    /// its rollback floor refuses ([`floor::admit`]: older than one it accepted, before or
    /// since a restart, or not written by the leader of its term).
    pub(super) fn authenticated(&mut self, mut snap: Snapshot) -> Snapshot {
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
    pub(super) async fn read_as_follower(
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
    pub(super) async fn count_members(&mut self, full_reads: &mut FullReads) {
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
}
