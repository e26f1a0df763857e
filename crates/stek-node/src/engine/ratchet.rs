//! The sealing-key ratchet, pure: which private keys a member keeps, and when it erases one
//! (I12: a box taken later yields only the rings it could still apply).
//!
//! A member holds at most two X25519 private keys, on its RAM disk: `current`, which opens its
//! copy of the ring it accepted last (its [`Floor`]), and `next`, whose public half it
//! announced in its latest acknowledgement or registration. The leader seals each new ring's
//! copy to the newest key the member announced. When the member opens a ring with `next`, it
//! writes the floor, erases the old `current` (no ring it may reopen after a restart needs
//! it: the floor refuses every older ring), makes `next` its `current` and makes a fresh
//! `next` to announce. A ring that arrives sealed to `current` (the leader had not seen the
//! last announcement yet: a lost or late acknowledgement, a new leader that read before it)
//! moves the floor and erases nothing. The runtime performs the [`Action`]s in order (the
//! state module writes and erases the files) before it applies the ring.

use stek_core::RingDigest;
use stek_store::seal::MemberKeyId;

use super::floor::Floor;

/// Which of the held keys plays which part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    /// Opens the copy of the floor's ring.
    pub current: Option<MemberKeyId>,
    /// Announced; the next ring is sealed to it.
    pub next: Option<MemberKeyId>,
}

/// One step of the ratchet, performed in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the rollback floor (before anything is erased or applied).
    WriteFloor(Floor),
    /// Overwrite and unlink this private key, and sync the directory.
    Erase(MemberKeyId),
    /// `next` becomes `current`.
    Promote,
    /// Make, write and announce a fresh `next`.
    MakeNext,
}

/// At a start: the keys found in the state directory (`held`, sorted) and the floor read
/// there. `current` is the key the floor names, if it is held; the key the floor retired
/// (a kill came between the floor and the erase) is erased; one other key is `next` (the one
/// announced before the restart); anything beyond (never left by this code, but a state
/// directory can be tampered with) is erased, and a missing `next` is made.
pub fn on_start(held: &[MemberKeyId], floor: Option<&Floor>) -> (Roles, Vec<Action>) {
    let current = floor.map(|f| f.key).filter(|k| held.contains(k));
    let retire = floor
        .and_then(|f| f.retire)
        .filter(|k| held.contains(k) && Some(*k) != current);
    let mut actions: Vec<Action> = retire.into_iter().map(Action::Erase).collect();
    let mut others = held
        .iter()
        .copied()
        .filter(|k| Some(*k) != current && Some(*k) != retire);
    let next = others.next();
    actions.extend(others.map(Action::Erase));
    if next.is_none() {
        actions.push(Action::MakeNext);
    }
    (Roles { current, next }, actions)
}

/// Which held key may open a copy sealed to `recipient` of the ring `(generation, digest)`:
/// `next` for the floor's ring or a newer one, `current` for the floor's ring only. `None`:
/// this node does not open that copy (sealed to a key it no longer holds, or to `current`
/// for another ring than the floor's: the leader seals it one for the announced key).
pub fn opening_key(
    roles: Roles,
    floor: Option<&Floor>,
    generation: u64,
    digest: RingDigest,
    recipient: MemberKeyId,
) -> Option<MemberKeyId> {
    let is_floor = floor.is_some_and(|f| f.generation == generation && f.digest == digest);
    let above = floor.is_none_or(|f| generation > f.generation);
    if roles.next == Some(recipient) && (is_floor || above) {
        return Some(recipient);
    }
    (roles.current == Some(recipient) && is_floor).then_some(recipient)
}

/// After this node opened a stored ring (admitted by [`super::floor::admit`]) with the key
/// `opened.key` ([`opening_key`]): what to write and erase before the ring is applied. A
/// `next` that could not be made before (a full RAM disk) is made now.
pub fn on_open(roles: Roles, opened: Floor) -> Vec<Action> {
    let key = opened.key;
    if roles.next == Some(key) {
        let retire = roles.current.filter(|c| *c != key);
        let mut actions = vec![Action::WriteFloor(Floor { retire, ..opened })];
        actions.extend(retire.map(Action::Erase));
        actions.extend([Action::Promote, Action::MakeNext]);
        return actions;
    }
    if roles.next.is_none() {
        return vec![Action::MakeNext];
    }
    Vec::new()
}

