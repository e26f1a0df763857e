//! The key ring: every key the cluster currently holds, each with its epoch and state, plus the
//! ring generation and the next rotation time (so a new leader continues the schedule, I8).
//!
//! ```text
//! staged ──(every live member acked)──▶ active ──(newer key active)──▶ retiring ──(retain over)──▶ gone
//! ```
//!
//! A ring value is immutable: every change produces a new ring with `generation + 1`.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::key::{Fingerprint, KeySource, TicketKey};
use crate::weak::{fresh_key, KeyHistory, WeakKey};

/// A key's place in the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// On every node as decrypt-only, waiting for every live member to acknowledge it.
    Staged,
    /// The one key that encrypts new tickets.
    Active,
    /// Decrypt-only, kept `retain` rotations so tickets issued under it still resume.
    Retiring,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            KeyState::Staged => "staged",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
        })
    }
}

/// What a ring holds for each key: the key itself ([`TicketKey`], on a node that opened the
/// ring), or only its [`Fingerprint`] (the ring's public description, which the store, `status`
/// and the leader's decisions see). Every rule about states, epochs and generations holds for
/// both.
pub trait KeyMaterial: Clone + PartialEq + Eq + fmt::Debug {
    /// The key's printable identity.
    fn fingerprint(&self) -> Fingerprint;

    /// Whether two keys share a name (as far as this material can tell).
    fn same_name(&self, other: &Self) -> bool;
}

impl KeyMaterial for TicketKey {
    fn fingerprint(&self) -> Fingerprint {
        TicketKey::fingerprint(self)
    }

    fn same_name(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl KeyMaterial for Fingerprint {
    fn fingerprint(&self) -> Fingerprint {
        *self
    }

    fn same_name(&self, other: &Self) -> bool {
        self == other
    }
}

/// One key in the ring with its lifecycle bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingKey<K = TicketKey> {
    /// Grows by one with every key the cluster creates; never reused.
    pub epoch: u64,
    /// Where the key is in its lifecycle.
    pub state: KeyState,
    /// When the leader created it.
    pub created_at: SystemTime,
    /// The ring generation that first contained this key (as staged, or as active at bootstrap).
    pub staged_in: u64,
    /// The generation in which a newer key replaced it as the encrypting key, once retiring.
    pub retired_in: Option<u64>,
    /// The key bytes (or, in a [`RingMeta`], only the key's fingerprint).
    pub key: K,
}

impl<K: KeyMaterial> RingKey<K> {
    /// The printable identity of the key.
    pub fn fingerprint(&self) -> Fingerprint {
        self.key.fingerprint()
    }

    /// The same bookkeeping with other key material.
    pub fn with_key<L>(&self, key: L) -> RingKey<L> {
        RingKey {
            epoch: self.epoch,
            state: self.state,
            created_at: self.created_at,
            staged_in: self.staged_in,
            retired_in: self.retired_in,
            key,
        }
    }
}

/// What the operator chose: how often to rotate and how many retiring keys to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Time between scheduled rotations.
    pub interval: Duration,
    /// Retiring keys kept for decryption; at least 1 (see [`Policy::validate`]).
    pub retain: usize,
}

impl Policy {
    /// The largest number of keys a ring under this policy holds: active + staged + retained.
    pub fn max_keys(&self) -> usize {
        2 + self.retain
    }

    /// Checks the policy for values that would break an invariant.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.retain == 0 {
            return Err(PolicyError::RetainZero);
        }
        if self.interval.is_zero() {
            return Err(PolicyError::ZeroInterval);
        }
        Ok(())
    }
}

/// A policy that cannot be honoured without breaking an invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// retain = 0 would remove the previous key while lagging peers may still encrypt with it.
    #[error("retain = 0 would delete the previous key while peers that have not applied the new ring still encrypt with it, losing their tickets; set retain to 1 or more")]
    RetainZero,
    /// A zero interval would rotate continuously.
    #[error("interval = 0 would rotate continuously; set a duration such as \"12h\"")]
    ZeroInterval,
}

