//! Sealed distribution: the store never holds a ticket key in the clear.
//!
//! Every node has an X25519 key pair ([`Identity`]), made at its first start and kept on its own
//! RAM disk (`state_dir`, see stek-node's `state` module) so that a restart keeps it and a
//! reboot forgets it, and publishes the public half in its member record. For each ring it writes, the leader:
//!
//! 1. draws a fresh 32-byte data key and encrypts every ring key with it (ChaCha20-Poly1305,
//!    one message, so the ring's key bytes are stored once however many members there are);
//! 2. seals that data key for every live member with HPKE (RFC 9180, base mode,
//!    DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305): 32 bytes of encapsulated key
//!    and 48 bytes of ciphertext per member.
//!
//! Both layers authenticate the ring's public description ([`RingMeta`]: generation, epochs,
//! states, fingerprints, schedule) and the cluster name as associated data; each member's copy
//! also binds the member's id. So a copy cannot be moved to another member or cluster, replayed
//! into another generation, or kept while the description around it is changed: each of these
//! fails to open, and [`open`] says which of them it looks like.
//!
//! A node opens only its own copy, and checks that what it decrypted matches the fingerprints
//! of the description before anything reaches a server.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hpke::{Deserializable, Kem as _, Serializable};
use rand::RngCore;
use sha2::{Digest, Sha256};
use stek_core::key::{AES_LEN, HMAC_LEN, NAME_LEN};
use stek_core::{KeyRing, RingMeta, TicketKey};
use zeroize::Zeroizing;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::ChaCha20Poly1305;

/// HPKE `info`: names the protocol and its version.
const INFO: &[u8] = b"stek sealed ring v2";
/// One key's bytes inside the sealed ring: name, AES key, HMAC key.
pub const KEY_BYTES: usize = NAME_LEN + AES_LEN + HMAC_LEN;
/// The AEAD tag both layers add.
pub const TAG_LEN: usize = 16;
/// The data key's length.
const DEK_LEN: usize = 32;
/// An encapsulated X25519 key.
pub const ENC_LEN: usize = 32;
/// A member's sealed data key: the key plus the tag.
pub const SEALED_DEK_LEN: usize = DEK_LEN + TAG_LEN;

/// A node's sealing key pair. The private half is written only to the node's RAM disk (by
/// stek-node's `state` module), zeroizes on drop (x25519-dalek) and is never printed.
pub struct Identity {
    private: <Kem as hpke::Kem>::PrivateKey,
    public: MemberKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public.id())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh key pair from the OS CSPRNG.
    pub fn generate() -> Self {
        let (private, public) = Kem::gen_keypair(&mut rand::rngs::OsRng);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&public.to_bytes());
        Self {
            private,
            public: MemberKey(bytes),
        }
    }

    /// The key pair of a stored private key (32 bytes, as [`Identity::secret_bytes`] gives).
    pub fn from_secret(bytes: &[u8]) -> Option<Self> {
        use hpke::{Deserializable, Serializable};
        let private = <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes).ok()?;
        let public = <Kem as hpke::Kem>::sk_to_pk(&private);
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&public.to_bytes());
        Some(Self {
            private,
            public: MemberKey(raw),
        })
    }

    /// The private key's bytes, to keep on the box's RAM disk (never anywhere else).
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        use hpke::Serializable;
        zeroize::Zeroizing::new(self.private.to_bytes().to_vec())
    }

    /// The public half, for the member record.
    pub fn public(&self) -> &MemberKey {
        &self.public
    }
}

/// A member's X25519 public key as its member record publishes it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MemberKey([u8; 32]);

impl MemberKey {
    /// Base64, as stored.
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Parses the stored base64; `None` unless it is exactly 32 bytes.
    pub fn from_base64(text: &str) -> Option<Self> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        Some(Self(<[u8; 32]>::try_from(bytes.as_slice()).ok()?))
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// A short identity of the key for copies, logs and status.
    pub fn id(&self) -> MemberKeyId {
        let digest = Sha256::digest(self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        MemberKeyId(id)
    }
}

impl fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberKey({})", self.id())
    }
}

