//! Where a node stands ([`Role`]), and what it keeps only while it stands there: a leader's
//! memory of who was live and who has been dead since when belongs to its leadership, and
//! goes with it, so that a later leadership starts its own view.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use stek_store::{LeaseId, Term};

/// What a leader remembers of its own leadership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    /// Members it saw live on its last pass (to audit the ones that go).
    pub live_seen: BTreeSet<String>,
    /// Members it has seen dead (no liveness lease), since when without a break
    /// ([`super::housekeeping::dead_to_forget`]).
    pub dead_since: BTreeMap<String, Instant>,
}

/// Where this node stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Role {
    /// No liveness lease (starting, or rejoining after losing it).
    #[default]
    Joining,
    /// Live under `lease`, not leading.
    Follower {
        /// Its lease.
        lease: LeaseId,
    },
    /// Leading in `term`, under `lease`.
    Leader {
        /// Its lease.
        lease: LeaseId,
        /// Its term.
        term: Term,
        /// What it keeps while it leads.
        leadership: Leadership,
    },
}

impl Role {
    /// Its liveness lease, if it holds one.
    pub fn lease(&self) -> Option<LeaseId> {
        match self {
            Role::Joining => None,
            Role::Follower { lease } | Role::Leader { lease, .. } => Some(*lease),
        }
    }

    /// Its term, if it leads.
    pub fn term(&self) -> Option<Term> {
        match self {
            Role::Leader { term, .. } => Some(*term),
            _ => None,
        }
    }

    /// Whether it leads.
    pub fn leads(&self) -> bool {
        self.term().is_some()
    }

    /// Its leadership's memory, if it leads.
    pub fn leadership(&mut self) -> Option<&mut Leadership> {
        match self {
            Role::Leader { leadership, .. } => Some(leadership),
            _ => None,
        }
    }

    /// It joined under `lease`: a follower (whatever it was, a new lease starts anew).
    pub fn joined(&mut self, lease: LeaseId) {
        *self = Role::Follower { lease };
    }

    /// It won (or adopted) `term` under its lease: a leader with a fresh memory. Without a
    /// lease nothing changes: a leadership is bound to one.
    pub fn elected(&mut self, term: Term) {
        if let Some(lease) = self.lease() {
            if self.term() != Some(term) {
                *self = Role::Leader {
                    lease,
                    term,
                    leadership: Leadership::default(),
                };
            }
        }
    }

    /// It leads no more (it resigned, was fenced, or saw another leader); the term it led
    /// in, if it led. Its lease stays.
    pub fn step_down(&mut self) -> Option<Term> {
        let term = self.term();
        if let Role::Leader { lease, .. } = self {
            *self = Role::Follower { lease: *lease };
        }
        term
    }

    /// Its lease ended (lost, or revoked as it leaves): it joins again, and a leadership bound
    /// to that lease ends with it; the term it led in, if it led.
    pub fn lease_ended(&mut self) -> Option<Term> {
        let term = self.term();
        *self = Role::Joining;
        term
    }
}

/// Who holds this node's id, as far as the node can tell from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Without `[identity]` no record is signed: a second process cannot be told from a key a
    /// store writer put there, and a live process is assumed (the refusal of issue 15).
    Unverifiable,
    /// A member record of this node id, signed with a certificate for it, names another
    /// instance: a second process of this node id, on another box.
    SignedByAnother,
    /// Nothing signed names the holder: a key a store writer put there. It is waited out and
    /// reported, never obeyed: a store writer must not be able to stop a node.
    Unsigned,
}

/// What a node whose id is held by another live lease does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldNodeId {
    /// Try again after `retry`: the holder may be a process killed a moment ago, whose lease
    /// lives out its TTL.
    Wait {
        /// How long it waits in all.
        patience: Duration,
        /// When to try again.
        retry: Duration,
    },
    /// Held for longer than any dead process's lease lives: a second live process has this
    /// node id, and two processes with one node id would answer for each other.
    Refuse {
        /// How long it waited.
        patience: Duration,
    },
    /// Held by a key nothing signed names: keep trying, and report it (the node serves the
    /// keys it has meanwhile), however long it lasts.
    Contested {
        /// When to try again.
        retry: Duration,
    },
}

/// How long a node waits for a held node id: two lease TTLs and two seconds, more than a dead
/// process's lease outlives it (one TTL, plus a renewal in flight).
pub fn held_patience(lease_ttl: Duration) -> Duration {
    lease_ttl * 2 + Duration::from_secs(2)
}

