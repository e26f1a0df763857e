//! The leader's part of a pass as a plan, like openraft's `Engine`: [`Leading::plan`] takes
//! what the store shows and the time and returns the [`Action`]s to perform, in order, with
//! when to decide again; the runtime performs each and feeds its result back as an [`Event`]
//! ([`Leading::on`]), which may add actions (a purge after a write that dropped keys) and moves
//! the [`Role`] (elected, fenced). Nothing here awaits or reads a clock.
//!
//! What it decides: whether this node may lead at all (its own certificate), the election
//! ([`super::election`]), what the leader audits (members that expired, new requests), which
//! dead members to forget ([`super::housekeeping::dead_to_forget`]), the leader's step
//! ([`super::leader_step`]) with its rate limits ([`super::Pace`]), stepping down when its clock
//! runs ahead, what a refused write means, when to compact the history, and which status lines
//! are new enough to log.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use stek_core::{Decision, KeyHistory, KeyRing, KeySource, Policy};
use stek_store::seal::WriteId;
#[cfg(test)]
use stek_store::RingSlot;
use stek_store::{CoordError, LeaseId, Snapshot, StoredRing, Term};

use super::floor::Floor;
use super::housekeeping;
use super::{election, leader_step, Election, Held, LeaderView, Pace, Role, Step, Why};

/// How soon a leader decides again after a write, a hand-over or a failed campaign.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// How soon it decides again when only an operator can help (a ring nobody can repair, a
/// certificate that does not verify), and the longest retry of a store error.
pub const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Now, by both clocks, read once per pass by the runtime.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// The wall clock (what rings are stamped with).
    pub wall: SystemTime,
    /// The monotonic clock (rate limits, cool-downs, wake-ups).
    pub mono: Instant,
}

impl Now {
    /// The monotonic instant at which the wall clock reads `at` (now, if `at` is past).
    pub fn mono_at(&self, at: SystemTime) -> Instant {
        self.mono + at.duration_since(self.wall).unwrap_or_default()
    }
}

/// The leader's settings, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The rotation policy.
    pub policy: Policy,
    /// `[rotation] min_request_interval`.
    pub min_request_interval: Duration,
    /// `[rotation] forget_dead_after`.
    pub forget_dead_after: Duration,
    /// `compact_history`: compact the store's history after a write that drops keys.
    pub compact_history: bool,
}

/// What the leader's part of a pass knows, as the runtime found it.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// This node's id.
    pub me: &'a str,
    /// The store, as this node may act on it (authenticated, replays refused).
    pub snap: &'a Snapshot,
    /// The keys this node holds.
    pub held: Held<'a>,
    /// The newest generation this node accepted.
    pub newest_seen: u64,
    /// Its rollback floor.
    pub floor: Option<&'a Floor>,
    /// The ring it accepted last, as the store held it.
    pub accepted: Option<&'a StoredRing>,
    /// Whether that ring's signature still verifies (its writer's certificate may have
    /// expired since); always true without `[identity]`.
    pub accepted_verifies: bool,
    /// Why this node's own certificate does not verify now (expired, revoked); None when it
    /// does, or without `[identity]`.
    pub own_certificate: Option<&'a str>,
    /// The write whose data key this node holds.
    pub data_key_write: Option<WriteId>,
    /// The certificate it signs with (`[identity]`).
    pub signer: Option<&'a [u8]>,
    /// The names of keys in the rings it opened.
    pub history: &'a KeyHistory,
    /// The settings.
    pub settings: Settings,
}

/// Why a leader gives its term up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resignation {
    /// Its own certificate does not verify: it would write rings every member refuses.
    OwnCertificate,
    /// Its clock is ahead of its members' by `ahead`: it does not lead for
    /// [`stek_store::clock::CLOCK_COOLDOWN`].
    ClockAhead {
        /// How far ahead.
        ahead: Duration,
    },
    /// `to` holds keys this node lacks, and should lead.
    HandOver {
        /// Who.
        to: String,
        /// Why.
        why: String,
    },
    /// Its liveness lease ended, and the leadership bound to it with it.
    LeaseEnded,
}