/// The first 8 bytes of SHA-256 of a member's public key, in hex: names the key a copy was
/// sealed to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberKeyId([u8; 8]);

impl MemberKeyId {
    /// Parses the 16 hex digits `Display` prints.
    pub fn from_hex(text: &str) -> Option<Self> {
        stek_core::hex::parse(text).map(Self)
    }
}

impl fmt::Display for MemberKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MemberKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberKeyId({self})")
    }
}

/// The sealed half of a stored ring: the ring's keys under a data key, and that data key sealed
/// for each member. `Debug` shows sizes and recipients, not ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Every key's bytes in the description's order, encrypted under the data key (with tag).
    pub sealed_keys: Vec<u8>,
    /// One copy of the data key per member, sorted by member.
    pub copies: Vec<SealedCopy>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field(
                "sealed_keys",
                &format_args!("{} bytes", self.sealed_keys.len()),
            )
            .field("copies", &self.copies)
            .finish()
    }
}

impl fmt::Debug for SealedCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedCopy")
            .field("member", &self.member)
            .field("recipient", &self.recipient)
            .field("generation", &self.generation)
            .field("ring", &self.ring)
            .finish_non_exhaustive()
    }
}

/// Which write of a ring a copy belongs to: 16 bytes of SHA-256 over the ring's digest and its
/// sealed keys, which are a fresh ciphertext under a fresh data key at every write. Two writes
/// of one description (a reseal retried, or made by two leaders in turn) have different ids,
/// so a copy left by one is never taken for the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteId([u8; 16]);

impl WriteId {
    /// The id of the write of `meta` whose sealed keys are `sealed_keys`.
    pub fn of(meta: &RingMeta, sealed_keys: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"stek ring write v1\0");
        h.update(meta.digest().to_string().as_bytes());
        h.update(sealed_keys);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        Self(out)
    }

    /// Parses the 32 hex digits `Display` writes.
    pub fn from_hex(text: &str) -> Option<Self> {
        stek_core::hex::parse(text).map(Self)
    }
}

impl fmt::Display for WriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A ring write's data key, as its writer drew it or a member opened it from its copy: what
/// a leader needs to seal one more copy of the stored ring for a member that joins, without
/// writing the ring again. It unlocks only that write's sealed keys, which every holder of
/// it has opened already. Zeroized on drop, never printed.
pub struct DataKey {
    write: WriteId,
    key: Zeroizing<[u8; DEK_LEN]>,
}

impl DataKey {
    /// The write whose sealed keys it unlocks.
    pub fn write(&self) -> WriteId {
        self.write
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("write", &self.write)
            .finish_non_exhaustive()
    }
}

/// One member's copy of a ring's data key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedCopy {
    /// The member it is for.
    pub member: String,
    /// The public key it was sealed to.
    pub recipient: MemberKeyId,
    /// The ring generation it was made for (a hint for messages; the binding is the AEAD's).
    pub generation: u64,
    /// The write of the ring it was made for ([`WriteId`]): each copy is a record of its own
    /// (`ring/copies/<member>`), written just before the ring that names it, so a copy of
    /// another write can sit beside a ring for a moment (or after a failed write).
    pub ring: WriteId,
    /// The ring writer's signature over the copy record ([`crate::records`]), with
    /// `[identity]`; checked by the member it is for before it opens it.
    pub signature: Option<Vec<u8>>,
    /// HPKE's encapsulated key.
    pub enc: [u8; ENC_LEN],
    /// The sealed data key.
    pub sealed_dek: [u8; SEALED_DEK_LEN],
}