/// The cluster's key ring at one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRing<K = TicketKey> {
    generation: u64,
    /// Sorted by epoch, oldest first.
    keys: Vec<RingKey<K>>,
    /// The highest epoch ever issued, kept even after that key is dropped, so that no epoch is
    /// ever used twice.
    last_epoch: u64,
    next_rotation_at: SystemTime,
}

/// A ring's public description: every key's bookkeeping and fingerprint, no key bytes. What
/// the store shows to anyone but the members that can open their sealed copy.
pub type RingMeta = KeyRing<Fingerprint>;

impl KeyRing {
    /// The very first ring of a cluster: one active and one staged key (generation 1). Refuses
    /// a weak key ([`crate::weak`]); `history` holds the names of keys seen before.
    pub fn bootstrap(
        now: SystemTime,
        policy: &Policy,
        source: &mut dyn KeySource,
        history: &KeyHistory,
    ) -> Result<Self, RingError> {
        let mut keys = Vec::with_capacity(2);
        for (epoch, state) in [(1, KeyState::Active), (2, KeyState::Staged)] {
            let key = fresh_key(source, epoch, &keys, history, &[])?;
            keys.push(RingKey {
                epoch,
                state,
                created_at: now,
                staged_in: 1,
                retired_in: None,
                key,
            });
        }
        Ok(Self {
            generation: 1,
            keys,
            last_epoch: 2,
            next_rotation_at: now + policy.interval,
        })
    }

    /// A fresh ring that continues `old`'s numbering: one active and one staged key with new
    /// epochs, at the next generation. For when no live member can open the stored ring (every
    /// member that held it restarted, so its keys are gone): as after a bootstrap, tickets
    /// issued before it no longer resume. Refuses a weak key, and one whose name has the
    /// fingerprint of a key of `old` (its bytes are unknown here, its fingerprints are not).
    pub fn rekeyed<L: KeyMaterial>(
        old: &KeyRing<L>,
        now: SystemTime,
        policy: &Policy,
        source: &mut dyn KeySource,
        history: &KeyHistory,
    ) -> Result<Self, RingError> {
        let replaced: Vec<Fingerprint> = old.keys.iter().map(RingKey::fingerprint).collect();
        Self::rekeyed_from(
            old.generation,
            old.last_epoch,
            &replaced,
            now,
            policy,
            source,
            history,
        )
    }

    /// [`KeyRing::rekeyed`] after a ring known only by its `generation`, its `last_epoch` and
    /// the fingerprints of its keys (`replaced`; a node's rollback floor, when the store holds
    /// no ring it may accept, knows none).
    pub fn rekeyed_from(
        generation: u64,
        last_epoch: u64,
        replaced: &[Fingerprint],
        now: SystemTime,
        policy: &Policy,
        source: &mut dyn KeySource,
        history: &KeyHistory,
    ) -> Result<Self, RingError> {
        let generation = generation.saturating_add(1);
        let first = last_epoch.saturating_add(1);
        let mut keys = Vec::with_capacity(2);
        for (epoch, state) in [(first, KeyState::Active), (first + 1, KeyState::Staged)] {
            let key = fresh_key(source, epoch, &keys, history, replaced)?;
            keys.push(RingKey {
                epoch,
                state,
                created_at: now,
                staged_in: generation,
                retired_in: None,
                key,
            });
        }
        Ok(Self {
            generation,
            keys,
            last_epoch: first + 1,
            next_rotation_at: now + policy.interval,
        })
    }

    /// The ring's identity: the digest of its description.
    pub fn digest(&self) -> RingDigest {
        self.meta().digest()
    }

    /// The ring's public description (fingerprints instead of key bytes).
    pub fn meta(&self) -> RingMeta {
        KeyRing {
            generation: self.generation,
            keys: self
                .keys
                .iter()
                .map(|k| k.with_key(k.key.fingerprint()))
                .collect(),
            last_epoch: self.last_epoch,
            next_rotation_at: self.next_rotation_at,
        }
    }

