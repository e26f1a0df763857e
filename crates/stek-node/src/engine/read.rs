//! The read planner: what a pass reads before it decides, pure, with monotonic time passed in.
//!
//! A node reads one of three ways:
//! - what its watch's events carried since the last pass (nothing goes to the store): the whole
//!   prefix for a leader, its own keys, the ring and the leader for a follower;
//! - a follower's read of its own records, the ring and the leader
//!   ([`stek_store::Coordinator::snapshot_of_member`]): a handful of records however large the
//!   cluster;
//! - everything ([`stek_store::Coordinator::snapshot`]): N member records.
//!
//! A leader decides on every member, so it always holds everything: from its watch, and from a
//! real read every [`FULL_READ`] (a watch that went silent without an error must not hide
//! acknowledgements from it for long). A follower reads everything only when a decision needs
//! every member (an election: see [`follower_needs_everything`]), when its watch says the
//! keyspace's shape changed, and on a schedule ([`FullReads`]) for its membership figures:
//! first at a random time within a window, so that a fleet started together does not read
//! N x N records at once, then every [`full_read_interval`]. In a cluster of more than
//! [`SMALL_CLUSTER`] members, on a backend that counts apart (etcd), the scheduled read is a
//! count instead ([`stek_store::Coordinator::member_counts`]): two numbers, not N records, so
//! that a thousand followers started together cost the store N counts, not N x N records; the
//! figures only a full read gives (who blocks a rotation, who is refused) are the leader's.

use std::time::{Duration, Instant};

/// How often a leader reads everything for real, and a follower of a small cluster too.
pub const FULL_READ: Duration = Duration::from_secs(30);

/// Up to this many members, every follower's full read costs the store little.
pub const SMALL_CLUSTER: usize = 10;

/// How often a node reads again even without an event.
pub const RESYNC: Duration = Duration::from_secs(10);

/// The window within which a follower that starts makes its first full read, with `members`
/// member records in the store (`None`: not counted): 0.3 s per member in a cluster of up to
/// [`SMALL_CLUSTER`] members, so that its followers show their membership figures within a
/// few seconds; [`FULL_READ`] otherwise (or not counted). Not shorter in proportion for larger
/// counts: boxes of a fleet started together count few members at first, and would all read
/// everything during the start.
pub fn first_read_window(members: Option<usize>) -> Duration {
    match members {
        Some(n) if n <= SMALL_CLUSTER => FULL_READ.mul_f64(n as f64 / 100.0),
        _ => FULL_READ,
    }
}

/// How often a follower reads every member's record, with `members` members: [`FULL_READ`] up
/// to ten members, then longer in proportion, so that the whole cluster's full reads cost the
/// store about the same per member however large it is (each is N records: with 1000
/// followers every 30 s, they moved some 60 MB/s).
pub fn full_read_interval(members: usize) -> Duration {
    FULL_READ * u32::try_from((members / SMALL_CLUSTER).max(1)).unwrap_or(u32::MAX)
}

/// When a node reads everything for real: its schedule of full reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FullReads {
    /// When it last read everything.
    last: Option<Instant>,
    /// When its first full read is due (set once the store's members were counted).
    first: Option<Instant>,
    /// A follower's interval between full reads ([`full_read_interval`] of the last count).
    every: Option<Duration>,
    /// How many members the store held at the last count or full read (None: the backend does
    /// not count apart, and nothing was read yet).
    members: Option<usize>,
}

impl FullReads {
    /// Whether the first full read still has to be placed: the runtime counts the members
    /// (one request that carries no record) and calls [`Self::place_first`].
    pub fn needs_count(&self) -> bool {
        self.last.is_none() && self.first.is_none()
    }

    /// Places the first full read at `spread` (in [0, 1)) of the window for `members`
    /// ([`first_read_window`]) after `now`.
    pub fn place_first(&mut self, members: Option<usize>, spread: f64, now: Instant) {
        self.first = Some(now + first_read_window(members).mul_f64(spread.clamp(0.0, 1.0)));
        self.members = members;
    }

    /// How many members the store held at the last count or full read, where the backend
    /// counts apart.
    pub fn members(&self) -> Option<usize> {
        self.members
    }