/// What the runtime logs for the audit trail or the operator (each a line, nothing else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// This node's own certificate stopped verifying (logged once per reason).
    OwnCertificate(String),
    /// It does not campaign (debug).
    NotCampaigning(String),
    /// Elected in a term (`adopted`: the campaign's reply was lost, the store shows it leads).
    Elected {
        /// The term.
        term: Term,
        /// Found in the store rather than in the campaign's reply.
        adopted: bool,
    },
    /// The store shows another leader, or none under its term.
    LeadershipLost(Term),
    /// A campaign failed (the store did not answer).
    CampaignFailed(String),
    /// Members this leader saw live that are live no more.
    Expired(Vec<String>),
    /// Rotation requests seen for the first time: (key, who asked).
    Requested(Vec<(String, String)>),
    /// Pending requests wait for `min_request_interval`: rotate at `next` at the earliest.
    RequestsPaced {
        /// `[rotation] min_request_interval`.
        interval: Duration,
        /// When.
        next: SystemTime,
    },
    /// A rotation waits (the line names who it waits for); logged when it changes.
    Waits(String),
    /// The ring is broken and nobody can repair it; logged when it changes.
    Stuck(String),
    /// The decision could not be computed.
    Failed(String),
    /// A write landed: the runtime audits it by its reason.
    Written {
        /// Why it was written.
        why: Why,
        /// The ring it replaced, when this node held its keys.
        before: Option<KeyRing>,
        /// The ring written.
        ring: KeyRing,
    },
    /// The stored ring was put back as this leader accepted it.
    Restored {
        /// Its generation.
        generation: u64,
        /// What had happened to it.
        why: String,
    },
    /// The store refused a leader write.
    Refused(Refused),
}

/// How the store refused a leader write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Fenced: the leadership of this term is gone.
    Fenced(Term),
    /// The ring changed since the decision was read: decided again on a fresh read.
    Conflict,
    /// Another failure (the store did not answer): the next pass reads it fresh.
    Failed(String),
}

/// One thing for the runtime to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Log a line.
    Report(Report),
    /// Give `term` up (the role already stepped down).
    Resign {
        /// The term.
        term: Term,
        /// Why.
        why: Resignation,
    },
    /// Campaign under `lease`; feed back [`Event::Campaigned`].
    Campaign {
        /// The node's liveness lease.
        lease: LeaseId,
    },
    /// Remove the records of `members`, fenced on `term`; feed back [`Event::Forgot`] each.
    Forget {
        /// The term.
        term: Term,
        /// Who.
        members: Vec<String>,
    },
    /// Seal `ring` for every live member with a key (keeping the copies of the stored ring's
    /// write) and write it with `served` requests deleted, fenced on `term` and the ring's
    /// revision; feed back [`Event::Wrote`] or [`Event::Refused`].
    Write {
        /// The term.
        term: Term,
        /// The revision of the ring it replaces.
        ring_revision: i64,
        /// The ring.
        ring: KeyRing,
        /// The requests it serves.
        served: Vec<String>,
        /// Why.
        why: Why,
        /// The ring it replaces, when this node holds its keys.
        before: Option<KeyRing>,
    },
    /// Put `stored` back unchanged; feed back [`Event::Restored`] or [`Event::Refused`].
    Restore {
        /// The term.
        term: Term,
        /// The revision of the ring it replaces.
        ring_revision: i64,
        /// The ring record with its copies.
        stored: StoredRing,
        /// What happened to the stored ring.
        why: String,
    },
    /// Seal copies of the stored ring for `members` and write them alone; feed back
    /// [`Event::SealedCopies`] or [`Event::Refused`].
    SealCopies {
        /// The term.
        term: Term,
        /// The revision of the stored ring.
        ring_revision: i64,
        /// Who.
        members: Vec<String>,
    },
    /// Compact the store's history up to `revision`: no revision before it holds copies of
    /// the `dropped` epochs.
    Purge {
        /// The write's revision.
        revision: i64,
        /// The epochs it dropped.
        dropped: Vec<u64>,
    },
}

/// The result of performing an action.
#[derive(Debug, Clone)]
pub enum Event {
    /// The campaign's answer: elected in a term, not elected, or a store error.
    Campaigned(Result<Option<Term>, String>),
    /// A [`Action::Write`] landed at `revision`.
    Wrote {
        /// The store revision.
        revision: i64,
        /// Why it was written.
        why: Why,
        /// The ring it replaced.
        before: Option<KeyRing>,
        /// The ring.
        ring: KeyRing,
    },
    /// A [`Action::Restore`] landed at `revision`.
    Restored {
        /// The store revision.
        revision: i64,
        /// Its generation.
        generation: u64,
        /// What had happened.
        why: String,
    },
    /// A [`Action::SealCopies`] landed at `revision` (None: no copy could be sealed).
    SealedCopies(Option<i64>),
    /// A leader write was refused or failed.
    Refused(CoordError),
    /// A member's record was removed (`removed`), or was not there or held a lease again.
    Forgot {
        /// Who.
        member: String,
    },
    /// The liveness lease ended.
    LeaseLost,
}

/// What to do, and when to decide again at the latest (None: at the runtime's own schedule).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// In order.
    pub actions: Vec<Action>,
    /// When to decide again.
    pub wake_at: Option<Instant>,
}

impl Plan {
    fn wake(wake_at: Instant) -> Plan {
        Plan {
            actions: Vec::new(),
            wake_at: Some(wake_at),
        }
    }

    fn with(mut self, action: Action) -> Plan {
        self.actions.push(action);
        self
    }

