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

use stek_coord::seal::MemberKeyId;

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
/// there. `current` is the key the floor names, if it is held; one other key is `next` (the
/// one announced before the restart); anything beyond two keys (never left by this code, but
/// a state directory can be tampered with) is erased, and a missing `next` is made.
pub fn on_start(held: &[MemberKeyId], floor: Option<&Floor>) -> (Roles, Vec<Action>) {
    let current = floor.map(|f| f.key).filter(|k| held.contains(k));
    let mut others = held.iter().copied().filter(|k| Some(*k) != current);
    let next = others.next();
    let mut actions: Vec<Action> = others.map(Action::Erase).collect();
    if next.is_none() {
        actions.push(Action::MakeNext);
    }
    (Roles { current, next }, actions)
}

/// After this node opened a stored ring (admitted by [`super::floor::admit`]) with the key
/// `opened.key`: what to write and erase before the ring is applied.
pub fn on_open(roles: Roles, floor: Option<&Floor>, opened: Floor) -> Vec<Action> {
    let key = opened.key;
    if roles.next == Some(key) {
        let mut actions = vec![Action::WriteFloor(opened)];
        if let Some(old) = roles.current.filter(|c| *c != key) {
            actions.push(Action::Erase(old));
        }
        actions.extend([Action::Promote, Action::MakeNext]);
        return actions;
    }
    if roles.current == Some(key) && floor != Some(&opened) {
        return vec![Action::WriteFloor(opened)];
    }
    Vec::new()
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
    use stek_coord::seal::Identity;
    use stek_core::RingDigest;

    fn id() -> MemberKeyId {
        Identity::generate().public().id()
    }

    fn floor(generation: u64, key: MemberKeyId) -> Floor {
        Floor {
            generation,
            digest: RingDigest::from_hex(&format!("{generation:032x}")).unwrap(),
            term: 1,
            writer: "n1".into(),
            last_epoch: generation + 1,
            key,
        }
    }

    #[test]
    fn a_start_keeps_the_floors_key_and_one_announced_key_and_makes_what_is_missing() {
        let (a, b, c) = (id(), id(), id());
        let f = floor(5, a);
        // (what, held, floor, expected roles, expected actions)
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

    #[test]
    fn opening_with_next_ratchets_and_opening_with_current_only_moves_the_floor() {
        let (a, b) = (id(), id());
        let both = Roles {
            current: Some(a),
            next: Some(b),
        };
        let f5 = floor(5, a);
        // A ring sealed to the announced key: floor, erase the old, promote, make the next.
        assert_eq!(
            on_open(both, Some(&f5), floor(6, b)),
            vec![
                Action::WriteFloor(floor(6, b)),
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
            on_open(joiner, None, floor(6, b)),
            vec![
                Action::WriteFloor(floor(6, b)),
                Action::Promote,
                Action::MakeNext
            ]
        );
        // The acknowledgement that announced b was lost: the ring is sealed to a. The floor
        // moves; nothing is erased and b stays announced.
        assert_eq!(
            on_open(both, Some(&f5), floor(6, a)),
            vec![Action::WriteFloor(floor(6, a))]
        );
        // The floor's own ring opened again (a restart): nothing at all.
        assert_eq!(on_open(both, Some(&f5), f5.clone()), vec![]);
        // A copy of the floor's ring resealed to next (a restart, then a copy for the key it
        // announced): a ratchet like any other.
        let resealed = Floor {
            key: b,
            ..f5.clone()
        };
        assert_eq!(
            on_open(both, Some(&f5), resealed.clone())[..2],
            [Action::WriteFloor(resealed), Action::Erase(a)]
        );
        // A key it does not hold cannot have opened anything: no action.
        assert_eq!(on_open(both, Some(&f5), floor(7, id())), vec![]);
    }

    #[test]
    fn never_more_than_two_keys_and_the_roles_follow_the_actions() {
        let (a, b, c) = (id(), id(), id());
        let both = Roles {
            current: Some(a),
            next: Some(b),
        };
        let actions = on_open(both, Some(&floor(5, a)), floor(6, b));
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
        // A lost acknowledgement changes no role.
        let actions = on_open(both, Some(&floor(5, a)), floor(6, a));
        assert_eq!(after(both, &actions, None), both);
    }
}
