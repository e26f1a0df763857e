//! A fleet started at once, pass by pass under simulated time: the planner and the schedule
//! of full reads as `node::run_with` drives them, with the store reduced to what a read costs.
//!
//! The issue it answers: a thousand followers started together used to read N x N records.
//! Each member runs a pass when its wake comes (an event queue of simulated instants, a base
//! [`Instant`] plus offsets: no member is stepped while it sleeps, no tokio, no store): it
//! registers on its first pass, counts the members once ([`FullReads::needs_count`],
//! [`FullReads::place_first`] with a seeded spread), asks [`plan`], makes the read it implies,
//! calls [`FullReads::read_everything`] or [`FullReads::counted`] as the runtime does, starts
//! its watch after its first read, and wakes at the earliest of [`RESYNC`], the next full read
//! ([`FullReads::next_at`]) and a watch event that concerns it.
//!
//! What a read costs, in records (about 1 KB each): everything, the members present; a
//! follower's own read ([`stek_store::Coordinator::snapshot_of_member`]), [`FOLLOWER_READ`]; a
//! count, none; what the watch carried, none; a watch that starts with a mirror of its keys
//! (etcd's), what it mirrors. These are etcd's prices: a Raft follower's own read is a full
//! one (its clusters are small), so what the Raft case checks is the schedule, not the bill.
//!
//! Left out: the election (node 0 leads from the start), the leader's passes woken by other
//! members' registrations and acknowledgements (they decide on what its watch carried, or
//! coalesce on Raft), rotation timers (a pass's own wake is at most [`RESYNC`] anyway),
//! refused writes and store errors.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use stek_store::Change;

use super::*;

/// The records a follower's own read costs: the ring, the leader, and its member record,
/// acknowledgement, liveness and copy.
const FOLLOWER_READ: u64 = 6;

/// How long a fleet is simulated.
const HORIZON: Duration = Duration::from_secs(600);

/// From when the leader writes a ring (on its first pass from then on): every follower's watch
/// carries it, so the planner's carried branch is taken.
const RING_WRITE_AT: Duration = Duration::from_secs(60);

/// When a few followers' watches say something changed without saying what (a full read is
/// asked for: the keyspace's shape may have changed).
const UNSAID_CHANGE_AT: Duration = Duration::from_secs(200);

/// How many followers get that change, whatever the fleet's size.
const UNSAID_FEW: usize = 5;

/// The queue entry of that change, ordered after the passes due at the same instant.
const UNSAID: usize = usize::MAX;

/// The leader's term, the ring's and the one the followers' watches carry.
const TERM: i64 = 1;

/// How the store answers, as the planner sees it.
#[derive(Debug, Clone, Copy)]
struct Backend {
    /// It counts members without reading them (`member_count` and `member_counts` answer).
    counts_apart: bool,
    /// Its watches keep what their events carried ([`stek_store::ChangeStream::snapshot`]).
    carries: bool,
}

/// etcd counts apart, and its watches carry their keys' values.
const ETCD: Backend = Backend {
    counts_apart: true,
    carries: true,
};

/// The embedded Raft group counts nothing apart, and its watches carry nothing.
const RAFT: Backend = Backend {
    counts_apart: false,
    carries: false,
};

/// One full read: when, of how many members, and whether a watch event asked for it (rather
/// than the schedule, or a pass with nothing carried).
#[derive(Debug, Clone, Copy)]
struct FullRead {
    at: Duration,
    members: usize,
    asked: bool,
}

/// One node, as the runtime's loop holds it, and what it cost the store.
#[derive(Debug)]
struct Member {
    id: String,
    leading: bool,
    spread: f64,
    full_reads: FullReads,
    want_full: bool,
    /// Its watch runs, with a view complete up to this revision (a follower's advances only
    /// with its own keys; a leader's watch carries the whole prefix, complete to the store's).
    watch: Option<i64>,
    /// The revision of its last read: changes at or below it are in it already.
    read_at: i64,
    written_at: i64,
    /// When it runs its next pass (entries of the queue at another instant are stale).
    wake: Duration,
    passes: u32,
    records: u64,
    full: Vec<FullRead>,
    counts: u32,
    /// A follower's reads of its own records (not decided on what its watch carried).
    own_reads: u32,
    /// Passes in a row that read everything unasked, now and at most (a read asked for by a
    /// watch event may follow a scheduled one).
    in_a_row: u32,
    most_in_a_row: u32,
    /// The pass at which its first scheduled read (a count or everything) was due.
    first_due: Option<Duration>,
}