    /// Whether a follower's scheduled read is a count rather than everything: the backend
    /// counts apart, and the cluster has more than [`SMALL_CLUSTER`] members.
    pub fn counts_instead(&self) -> bool {
        self.members.is_some_and(|n| n > SMALL_CLUSTER)
    }

    fn every(&self, leading: bool) -> Duration {
        if leading {
            FULL_READ
        } else {
            self.every.unwrap_or(FULL_READ)
        }
    }

    /// Whether a full read is due at `now`.
    pub fn due(&self, leading: bool, now: Instant) -> bool {
        match self.last {
            Some(t) => now.saturating_duration_since(t) >= self.every(leading),
            None => self.first.is_some_and(|t| now >= t),
        }
    }

    /// When the next full read is due: a reason to wake, not only the next [`RESYNC`].
    pub fn next_at(&self, leading: bool, now: Instant) -> Instant {
        match self.last {
            Some(t) => t + self.every(leading),
            None => self.first.unwrap_or(now + RESYNC),
        }
    }

    /// A full read of `members` member records came back at `now`. (It does not tell whether
    /// the backend counts apart: that was learnt when the first read was placed.) Where the
    /// next scheduled read is a count ([`Self::counts_instead`]), it is due [`FULL_READ`]
    /// later, as after a count: a follower that had to read everything once (an election, a
    /// change of shape) must not leave its figures stale for [`full_read_interval`].
    pub fn read_everything(&mut self, members: usize, now: Instant) {
        self.last = Some(now);
        if self.members.is_some() {
            self.members = Some(members);
        }
        self.every = Some(if self.counts_instead() {
            FULL_READ
        } else {
            full_read_interval(members)
        });
    }

    /// A count of `members` came back at `now`: the next is due [`FULL_READ`] later (a count
    /// costs the store two numbers, whatever the size).
    pub fn counted(&mut self, members: usize, now: Instant) {
        self.last = Some(now);
        self.every = Some(FULL_READ);
        self.members = Some(members);
    }
}

/// What the watch carried since the last pass, as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// The store revision it is complete up to.
    pub revision: i64,
    /// Whether it holds a follower's keys only (not the whole prefix).
    pub partial: bool,
}

/// What a pass knows before it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadInputs {
    /// This node leads.
    pub leading: bool,
    /// A watch event, a lost watch or a store error asked for a full read.
    pub want_full: bool,
    /// The schedule says a full read is due ([`FullReads::due`]).
    pub full_due: bool,
    /// What the watch carried, if its backend keeps it.
    pub carried: Option<Carried>,
    /// The revision of this node's last own write: what the watch carried is used only once
    /// it includes that write (a pass right after a write must not decide on what it
    /// replaced).
    pub written_at: i64,
    /// A write was refused since the last read: the next decision is made on a real read.
    pub read_fresh: bool,
    /// A follower's scheduled read is a count ([`FullReads::counts_instead`]).
    pub counts_instead: bool,
}

/// Which read a pass makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Decide on what the watch carried; nothing is read.
    Carried,
    /// A follower's read of its own records, the ring and the leader, with what the watch
    /// carried for it (`carried`: the runtime may use it if it holds the ring's keys, see
    /// [`follower_may_use_carried`]).
    Follower {
        /// Whether the watch carried a usable follower's view.
        carried: bool,
        /// Whether the scheduled read is due, as a count of the members
        /// ([`stek_store::Coordinator::member_counts`]) besides.
        count: bool,
    },
    /// Everything.
    Full,
}

/// The read a pass makes ([`Read`]).
pub fn plan(i: &ReadInputs) -> Read {
    // A follower's scheduled read that is a count leaves its own read as it is.
    let count = !i.leading && !i.want_full && i.full_due && i.counts_instead;
    let full_due = i.full_due && !count;
    let carried = i
        .carried
        .filter(|_| !full_due)
        .filter(|c| c.revision >= i.written_at && !i.read_fresh)
        .filter(|c| {
            if i.leading {
                !c.partial
            } else {
                c.partial && !i.want_full
            }
        })
        .is_some();
    if !i.leading && !i.want_full && !full_due {
        Read::Follower { carried, count }
    } else if carried {
        Read::Carried
    } else {
        Read::Full
    }
}