    /// The ring after one rotation: staged becomes active, active retires, a fresh key is
    /// staged, and retiring keys beyond `retain` are dropped. The caller (see
    /// [`crate::rotation::decide_at`]) makes sure every live member acknowledged the staged key
    /// first; that acknowledgement also proves nobody encrypts with the keys dropped here.
    /// Refuses a weak fresh key ([`crate::weak`]); `history` holds the names of keys seen
    /// before.
    pub fn rotated(
        &self,
        now: SystemTime,
        policy: &Policy,
        source: &mut dyn KeySource,
        history: &KeyHistory,
    ) -> Result<Self, RingError> {
        let generation = self.generation + 1;
        let staged = self.staged().ok_or(RingError::NoStagedKey)?.epoch;
        let next_epoch = self.last_epoch + 1;
        let mut keys: Vec<RingKey> = self
            .keys
            .iter()
            .cloned()
            .map(|mut k| {
                match k.state {
                    KeyState::Staged => k.state = KeyState::Active,
                    KeyState::Active => {
                        k.state = KeyState::Retiring;
                        k.retired_in = Some(generation);
                    }
                    KeyState::Retiring => {}
                }
                k
            })
            .collect();
        debug_assert!(keys.iter().any(|k| k.epoch == staged));
        let key = fresh_key(source, next_epoch, &keys, history, &[])?;
        keys.push(RingKey {
            epoch: next_epoch,
            state: KeyState::Staged,
            created_at: now,
            staged_in: generation,
            retired_in: None,
            key,
        });
        let ring = Self {
            generation,
            keys,
            last_epoch: next_epoch,
            next_rotation_at: now + policy.interval,
        };
        let expired = ring.expired_epochs(policy);
        Ok(ring.without(&expired))
    }
}

/// The largest generation or epoch a ring may carry: at one rotation a second it lasts nine
/// million years, and everything below it leaves room to add to without overflow. A record
/// above it is malformed (or hostile), never obeyed.
pub const MAX_GENERATION: u64 = 1 << 48;

/// A ring's identity: a digest of its public description (generation, schedule, and every
/// key's bookkeeping and fingerprint). Two rings of one generation with different keys have
/// different digests, so an acknowledgement names exactly the ring it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingDigest([u8; 16]);

impl RingDigest {
    /// Parses the 32 hex digits [`RingDigest`]'s `Display` writes.
    pub fn from_hex(text: &str) -> Option<Self> {
        crate::hex::parse(text).map(Self)
    }
}

impl std::fmt::Display for RingDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl RingMeta {
    /// The ring's identity. Times count in whole milliseconds, as the store records them, so
    /// a ring and its stored description have one digest.
    pub fn digest(&self) -> RingDigest {
        use sha2::{Digest, Sha256};
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let mut h = Sha256::new();
        h.update(b"stek ring digest v1\0");
        h.update(self.generation.to_be_bytes());
        h.update(self.last_epoch.to_be_bytes());
        h.update(ms(self.next_rotation_at).to_be_bytes());
        for k in &self.keys {
            h.update(k.epoch.to_be_bytes());
            h.update([k.state as u8]);
            h.update(ms(k.created_at).to_be_bytes());
            h.update(k.staged_in.to_be_bytes());
            h.update(
                k.retired_in
                    .map_or(0, |g| g.saturating_add(1))
                    .to_be_bytes(),
            );
            h.update(k.key.to_string().as_bytes());
        }
        let full = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        RingDigest(out)
    }

    /// The ring this description stands for, given the bytes of each of its keys. `None`
    /// unless every key is found and matches its fingerprint.
    pub fn with_keys(
        &self,
        mut key_of: impl FnMut(&RingKey<Fingerprint>) -> Option<TicketKey>,
    ) -> Option<KeyRing> {
        let mut keys = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            let key = key_of(k).filter(|key| key.fingerprint() == k.key)?;
            keys.push(k.with_key(key));
        }
        Some(KeyRing {
            generation: self.generation,
            keys,
            last_epoch: self.last_epoch,
            next_rotation_at: self.next_rotation_at,
        })
    }
}

impl<K: KeyMaterial> KeyRing<K> {
    /// Rebuilds a ring from parts (the store's record), checking every invariant that a ring
    /// alone can show, so a malformed record is rejected rather than applied.
    pub fn from_parts(
        generation: u64,
        mut keys: Vec<RingKey<K>>,
        last_epoch: u64,
        next_rotation_at: SystemTime,
        policy: &Policy,
    ) -> Result<Self, RingError> {
        keys.sort_by_key(|k| k.epoch);
        let ring = Self {
            generation,
            keys,
            last_epoch,
            next_rotation_at,
        };
        ring.check(policy)?;
        Ok(ring)
    }