/// N followers and a leader started at once, and the store they share.
struct Fleet {
    backend: Backend,
    base: Instant,
    members: Vec<Member>,
    /// Member records present: each member registers on its first pass.
    registered: usize,
    revision: i64,
    ring_written: bool,
    queue: BinaryHeap<Reverse<(Duration, usize)>>,
}

/// A number in [0, 1) per node, from a seeded LCG (the runtime's `spread` draws one from the
/// OS; the same conversion of 53 bits).
fn spreads(n: usize, mut seed: u64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

impl Fleet {
    /// Node 0 leads; nodes 1..=`followers` follow; all of them wake at t = 0, in order, so the
    /// early ones count few members.
    fn start(backend: Backend, followers: usize) -> Fleet {
        let members = spreads(followers + 1, 0x5eed)
            .into_iter()
            .enumerate()
            .map(|(i, spread)| Member {
                id: format!("n{i}"),
                leading: i == 0,
                spread,
                full_reads: FullReads::default(),
                want_full: false,
                watch: None,
                read_at: 0,
                written_at: 0,
                wake: Duration::ZERO,
                passes: 0,
                records: 0,
                full: Vec::new(),
                counts: 0,
                own_reads: 0,
                in_a_row: 0,
                most_in_a_row: 0,
                first_due: None,
            })
            .collect::<Vec<_>>();
        let mut queue: BinaryHeap<_> = (0..members.len())
            .map(|i| Reverse((Duration::ZERO, i)))
            .collect();
        queue.push(Reverse((UNSAID_CHANGE_AT, UNSAID)));
        Fleet {
            backend,
            base: Instant::now(),
            members,
            registered: 0,
            revision: 0,
            ring_written: false,
            queue,
        }
    }

    /// Runs every pass due up to [`HORIZON`].
    fn run(mut self) -> Fleet {
        while let Some(Reverse((at, i))) = self.queue.pop() {
            if at > HORIZON {
                break;
            }
            if i == UNSAID {
                let change = Change {
                    revision: self.next_revision(),
                    keys: None,
                };
                let followers = self.members.len() - 1;
                let few: Vec<usize> = (0..UNSAID_FEW)
                    .map(|k| 1 + k * followers / UNSAID_FEW)
                    .collect();
                self.deliver(&change, &few, at);
            } else if self.members[i].wake == at {
                self.pass(i, at);
            }
        }
        self
    }

    fn next_revision(&mut self) -> i64 {
        self.revision += 1;
        self.revision
    }

    /// One pass of member `i` at `at`, from "Which read this pass makes" to the watch wait.
    fn pass(&mut self, i: usize, at: Duration) {
        let now = self.base + at;
        // It joined just before its first pass: its member record is in the store.
        if self.members[i].passes == 0 {
            self.registered += 1;
            self.next_revision();
        }
        let (backend, registered, revision) = (self.backend, self.registered, self.revision);
        let m = &mut self.members[i];
        m.passes += 1;
        let leading = m.leading;
        if m.full_reads.needs_count() {
            let counted = backend.counts_apart.then_some(registered);
            m.full_reads.place_first(counted, m.spread, now);
        }
        let full_due = m.full_reads.due(leading, now);
        if full_due && !leading && m.first_due.is_none() {
            m.first_due = Some(at);
        }
        let counts_instead = !leading && m.full_reads.counts_instead();
        let carried = m
            .watch
            .filter(|_| backend.carries)
            .filter(|_| !full_due || (counts_instead && !m.want_full))
            .map(|to| Carried {
                revision: if leading { revision } else { to },
                partial: !leading,
            });
        let asked = m.want_full;
        let planned = plan(&ReadInputs {
            leading,
            want_full: m.want_full,
            full_due,
            carried,
            written_at: m.written_at,
            read_fresh: false,
            counts_instead,
        });
        let from_events = matches!(
            planned,
            Read::Carried | Read::Follower { carried: true, .. }
        );
        let everything = match planned {
            Read::Follower {
                carried: from_watch,
                ..
            } => {
                // The store shows node 0 as leader; the watch carried the ring of its term
                // with this node's copy.
                let usable = from_watch && follower_may_use_carried(Some(TERM), true, Some(TERM));
                if usable {
                    m.read_at = carried.map_or(m.read_at, |c| c.revision);
                } else {
                    m.records += FOLLOWER_READ;
                    m.own_reads += 1;
                    m.read_at = revision;
                }
                let other_leader = true;
                let needs = follower_needs_everything(true, other_leader);
                if needs {
                    m.records += registered as u64;
                }
                needs
            }
            // Only a leader decides on what its watch carried: the whole prefix.
            Read::Carried => {
                m.read_at = revision;
                true
            }
            Read::Full => {
                m.records += registered as u64;
                m.read_at = revision;
                true
            }
        };
        if everything && !from_events {
            m.full_reads.read_everything(registered, now);
            m.full.push(FullRead {
                at,
                members: registered,
                asked,
            });
        }
        if everything && !from_events && !asked {
            m.in_a_row += 1;
            m.most_in_a_row = m.most_in_a_row.max(m.in_a_row);
        } else {
            m.in_a_row = 0;
        }
        m.want_full = false;
        if matches!(planned, Read::Follower { count: true, .. }) {
            // `member_counts`: two numbers. (A backend that does not count never plans one.)
            assert!(
                backend.counts_apart,
                "a count planned on a backend that has none"
            );
            m.full_reads.counted(registered, now);
            m.counts += 1;
        }
        if m.watch.is_none() {
            // etcd's watch starts with a read of what it mirrors: the whole prefix for a
            // leader, a follower's six keys.
            if backend.carries {
                m.records += if leading {
                    registered as u64
                } else {
                    FOLLOWER_READ
                };
            }
            m.watch = Some(m.read_at);
        }
        let full_at = m.full_reads.next_at(leading, now) - self.base;
        let wake = (at + RESYNC).min(full_at);
        assert!(wake > at, "{} would pass again at {at:?} without end", m.id);
        m.wake = wake;
        self.queue.push(Reverse((wake, i)));
        if leading && !self.ring_written && at >= RING_WRITE_AT {
            self.ring_written = true;
            let change = Change {
                revision: self.next_revision(),
                keys: Some(vec!["ring".into()]),
            };
            self.members[i].written_at = change.revision;
            let everybody: Vec<usize> = (0..self.members.len()).collect();
            self.deliver(&change, &everybody, at);
        }
    }

    /// `change` reaches the watches of `who` at `at`: those it concerns wake, as in the wait
    /// of `run_with`.
    fn deliver(&mut self, change: &Change, who: &[usize], at: Duration) {
        for &i in who {
            let m = &mut self.members[i];
            let Some(to) = m.watch.as_mut() else { continue };
            let leads = m.leading;
            if !leads && change.concerns_follower(&m.id) {
                *to = (*to).max(change.revision);
            }
            let own_write = leads && change.revision > 0 && change.revision < m.written_at;
            let new = change.revision == 0 || change.revision > m.read_at;
            if new && !own_write && (leads || change.concerns_follower(&m.id)) {
                // Changes queued behind each other are drained into one pass.
                m.want_full |= change.needs_full_read(&m.id);
                m.wake = at;
                self.queue.push(Reverse((at, i)));
            }
        }
    }

    fn followers(&self) -> &[Member] {
        &self.members[1..]
    }

    fn leader(&self) -> &Member {
        &self.members[0]
    }

    /// Records read by the whole fleet, per member.
    fn records_per_member(&self) -> f64 {
        let total: u64 = self.members.iter().map(|m| m.records).sum();
        total as f64 / self.members.len() as f64
    }

    /// Records read by the followers, per follower.
    fn records_per_follower(&self) -> f64 {
        let total: u64 = self.followers().iter().map(|m| m.records).sum();
        total as f64 / self.followers().len() as f64
    }

    /// How many followers' first scheduled reads fell in the busiest second, and in which.
    fn busiest_second_of_first_reads(&self) -> (usize, u64) {
        let mut seconds = std::collections::BTreeMap::<u64, usize>::new();
        for first in self.followers().iter().filter_map(|m| m.first_due) {
            *seconds.entry(first.as_secs()).or_default() += 1;
        }
        seconds
            .into_iter()
            .map(|(s, n)| (n, s))
            .max()
            .unwrap_or_default()
    }
}

/// What holds on either backend: the first scheduled reads spread over the first window; a
/// leader reads everything every [`FULL_READ`]; a follower never reads everything on two
/// passes in a row, at most twice in the first window, and on its schedule no more often than
/// [`full_read_interval`].
fn assert_the_schedule_holds(fleet: &Fleet, what: &str) {
    let n = fleet.followers().len();
    for m in fleet.followers() {
        let Some(first) = m.first_due else {
            panic!("{what}: {} made no scheduled read in {HORIZON:?}", m.id)
        };
        assert!(
            first < FULL_READ,
            "{what}: {}'s first scheduled read at {first:?}, after the first window",
            m.id
        );
    }
    let (busiest, second) = fleet.busiest_second_of_first_reads();
    assert!(
        busiest * 10 <= n,
        "{what}: {busiest} of {n} followers made their first scheduled read in second {second}"
    );

    let leader = fleet.leader();
    let mut last = Duration::ZERO;
    for r in &leader.full {
        assert!(
            r.at - last <= FULL_READ,
            "{what}: the leader read everything at {:?}, {:?} after the last",
            r.at,
            r.at - last
        );
        last = r.at;
    }
    assert!(
        HORIZON - last < FULL_READ,
        "{what}: the leader's last full read was at {last:?}"
    );

    for m in fleet.followers() {
        assert!(
            m.most_in_a_row <= 1,
            "{what}: {} read everything on {} passes in a row",
            m.id,
            m.most_in_a_row
        );
    }
    for m in fleet.followers() {
        let early = m.full.iter().filter(|r| r.at < FULL_READ).count();
        assert!(
            early <= 2,
            "{what}: {} read everything {early} times in the first {FULL_READ:?}",
            m.id
        );
    }
    for m in fleet.followers() {
        for pair in m.full.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            assert!(
                after.asked || after.at - before.at >= full_read_interval(before.members),
                "{what}: {} read everything at {:?} and again unasked at {:?}",
                m.id,
                before.at,
                after.at
            );
        }
    }
}