/// Whether what a follower's watch carried is enough to act on: the events of its keys come
/// in order per key, not across keys, so a ring may come before the copy written just ahead of
/// it, or before the leader key of the term it was written in. It is used only when it holds
/// this ring's copy for this node (or a ring whose keys the node holds), and the leader of the
/// ring's term or a later one (the floor judges a ring's term against the leadership).
/// `ring_term` is None when the carried view holds no valid ring.
pub fn follower_may_use_carried(
    ring_term: Option<i64>,
    has_own_copy_or_keys: bool,
    leader_term: Option<i64>,
) -> bool {
    match ring_term {
        Some(term) => has_own_copy_or_keys && leader_term.is_some_and(|l| l >= term),
        None => true,
    }
}

/// Whether a follower that read its own records reads everything too: only when the store
/// shows no other leader (an election to join, which defers to a member that holds keys and
/// needs every member). With another leader it follows whatever every other member shows; it
/// used to read everything when it could not open the ring too, and at N = 1000 every member
/// that joined before its copy was sealed read every member's record, an O(N^2) start.
pub fn follower_needs_everything(partial: bool, other_leader: bool) -> bool {
    partial && !other_leader
}

/// A change the watch delivered while the node waits between passes, as the waiting node
/// sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The store revision of the change (0: the backend did not say).
    pub revision: i64,
    /// Whether it concerns a follower (the ring, the leadership, its own records, or a key
    /// the backend did not name): [`stek_store::Change::concerns_follower`].
    pub concerns_follower: bool,
    /// Whether it asks for a full read (a key other than the node's own and the ring):
    /// [`stek_store::Change::needs_full_read`].
    pub needs_full_read: bool,
}

/// What the waiting node does about a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Keep waiting: the last pass saw it, it is an event of this leader's own write before
    /// the one that completes it, or it cannot concern this follower.
    Wait,
    /// Run a pass (after taking every change already queued behind this one), reading
    /// everything if `want_full`.
    Pass {
        /// Whether the change asks for a full read.
        want_full: bool,
    },
}

/// What a node that leads (`leading`), last read at `read_at` and last wrote at `written_at`,
/// does about `change`. Changes the last read already saw are skipped: the watch queues every
/// change made while the node read, and with N members a rotation brings N acknowledgements,
/// so a pass for each would cost the leader O(N) reads of N records. A leader also waits out
/// the events of its own last write up to the one that completes it (the ring, or the last
/// batch of copies): a pass before it would find what the watch carried behind that write,
/// and read everything again instead. A follower sleeps through changes that cannot concern
/// it (other members' acknowledgements and leases, requests).
pub fn on_change(change: Change, leading: bool, read_at: i64, written_at: i64) -> OnChange {
    let known = change.revision > 0;
    let own_write = leading && known && change.revision < written_at;
    let new = !known || change.revision > read_at;
    if new && !own_write && (leading || change.concerns_follower) {
        OnChange::Pass {
            want_full: change.needs_full_read,
        }
    } else {
        OnChange::Wait
    }
}

/// Whether a change already queued behind the one that starts a pass asks that pass for a
/// full read: a change a follower would have slept through asks nothing.
pub fn queued_wants_full(change: Change, leading: bool) -> bool {
    (leading || change.concerns_follower) && change.needs_full_read
}