/// A copy of a ring this node refuses (older than its floor, or not its leader's) opened with
/// `next`: a leader sealed an old ring to the key this node keeps next, which would open it
/// once it is `current`. The key is erased and another announced.
pub fn on_refused(roles: Roles, opened_with: MemberKeyId) -> Vec<Action> {
    if roles.next == Some(opened_with) {
        vec![Action::Erase(opened_with), Action::MakeNext]
    } else {
        Vec::new()
    }
}

/// The roles after `actions` ran (`made`: the key each `MakeNext` made).
pub fn after(mut roles: Roles, actions: &[Action], made: Option<MemberKeyId>) -> Roles {
    for a in actions {
        match a {
            Action::Erase(k) => {
                if roles.current == Some(*k) {
                    roles.current = None;
                }
                if roles.next == Some(*k) {
                    roles.next = None;
                }
            }
            Action::Promote => {
                roles.current = roles.next.take();
            }
            Action::MakeNext => roles.next = made,
            Action::WriteFloor(_) => {}
        }
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use stek_store::seal::Identity;

    fn id() -> MemberKeyId {
        Identity::generate().public().id()
    }

    fn floor(generation: u64, key: MemberKeyId) -> Floor {
        Floor {
            generation,
            digest: digest(generation),
            term: 1,
            writer: "n1".into(),
            last_epoch: generation + 1,
            key,
            retire: None,
        }
    }

    fn digest(generation: u64) -> RingDigest {
        RingDigest::from_hex(&format!("{generation:032x}")).unwrap()
    }

    #[test]
    fn a_start_keeps_the_floors_key_and_one_announced_key_and_makes_what_is_missing() {
        let (a, b, c) = (id(), id(), id());
        let f = floor(5, a);
        let retiring = Floor {
            retire: Some(c),
            ..f.clone()
        };
        type Row<'a> = (
            &'a str,
            Vec<MemberKeyId>,
            Option<&'a Floor>,
            Roles,
            Vec<Action>,
        );
        let rows: Vec<Row<'_>> = vec![
            (
                "a boot: nothing held",
                vec![],
                None,
                Roles::default(),
                vec![Action::MakeNext],
            ),
            (
                "a first start that never opened a ring, restarted",
                vec![b],
                None,
                Roles {
                    current: None,
                    next: Some(b),
                },
                vec![],
            ),
            (
                "a restart with both keys",
                vec![a, b],
                Some(&f),
                Roles {
                    current: Some(a),
                    next: Some(b),
                },
                vec![],
            ),
            (
                "killed between erasing the old key and making the next",
                vec![a],
                Some(&f),
                Roles {
                    current: Some(a),
                    next: None,
                },
                vec![Action::MakeNext],
            ),
            (
                "killed between the floor and the erase: the retired key is erased, never next",
                vec![a, c],
                Some(&retiring),
                Roles {
                    current: Some(a),
                    next: None,
                },
                vec![Action::Erase(c), Action::MakeNext],
            ),
            (
                "the retired key already erased: nothing to do for it",
                vec![a, b],
                Some(&retiring),
                Roles {
                    current: Some(a),
                    next: Some(b),
                },
                vec![],
            ),
            (
                "the floor's key is gone (removed by hand): the floor stays",
                vec![b],
                Some(&f),
                Roles {
                    current: None,
                    next: Some(b),
                },
                vec![],
            ),
            (
                "three keys (a tampered directory): the extra is erased",
                vec![a, b, c],
                Some(&f),
                Roles {
                    current: Some(a),
                    next: Some(b),
                },
                vec![Action::Erase(c)],
            ),
        ];
        for (what, held, fl, roles, actions) in rows {
            assert_eq!(on_start(&held, fl), (roles, actions), "{what}");
        }
    }

    /// `current` opens the floor's ring only; `next` the floor's ring or a newer one; a key
    /// this node does not hold, nothing.
    #[test]
    fn only_next_opens_a_newer_ring_and_current_only_the_floors() {
        let (a, b, other) = (id(), id(), id());
        let roles = Roles {
            current: Some(a),
            next: Some(b),
        };
        let f = floor(5, a);
        type Row<'a> = (
            &'a str,
            Option<&'a Floor>,
            u64,
            RingDigest,
            MemberKeyId,
            Option<MemberKeyId>,
        );
        let rows: Vec<Row<'_>> = vec![
            ("next, a newer ring", Some(&f), 6, digest(6), b, Some(b)),
            (
                "next, the floor's ring (resealed after a restart)",
                Some(&f),
                5,
                digest(5),
                b,
                Some(b),
            ),
            ("next, an older ring", Some(&f), 4, digest(4), b, None),
            (
                "next, another ring of the floor's generation",
                Some(&f),
                5,
                digest(99),
                b,
                None,
            ),
            (
                "current, the floor's ring (a restart)",
                Some(&f),
                5,
                digest(5),
                a,
                Some(a),
            ),
            (
                "current, a newer ring (a lost or replayed announcement)",
                Some(&f),
                6,
                digest(6),
                a,
                None,
            ),
            ("current, an older ring", Some(&f), 4, digest(4), a, None),
            (
                "a key this node does not hold",
                Some(&f),
                6,
                digest(6),
                other,
                None,
            ),
            (
                "no floor: next opens any ring",
                None,
                3,
                digest(3),
                b,
                Some(b),
            ),
        ];
        for (what, fl, g, d, recipient, expect) in rows {
            assert_eq!(opening_key(roles, fl, g, d, recipient), expect, "{what}");
        }
    }

    #[test]
    fn opening_with_next_ratchets_and_the_floor_names_the_key_it_retires() {
        let (a, b) = (id(), id());
        let both = Roles {
            current: Some(a),
            next: Some(b),
        };
        assert_eq!(
            on_open(both, floor(6, b)),
            vec![
                Action::WriteFloor(Floor {
                    retire: Some(a),
                    ..floor(6, b)
                }),
                Action::Erase(a),
                Action::Promote,
                Action::MakeNext
            ]
        );
        // A joiner (or the first ring after a boot): nothing to erase.
        let joiner = Roles {
            current: None,
            next: Some(b),
        };
        assert_eq!(
            on_open(joiner, floor(6, b)),
            vec![
                Action::WriteFloor(floor(6, b)),
                Action::Promote,
                Action::MakeNext
            ]
        );
        // The floor's own ring opened again with current (a restart): nothing at all.
        assert_eq!(on_open(both, floor(5, a)), vec![]);
        // ... unless no next could be made before (a full RAM disk): it is made now.
        let stuck = Roles {
            current: Some(a),
            next: None,
        };
        assert_eq!(on_open(stuck, floor(5, a)), vec![Action::MakeNext]);
    }

    #[test]
    fn a_refused_ring_that_opens_with_next_burns_next() {
        let (a, b) = (id(), id());
        let both = Roles {
            current: Some(a),
            next: Some(b),
        };
        let actions = on_refused(both, b);
        assert_eq!(actions, vec![Action::Erase(b), Action::MakeNext]);
        let c = id();
        assert_eq!(
            after(both, &actions, Some(c)),
            Roles {
                current: Some(a),
                next: Some(c)
            }
        );
        assert_eq!(
            on_refused(both, a),
            vec![],
            "current opens nothing it refuses"
        );
    }

    #[test]
    fn never_more_than_two_keys_and_the_roles_follow_the_actions() {
        let (a, b, c) = (id(), id(), id());
        let both = Roles {
            current: Some(a),
            next: Some(b),
        };
        let actions = on_open(both, floor(6, b));
        // Count the keys held after each action: erase comes before the new key is made.
        let mut held = 2i32;
        for act in &actions {
            match act {
                Action::Erase(_) => held -= 1,
                Action::MakeNext => held += 1,
                _ => {}
            }
            assert!(held <= 2, "{actions:?}");
        }
        assert_eq!(
            after(both, &actions, Some(c)),
            Roles {
                current: Some(b),
                next: Some(c)
            }
        );
    }
}