/// A thousand followers started at once on etcd, which counts apart: the few that count ten
/// members or fewer read everything within a few seconds, every other counts instead, and
/// after its first pass each decides on what its watch carried (the ring write included). The
/// store serves a few dozen records per member over ten minutes, the leader's full read every
/// [`FULL_READ`] included, and no more per member at a thousand followers than at a hundred:
/// no longer N x N.
#[test]
fn a_thousand_followers_started_at_once_on_etcd_cost_it_a_few_dozen_records_each() {
    let fleet = Fleet::start(ETCD, 1000).run();
    let per_member = fleet.records_per_member();
    let hundred = Fleet::start(ETCD, 100).run().records_per_member();
    let (busiest, second) = fleet.busiest_second_of_first_reads();
    println!(
        "etcd, 1000 followers over {HORIZON:?}: {per_member:.1} records per member \
         ({hundred:.1} at 100 followers), {:.1} per follower, leader {} records in {} full reads; \
         {} followers read everything ({} asked to), {} counts; \
         busiest second of first reads: {busiest} in second {second}",
        fleet.records_per_follower(),
        fleet.leader().records,
        fleet.leader().full.len(),
        fleet
            .followers()
            .iter()
            .filter(|m| !m.full.is_empty())
            .count(),
        fleet
            .followers()
            .iter()
            .filter(|m| m.full.iter().any(|r| r.asked))
            .count(),
        fleet.followers().iter().map(|m| m.counts).sum::<u32>(),
    );
    assert_the_schedule_holds(&fleet, "etcd");

    let scheduled = |m: &Member| m.full.iter().filter(|r| !r.asked).count();
    let reading: usize = fleet.followers().iter().map(scheduled).sum();
    assert!(
        reading <= SMALL_CLUSTER,
        "{reading} scheduled full reads by followers of a cluster that counts"
    );
    for m in fleet.followers() {
        assert_eq!(m.own_reads, 1, "{}'s reads of its own records", m.id);
    }
    assert!(
        per_member <= 50.0,
        "{per_member:.1} records per member (about 1 KB each) over {HORIZON:?}"
    );
    assert!(
        per_member <= hundred * 1.25,
        "{per_member:.1} records per member at 1000 followers, {hundred:.1} at 100"
    );
}