/// Why a ring could not be sealed for a member or opened by this node. Never holds key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No copy for this node in the ring.
    #[error("the ring (generation {generation}) holds no sealed copy for this node yet; the leader seals one once it sees this node's public key")]
    NoCopy {
        /// The ring's generation.
        generation: u64,
    },
    /// The copy is sealed to a key this node does not hold.
    #[error("the ring's copy for this node is sealed to public key {copy}, but this node's key is {mine} (its member record held a wrong public key, or the copy predates a restart); waiting for the leader to reseal")]
    OtherRecipient {
        /// The key the copy names.
        copy: MemberKeyId,
        /// This node's key.
        mine: MemberKeyId,
    },
    /// The copy says it was made for another generation.
    #[error("the ring's copy for this node was made for generation {made_for}, but the ring is generation {ring}: a replayed copy; rejected")]
    Replayed {
        /// The generation the copy names.
        made_for: u64,
        /// The ring's generation.
        ring: u64,
    },
    /// The copy was made for a newer ring than the stored one: the leader writes the copies
    /// just before the ring (or failed to write the ring after them, and reseals).
    #[error("the ring's copy for this node was made for generation {made_for}, newer than the stored ring's {ring}: the leader is writing a new ring; waiting for it")]
    Ahead {
        /// The generation the copy names.
        made_for: u64,
        /// The stored ring's generation.
        ring: u64,
    },
    /// The copy names another ring than the stored one, of an older or the same generation: a
    /// leader's write that did not complete (its copies landed, its ring did not), or a copy
    /// put back. The leader seals a copy of the stored ring.
    #[error("the ring's copy for this node was made for another ring (generation {made_for}) than the stored one (generation {ring}): left by a write that did not complete, or put back; waiting for the leader to seal one for this ring")]
    OtherRing {
        /// The generation the copy names.
        made_for: u64,
        /// The stored ring's generation.
        ring: u64,
    },
    /// The copy's signature does not verify with the ring writer's certificate.
    #[error("the ring's copy for this node is not signed by the ring's writer ({0}); rejected")]
    Unsigned(String),
    /// The copy does not authenticate.
    #[error("the ring's copy for this node does not open with this node's key (tampered, moved from another member, or replayed); rejected")]
    DoesNotOpen,
    /// The ring's keys do not authenticate under the data key, or do not match the description.
    #[error("the ring's sealed keys do not match its key list (tampered); rejected")]
    KeysDoNotMatch,
    /// A member's public key that X25519 cannot seal to (a low-order point).
    #[error(
        "member {0}'s public key is not usable (a low-order X25519 point); no copy sealed for it"
    )]
    BadRecipient(String),
}

/// The associated data both layers bind: cluster, member ("" for the ring layer) and the whole
/// public description of the ring.
fn associated_data(cluster: &str, member: &str, meta: &RingMeta) -> Vec<u8> {
    fn ms(t: SystemTime) -> u64 {
        u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis())
            .unwrap_or(u64::MAX)
    }
    let mut aad = Vec::with_capacity(64 + meta.keys().len() * 40);
    for part in [INFO, cluster.as_bytes(), member.as_bytes()] {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad.extend_from_slice(&meta.generation().to_be_bytes());
    aad.extend_from_slice(&meta.last_epoch().to_be_bytes());
    aad.extend_from_slice(&ms(meta.next_rotation_at()).to_be_bytes());
    for k in meta.keys() {
        aad.extend_from_slice(&k.epoch.to_be_bytes());
        aad.push(k.state as u8);
        aad.extend_from_slice(k.key.to_string().as_bytes());
        aad.extend_from_slice(&ms(k.created_at).to_be_bytes());
        aad.extend_from_slice(&k.staged_in.to_be_bytes());
        aad.extend_from_slice(&k.retired_in.unwrap_or(0).to_be_bytes());
    }
    aad
}

