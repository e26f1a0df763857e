//! Where a node stands ([`Role`]), and what it keeps only while it stands there: a leader's
//! memory of who was live and who has been dead since when belongs to its leadership, and
//! goes with it, so that a later leadership starts its own view.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

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
}