/// A thousand followers started at once on a store that counts nothing apart (the embedded
/// Raft group): each reads everything once on its schedule, at a time spread over the first
/// [`FULL_READ`] so that no second carries more than a tenth of the fleet's first reads, and
/// not again within [`full_read_interval`] unless an event asks.
#[test]
fn a_thousand_followers_started_at_once_on_raft_spread_their_full_reads() {
    let fleet = Fleet::start(RAFT, 1000).run();
    let (busiest, second) = fleet.busiest_second_of_first_reads();
    println!(
        "raft, 1000 followers over {HORIZON:?}: {:.1} records per member, {:.1} per follower, \
         leader {} records in {} full reads; {} follower full reads ({} asked for); \
         busiest second of first reads: {busiest} in second {second}",
        fleet.records_per_member(),
        fleet.records_per_follower(),
        fleet.leader().records,
        fleet.leader().full.len(),
        fleet
            .followers()
            .iter()
            .map(|m| m.full.len())
            .sum::<usize>(),
        fleet
            .followers()
            .iter()
            .flat_map(|m| &m.full)
            .filter(|r| r.asked)
            .count(),
    );
    assert_the_schedule_holds(&fleet, "raft");
    for m in fleet.followers() {
        let scheduled = m.full.iter().filter(|r| !r.asked).count();
        assert_eq!(
            scheduled, 1,
            "{} made {scheduled} scheduled full reads in {HORIZON:?}",
            m.id
        );
    }
}