    /// Builds a ring without checking it; only for transitions that preserve the invariants by
    /// construction (callers in this crate re-check in tests).
    pub(crate) fn from_parts_unchecked(
        generation: u64,
        keys: Vec<RingKey<K>>,
        last_epoch: u64,
        next_rotation_at: SystemTime,
    ) -> Self {
        Self {
            generation,
            keys,
            last_epoch,
            next_rotation_at,
        }
    }

    /// The ring with its times cut to whole milliseconds, as the store records them.
    pub fn to_millis(&self) -> Self {
        let cut = |t: SystemTime| {
            let ms = t
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
        };
        let mut ring = self.clone();
        ring.next_rotation_at = cut(ring.next_rotation_at);
        for k in &mut ring.keys {
            k.created_at = cut(k.created_at);
        }
        ring
    }

    /// The highest epoch this cluster ever issued; the next key gets `last_epoch() + 1`.
    pub fn last_epoch(&self) -> u64 {
        self.last_epoch
    }

    /// Grows with every change to the ring; nodes acknowledge the generation they applied.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the next scheduled rotation is due.
    pub fn next_rotation_at(&self) -> SystemTime {
        self.next_rotation_at
    }

    /// Every key, oldest epoch first.
    pub fn keys(&self) -> &[RingKey<K>] {
        &self.keys
    }

    /// The key that encrypts new tickets.
    pub fn active(&self) -> &RingKey<K> {
        self.keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .expect("every ring is checked to hold exactly one active key when it is built")
    }

    /// The pre-distributed next key, if any.
    pub fn staged(&self) -> Option<&RingKey<K>> {
        self.keys.iter().find(|k| k.state == KeyState::Staged)
    }

    /// Retiring keys, newest first.
    pub fn retiring(&self) -> impl Iterator<Item = &RingKey<K>> {
        self.keys
            .iter()
            .rev()
            .filter(|k| k.state == KeyState::Retiring)
    }

    /// The keys in the order most servers want them: active, staged, then retiring newest
    /// first. Formats reorder from here.
    pub fn by_role(&self) -> Vec<&RingKey<K>> {
        let mut out = vec![self.active()];
        out.extend(self.staged());
        out.extend(self.retiring());
        out
    }

    /// Retiring keys beyond `retain` (oldest ones), which a later ring may drop.
    pub fn expired_epochs(&self, policy: &Policy) -> Vec<u64> {
        self.retiring()
            .skip(policy.retain)
            .map(|k| k.epoch)
            .collect()
    }

    /// The ring without the given epochs, at the next generation. Never drops the active key.
    pub fn dropping(&self, epochs: &[u64]) -> Self {
        let mut ring = self.without(epochs);
        ring.generation = self.generation + 1;
        ring
    }

    fn without(&self, epochs: &[u64]) -> Self {
        Self {
            generation: self.generation,
            keys: self
                .keys
                .iter()
                .filter(|k| k.state == KeyState::Active || !epochs.contains(&k.epoch))
                .cloned()
                .collect(),
            last_epoch: self.last_epoch,
            next_rotation_at: self.next_rotation_at,
        }
    }

    /// The ring with a new schedule (e.g. after the policy's interval changed).
    pub fn with_next_rotation_at(&self, at: SystemTime) -> Self {
        let mut ring = self.clone();
        ring.next_rotation_at = at;
        ring.generation += 1;
        ring
    }

    /// The same ring under `generation` (which must be above its own, else it is kept): a
    /// repair numbers its ring above every generation members acknowledged.
    pub fn renumbered(&self, generation: u64) -> Self {
        let mut ring = self.clone();
        ring.generation = generation.max(self.generation);
        ring
    }

