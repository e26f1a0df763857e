//! Never a weak key (issue 23): a key drawn for a ring is refused, before anything is written,
//! if a working random source could not have produced it.
//!
//! Hebrok et al. (2023) found all-zero session ticket keys on 1.9 % of the top 100k sites, and
//! AWS's load balancers shipped an uninitialised one in 2020-21. A working source fails these
//! checks by chance with odds of 2^-128 or less (but for a rekey's, see `fresh_key`), so a
//! refusal means the source is broken (a failed read, a buffer never filled, a generator
//! restored from a snapshot or reseeded with an old seed).
//! A refused key is never redrawn: a second draw from a broken source proves nothing, and a
//! retry here would bury the one sign of it. The leader writes nothing, says why, and its
//! next pass draws again, while the nodes keep serving the keys they have.

use std::collections::VecDeque;
use std::fmt;

use crate::key::{Fingerprint, KeySource, KeySourceError, TicketKey, NAME_LEN};
use crate::ring::{KeyRing, RingError, RingKey};

/// One 16-byte block of a key: its name, or a half of its AES or HMAC key.
///
/// Keys are checked block by block rather than part by part because the 48-byte formats use
/// only the first half of the AES and HMAC keys: a zero or repeated first half is a zero or
/// repeated key in their files, and a name equal to one prints that key in every ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart {
    /// The 16-byte name.
    Name,
    /// The AES key's first 16 bytes (all of it, for the 48-byte formats).
    AesFirst,
    /// The AES key's last 16 bytes.
    AesSecond,
    /// The HMAC key's first 16 bytes (all of it, for the 48-byte formats).
    HmacFirst,
    /// The HMAC key's last 16 bytes.
    HmacSecond,
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyPart::Name => "name",
            KeyPart::AesFirst => "AES key's first half",
            KeyPart::AesSecond => "AES key's second half",
            KeyPart::HmacFirst => "HMAC key's first half",
            KeyPart::HmacSecond => "HMAC key's second half",
        })
    }
}

fn blocks(key: &TicketKey) -> [(KeyPart, &[u8]); 5] {
    let (aes, hmac) = (key.aes256(), key.hmac256());
    [
        (KeyPart::Name, &key.name()[..]),
        (KeyPart::AesFirst, &aes[..16]),
        (KeyPart::AesSecond, &aes[16..]),
        (KeyPart::HmacFirst, &hmac[..16]),
        (KeyPart::HmacSecond, &hmac[16..]),
    ]
}

/// What was wrong with a freshly drawn key. No variant shows key bytes: at most the
/// fingerprint of a name, which every ticket carries anyway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeakKey {
    /// The source could not deliver bytes.
    #[error("{0}")]
    Source(#[from] KeySourceError),
    /// A block is all zeros.
    #[error("its {0} is all zeros, which a working random source does not return")]
    Zero(KeyPart),
    /// A block equals another block of the same key or of a key of the ring being built.
    #[error("its {part} repeats {}, which a working random source does not do", repeated(*.other, *.epoch))]
    Repeat {
        /// The new key's block.
        part: KeyPart,
        /// The block it repeats.
        other: KeyPart,
        /// The epoch of the key that holds `other`; `None` for the new key itself.
        epoch: Option<u64>,
    },
    /// The name is one an earlier key of the cluster had.
    #[error("its name (key {0}) already named an earlier key of this cluster, which a working random source does not repeat")]
    SeenName(Fingerprint),
}

fn repeated(other: KeyPart, epoch: Option<u64>) -> String {
    match epoch {
        Some(epoch) => format!("the {other} of the key of epoch {epoch}"),
        None => format!("its own {other}"),
    }
}

/// The names of keys in the rings a node opened, oldest first, at most [`KeyHistory::MAX`]:
/// the leader refuses a new key whose name one of them had. A name that comes back means the
/// source repeats itself, and then so may the key bytes. Names are public (they lead every
/// ticket), so keeping them costs nothing in secrecy.
#[derive(Clone, Default)]
pub struct KeyHistory {
    names: VecDeque<[u8; NAME_LEN]>,
}

impl KeyHistory {
    /// How many names are kept: at two rotations a day, more than five years of keys. The
    /// oldest go first.
    pub const MAX: usize = 4096;

    /// An empty history.
    pub const fn new() -> Self {
        Self {
            names: VecDeque::new(),
        }
    }

    /// Adds the names of `ring`'s keys that are not already known.
    pub fn remember(&mut self, ring: &KeyRing) {
        for k in ring.keys() {
            if !self.contains(k.key.name()) {
                self.names.push_back(*k.key.name());
            }
        }
        while self.names.len() > Self::MAX {
            self.names.pop_front();
        }
    }