/// Seals `ring` for `recipients` (member id, public key). Returns the envelope and the members
/// whose key could not be sealed to (they get no copy, so they wait, and the leader logs why).
///
/// The ring's timestamps are bound at millisecond precision, as the store records them.
pub fn seal(
    cluster: &str,
    ring: &KeyRing,
    recipients: &[(String, MemberKey)],
) -> (Envelope, Vec<SealError>) {
    let meta = stored_meta(ring);
    let mut dek = Zeroizing::new([0u8; DEK_LEN]);
    rand::rngs::OsRng.fill_bytes(dek.as_mut());
    let mut plain = Zeroizing::new(Vec::with_capacity(ring.keys().len() * KEY_BYTES));
    for k in ring.keys() {
        plain.extend_from_slice(k.key.name());
        plain.extend_from_slice(k.key.aes256());
        plain.extend_from_slice(k.key.hmac256());
    }
    let cipher = ChaCha20Poly1305::new(dek.as_ref().into());
    // The data key is fresh for every ring, so a fixed nonce is never reused under one key.
    let sealed_keys = cipher
        .encrypt(
            &[0u8; 12].into(),
            Payload {
                msg: &plain,
                aad: &associated_data(cluster, "", &meta),
            },
        )
        .expect("ChaCha20-Poly1305 encrypts any message shorter than 256 GiB");
    let dek = DataKey {
        write: WriteId::of(&meta, &sealed_keys),
        key: dek,
    };
    let mut copies = Vec::with_capacity(recipients.len());
    let mut failed = Vec::new();
    for (member, key) in recipients {
        match seal_copy(cluster, &meta, ring.generation(), &dek, member, key) {
            Ok(copy) => copies.push(copy),
            Err(e) => failed.push(e),
        }
    }
    copies.sort_by(|a, b| a.member.cmp(&b.member));
    (
        Envelope {
            sealed_keys,
            copies,
        },
        failed,
    )
}

/// Seals `dek` (the data key of a write of the ring described by `meta`) for one member.
pub fn seal_copy(
    cluster: &str,
    meta: &RingMeta,
    generation: u64,
    dek: &DataKey,
    member: &str,
    key: &MemberKey,
) -> Result<SealedCopy, SealError> {
    let public = <Kem as hpke::Kem>::PublicKey::from_bytes(&key.0)
        .map_err(|_| SealError::BadRecipient(member.to_owned()))?;
    let (enc, ct) = hpke::single_shot_seal::<HpkeAead, Kdf, Kem, _>(
        &hpke::OpModeS::Base,
        &public,
        INFO,
        dek.key.as_ref(),
        &associated_data(cluster, member, meta),
        &mut rand::rngs::OsRng,
    )
    .map_err(|_| SealError::BadRecipient(member.to_owned()))?;
    let mut copy = SealedCopy {
        member: member.to_owned(),
        recipient: key.id(),
        generation,
        ring: dek.write,
        signature: None,
        enc: [0; ENC_LEN],
        sealed_dek: [0; SEALED_DEK_LEN],
    };
    copy.enc.copy_from_slice(&enc.to_bytes());
    copy.sealed_dek.copy_from_slice(&ct);
    Ok(copy)
}

/// The description exactly as a reader of the store rebuilds it (times in whole
/// milliseconds), so that both sides bind the same associated data.
fn stored_meta(ring: &KeyRing) -> RingMeta {
    ring.meta().to_millis()
}

/// Opens this node's copy of a stored ring and returns the ring with its key bytes.
pub fn open(
    cluster: &str,
    member: &str,
    identity: &Identity,
    meta: &RingMeta,
    envelope: &Envelope,
) -> Result<KeyRing, SealError> {
    open_keeping_key(cluster, member, identity, meta, envelope).map(|(ring, _)| ring)
}