    /// Every invariant a ring shows on its own. A violation is a bug or a malformed record.
    pub fn check(&self, policy: &Policy) -> Result<(), RingError> {
        if self.generation == 0 {
            return Err(RingError::ZeroGeneration);
        }
        if self.generation > MAX_GENERATION || self.last_epoch > MAX_GENERATION {
            return Err(RingError::Absurd {
                generation: self.generation,
                last_epoch: self.last_epoch,
            });
        }
        let active: Vec<_> = self
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Active)
            .collect();
        let [active] = active.as_slice() else {
            return Err(RingError::ActiveCount(active.len()));
        };
        let staged: Vec<_> = self
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Staged)
            .collect();
        if staged.len() > 1 {
            return Err(RingError::StagedCount(staged.len()));
        }
        if let Some(newest) = self.keys.last() {
            if newest.epoch > self.last_epoch {
                return Err(RingError::EpochBeyondLast {
                    epoch: newest.epoch,
                    last: self.last_epoch,
                });
            }
        }
        for pair in self.keys.windows(2) {
            if pair[0].epoch >= pair[1].epoch {
                return Err(RingError::EpochOrder(pair[1].epoch));
            }
        }
        for k in &self.keys {
            let in_order = match k.state {
                KeyState::Staged => k.epoch > active.epoch,
                KeyState::Retiring => k.epoch < active.epoch && k.retired_in.is_some(),
                KeyState::Active => true,
            };
            if !in_order {
                return Err(RingError::StateOrder {
                    epoch: k.epoch,
                    state: k.state,
                });
            }
            if k.staged_in > self.generation || k.retired_in.is_some_and(|g| g > self.generation) {
                return Err(RingError::FutureGeneration(k.epoch));
            }
        }
        for (i, a) in self.keys.iter().enumerate() {
            if self.keys[i + 1..].iter().any(|b| b.key.same_name(&a.key)) {
                return Err(RingError::DuplicateName(a.fingerprint()));
            }
        }
        if self.keys.len() > policy.max_keys() {
            return Err(RingError::TooManyKeys {
                found: self.keys.len(),
                max: policy.max_keys(),
            });
        }
        Ok(())
    }
}