/// What a node does at `now` when its node id has been held by another live lease since
/// `since`, by `holder` ([`HeldNodeId`]).
pub fn on_held_node_id(
    since: Instant,
    now: Instant,
    lease_ttl: Duration,
    holder: Holder,
) -> HeldNodeId {
    let patience = held_patience(lease_ttl);
    if holder == Holder::Unsigned {
        return HeldNodeId::Contested {
            retry: Duration::from_secs(2).min(lease_ttl),
        };
    }
    if now.saturating_duration_since(since) >= patience {
        HeldNodeId::Refuse { patience }
    } else {
        HeldNodeId::Wait {
            patience,
            retry: Duration::from_millis(500),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: LeaseId = LeaseId(7);
    const T: Term = Term(3);

    fn leader() -> Role {
        let mut r = Role::Joining;
        r.joined(L);
        r.elected(T);
        r
    }

    #[test]
    fn every_transition_from_every_role() {
        let follower = Role::Follower { lease: L };
        // (what, from, transition, to, term returned)
        type Step = fn(&mut Role) -> Option<Term>;
        let rows: Vec<(&str, Role, Step, Role, Option<Term>)> = vec![
            (
                "a joiner joins",
                Role::Joining,
                |r| {
                    r.joined(L);
                    None
                },
                follower.clone(),
                None,
            ),
            (
                "a joiner cannot be elected without a lease",
                Role::Joining,
                |r| {
                    r.elected(T);
                    None
                },
                Role::Joining,
                None,
            ),
            (
                "a follower is elected",
                follower.clone(),
                |r| {
                    r.elected(T);
                    None
                },
                leader(),
                None,
            ),
            (
                "a follower steps down: nothing",
                follower.clone(),
                Role::step_down,
                follower.clone(),
                None,
            ),
            (
                "a leader steps down to a follower under its lease",
                leader(),
                Role::step_down,
                follower.clone(),
                Some(T),
            ),
            (
                "a leader's lease ends: it joins again",
                leader(),
                Role::lease_ended,
                Role::Joining,
                Some(T),
            ),
            (
                "a follower's lease ends",
                follower.clone(),
                Role::lease_ended,
                Role::Joining,
                None,
            ),
            (
                "a leader that joins again under a new lease is a follower",
                leader(),
                |r| {
                    r.joined(LeaseId(8));
                    None
                },
                Role::Follower { lease: LeaseId(8) },
                None,
            ),
        ];
        for (what, mut from, step, to, term) in rows {
            assert_eq!(step(&mut from), term, "{what}");
            assert_eq!(from, to, "{what}");
        }
    }

    #[test]
    fn a_leadership_keeps_its_memory_for_its_term_only() {
        let mut r = leader();
        r.leadership().unwrap().live_seen.insert("n2".into());
        // Elected again in the same term (an adopted campaign reply): the memory stays.
        r.elected(T);
        assert!(r.leadership().unwrap().live_seen.contains("n2"));
        // Stepped down and elected again: a fresh memory.
        r.step_down();
        assert!(r.leadership().is_none());
        r.elected(Term(4));
        assert_eq!(r.leadership().unwrap(), &mut Leadership::default());
        assert_eq!(
            (r.lease(), r.term(), r.leads()),
            (Some(L), Some(Term(4)), true)
        );
    }

    /// A node id held by a second process (or where nothing can tell) is waited for two TTLs
    /// and two seconds, retried every half second, then refused; a clock that steps back
    /// counts as no time passed. One held by a key nothing signed names is tried again and
    /// again, never refused.
    #[test]
    fn a_held_node_id_is_waited_out_for_a_dead_process_then_refused() {
        let ttl = Duration::from_secs(10);
        let t0 = Instant::now();
        let patience = Duration::from_secs(22);
        let wait = HeldNodeId::Wait {
            patience,
            retry: Duration::from_millis(500),
        };
        let rows = [
            ("just found held", t0, wait),
            (
                "one TTL: a dead process's lease may still live",
                t0 + ttl,
                wait,
            ),
            (
                "a moment before the patience ends",
                t0 + patience - Duration::from_millis(1),
                wait,
            ),
            (
                "at the patience: a live process",
                t0 + patience,
                HeldNodeId::Refuse { patience },
            ),
            (
                "long after",
                t0 + patience * 10,
                HeldNodeId::Refuse { patience },
            ),
        ];
        for holder in [Holder::Unverifiable, Holder::SignedByAnother] {
            for (what, now, expected) in rows {
                assert_eq!(
                    on_held_node_id(t0, now, ttl, holder),
                    expected,
                    "{what}, {holder:?}"
                );
            }
        }
        assert_eq!(
            on_held_node_id(t0 + ttl, t0, ttl, Holder::Unverifiable),
            wait,
            "since after now: nothing elapsed"
        );
        // A key nothing signed names is never obeyed, however long it holds.
        for (what, now, _) in rows {
            assert_eq!(
                on_held_node_id(t0, now, ttl, Holder::Unsigned),
                HeldNodeId::Contested {
                    retry: Duration::from_secs(2)
                },
                "{what}"
            );
        }
    }
}