/// [`open`], and the write's data key with the ring: the leader that holds it seals a copy of
/// the stored ring for a member that joins ([`seal_copy`]) instead of writing the ring again.
/// The key is returned only once the ring's keys opened with it and match the description.
pub fn open_keeping_key(
    cluster: &str,
    member: &str,
    identity: &Identity,
    meta: &RingMeta,
    envelope: &Envelope,
) -> Result<(KeyRing, DataKey), SealError> {
    let generation = meta.generation();
    let copy = envelope
        .copies
        .iter()
        .find(|c| c.member == member)
        .ok_or(SealError::NoCopy { generation })?;
    let mine = identity.public.id();
    if copy.recipient != mine {
        return Err(SealError::OtherRecipient {
            copy: copy.recipient,
            mine,
        });
    }
    if copy.generation > generation {
        return Err(SealError::Ahead {
            made_for: copy.generation,
            ring: generation,
        });
    }
    if copy.generation != generation {
        return Err(SealError::Replayed {
            made_for: copy.generation,
            ring: generation,
        });
    }
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&copy.enc)
        .map_err(|_| SealError::DoesNotOpen)?;
    let dek = Zeroizing::new(
        hpke::single_shot_open::<HpkeAead, Kdf, Kem>(
            &hpke::OpModeR::Base,
            &identity.private,
            &enc,
            INFO,
            &copy.sealed_dek,
            &associated_data(cluster, member, meta),
        )
        .map_err(|_| SealError::DoesNotOpen)?,
    );
    if dek.len() != DEK_LEN {
        return Err(SealError::DoesNotOpen);
    }
    let cipher = ChaCha20Poly1305::new(dek.as_slice().into());
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                &[0u8; 12].into(),
                Payload {
                    msg: &envelope.sealed_keys,
                    aad: &associated_data(cluster, "", meta),
                },
            )
            .map_err(|_| SealError::KeysDoNotMatch)?,
    );
    if plain.len() != meta.keys().len() * KEY_BYTES {
        return Err(SealError::KeysDoNotMatch);
    }
    let mut chunks = plain.chunks_exact(KEY_BYTES);
    let ring = meta
        .with_keys(|_| {
            let c = chunks.next()?;
            let mut name = [0u8; NAME_LEN];
            let mut aes = Zeroizing::new([0u8; AES_LEN]);
            let mut hmac = Zeroizing::new([0u8; HMAC_LEN]);
            name.copy_from_slice(&c[..NAME_LEN]);
            aes.copy_from_slice(&c[NAME_LEN..NAME_LEN + AES_LEN]);
            hmac.copy_from_slice(&c[NAME_LEN + AES_LEN..]);
            Some(TicketKey::from_parts(name, *aes, *hmac))
        })
        .ok_or(SealError::KeysDoNotMatch)?;
    let mut key = Zeroizing::new([0u8; DEK_LEN]);
    key.copy_from_slice(dek.as_slice());
    let write = WriteId::of(meta, &envelope.sealed_keys);
    Ok((ring, DataKey { write, key }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stek_core::{KeyHistory, OsKeySource, Policy};

    fn ring() -> KeyRing {
        let p = Policy {
            interval: std::time::Duration::from_secs(60),
            retain: 1,
        };
        let r = KeyRing::bootstrap(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
            .unwrap();
        r.rotated(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
            .unwrap()
    }

    fn meta_of(r: &KeyRing) -> RingMeta {
        stored_meta(r)
    }

    #[test]
    fn each_member_opens_its_own_copy_and_gets_the_ring() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let r = ring();
        let (env, failed) = seal(
            "c1",
            &r,
            &[("a".into(), *a.public()), ("b".into(), *b.public())],
        );
        assert!(failed.is_empty());
        assert_eq!(env.copies.len(), 2);
        for (id, who) in [("a", &a), ("b", &b)] {
            let opened = open("c1", id, who, &meta_of(&r), &env).unwrap();
            for (x, y) in opened.keys().iter().zip(r.keys()) {
                assert_eq!(x.key, y.key);
                assert_eq!(x.epoch, y.epoch);
            }
        }
    }

    #[test]
    fn moved_replayed_and_tampered_copies_are_refused_with_what_they_look_like() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let recipients = [("a".into(), *a.public()), ("b".into(), *b.public())];
        let r1 = ring();
        let r2 = r1.with_next_rotation_at(r1.next_rotation_at());
        let (env1, _) = seal("c1", &r1, &recipients);
        let (env2, _) = seal("c1", &r2, &recipients);
        let m2 = meta_of(&r2);

        // b's copy moved into a's place, labelled for a.
        let mut moved = env2.clone();
        let mut from_b = moved.copies[1].clone();
        from_b.member = "a".into();
        moved.copies[0] = from_b.clone();
        assert!(matches!(
            open("c1", "a", &a, &m2, &moved),
            Err(SealError::OtherRecipient { .. })
        ));
        // ... and with its recipient relabelled too: the AEAD refuses it.
        from_b.recipient = a.public().id();
        moved.copies[0] = from_b;
        assert_eq!(
            open("c1", "a", &a, &m2, &moved),
            Err(SealError::DoesNotOpen)
        );

        // a's copy from generation 1 put into generation 2.
        let mut replayed = env2.clone();
        replayed.copies[0] = env1.copies[0].clone();
        assert!(matches!(
            open("c1", "a", &a, &m2, &replayed),
            Err(SealError::Replayed { made_for, ring })
                if made_for == r1.generation() && ring == r2.generation()
        ));
        // ... relabelled as the current generation: the AEAD refuses it.
        replayed.copies[0].generation = r2.generation();
        assert_eq!(
            open("c1", "a", &a, &m2, &replayed),
            Err(SealError::DoesNotOpen)
        );

        // Another cluster's name, or a changed description, does not open either.
        assert_eq!(open("c2", "a", &a, &m2, &env2), Err(SealError::DoesNotOpen));
        let m1 = meta_of(&r1);
        let mut mixed = env2.clone();
        mixed.sealed_keys = env1.sealed_keys.clone();
        assert_eq!(
            open("c1", "a", &a, &m2, &mixed),
            Err(SealError::KeysDoNotMatch)
        );
        assert!(open("c1", "a", &a, &m1, &env2).is_err());
        let mut flipped = env2.clone();
        flipped.sealed_keys[3] ^= 1;
        assert_eq!(
            open("c1", "a", &a, &m2, &flipped),
            Err(SealError::KeysDoNotMatch)
        );

        // No copy at all.
        assert!(matches!(
            open("c1", "z", &Identity::generate(), &m2, &env2),
            Err(SealError::NoCopy { generation }) if generation == r2.generation()
        ));
    }

    #[test]
    fn a_low_order_public_key_gets_no_copy_and_is_reported() {
        let a = Identity::generate();
        let (env, failed) = seal(
            "c1",
            &ring(),
            &[
                ("a".into(), *a.public()),
                ("zero".into(), MemberKey([0; 32])),
            ],
        );
        assert_eq!(env.copies.len(), 1);
        assert_eq!(failed, vec![SealError::BadRecipient("zero".into())]);
        assert!(failed[0].to_string().contains("member zero"));
    }

    #[test]
    fn nothing_printable_shows_key_bytes() {
        let a = Identity::generate();
        let r = ring();
        let (env, _) = seal("c1", &r, &[("a".into(), *a.public())]);
        let shown = format!("{a:?} {env:?} {:?}", a.public());
        for k in r.keys() {
            let hex: String = k.key.aes256()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert!(!shown.contains(&hex));
        }
        assert!(!shown.contains(&a.public().to_base64()));
    }

    #[test]
    fn member_key_text_round_trips_and_rejects_wrong_lengths() {
        let k = *Identity::generate().public();
        assert_eq!(MemberKey::from_base64(&k.to_base64()), Some(k));
        assert_eq!(MemberKey::from_base64("AAAA"), None);
        assert_eq!(MemberKey::from_base64("not base64!"), None);
        let id = k.id().to_string();
        assert_eq!(MemberKeyId::from_hex(&id), Some(k.id()));
        assert_eq!(MemberKeyId::from_hex("xyz"), None);
    }
}