/// When the next pass runs at the latest: what the last pass asked for (`wake`), the next
/// [`RESYNC`] from `now`, or the next full read, whichever comes first.
pub fn next_pass_at(wake: Instant, full_reads: &FullReads, leading: bool, now: Instant) -> Instant {
    wake.min(now + RESYNC).min(full_reads.next_at(leading, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every branch of what a waiting node does about a change, one row each.
    #[test]
    fn a_change_wakes_a_pass_only_when_it_is_new_and_concerns_the_node() {
        let change = |revision, concerns_follower, needs_full_read| Change {
            revision,
            concerns_follower,
            needs_full_read,
        };
        let pass = |want_full| OnChange::Pass { want_full };
        // (situation, change, leading, read_at, written_at, expected)
        let rows = [
            (
                "seen by the last read",
                change(10, true, false),
                true,
                10,
                0,
                OnChange::Wait,
            ),
            (
                "new, to a leader",
                change(11, false, false),
                true,
                10,
                0,
                pass(false),
            ),
            (
                "new, a key of another member",
                change(11, false, true),
                true,
                10,
                0,
                pass(true),
            ),
            (
                "an event of the leader's own write before the last",
                change(11, true, false),
                true,
                10,
                12,
                OnChange::Wait,
            ),
            (
                "the event that completes the leader's write",
                change(12, true, false),
                true,
                10,
                12,
                pass(false),
            ),
            (
                "a follower's own write is not waited out",
                change(11, true, false),
                false,
                10,
                12,
                pass(false),
            ),
            (
                "new, not its concern, to a follower",
                change(11, false, true),
                false,
                10,
                0,
                OnChange::Wait,
            ),
            (
                "new, its concern",
                change(11, true, true),
                false,
                10,
                0,
                pass(true),
            ),
            (
                "no revision: always new, never its own",
                change(0, true, false),
                true,
                10,
                12,
                pass(false),
            ),
            (
                "no revision, not a follower's concern",
                change(0, false, false),
                false,
                10,
                0,
                OnChange::Wait,
            ),
        ];
        for (situation, c, leading, read_at, written_at, expected) in rows {
            assert_eq!(
                on_change(c, leading, read_at, written_at),
                expected,
                "{situation}"
            );
        }
        assert!(queued_wants_full(change(5, false, true), true));
        assert!(
            !queued_wants_full(change(5, false, true), false),
            "slept through"
        );
        assert!(queued_wants_full(change(5, true, true), false));
        assert!(!queued_wants_full(change(5, true, false), false));
    }

    /// The next pass runs at the earliest of what the pass asked, the resync and the next
    /// full read.
    #[test]
    fn the_next_pass_is_the_earliest_reason() {
        let now = Instant::now();
        let mut reads = FullReads::default();
        reads.read_everything(3, now);
        let soon = now + Duration::from_secs(1);
        assert_eq!(next_pass_at(soon, &reads, false, now), soon);
        let late = now + Duration::from_secs(3600);
        assert_eq!(next_pass_at(late, &reads, false, now), now + RESYNC);
        let mut due = FullReads::default();
        due.place_first(Some(3), 0.0, now);
        assert_eq!(next_pass_at(late, &due, false, now), now);
    }

    fn inputs() -> ReadInputs {
        ReadInputs {
            leading: false,
            want_full: false,
            full_due: false,
            carried: None,
            written_at: 0,
            read_fresh: false,
            counts_instead: false,
        }
    }

    const FOLLOWER_VIEW: Option<Carried> = Some(Carried {
        revision: 10,
        partial: true,
    });
    const WHOLE_PREFIX: Option<Carried> = Some(Carried {
        revision: 10,
        partial: false,
    });

    #[test]
    fn the_read_plan_for_every_combination_that_matters() {
        let rows: &[(&str, ReadInputs, Read)] = &[
            (
                "a follower with nothing carried reads its own records",
                inputs(),
                Read::Follower {
                    carried: false,
                    count: false,
                },
            ),
            (
                "a follower whose watch carried its keys uses them",
                ReadInputs {
                    carried: FOLLOWER_VIEW,
                    ..inputs()
                },
                Read::Follower {
                    carried: true,
                    count: false,
                },
            ),
            (
                "a follower's watch that carried the whole prefix is not a follower's view",
                ReadInputs {
                    carried: WHOLE_PREFIX,
                    ..inputs()
                },
                Read::Follower {
                    carried: false,
                    count: false,
                },
            ),
            (
                "a follower asked for a full read reads everything, whatever was carried",
                ReadInputs {
                    want_full: true,
                    carried: FOLLOWER_VIEW,
                    ..inputs()
                },
                Read::Full,
            ),
            (
                "a follower whose full read is due reads everything",
                ReadInputs {
                    full_due: true,
                    carried: FOLLOWER_VIEW,
                    ..inputs()
                },
                Read::Full,
            ),
            (
                "a leader decides on the whole prefix its watch carried",
                ReadInputs {
                    leading: true,
                    carried: WHOLE_PREFIX,
                    ..inputs()
                },
                Read::Carried,
            ),
            (
                "a leader never decides on a follower's view",
                ReadInputs {
                    leading: true,
                    carried: FOLLOWER_VIEW,
                    ..inputs()
                },
                Read::Full,
            ),
            (
                "a leader with nothing carried reads everything",
                ReadInputs {
                    leading: true,
                    ..inputs()
                },
                Read::Full,
            ),
            (
                "a leader whose full read is due reads for real, not from its watch",
                ReadInputs {
                    leading: true,
                    full_due: true,
                    carried: WHOLE_PREFIX,
                    ..inputs()
                },
                Read::Full,
            ),
            (
                "a leader asked for a full read may still use the whole prefix carried",
                ReadInputs {
                    leading: true,
                    want_full: true,
                    carried: WHOLE_PREFIX,
                    ..inputs()
                },
                Read::Carried,
            ),
            (
                "what was carried before the leader's own write is not decided on",
                ReadInputs {
                    leading: true,
                    carried: WHOLE_PREFIX,
                    written_at: 11,
                    ..inputs()
                },
                Read::Full,
            ),
            (
                "what was carried up to the leader's own write is",
                ReadInputs {
                    leading: true,
                    carried: WHOLE_PREFIX,
                    written_at: 10,
                    ..inputs()
                },
                Read::Carried,
            ),
            (
                "after a refused write the leader reads for real",
                ReadInputs {
                    leading: true,
                    carried: WHOLE_PREFIX,
                    read_fresh: true,
                    ..inputs()
                },
                Read::Full,
            ),
            (
                "after a refused write a follower's carried view is not used either",
                ReadInputs {
                    carried: FOLLOWER_VIEW,
                    read_fresh: true,
                    ..inputs()
                },
                Read::Follower {
                    carried: false,
                    count: false,
                },
            ),
            (
                "a large cluster's follower counts when its scheduled read is due",
                ReadInputs {
                    full_due: true,
                    counts_instead: true,
                    carried: FOLLOWER_VIEW,
                    ..inputs()
                },
                Read::Follower {
                    carried: true,
                    count: true,
                },
            ),
            (
                "... but reads everything when asked to (an election, the keyspace's shape)",
                ReadInputs {
                    full_due: true,
                    want_full: true,
                    counts_instead: true,
                    carried: FOLLOWER_VIEW,
                    ..inputs()
                },
                Read::Full,
            ),
            (
                "... and counts nothing when no read is due",
                ReadInputs {
                    counts_instead: true,
                    carried: FOLLOWER_VIEW,
                    ..inputs()
                },
                Read::Follower {
                    carried: true,
                    count: false,
                },
            ),
            (
                "a leader never counts: it reads everything",
                ReadInputs {
                    leading: true,
                    full_due: true,
                    counts_instead: true,
                    carried: WHOLE_PREFIX,
                    ..inputs()
                },
                Read::Full,
            ),
        ];
        for (what, i, want) in rows {
            assert_eq!(plan(i), *want, "{what}");
        }
    }

    #[test]
    fn a_follower_uses_a_carried_ring_only_with_its_copy_and_its_terms_leader() {
        let rows = [
            ("no ring carried", None, false, None, true),
            (
                "ring, copy and the leader of its term",
                Some(5),
                true,
                Some(5),
                true,
            ),
            (
                "ring, copy and a later leader",
                Some(5),
                true,
                Some(6),
                true,
            ),
            (
                "ring without this node's copy",
                Some(5),
                false,
                Some(5),
                false,
            ),
            (
                "ring before its term's leader key",
                Some(5),
                true,
                Some(4),
                false,
            ),
            ("ring and no leader", Some(5), true, None, false),
        ];
        for (what, ring, copy, leader, want) in rows {
            assert_eq!(follower_may_use_carried(ring, copy, leader), want, "{what}");
        }
    }

    #[test]
    fn a_follower_reads_everything_only_for_an_election() {
        assert!(follower_needs_everything(true, false), "no other leader");
        assert!(!follower_needs_everything(true, true), "another leader");
        assert!(
            !follower_needs_everything(false, false),
            "already everything"
        );
    }

    #[test]
    fn full_reads_first_within_a_window_then_every_interval() {
        let t0 = Instant::now();
        let s = |secs: f64| Duration::from_secs_f64(secs);
        let mut f = FullReads::default();
        assert!(f.needs_count(), "the first is placed after a count");
        assert!(!f.due(false, t0), "nothing is due before it is placed");
        assert_eq!(f.next_at(false, t0), t0 + RESYNC);

        // 3 members: a window of 0.9 s; half way is 0.45 s.
        f.place_first(Some(3), 0.5, t0);
        assert!(!f.needs_count());
        assert!(!f.due(false, t0 + s(0.44)));
        assert!(f.due(false, t0 + s(0.45)));
        assert_eq!(f.next_at(false, t0), t0 + s(0.45));

        // 1000 members, or an unknown count: within FULL_READ.
        let mut big = FullReads::default();
        big.place_first(Some(1000), 0.99, t0);
        assert!(!big.due(false, t0 + s(29.0)));
        assert!(big.due(false, t0 + FULL_READ));
        let mut unknown = FullReads::default();
        unknown.place_first(None, 2.0, t0);
        assert!(unknown.due(false, t0 + FULL_READ), "spread is clamped");

        // After a full read of 1000 records, on a backend that does not count apart, a
        // follower waits 100 x FULL_READ, a leader FULL_READ whatever the size; where the next
        // scheduled read is a count, FULL_READ.
        let t1 = t0 + s(1.0);
        unknown.read_everything(1000, t1);
        assert!(!unknown.due(false, t1 + FULL_READ * 99));
        assert!(unknown.due(false, t1 + FULL_READ * 100));
        assert!(unknown.due(true, t1 + FULL_READ));
        assert_eq!(unknown.next_at(false, t1), t1 + FULL_READ * 100);
        assert_eq!(unknown.next_at(true, t1), t1 + FULL_READ);
        big.read_everything(1000, t1);
        assert_eq!(big.next_at(false, t1), t1 + FULL_READ);
    }

    #[test]
    fn a_large_cluster_on_a_backend_that_counts_is_counted_every_full_read() {
        let t0 = Instant::now();
        let rows = [
            ("ten members", Some(10), false),
            ("eleven members", Some(11), true),
            ("a thousand", Some(1000), true),
            ("a backend that does not count", None, false),
        ];
        for (what, members, counts) in rows {
            let mut f = FullReads::default();
            f.place_first(members, 0.0, t0);
            assert_eq!(f.counts_instead(), counts, "{what}");
        }
        // Counted: the next count is due FULL_READ later, whatever the size; a cluster that
        // shrinks to ten members is read in full again.
        let mut f = FullReads::default();
        f.place_first(Some(1000), 0.0, t0);
        f.counted(1000, t0);
        assert!(!f.due(false, t0 + FULL_READ - Duration::from_millis(1)));
        assert!(f.due(false, t0 + FULL_READ));
        f.counted(10, t0);
        assert!(!f.counts_instead());
        // A full read updates the size only where the backend counts; the next scheduled read
        // there is a count, due FULL_READ later, not after the interval of a full read.
        f.read_everything(500, t0);
        assert!(f.counts_instead());
        assert!(f.due(false, t0 + FULL_READ));
        let mut g = FullReads::default();
        g.place_first(None, 0.0, t0);
        g.read_everything(500, t0);
        assert!(!g.counts_instead());
        assert!(!g.due(false, t0 + FULL_READ));
        assert!(g.due(false, t0 + full_read_interval(500)));
    }

    #[test]
    fn the_first_read_window_and_the_interval_grow_with_the_cluster() {
        assert_eq!(first_read_window(Some(3)), Duration::from_millis(900));
        assert_eq!(first_read_window(Some(10)), Duration::from_secs(3));
        assert_eq!(first_read_window(Some(11)), FULL_READ);
        assert_eq!(first_read_window(None), FULL_READ);
        assert_eq!(full_read_interval(3), FULL_READ);
        assert_eq!(full_read_interval(10), FULL_READ);
        assert_eq!(full_read_interval(1000), FULL_READ * 100);
    }
}

/// A thousand followers started at once, pass by pass under simulated time.
#[cfg(test)]
mod fleet;