    fn report(self, report: Report) -> Plan {
        self.with(Action::Report(report))
    }

    /// Joins `other`'s actions after these, and the earlier wake.
    pub fn then(mut self, other: Plan) -> Plan {
        self.actions.extend(other.actions);
        self.wake_at = match (self.wake_at, other.wake_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self
    }
}

/// What a node keeps about leading: its role, and the leader's memory that outlives a pass.
#[derive(Debug, Clone, Default)]
pub struct Leading {
    /// Where it stands.
    pub role: Role,
    /// When it last made each rate-limited kind of write.
    pub pace: Pace,
    /// The store revision of its last write: what a watch carried is used only once it
    /// includes that write.
    pub written_at: i64,
    /// The next pass reads the store rather than take what the watch carried.
    pub read_fresh: bool,
    /// Until when it does not campaign: its clock was found ahead of its members'.
    clock_paused_until: Option<Instant>,
    /// Why its own certificate did not verify, as last logged.
    own_certificate: Option<String>,
    /// The last status line logged about a waiting rotation or paced requests.
    last_wait: Option<String>,
    /// The last "nobody can repair the ring" line logged.
    last_stuck: Option<String>,
    /// Rotation requests already audited.
    requests_seen: BTreeSet<String>,
}

impl Leading {
    /// The leader's part of a pass over `i.snap` at `now`, drawing new keys from `keys`.
    pub fn plan(&mut self, i: &Inputs<'_>, now: Now, keys: &mut dyn KeySource) -> Plan {
        if let Some(e) = i.own_certificate {
            // A node whose own certificate does not verify would write rings every other node
            // refuses: it steps down and does not campaign.
            let mut plan = Plan::wake(now.mono + BACKOFF_MAX);
            if self.own_certificate.as_deref() != Some(e) {
                self.own_certificate = Some(e.to_owned());
                plan = plan.report(Report::OwnCertificate(e.to_owned()));
            }
            if let Some(term) = self.step_down() {
                plan = plan.with(Action::Resign {
                    term,
                    why: Resignation::OwnCertificate,
                });
            }
            return plan;
        }
        self.own_certificate = None;
        let paused = self.clock_paused_until.is_some_and(|t| now.mono < t);
        let mut plan = Plan::default();
        match election(i.me, &self.role, i.snap, i.held, paused) {
            Election::Follow => return plan,
            Election::Abstain(why) => return plan.report(Report::NotCampaigning(why)),
            Election::Campaign => {
                return match self.role.lease() {
                    Some(lease) => plan.with(Action::Campaign { lease }),
                    None => plan,
                }
            }
            Election::Adopt(term) => {
                self.role.elected(term);
                plan = plan.report(Report::Elected {
                    term,
                    adopted: true,
                });
            }
            Election::Lost(term) => {
                self.step_down();
                let plan = plan.report(Report::LeadershipLost(term));
                // Its leader key is gone (its lease ended): campaign on the next pass.
                return match i.snap.leader {
                    None => Plan {
                        wake_at: Some(now.mono),
                        ..plan
                    },
                    Some(_) => plan,
                };
            }
            Election::Lead(_) => {}
        }
        let Some(term) = self.role.term() else {
            return plan;
        };
        plan = self.audit(i.snap, plan);
        if let Some(lead) = self.role.leadership() {
            let due = housekeeping::dead_to_forget(
                &mut lead.dead_since,
                i.snap,
                now.mono,
                i.settings.forget_dead_after,
            );
            if !due.is_empty() {
                plan = plan.with(Action::Forget { term, members: due });
            }
        }
        plan = self.requests_paced(i, now, plan);
        let view = LeaderView {
            me: i.me,
            snap: i.snap,
            held: i.held,
            newest_seen: i.newest_seen,
            floor: i.floor,
            accepted: i.accepted.filter(|_| i.accepted_verifies),
            policy: i.settings.policy,
            now: now.wall,
            mono: now.mono,
            pace: self.pace,
            min_request_interval: i.settings.min_request_interval,
            data_key_write: i.data_key_write,
            signer: i.signer,
            history: i.history,
        };
        let step = leader_step(&view, keys);
        self.pace.performing(&step, now.mono);
        plan.then(self.perform(step, term, i.snap, now))
    }