    /// Whether a key of a remembered ring had this name.
    pub fn contains(&self, name: &[u8; NAME_LEN]) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// How many names are remembered.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name is remembered.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl fmt::Debug for KeyHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names are public, but a log is no place for 4096 of them.
        f.debug_struct("KeyHistory")
            .field("names", &self.names.len())
            .finish()
    }
}

/// Draws the key for `epoch`, refusing it if it is weak: a failed read, a zero block, a block
/// that repeats another of its own or of a key in `ring` (the ring being built), a name in
/// `history`, or a name whose fingerprint is in `replaced` (the keys of a ring this one
/// replaces without holding their bytes; a fingerprint is 32 bits, so a working source is
/// refused here about once in a few hundred million rekeys, and the next pass draws again).
pub(crate) fn fresh_key(
    source: &mut dyn KeySource,
    epoch: u64,
    ring: &[RingKey],
    history: &KeyHistory,
    replaced: &[Fingerprint],
) -> Result<TicketKey, RingError> {
    let refused = |why| RingError::WeakKey { epoch, why };
    let key = TicketKey::generate(source).map_err(|e| refused(e.into()))?;
    let own = blocks(&key);
    if let Some((part, _)) = own.iter().find(|(_, b)| b.iter().all(|x| *x == 0)) {
        return Err(refused(WeakKey::Zero(*part)));
    }
    for (i, (part, block)) in own.iter().enumerate() {
        if let Some((other, _)) = own[..i].iter().find(|(_, b)| b == block) {
            return Err(refused(WeakKey::Repeat {
                part: *part,
                other: *other,
                epoch: None,
            }));
        }
        for k in ring {
            if let Some((other, _)) = blocks(&k.key).iter().find(|(_, b)| b == block) {
                return Err(refused(WeakKey::Repeat {
                    part: *part,
                    other: *other,
                    epoch: Some(k.epoch),
                }));
            }
        }
    }
    if history.contains(key.name()) || replaced.contains(&key.fingerprint()) {
        return Err(refused(WeakKey::SeenName(key.fingerprint())));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::tests::seeded;
    use crate::ring::Policy;
    use crate::rotation::{next_ring, Decision, RotateReason};
    use std::time::{Duration, SystemTime};

    /// A source whose every byte is zero: an unfilled buffer taken for random bytes.
    struct Zeros;
    impl KeySource for Zeros {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeySourceError> {
            buf.fill(0);
            Ok(())
        }
    }

    /// A source stuck on one byte.
    struct Stuck(u8);
    impl KeySource for Stuck {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeySourceError> {
            buf.fill(self.0);
            Ok(())
        }
    }

    /// A source whose reads fail, as getrandom does under a seccomp filter that forbids it.
    struct Failing;
    impl KeySource for Failing {
        fn fill(&mut self, _: &mut [u8]) -> Result<(), KeySourceError> {
            Err(KeySourceError::Os(
                "Function not implemented (os error 38)".into(),
            ))
        }
    }

    /// A source that gives the same bytes over and over (a generator restored from a snapshot):
    /// every key it makes is `key`.
    struct Replay(Vec<u8>, usize);
    impl Replay {
        fn of(key: &TicketKey) -> Self {
            Self([&key.name()[..], key.aes256(), key.hmac256()].concat(), 0)
        }
    }
    impl KeySource for Replay {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeySourceError> {
            for b in buf {
                *b = self.0[self.1 % self.0.len()];
                self.1 += 1;
            }
            Ok(())
        }
    }

    fn policy() -> Policy {
        Policy {
            interval: Duration::from_secs(60),
            retain: 1,
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    /// The ring every operation below starts from: epochs 1 (active) and 2 (staged).
    fn base() -> KeyRing {
        KeyRing::bootstrap(t(0), &policy(), &mut seeded(1), &KeyHistory::new()).unwrap()
    }

    /// Every way a new key enters a ring.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Bootstrap,
        Rotated,
        Rekeyed,
        NextRingBootstrap,
        NextRingRotate,
        /// `next_ring` on a ring that lost its staged key.
        Restage,
    }
    const OPS: [Op; 6] = [
        Op::Bootstrap,
        Op::Rotated,
        Op::Rekeyed,
        Op::NextRingBootstrap,
        Op::NextRingRotate,
        Op::Restage,
    ];

    fn run(
        op: Op,
        source: &mut dyn KeySource,
        history: &KeyHistory,
    ) -> Result<Option<KeyRing>, RingError> {
        let (p, base, rotate) = (policy(), base(), Decision::Rotate(RotateReason::Scheduled));
        match op {
            Op::Bootstrap => KeyRing::bootstrap(t(0), &p, source, history).map(Some),
            Op::Rotated => base.rotated(t(60), &p, source, history).map(Some),
            Op::Rekeyed => KeyRing::rekeyed(&base.meta(), t(60), &p, source, history).map(Some),
            Op::NextRingBootstrap => {
                next_ring(&Decision::Bootstrap, None, t(0), &p, source, history)
            }
            Op::NextRingRotate => next_ring(&rotate, Some(&base), t(60), &p, source, history),
            Op::Restage => {
                let lost = base.dropping(&[2]);
                next_ring(&rotate, Some(&lost), t(60), &p, source, history)
            }
        }
    }

    /// The epoch of the first key an operation draws.
    fn first_epoch(op: Op) -> u64 {
        match op {
            Op::Bootstrap | Op::NextRingBootstrap => 1,
            _ => 3,
        }
    }

    /// A ring made before, from the source the "history" case draws from again.
    fn seen_before() -> KeyRing {
        KeyRing::bootstrap(t(0), &policy(), &mut seeded(7), &KeyHistory::new()).unwrap()
    }

    struct Case {
        case: &'static str,
        source: fn() -> Box<dyn KeySource>,
        /// Whether the history holds the names of [`seen_before`].
        with_history: bool,
        /// For each operation, the epoch and the reason of the refusal.
        refusal: fn(Op) -> (u64, WeakKey),
        says: &'static str,
    }

    const CASES: [Case; 5] = [
        Case {
            case: "all zeros",
            source: || Box::new(Zeros),
            with_history: false,
            refusal: |op| (first_epoch(op), WeakKey::Zero(KeyPart::Name)),
            says: "its name is all zeros",
        },
        Case {
            case: "stuck on one byte",
            source: || Box::new(Stuck(0x5a)),
            with_history: false,
            refusal: |op| {
                let why = WeakKey::Repeat {
                    part: KeyPart::AesFirst,
                    other: KeyPart::Name,
                    epoch: None,
                };
                (first_epoch(op), why)
            },
            says: "its AES key's first half repeats its own name",
        },
        Case {
            case: "failed read",
            source: || Box::new(Failing),
            with_history: false,
            refusal: |op| {
                let e = KeySourceError::Os("Function not implemented (os error 38)".into());
                (first_epoch(op), WeakKey::Source(e))
            },
            says:
                "the operating system's random source (getrandom) failed: Function not implemented",
        },
        Case {
            case: "the same key again",
            source: || Box::new(Replay::of(&base().active().key)),
            with_history: false,
            refusal: |op| match op {
                // The first key is new to an empty ring; the second repeats it.
                Op::Bootstrap | Op::NextRingBootstrap => (2, name_of(1)),
                // A rekey knows only the fingerprints of the ring it replaces.
                Op::Rekeyed => (3, WeakKey::SeenName(base().active().fingerprint())),
                Op::Rotated | Op::NextRingRotate | Op::Restage => (3, name_of(1)),
            },
            says: "repeat",
        },
        Case {
            case: "a name from the history",
            source: || Box::new(seeded(7)),
            with_history: true,
            refusal: |op| {
                let why = WeakKey::SeenName(seen_before().active().fingerprint());
                (first_epoch(op), why)
            },
            says: "already named an earlier key of this cluster",
        },
    ];

    #[test]
    fn a_weak_key_is_refused_by_every_way_into_a_ring_and_says_why() {
        let mut history = KeyHistory::new();
        history.remember(&seen_before());
        for c in &CASES {
            let history = if c.with_history {
                &history
            } else {
                &KeyHistory::new()
            };
            for op in OPS {
                let got = run(op, &mut *(c.source)(), history);
                let (epoch, why) = (c.refusal)(op);
                let case = c.case;
                assert_eq!(
                    got,
                    Err(RingError::WeakKey { epoch, why }),
                    "{case}, {op:?}"
                );
                let msg = got.unwrap_err().to_string();
                assert!(msg.contains(c.says), "{case}, {op:?}: {msg}");
                assert!(
                    msg.starts_with(&format!("refused the new key for epoch {epoch}: "))
                        && msg.contains("the leader wrote nothing")
                        && msg.contains("keep serving the keys they have"),
                    "{case}, {op:?}: {msg}"
                );
                // No key bytes: no byte array, no hex longer than a fingerprint.
                let longest_hex = msg
                    .split(|c: char| !c.is_ascii_hexdigit())
                    .map(str::len)
                    .max();
                assert!(
                    !msg.contains('[') && longest_hex <= Some(8),
                    "{case}, {op:?}: {msg}"
                );
            }
        }
        // The same operations with a working source and no history succeed.
        for op in OPS {
            assert!(
                run(op, &mut seeded(7), &KeyHistory::new()).is_ok(),
                "{op:?}"
            );
        }
    }

    fn name_of(epoch: u64) -> WeakKey {
        WeakKey::Repeat {
            part: KeyPart::Name,
            other: KeyPart::Name,
            epoch: Some(epoch),
        }
    }

    #[test]
    fn every_block_of_a_key_is_checked() {
        // (block filled with zeros or copied, what is refused) for one fresh key in a ring
        // whose key of epoch 1 is `base().active()`.
        let old = base().active().key.clone();
        let fresh = || TicketKey::generate(&mut seeded(99)).unwrap();
        let parts = |k: &TicketKey| (*k.name(), *k.aes256(), *k.hmac256());
        let cases: [(&str, TicketKey, WeakKey); 6] = [
            (
                "zero second AES half",
                {
                    let (n, mut a, h) = parts(&fresh());
                    a[16..].fill(0);
                    TicketKey::from_parts(n, a, h)
                },
                WeakKey::Zero(KeyPart::AesSecond),
            ),
            (
                "zero first HMAC half",
                {
                    let (n, a, mut h) = parts(&fresh());
                    h[..16].fill(0);
                    TicketKey::from_parts(n, a, h)
                },
                WeakKey::Zero(KeyPart::HmacFirst),
            ),
            (
                "zero second HMAC half",
                {
                    let (n, a, mut h) = parts(&fresh());
                    h[16..].fill(0);
                    TicketKey::from_parts(n, a, h)
                },
                WeakKey::Zero(KeyPart::HmacSecond),
            ),
            (
                "name equals its AES-128 key",
                {
                    let (n, mut a, h) = parts(&fresh());
                    a[..16].copy_from_slice(&n);
                    TicketKey::from_parts(n, a, h)
                },
                WeakKey::Repeat {
                    part: KeyPart::AesFirst,
                    other: KeyPart::Name,
                    epoch: None,
                },
            ),
            (
                "HMAC key equals the old key's AES key",
                {
                    let (n, a, _) = parts(&fresh());
                    TicketKey::from_parts(n, a, *old.aes256())
                },
                WeakKey::Repeat {
                    part: KeyPart::HmacFirst,
                    other: KeyPart::AesFirst,
                    epoch: Some(1),
                },
            ),
            (
                "AES key equals the old key's",
                {
                    let (n, _, h) = parts(&fresh());
                    TicketKey::from_parts(n, *old.aes256(), h)
                },
                WeakKey::Repeat {
                    part: KeyPart::AesFirst,
                    other: KeyPart::AesFirst,
                    epoch: Some(1),
                },
            ),
        ];
        for (case, key, why) in cases {
            let got = base().rotated(t(60), &policy(), &mut Replay::of(&key), &KeyHistory::new());
            assert_eq!(got, Err(RingError::WeakKey { epoch: 3, why }), "{case}");
        }
        let good = base().rotated(
            t(60),
            &policy(),
            &mut Replay::of(&fresh()),
            &KeyHistory::new(),
        );
        assert!(good.is_ok());
    }

    #[test]
    fn the_history_remembers_each_name_once_and_forgets_the_oldest_beyond_its_bound() {
        let mut src = seeded(3);
        let first = KeyRing::bootstrap(t(0), &policy(), &mut src, &KeyHistory::new()).unwrap();
        let mut history = KeyHistory::new();
        assert!(history.is_empty());
        history.remember(&first);
        history.remember(&first);
        assert_eq!(history.len(), 2, "a ring seen again adds nothing");
        let second = first.rotated(t(60), &policy(), &mut src, &history).unwrap();
        history.remember(&second);
        assert_eq!(history.len(), 3, "only the new key's name is added");
        // Two names a ring: up to one short of the bound.
        while history.len() + 2 <= KeyHistory::MAX {
            let r = KeyRing::bootstrap(t(0), &policy(), &mut src, &history).unwrap();
            history.remember(&r);
        }
        assert!(history.contains(first.active().key.name()));
        let last = KeyRing::bootstrap(t(0), &policy(), &mut src, &history).unwrap();
        history.remember(&last);
        assert_eq!(history.len(), KeyHistory::MAX);
        assert!(
            !history.contains(first.active().key.name()),
            "the oldest went first"
        );
        assert!(history.contains(first.staged().unwrap().key.name()));
        assert!(history.contains(last.staged().unwrap().key.name()));
        assert_eq!(format!("{history:?}"), "KeyHistory { names: 4096 }");
    }
}