/// A ring that breaks an invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Generations start at 1.
    #[error("ring generation 0 is not valid; generations start at 1")]
    ZeroGeneration,
    /// A generation or epoch beyond [`MAX_GENERATION`].
    #[error("ring generation {generation} or last epoch {last_epoch} is beyond 2^48: not a number any real cluster reaches; the record is refused")]
    Absurd {
        /// The generation.
        generation: u64,
        /// The last epoch.
        last_epoch: u64,
    },
    /// Exactly one key must encrypt.
    #[error("ring has {0} active keys; exactly one must be active")]
    ActiveCount(usize),
    /// At most one key waits to become active.
    #[error("ring has {0} staged keys; at most one may be staged")]
    StagedCount(usize),
    /// Epochs are unique.
    #[error("epoch {0} appears twice or out of order")]
    EpochOrder(u64),
    /// A key's epoch is above the highest epoch the ring says it issued.
    #[error("key epoch {epoch} is above the ring's last issued epoch {last}")]
    EpochBeyondLast {
        /// The key's epoch.
        epoch: u64,
        /// The ring's record of the highest epoch issued.
        last: u64,
    },
    /// Staged keys are newer than the active key, retiring keys older.
    #[error("key epoch {epoch} is {state} but its epoch is on the wrong side of the active key's")]
    StateOrder {
        /// The offending key.
        epoch: u64,
        /// Its state.
        state: KeyState,
    },
    /// Bookkeeping refers to a generation the ring has not reached.
    #[error("key epoch {0} refers to a generation newer than the ring's")]
    FutureGeneration(u64),
    /// Two keys with one name would make tickets ambiguous.
    #[error("two keys share the name with fingerprint {0}")]
    DuplicateName(Fingerprint),
    /// More keys than active + staged + retain.
    #[error(
        "ring holds {found} keys but the policy allows at most {max} (active + staged + retain)"
    )]
    TooManyKeys {
        /// Keys in the ring.
        found: usize,
        /// The policy's bound.
        max: usize,
    },
    /// Rotation needs a pre-staged key.
    #[error("ring has no staged key to activate")]
    NoStagedKey,
    /// A freshly drawn key was refused ([`crate::weak`]): the random source is broken.
    #[error("refused the new key for epoch {epoch}: {why}; the leader wrote nothing and the nodes keep serving the keys they have; check this host's random source")]
    WeakKey {
        /// The epoch the key was drawn for.
        epoch: u64,
        /// What was wrong with it.
        why: WeakKey,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::tests::seeded;

    pub(crate) fn policy(retain: usize) -> Policy {
        Policy {
            interval: Duration::from_secs(60),
            retain,
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn bootstrap_makes_one_active_and_one_staged_key() {
        let ring =
            KeyRing::bootstrap(t(0), &policy(1), &mut seeded(1), &KeyHistory::new()).unwrap();
        assert_eq!(ring.generation(), 1);
        assert_eq!(ring.active().epoch, 1);
        assert_eq!(ring.staged().map(|k| k.epoch), Some(2));
        assert_eq!(ring.retiring().count(), 0);
        assert_eq!(ring.next_rotation_at(), t(60));
        ring.check(&policy(1)).expect("bootstrap ring is valid");
    }

    #[test]
    fn rotation_activates_staged_retires_active_and_stages_a_fresh_key() {
        let p = policy(2);
        let r1 = KeyRing::bootstrap(t(0), &p, &mut seeded(1), &KeyHistory::new()).unwrap();
        let r2 = r1
            .rotated(t(60), &p, &mut seeded(2), &KeyHistory::new())
            .unwrap();
        assert_eq!(r2.generation(), 2);
        assert_eq!(r2.active().key, r1.staged().unwrap().key);
        assert_eq!(r2.staged().unwrap().epoch, 3);
        assert_eq!(r2.staged().unwrap().staged_in, 2);
        let retiring: Vec<_> = r2.retiring().collect();
        assert_eq!(retiring.len(), 1);
        assert_eq!(retiring[0].key, r1.active().key);
        assert_eq!(retiring[0].retired_in, Some(2));
        assert_eq!(r2.next_rotation_at(), t(120));
        r2.check(&p).unwrap();
    }

    #[test]
    fn rotation_drops_retiring_keys_beyond_retain_and_never_reuses_an_epoch() {
        for retain in 1..=3 {
            let p = policy(retain);
            let mut src = seeded(retain as u64);
            let mut ring = KeyRing::bootstrap(t(0), &p, &mut src, &KeyHistory::new()).unwrap();
            let mut seen = vec![1, 2];
            for i in 1..=10 {
                ring = ring
                    .rotated(t(60 * i), &p, &mut src, &KeyHistory::new())
                    .unwrap();
                ring.check(&p).unwrap();
                assert!(ring.retiring().count() <= retain);
                assert!(ring.keys().len() <= p.max_keys());
                let new = ring.staged().unwrap().epoch;
                assert!(!seen.contains(&new), "epoch {new} reused");
                seen.push(new);
            }
            assert_eq!(ring.retiring().count(), retain);
            // The newest retiring key is always the one that was active just before.
            assert_eq!(
                ring.retiring().next().unwrap().epoch,
                ring.active().epoch - 1
            );
        }
    }

    #[test]
    fn dropping_never_removes_the_active_key() {
        let p = policy(1);
        let ring = KeyRing::bootstrap(t(0), &p, &mut seeded(1), &KeyHistory::new()).unwrap();
        let dropped = ring.dropping(&[1, 2]);
        assert_eq!(dropped.active().epoch, 1);
        assert!(dropped.staged().is_none());
        assert_eq!(dropped.generation(), 2);
    }

    #[test]
    fn check_rejects_malformed_rings() {
        let p = policy(1);
        let base = KeyRing::bootstrap(t(0), &p, &mut seeded(1), &KeyHistory::new()).unwrap();
        let mut keys = base.keys().to_vec();
        keys[1].state = KeyState::Active;
        assert_eq!(
            KeyRing::from_parts(1, keys, 2, t(0), &p),
            Err(RingError::ActiveCount(2))
        );
        let mut keys = base.keys().to_vec();
        keys[0].state = KeyState::Staged;
        assert_eq!(
            KeyRing::from_parts(1, keys, 2, t(0), &p),
            Err(RingError::ActiveCount(0))
        );
        let mut keys = base.keys().to_vec();
        keys[1].epoch = 1;
        assert_eq!(
            KeyRing::from_parts(1, keys, 2, t(0), &p),
            Err(RingError::EpochOrder(1))
        );
        let mut keys = base.keys().to_vec();
        keys[1].key = keys[0].key.clone();
        assert!(matches!(
            KeyRing::from_parts(1, keys, 2, t(0), &p),
            Err(RingError::DuplicateName(_))
        ));
        let mut keys = base.keys().to_vec();
        keys[0].state = KeyState::Retiring;
        keys[1].state = KeyState::Active;
        assert!(matches!(
            KeyRing::from_parts(1, keys, 2, t(0), &p),
            Err(RingError::StateOrder { epoch: 1, .. })
        ));
        assert_eq!(
            KeyRing::from_parts(0, base.keys().to_vec(), 2, t(0), &p),
            Err(RingError::ZeroGeneration)
        );
        assert_eq!(
            KeyRing::from_parts(1, base.keys().to_vec(), 1, t(0), &p),
            Err(RingError::EpochBeyondLast { epoch: 2, last: 1 })
        );
        let big = base
            .rotated(t(1), &policy(3), &mut seeded(2), &KeyHistory::new())
            .unwrap()
            .rotated(t(2), &policy(3), &mut seeded(3), &KeyHistory::new())
            .unwrap();
        assert_eq!(
            big.check(&p),
            Err(RingError::TooManyKeys { found: 4, max: 3 })
        );
    }

    #[test]
    fn policy_rejects_retain_zero_and_zero_interval() {
        assert_eq!(policy(0).validate(), Err(PolicyError::RetainZero));
        let p = Policy {
            interval: Duration::ZERO,
            retain: 1,
        };
        assert_eq!(p.validate(), Err(PolicyError::ZeroInterval));
        assert!(policy(1).validate().is_ok());
    }

    #[test]
    fn a_rings_digest_names_its_keys_not_only_its_generation() {
        let p = Policy {
            interval: Duration::from_secs(60),
            retain: 1,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let a = KeyRing::bootstrap(
            now,
            &p,
            &mut crate::key::tests::seeded(1),
            &KeyHistory::new(),
        )
        .unwrap();
        let b = KeyRing::bootstrap(
            now,
            &p,
            &mut crate::key::tests::seeded(2),
            &KeyHistory::new(),
        )
        .unwrap();
        assert_eq!(a.generation(), b.generation());
        assert_ne!(a.digest(), b.digest(), "same generation, other keys");
        assert_eq!(a.digest(), a.meta().digest());
        assert_eq!(
            a.digest(),
            a.meta().to_millis().digest(),
            "as the store keeps it"
        );
        assert_ne!(a.digest(), a.with_next_rotation_at(now).digest());
        let text = a.digest().to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(RingDigest::from_hex(&text), Some(a.digest()));
        assert_eq!(RingDigest::from_hex("zz"), None);
        assert_eq!(RingDigest::from_hex(&"é".repeat(16)), None);
    }

    #[test]
    fn a_generation_or_epoch_beyond_2_pow_48_is_refused() {
        let p = Policy {
            interval: Duration::from_secs(60),
            retain: 1,
        };
        let r = KeyRing::bootstrap(
            SystemTime::now(),
            &p,
            &mut crate::key::tests::seeded(1),
            &KeyHistory::new(),
        )
        .unwrap();
        let keys = r.keys().to_vec();
        let absurd = KeyRing::from_parts(u64::MAX, keys.clone(), 2, r.next_rotation_at(), &p);
        assert!(
            matches!(absurd, Err(RingError::Absurd { .. })),
            "{absurd:?}"
        );
        let absurd = KeyRing::from_parts(1, keys.clone(), u64::MAX, r.next_rotation_at(), &p);
        assert!(
            matches!(absurd, Err(RingError::Absurd { .. })),
            "{absurd:?}"
        );
        assert!(KeyRing::from_parts(MAX_GENERATION, keys, 2, r.next_rotation_at(), &p).is_ok());
    }
}