    /// The actions of the leader's `step` in `term`.
    fn perform(&mut self, step: Step, term: Term, snap: &Snapshot, now: Now) -> Plan {
        let ring_revision = snap.ring_revision;
        let soon = Plan::wake(now.mono + BACKOFF_MIN);
        match step {
            Step::StepDown { ahead } => {
                // Keys stamped in the members' future: their key-age figures and any later
                // leader's schedule would be off by as much. Let a member with a sane clock lead.
                self.clock_paused_until = Some(now.mono + stek_store::clock::CLOCK_COOLDOWN);
                self.step_down();
                soon.with(Action::Resign {
                    term,
                    why: Resignation::ClockAhead { ahead },
                })
            }
            Step::HandOver { to, why } => {
                self.step_down();
                soon.with(Action::Resign {
                    term,
                    why: Resignation::HandOver { to, why },
                })
            }
            Step::Restore { stored, why } => soon.with(Action::Restore {
                term,
                ring_revision,
                stored,
                why,
            }),
            Step::SealCopies { members } => soon.with(Action::SealCopies {
                term,
                ring_revision,
                members,
            }),
            Step::Write {
                ring,
                served,
                why,
                before,
            } => soon.with(Action::Write {
                term,
                ring_revision,
                ring,
                served,
                why,
                before,
            }),
            Step::Stuck { why } => {
                let plan = Plan::wake(now.mono + BACKOFF_MAX);
                if self.last_stuck.as_ref() == Some(&why) {
                    return plan;
                }
                self.last_stuck = Some(why.clone());
                plan.report(Report::Stuck(why))
            }
            Step::Failed { why } => Plan::wake(now.mono + BACKOFF_MAX).report(Report::Failed(why)),
            Step::Wait { decision, until } => {
                let plan = Plan::wake(now.mono_at(until));
                match decision {
                    Some(Decision::Wait { reason, blocked_by }) => {
                        let who: Vec<String> = blocked_by.iter().map(ToString::to_string).collect();
                        let line = format!("{reason:?} rotation waits for {}", who.join(", "));
                        self.say_once(line, plan, Report::Waits)
                    }
                    Some(Decision::Idle { .. }) if snap.requests.is_empty() => {
                        self.last_wait = None;
                        plan
                    }
                    _ => plan,
                }
            }
        }
    }

    /// It leads no more: the next pass decides on a fresh read, never on what a watch carried
    /// from before (that would still show its own leader key under its own lease, and it would
    /// adopt the term it just gave up). The term it led in, if it led.
    fn step_down(&mut self) -> Option<Term> {
        let term = self.role.step_down();
        self.read_fresh |= term.is_some();
        term
    }

    /// Logs `line` through `report` unless it was the last status line logged.
    fn say_once(&mut self, line: String, plan: Plan, report: fn(String) -> Report) -> Plan {
        if self.last_wait.as_ref() == Some(&line) {
            return plan;
        }
        self.last_wait = Some(line.clone());
        plan.report(report(line))
    }

    /// Pending requests that must wait for `min_request_interval` say so, once.
    fn requests_paced(&mut self, i: &Inputs<'_>, now: Now, plan: Plan) -> Plan {
        let interval = i.settings.min_request_interval;
        let next = self.pace.requests_due(now.wall, now.mono, interval);
        if i.snap.requests.is_empty() || now.wall >= next {
            return plan;
        }
        let line = format!(
            "requests paced: next at {}",
            humantime_serde::re::humantime::format_rfc3339_seconds(next)
        );
        if self.last_wait.as_ref() == Some(&line) {
            return plan;
        }
        self.last_wait = Some(line);
        plan.report(Report::RequestsPaced { interval, next })
    }

    /// Audits, as the leader sees them, members that stopped being live and new requests.
    fn audit(&mut self, snap: &Snapshot, mut plan: Plan) -> Plan {
        let live: BTreeSet<String> = snap
            .members
            .iter()
            .filter(|m| m.live)
            .map(|m| m.record.node_id.clone())
            .collect();
        if let Some(lead) = self.role.leadership() {
            // Its first pass has no earlier view to compare with.
            let gone: Vec<String> = if lead.live_seen.is_empty() {
                Vec::new()
            } else {
                lead.live_seen.difference(&live).cloned().collect()
            };
            if !gone.is_empty() {
                plan = plan.report(Report::Expired(gone));
            }
            lead.live_seen = live;
        }
        let new: Vec<(String, String)> = snap
            .requested_by
            .iter()
            .filter(|(key, _)| self.requests_seen.insert(key.clone()))
            .cloned()
            .collect();
        self.requests_seen
            .retain(|k| snap.requests.iter().any(|r| r == k));
        if new.is_empty() {
            plan
        } else {
            plan.report(Report::Requested(new))
        }
    }

    /// What performing an action came to, at `now`, with `settings`: more actions, and the
    /// role moved.
    pub fn on(&mut self, event: Event, now: Now, settings: &Settings) -> Plan {
        match event {
            Event::Campaigned(Ok(Some(term))) => {
                self.role.elected(term);
                // Decide on a fresh read that includes its own leader key (a term is the
                // revision that wrote it): what a watch carried from before it would show no
                // leader, and this node would drop the term it just won.
                self.written_at = self.written_at.max(term.0);
                Plan::wake(now.mono).report(Report::Elected {
                    term,
                    adopted: false,
                })
            }
            Event::Campaigned(Ok(None)) => Plan::default(),
            Event::Campaigned(Err(e)) => {
                Plan::wake(now.mono + BACKOFF_MIN).report(Report::CampaignFailed(e))
            }
            Event::Wrote {
                revision,
                why,
                before,
                ring,
            } => {
                self.written_at = self.written_at.max(revision);
                self.pace.written(&why, now.mono);
                let dropped = match &why {
                    Why::Decision(_) => {
                        self.last_wait = None;
                        housekeeping::purge_after(
                            before.as_ref(),
                            &ring,
                            settings.compact_history,
                            revision,
                        )
                    }
                    Why::Rekey => {
                        housekeeping::purge_after(None, &ring, settings.compact_history, revision)
                    }
                    Why::WriteBack(_) | Why::Reseal(_) => None,
                };
                let plan = Plan::default().report(Report::Written { why, before, ring });
                match dropped {
                    Some(dropped) => plan.with(Action::Purge { revision, dropped }),
                    None => plan,
                }
            }
            Event::Restored {
                revision,
                generation,
                why,
            } => {
                self.written_at = self.written_at.max(revision);
                Plan::default().report(Report::Restored { generation, why })
            }
            Event::SealedCopies(revision) => {
                if let Some(r) = revision {
                    self.written_at = self.written_at.max(r);
                }
                Plan::default()
            }
            Event::Refused(e) => {
                let refusal = housekeeping::after_failed_write(&e);
                self.read_fresh |= refusal.read_fresh;
                if refusal.leadership_lost {
                    self.step_down();
                }
                let refused = match e {
                    CoordError::Fenced(term) => Refused::Fenced(term),
                    CoordError::Conflict => Refused::Conflict,
                    other => Refused::Failed(other.to_string()),
                };
                Plan::default().report(Report::Refused(refused))
            }
            Event::Forgot { member } => {
                if let Some(lead) = self.role.leadership() {
                    lead.dead_since.remove(&member);
                }
                Plan::default()
            }
            Event::LeaseLost => match self.role.lease_ended() {
                // The leadership was bound to that lease: it is gone with it, whether or not
                // the store hears the resignation.
                Some(term) => Plan::default().with(Action::Resign {
                    term,
                    why: Resignation::LeaseEnded,
                }),
                None => Plan::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use stek_core::OsKeySource;
    use stek_store::Leader;

    const LEASE: LeaseId = LeaseId(7);
    const TERM: Term = Term(11);

    fn settings() -> Settings {
        Settings {
            policy: policy(),
            min_request_interval: Duration::from_secs(60),
            forget_dead_after: Duration::from_secs(600),
            compact_history: true,
        }
    }

    fn inputs<'a>(snap: &'a Snapshot, held: Held<'a>) -> Inputs<'a> {
        Inputs {
            me: ME,
            snap,
            held,
            newest_seen: 0,
            floor: None,
            accepted: None,
            accepted_verifies: true,
            own_certificate: None,
            data_key_write: None,
            signer: None,
            history: &NO_HISTORY,
            settings: settings(),
        }
    }

    fn now(secs: u64) -> Now {
        Now {
            wall: t(secs),
            mono: mono() + Duration::from_secs(secs),
        }
    }

    fn follower() -> Leading {
        let mut l = Leading::default();
        l.role.joined(LEASE);
        l
    }

    fn leader() -> Leading {
        let mut l = follower();
        l.role.elected(TERM);
        l
    }

    /// `s` with this node leading in [`TERM`].
    fn led(mut s: Snapshot) -> Snapshot {
        s.leader = Some(Leader {
            node_id: ME.into(),
            term: TERM,
            lease: LEASE,
        });
        s
    }

    fn reports(plan: &Plan) -> Vec<&Report> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Report(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn doing(plan: &Plan) -> Vec<&Action> {
        plan.actions
            .iter()
            .filter(|a| !matches!(a, Action::Report(_)))
            .collect()
    }

    /// Every branch of the election, one row each: the role before, the store's leader, and
    /// what the plan does and where the role ends.
    #[test]
    fn the_plan_follows_the_election() {
        let r = ring_at(3, t(0));
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        let s = snap(
            Some((&r, ME, &[ME, "n2"])),
            &[m(ME).acked(&r), m("n2").acked(&r)],
        );
        let other = {
            let mut o = s.clone();
            o.leader = Some(Leader {
                node_id: "n2".into(),
                term: Term(12),
                lease: LeaseId(9),
            });
            o
        };
        let adopted = {
            let mut a = led(s.clone());
            a.leader.as_mut().unwrap().term = Term(13);
            a
        };
        type Row<'a> = (&'a str, Leading, &'a Snapshot, Vec<Action>, bool, bool);
        let rows: Vec<Row<'_>> = vec![
            // (situation, before, store, actions other than reports, leads after, wakes now)
            (
                "joining: nothing",
                Leading::default(),
                &s,
                vec![],
                false,
                false,
            ),
            (
                "a follower, nobody leads: campaign",
                follower(),
                &s,
                vec![Action::Campaign { lease: LEASE }],
                false,
                false,
            ),
            (
                "another leads: follow",
                follower(),
                &other,
                vec![],
                false,
                false,
            ),
            (
                "a leader, another leads now: lost, no wake",
                leader(),
                &other,
                vec![],
                false,
                false,
            ),
            (
                "a leader, nobody leads: lost, campaign at once",
                leader(),
                &s,
                vec![],
                false,
                true,
            ),
            (
                "its own id under its own lease: the lost reply's term is adopted",
                follower(),
                &adopted,
                vec![],
                true,
                false,
            ),
        ];
        for (situation, mut before, store, actions, leads, wakes_now) in rows {
            let at = now(1);
            let led_before = before.role.leads();
            let plan = before.plan(&inputs(store, held), at, &mut OsKeySource);
            let done: Vec<Action> = doing(&plan).into_iter().cloned().collect();
            assert_eq!(done, actions, "{situation}");
            assert_eq!(before.role.leads(), leads, "{situation}");
            assert_eq!(
                before.read_fresh,
                led_before && !leads,
                "a leadership given up is followed by a fresh read: {situation}"
            );
            assert_eq!(plan.wake_at == Some(at.mono), wakes_now, "{situation}");
        }
        let mut l = follower();
        let plan = l.plan(&inputs(&adopted, held), now(1), &mut OsKeySource);
        assert_eq!(
            reports(&plan).first(),
            Some(&&Report::Elected {
                term: Term(13),
                adopted: true
            })
        );
    }

    /// A node whose own certificate stops verifying steps down and resigns, says so once, and
    /// decides again only after [`BACKOFF_MAX`]; once it verifies again it campaigns.
    #[test]
    fn a_node_whose_certificate_fails_steps_down_and_does_not_campaign() {
        let r = ring_at(3, t(0));
        let s = led(snap(Some((&r, ME, &[ME])), &[m(ME).acked(&r)]));
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        let bad = Inputs {
            own_certificate: Some("expired"),
            ..inputs(&s, held)
        };
        let mut l = leader();
        let plan = l.plan(&bad, now(1), &mut OsKeySource);
        assert_eq!(
            doing(&plan),
            vec![&Action::Resign {
                term: TERM,
                why: Resignation::OwnCertificate
            }]
        );
        assert_eq!(
            reports(&plan),
            vec![&Report::OwnCertificate("expired".into())]
        );
        assert_eq!(plan.wake_at, Some(now(1).mono + BACKOFF_MAX));
        assert!(!l.role.leads());
        assert!(
            l.read_fresh,
            "what the watch carried still shows it leading"
        );
        let again = l.plan(&bad, now(2), &mut OsKeySource);
        assert!(again.actions.is_empty(), "said once: {again:?}");
        let mut no_leader = s.clone();
        no_leader.leader = None;
        let fixed = l.plan(&inputs(&no_leader, held), now(3), &mut OsKeySource);
        assert_eq!(doing(&fixed), vec![&Action::Campaign { lease: LEASE }]);
    }

    /// A leader whose clock runs ahead of its members' resigns and does not campaign for the
    /// cool-down; after it, it campaigns again.
    #[test]
    fn a_leader_ahead_of_its_members_resigns_and_waits_out_the_cool_down() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let r = ring_at(2, t(0) + year);
        let s = led(snap(
            Some((&r, ME, &[ME, "n2"])),
            &[m(ME).acked(&r), m("n2").acked(&r).at(t(5))],
        ));
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        let mut l = leader();
        let at = Now {
            wall: t(0) + year,
            mono: mono(),
        };
        let plan = l.plan(&inputs(&s, held), at, &mut OsKeySource);
        assert!(matches!(
            doing(&plan).as_slice(),
            [Action::Resign {
                term: TERM,
                why: Resignation::ClockAhead { .. }
            }]
        ));
        assert!(!l.role.leads());
        assert!(
            l.read_fresh,
            "what the watch carried still shows it leading"
        );
        let mut none = s.clone();
        none.leader = None;
        let later = Now {
            mono: at.mono + Duration::from_secs(1),
            ..at
        };
        let paused = l.plan(&inputs(&none, held), later, &mut OsKeySource);
        assert!(matches!(
            reports(&paused).as_slice(),
            [Report::NotCampaigning(_)]
        ));
        let cooled = Now {
            mono: at.mono + stek_store::clock::CLOCK_COOLDOWN,
            ..at
        };
        let plan = l.plan(&inputs(&none, held), cooled, &mut OsKeySource);
        assert_eq!(doing(&plan), vec![&Action::Campaign { lease: LEASE }]);
    }

    /// A leader that cannot open the ring hands over to a member that can: it resigns first.
    #[test]
    fn a_hand_over_resigns_the_term() {
        let r = ring_at(3, t(0));
        let s = led(snap(Some((&r, "n2", &["n2"])), &[m(ME), m("n2").acked(&r)]));
        let mut l = leader();
        let plan = l.plan(&inputs(&s, Held::default()), now(1), &mut OsKeySource);
        assert!(matches!(
            doing(&plan).as_slice(),
            [Action::Resign { term: TERM, why: Resignation::HandOver { to, .. } }] if to == "n2"
        ));
        assert!(!l.role.leads());
        assert!(
            l.read_fresh,
            "what the watch carried still shows it leading"
        );
    }

    /// The leader audits a member that stops being live once, and a request once; a member
    /// dead for `forget_dead_after` is forgotten, and leaves the leader's memory once the
    /// store removed it.
    #[test]
    fn the_leader_audits_expiries_and_requests_and_forgets_the_long_dead() {
        let r = ring_at(3, t(0));
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        let live = led(snap(
            Some((&r, ME, &[ME, "n2"])),
            &[m(ME).acked(&r), m("n2").acked(&r)],
        ));
        let mut dead = led(snap(
            Some((&r, ME, &[ME, "n2"])),
            &[m(ME).acked(&r), m("n2").acked(&r).dead()],
        ));
        let mut l = leader();
        let first = l.plan(&inputs(&live, held), now(1), &mut OsKeySource);
        assert!(reports(&first).is_empty(), "nothing to audit: {first:?}");
        let plan = l.plan(&inputs(&dead, held), now(2), &mut OsKeySource);
        assert_eq!(reports(&plan), vec![&Report::Expired(vec!["n2".into()])]);
        let again = l.plan(&inputs(&dead, held), now(3), &mut OsKeySource);
        assert!(reports(&again).is_empty(), "once: {again:?}");
        // A request is audited once, and forgotten once it is served.
        dead.requests = vec!["requests/a".into()];
        dead.requested_by = vec![("requests/a".into(), "operator".into())];
        let asked = l.plan(&inputs(&dead, held), now(4), &mut OsKeySource);
        assert!(reports(&asked).contains(&&Report::Requested(vec![(
            "requests/a".into(),
            "operator".into()
        )])));
        let asked_again = l.plan(&inputs(&dead, held), now(5), &mut OsKeySource);
        assert!(!reports(&asked_again)
            .iter()
            .any(|r| matches!(r, Report::Requested(_))));
        dead.requests.clear();
        dead.requested_by.clear();
        // Dead since t = 2: forgotten at t = 2 + forget_dead_after, not before.
        let before = l.plan(&inputs(&dead, held), now(601), &mut OsKeySource);
        assert!(!doing(&before)
            .iter()
            .any(|a| matches!(a, Action::Forget { .. })));
        let due = l.plan(&inputs(&dead, held), now(602), &mut OsKeySource);
        assert!(doing(&due).contains(&&Action::Forget {
            term: TERM,
            members: vec!["n2".into()]
        }));
        l.on(
            Event::Forgot {
                member: "n2".into(),
            },
            now(602),
            &settings(),
        );
        let fresh = l.plan(&inputs(&dead, held), now(603), &mut OsKeySource);
        assert!(
            !doing(&fresh)
                .iter()
                .any(|a| matches!(a, Action::Forget { .. })),
            "its dead time starts again: {fresh:?}"
        );
    }

    /// What each result fed back does: the role, the revision a watch must reach, a fresh
    /// read, a purge, and when to decide again.
    #[test]
    fn every_event_moves_the_state_as_its_result_says() {
        let r = ring_at(3, t(0));
        let r4 = ring_at(4, t(10));
        let at = now(1);
        let s = settings();
        // A campaign won: a leader, reading from its own leader key on, at once.
        let mut l = follower();
        let plan = l.on(Event::Campaigned(Ok(Some(Term(40)))), at, &s);
        assert_eq!(l.role.term(), Some(Term(40)));
        assert_eq!(l.written_at, 40);
        assert_eq!(plan.wake_at, Some(at.mono));
        // Lost, or failed: a follower; a failure decides again after BACKOFF_MIN.
        let mut l = follower();
        assert_eq!(l.on(Event::Campaigned(Ok(None)), at, &s), Plan::default());
        let plan = l.on(Event::Campaigned(Err("down".into())), at, &s);
        assert_eq!(plan.wake_at, Some(at.mono + BACKOFF_MIN));
        assert!(!l.role.leads());
        // A re-key (new keys over a ring nobody could open): purged, when the config compacts.
        let rekeyed = Event::Wrote {
            revision: 90,
            why: Why::Rekey,
            before: None,
            ring: r4.clone(),
        };
        let mut l = leader();
        let plan = l.on(rekeyed.clone(), at, &s);
        assert_eq!(l.written_at, 90);
        assert_eq!(
            doing(&plan),
            vec![&Action::Purge {
                revision: 90,
                dropped: vec![]
            }]
        );
        let keep = Settings {
            compact_history: false,
            ..s
        };
        assert!(doing(&leader().on(rekeyed, at, &keep)).is_empty());
        // A decision that kept every key: nothing to purge.
        let kept = Event::Wrote {
            revision: 92,
            why: Why::Decision(Decision::Bootstrap),
            before: Some(r.clone()),
            ring: r4.clone(),
        };
        assert!(doing(&leader().on(kept, at, &s)).is_empty());
        // A reseal or a write-back drops nothing: no purge.
        let resealed = Event::Wrote {
            revision: 91,
            why: Why::Reseal(vec!["n2".into()]),
            before: None,
            ring: r4.clone(),
        };
        assert!(doing(&leader().on(resealed, at, &s)).is_empty());
        // Restored and copies: the revision only.
        let mut l = leader();
        l.on(
            Event::Restored {
                revision: 95,
                generation: 3,
                why: "replayed".into(),
            },
            at,
            &s,
        );
        l.on(Event::SealedCopies(Some(97)), at, &s);
        l.on(Event::SealedCopies(None), at, &s);
        assert_eq!(l.written_at, 97);
        // Fenced: the leadership is gone; a conflict keeps it; both read fresh.
        let mut l = leader();
        l.on(Event::Refused(CoordError::Fenced(TERM)), at, &s);
        assert!(!l.role.leads() && l.read_fresh);
        let mut l = leader();
        let plan = l.on(Event::Refused(CoordError::Conflict), at, &s);
        assert!(l.role.leads() && l.read_fresh);
        assert_eq!(reports(&plan), vec![&Report::Refused(Refused::Conflict)]);
        // A lost lease ends a leadership bound to it: resign; a follower just rejoins.
        let mut l = leader();
        let plan = l.on(Event::LeaseLost, at, &s);
        assert_eq!(
            doing(&plan),
            vec![&Action::Resign {
                term: TERM,
                why: Resignation::LeaseEnded
            }]
        );
        assert_eq!(l.role, Role::Joining);
        let mut l = follower();
        assert_eq!(l.on(Event::LeaseLost, at, &s), Plan::default());
        assert_eq!(l.role, Role::Joining);
    }

    /// The leader's steps become actions fenced on its term and the ring's revision, with
    /// when to decide again; status lines that repeat are logged once.
    #[test]
    fn each_step_becomes_its_action_and_repeats_are_said_once() {
        let at = now(1);
        // No ring: bootstrap, written under the term and the ring's revision.
        let s = led(snap(None, &[m(ME), m("n2")]));
        let mut l = leader();
        let plan = l.plan(&inputs(&s, Held::default()), at, &mut OsKeySource);
        assert!(matches!(
            doing(&plan).as_slice(),
            [Action::Write {
                term: TERM,
                ring_revision: 1,
                why: Why::Decision(Decision::Bootstrap),
                ..
            }]
        ));
        assert_eq!(plan.wake_at, Some(at.mono + BACKOFF_MIN));
        // A staged key waits for n2's acknowledgement: said once, decided again at the
        // decision's time.
        let r = ring_at(3, t(0));
        let held = Held {
            opened: Some(&r),
            applied: Some(&r),
        };
        let s = led(snap(
            Some((&r, ME, &[ME, "n2"])),
            &[m(ME).acked(&r), m("n2").applied(2)],
        ));
        let mut l = leader();
        let at = now(3600);
        let plan = l.plan(&inputs(&s, held), at, &mut OsKeySource);
        assert!(
            matches!(reports(&plan).as_slice(), [Report::Waits(w)] if w.contains("n2")),
            "{plan:?}"
        );
        assert!(doing(&plan).is_empty());
        let again = l.plan(&inputs(&s, held), at, &mut OsKeySource);
        assert!(again.actions.is_empty(), "said once: {again:?}");
        // A ring nobody can repair: said once, decided again after BACKOFF_MAX.
        let mut broken = led(snap(None, &[m(ME), m("n2")]));
        broken.ring = RingSlot::Rejected(stek_store::RecordError::UnknownKey);
        let mut l = leader();
        let plan = l.plan(&inputs(&broken, Held::default()), at, &mut OsKeySource);
        assert!(matches!(reports(&plan).as_slice(), [Report::Stuck(_)]));
        assert_eq!(plan.wake_at, Some(at.mono + BACKOFF_MAX));
        let again = l.plan(&inputs(&broken, Held::default()), at, &mut OsKeySource);
        assert!(again.actions.is_empty(), "said once: {again:?}");
    }
}
