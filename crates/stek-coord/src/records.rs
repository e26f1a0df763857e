//! What the coordination store holds, as JSON, and how each record is checked on the way in.
//!
//! Every decoder rejects a malformed record with an error that names what is wrong but never
//! quotes the record (it may hold key bytes): serde's messages can echo a value, so only their
//! category and position are kept.
//!
//! The ring record holds no key bytes in the clear: the ring's public description (epochs,
//! states, fingerprints, schedule) and its keys sealed for each live member ([`crate::seal`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use stek_core::{Fingerprint, KeyRing, KeyState, Policy, RingKey, RingMeta};

use crate::identity::{self, Credentials, IdentityError, Trust, Verified};
use crate::seal::{self, Envelope, Identity, MemberKey, MemberKeyId, SealError, SealedCopy};

/// The record format version this build writes.
///
/// Version 3: the sealed copies moved out of the ring record into records of their own
/// (`ring/copies/<member>`, [`encode_copies`]). Version 4: the same layout, written by a stek
/// whose members ratchet their sealing keys and announce each next key in their
/// acknowledgement: a stek that reads only version 3 refuses it, with a message that says to
/// upgrade every box together (CHANGELOG), instead of misreading the records beside it.
pub const RING_RECORD_VERSION: u32 = 4;

/// The oldest ring record version this build reads: a version 3 ring (written by the stek
/// before the ratchet) opens as it did, so that the ring and every key survive the upgrade.
pub const OLDEST_RING_RECORD_VERSION: u32 = 3;

/// Why a record from the store was rejected. Never contains the record's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not JSON of the expected shape.
    #[error("not a valid {what} record ({category} error at line {line}, column {column})")]
    Shape {
        /// Which record.
        what: &'static str,
        /// serde_json's category (syntax, data, eof).
        category: &'static str,
        /// Position.
        line: usize,
        /// Position.
        column: usize,
    },
    /// A version this build does not know.
    #[error("ring record version {0} is not supported by this stek (it reads versions {OLDEST_RING_RECORD_VERSION} to {RING_RECORD_VERSION}); every box must run the same stek version (CHANGELOG: upgrade together)")]
    Version(u32),
    /// A key's fingerprint is not 8 hex digits.
    #[error("key epoch {0}: fingerprint is not 8 hex digits")]
    Fingerprint(u64),
    /// A sealed field with the wrong length or encoding.
    #[error("{what} is not {len} bytes of base64")]
    SealedField {
        /// Which field (and whose copy).
        what: String,
        /// Expected length.
        len: usize,
    },
    /// A copy's recipient is not a public key id.
    #[error("the sealed copy for \"{0}\" names no valid public key id")]
    Recipient(String),
    /// A member record's public key is not an X25519 key.
    #[error("member record's public_key is not a 32-byte X25519 public key in base64; the leader seals nothing for this member until it re-registers")]
    PublicKey,
    /// The policy stored with the ring is unusable.
    #[error("ring record policy: {0}")]
    Policy(String),
    /// A key under the cluster prefix that stek never writes.
    #[error("unknown key under the cluster prefix (not written by stek); delete it")]
    UnknownKey,
    /// A sealed copy stored under another member's key.
    #[error("sealed copy names member \"{0}\", not the member its key is for")]
    CopyMember(String),
    /// A copy record with no copy, or more than it may hold.
    #[error(
        "sealed copy record holds {0} copies; it holds 1 or 2 (this ring's, and the one before)"
    )]
    CopyCount(usize),
    /// An acknowledgement kept apart from its member record (`acks/<member>`) that names
    /// another instance than the record: left by another box with this node id, or by a
    /// partial restore. It is not counted, and its announced key is not sealed to.
    #[error("acknowledgement names instance \"{ack}\", but the member record's is \"{record}\": it belongs to another box or registration of this node id and is not counted")]
    AckOfAnotherInstance {
        /// The instance the acknowledgement names.
        ack: String,
        /// The member record's instance.
        record: String,
    },
    /// A member record whose `instance` is not 1 to 32 hex digits.
    #[error("member record's instance is not 1 to 32 hex digits")]
    Instance,
    /// A sealed copy whose `ring` is not a write id.
    #[error("sealed copy's ring is not a ring write id (32 hex digits)")]
    CopyRing,
    /// A member record stored under another node's key.
    #[error("member record names node \"{0}\", not the node its key is for")]
    WrongMember(String),
    /// The ring breaks an invariant.
    #[error("ring record breaks an invariant: {0}")]
    Ring(#[from] stek_core::ring::RingError),
    /// A signature or certificate field that is not base64.
    #[error("{0} is not base64")]
    Base64(&'static str),
    /// The ring's signature does not verify (or it has none).
    #[error("ring record not signed by a member of this cluster: {0}; a node applies only rings its leader signed")]
    Unsigned(IdentityError),
    /// A member record claiming a generation beyond [`stek_core::MAX_GENERATION`].
    #[error("member record claims a generation beyond 2^48, which no real cluster reaches; the record is ignored")]
    AbsurdGeneration,
    /// A member record whose `applied_digest` is not a ring digest.
    #[error("member record's applied_digest is not 32 hex digits")]
    Digest,
    /// Another ring of the generation this node accepted.
    #[error("ring generation {generation} is not the ring of that generation this node accepted (digest {accepted}): two rings of one generation (a store restored from a backup, or a forged ring); never applied")]
    Aliased {
        /// The generation.
        generation: u64,
        /// The digest of the ring this node accepted.
        accepted: String,
    },
    /// A ring signed by a member that did not hold the leadership in the term it names.
    #[error("ring signed by {writer} for leadership term {term}, but {leader} held the leadership in that term; never applied")]
    NotTheLeader {
        /// Who signed it.
        writer: String,
        /// The term it names.
        term: i64,
        /// Who led in that term.
        leader: String,
    },
    /// A ring that names a term after the current leadership's.
    #[error("ring written in leadership term {term}, after the current leadership's term {leader_term}; never applied")]
    FutureTerm {
        /// The term it names.
        term: i64,
        /// The current leadership's term.
        leader_term: i64,
    },
    /// A ring from a leadership term older than that of the ring this node accepted.
    #[error("ring written in leadership term {term}, older than term {floor} of the ring this node accepted: a replay, or a deposed leader's; never applied")]
    StaleTerm {
        /// The term it names.
        term: i64,
        /// The term of the ring this node accepted.
        floor: i64,
    },
    /// A ring older than one this node has already seen.
    #[error("ring generation {got} is older than generation {seen}, which this node has already accepted: a replayed ring or a store restored from a backup, never applied")]
    Rollback {
        /// The record's generation.
        got: u64,
        /// The newest valid generation seen.
        seen: u64,
    },
}

fn shape(what: &'static str, e: &serde_json::Error) -> RecordError {
    RecordError::Shape {
        what,
        category: match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        },
        line: e.line(),
        column: e.column(),
    }
}

fn ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn b64_decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn b64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRecord {
    epoch: u64,
    state: KeyState,
    created_at_ms: u64,
    staged_in: u64,
    retired_in: Option<u64>,
    fingerprint: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyRecord {
    interval_ms: u64,
    retain: usize,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyRecord {
    member: String,
    recipient: String,
    generation: u64,
    /// The write of the ring it was sealed for ([`seal::WriteId`], hex).
    ring: String,
    enc: String,
    key: String,
    /// The ring writer's signature over the record with this field absent (base64), with
    /// `[identity]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RingRecord {
    version: u32,
    generation: u64,
    /// The writer's leadership term.
    #[serde(default)]
    term: i64,
    last_epoch: u64,
    next_rotation_at_ms: u64,
    policy: PolicyRecord,
    written_by: String,
    keys: Vec<KeyRecord>,
    sealed_keys: String,
    /// The writer's certificate (base64 DER), with `[identity]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate: Option<String>,
    /// The writer's signature over the record with this field absent (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
}

/// A ring as the store holds it: its public description, the policy it was written under, by
/// whom, and its keys sealed for each member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRing {
    /// The record version it was written with ([`RING_RECORD_VERSION`] for a ring this build
    /// writes): a signature covers it, so a ring read back is verified as it was written.
    pub version: u32,
    /// The ring's description (fingerprints, no key bytes).
    pub ring: RingMeta,
    /// The policy in force when it was written.
    pub policy: Policy,
    /// The leader that wrote it.
    pub written_by: String,
    /// The writer's leadership term (0 when written without one).
    pub term: i64,
    /// The keys, sealed.
    pub envelope: Envelope,
    /// The writer's certificate and signature, with `[identity]`.
    pub signature: Option<RingSignature>,
}

/// A ring writer's certificate and its signature over the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSignature {
    /// The writer's certificate (DER).
    pub certificate: Vec<u8>,
    /// ECDSA P-256 SHA-256 over [`StoredRing::signing_bytes`].
    pub signature: Vec<u8>,
}

impl StoredRing {
    /// Seals `ring` for `recipients` (member id, public key); also returns the members no copy
    /// could be made for, and why.
    pub fn seal(
        cluster: &str,
        ring: &KeyRing,
        policy: &Policy,
        written_by: &str,
        recipients: &[(String, MemberKey)],
    ) -> (Self, Vec<SealError>) {
        let (envelope, failed) = seal::seal(cluster, ring, recipients);
        (
            Self {
                version: RING_RECORD_VERSION,
                ring: ring.meta().to_millis(),
                policy: *policy,
                written_by: written_by.to_owned(),
                term: 0,
                envelope,
                signature: None,
            },
            failed,
        )
    }

    /// What the writer signs: the cluster and the whole record with its certificate but without
    /// the signature. A record decodes to exactly the fields it encodes from, so a verifier
    /// rebuilds these bytes from what it decoded.
    pub fn signing_bytes(&self, cluster: &str) -> Vec<u8> {
        let mut msg = b"stek ring record v2\0".to_vec();
        msg.extend_from_slice(&(cluster.len() as u32).to_be_bytes());
        msg.extend_from_slice(cluster.as_bytes());
        msg.extend_from_slice(&encode(self, false));
        msg
    }

    /// Signs the record as `creds` (this node's member certificate).
    pub fn sign(&mut self, cluster: &str, creds: &Credentials) {
        self.signature = Some(RingSignature {
            certificate: creds.cert_der().to_vec(),
            signature: Vec::new(),
        });
        let sig = creds.sign(&self.signing_bytes(cluster));
        if let Some(s) = self.signature.as_mut() {
            s.signature = sig;
        }
        // Each copy is a record of its own: signed on its own, so that its member checks it
        // came from the ring's writer before opening it. Copies kept from the ring this one
        // replaces ([`StoredRing::keep_copies_of`]) keep their writer's signature.
        let this = self.write_id();
        for copy in self.envelope.copies.iter_mut().filter(|c| c.ring == this) {
            copy.signature = None;
            copy.signature = Some(creds.sign(&copy_signing_bytes(cluster, copy)));
        }
    }

    /// Checks that `member`'s copy was signed by the ring's writer, with the certificate the
    /// ring carries (checked by [`StoredRing::verify`]). With `[identity]`, a node opens only
    /// a copy that passes.
    pub fn verify_copy(
        &self,
        cluster: &str,
        member: &str,
        trust: &Trust,
        now: SystemTime,
    ) -> Result<(), SealError> {
        let generation = self.ring.generation();
        let copy = self
            .copy_for(member)
            .ok_or(SealError::NoCopy { generation })?;
        let (Some(ring_sig), Some(sig)) = (&self.signature, &copy.signature) else {
            return Err(SealError::Unsigned(
                "the copy or the ring carries no signature".into(),
            ));
        };
        trust
            .verify_member_signature(
                &ring_sig.certificate,
                &self.written_by,
                &copy_signing_bytes(cluster, copy),
                sig,
                now,
            )
            .map(|_| ())
            .map_err(|e| SealError::Unsigned(e.to_string()))
    }

    /// This write's id: what its copies name ([`seal::WriteId`]).
    pub fn write_id(&self) -> seal::WriteId {
        seal::WriteId::of(&self.ring, &self.envelope.sealed_keys)
    }

    /// Whether `member`'s copy was made for this write of the ring (by the id it names): no copy, one
    /// for a newer ring (the leader between its copy and ring writes) and one for another ring
    /// are told apart, before anything is verified or opened.
    pub fn copy_is_for_this_ring(&self, member: &str) -> Result<(), SealError> {
        let generation = self.ring.generation();
        let copy = self
            .copy_for(member)
            .ok_or(SealError::NoCopy { generation })?;
        if copy.ring == self.write_id() {
            return Ok(());
        }
        Err(if copy.generation > generation {
            SealError::Ahead {
                made_for: copy.generation,
                ring: generation,
            }
        } else {
            SealError::OtherRing {
                made_for: copy.generation,
                ring: generation,
            }
        })
    }

    /// Puts back the copies read from the store beside the ring record (any copy, of this
    /// write or another: opening one made for another write fails and says so). Each member's
    /// copy of this write comes first, then the newest other.
    pub fn with_copies(mut self, copies: Vec<SealedCopy>) -> Self {
        let this = self.write_id();
        self.envelope.copies = copies;
        self.envelope.copies.sort_by(|a, b| {
            (&a.member, a.ring != this, std::cmp::Reverse(a.generation)).cmp(&(
                &b.member,
                b.ring != this,
                std::cmp::Reverse(b.generation),
            ))
        });
        self
    }

    /// Keeps, beside this ring's copies, the copies of `current` (the ring stored now) for
    /// the members this ring has a copy for. The copy records are written before the ring: if
    /// the ring never lands (its writer dies or is fenced between the two), the stored ring
    /// keeps a copy for every member, so a member that restarts can still open it.
    pub fn keep_copies_of(&mut self, current: &StoredRing) {
        let id = current.write_id();
        let kept: Vec<SealedCopy> = current
            .envelope
            .copies
            .iter()
            .filter(|c| c.ring == id && c.ring != self.write_id())
            .filter(|c| self.envelope.copies.iter().any(|n| n.member == c.member))
            .cloned()
            .collect();
        self.envelope.copies.extend(kept);
    }

    /// Takes, from `read` (this same write as read again from the store), each member's copy
    /// of this write it lacks or holds another of (a member that joined since, a copy sealed
    /// again): copies of other writes there (replayed, or left by a write that did not land)
    /// are never taken.
    pub fn keep_copies_of_this_write(&mut self, read: &StoredRing) {
        let this = self.write_id();
        // By member, so that a leader of a thousand members does not compare every pair.
        let mut mine: BTreeMap<String, usize> = self
            .envelope
            .copies
            .iter()
            .enumerate()
            .filter(|(_, c)| c.ring == this)
            .map(|(i, c)| (c.member.clone(), i))
            .collect();
        for c in read.envelope.copies.iter().filter(|c| c.ring == this) {
            match mine.get(&c.member) {
                Some(&i) => {
                    if self.envelope.copies[i] != *c {
                        self.envelope.copies[i] = c.clone();
                    }
                }
                None => {
                    mine.insert(c.member.clone(), self.envelope.copies.len());
                    self.envelope.copies.push(c.clone());
                }
            }
        }
    }

    /// The copy records to store beside the ring record: (member, record), a record holding
    /// the member's copy of this ring and, if kept, of the ring it replaces.
    pub fn copy_records(&self) -> Vec<(String, Vec<u8>)> {
        let this = self.write_id();
        let mut by_member: BTreeMap<&str, Vec<&SealedCopy>> = BTreeMap::new();
        for c in &self.envelope.copies {
            by_member.entry(c.member.as_str()).or_default().push(c);
        }
        by_member
            .into_iter()
            .filter(|(_, copies)| copies.iter().any(|c| c.ring == this))
            .map(|(member, mut copies)| {
                copies.sort_by_key(|c| c.ring != this);
                copies.truncate(MAX_COPIES_PER_RECORD);
                (member.to_owned(), encode_copies(&copies))
            })
            .collect()
    }

    /// Checks that the member named `written_by` signed this record, with a certificate of
    /// this cluster's CA that is valid now and not revoked.
    pub fn verify(&self, trust: &Trust, now: SystemTime) -> Result<Verified, RecordError> {
        let s = self
            .signature
            .as_ref()
            .ok_or(RecordError::Unsigned(IdentityError::Signature(format!(
                "{} (the record carries no signature)",
                self.written_by
            ))))?;
        trust
            .verify_member_signature(
                &s.certificate,
                &self.written_by,
                &self.signing_bytes(trust.cluster()),
                &s.signature,
                now,
            )
            .map_err(RecordError::Unsigned)
    }

    /// Opens `member`'s copy with its identity: the ring with its key bytes.
    pub fn open(
        &self,
        cluster: &str,
        member: &str,
        identity: &Identity,
    ) -> Result<KeyRing, SealError> {
        seal::open(cluster, member, identity, &self.ring, &self.envelope)
    }

    /// [`StoredRing::open`], and the write's data key: what its writer needs to seal one
    /// more copy later ([`StoredRing::seal_more_copies`]).
    pub fn open_keeping_key(
        &self,
        cluster: &str,
        member: &str,
        identity: &Identity,
    ) -> Result<(KeyRing, seal::DataKey), SealError> {
        seal::open_keeping_key(cluster, member, identity, &self.ring, &self.envelope)
    }

    /// Seals this write's data key `dek` (opened by its writer from its own copy) for each of
    /// `recipients`, signed as `creds` with `[identity]`: the copy records of members that
    /// joined after the ring was written, stored without writing the ring again
    /// ([`crate::Coordinator::write_copies`]). Also returns the members no copy could be
    /// made for. Only the ring's writer can sign them so that members accept them.
    pub fn seal_more_copies(
        &self,
        cluster: &str,
        dek: &seal::DataKey,
        recipients: &[(String, MemberKey)],
        creds: Option<&Credentials>,
    ) -> (Vec<(String, Vec<u8>)>, Vec<SealError>) {
        debug_assert_eq!(dek.write(), self.write_id(), "a data key of another write");
        let mut records = Vec::with_capacity(recipients.len());
        let mut failed = Vec::new();
        for (member, key) in recipients {
            match seal::seal_copy(
                cluster,
                &self.ring,
                self.ring.generation(),
                dek,
                member,
                key,
            ) {
                Ok(mut copy) => {
                    if let Some(creds) = creds {
                        copy.signature = Some(creds.sign(&copy_signing_bytes(cluster, &copy)));
                    }
                    records.push((member.clone(), encode_copies(&[&copy])));
                }
                Err(e) => failed.push(e),
            }
        }
        (records, failed)
    }

    /// `member`'s copy, if the ring holds one.
    pub fn copy_for(&self, member: &str) -> Option<&SealedCopy> {
        self.envelope.copies.iter().find(|c| c.member == member)
    }

    /// Whether the member holds this ring's keys or should be able to open its copy: it
    /// acknowledged this ring (it opened it, and has since announced the key its next copy
    /// is to be sealed to, so its copy here names an older one), its rollback floor is this
    /// generation (it accepted this ring, and keeps the key that opened it until a newer ring
    /// comes), or there is a copy of this write sealed to the key it announced; and it has not
    /// reported this generation's copy as unopenable.
    pub fn usable_copy_for(&self, member: &MemberRecord) -> bool {
        let generation = self.ring.generation();
        let sealed_to_announced = member.sealing_key().is_some_and(|key| {
            self.copy_for(&member.node_id).is_some_and(|c| {
                c.recipient == key.id() && c.ring == self.write_id() && c.generation == generation
            })
        });
        (member.acknowledges(&self.ring)
            || member.floor_generation == Some(generation)
            || sealed_to_announced)
            && member.unsealable_generation != Some(generation)
    }

    /// Whether a copy of this ring may be sealed to `member`'s announced key: never when the
    /// member accepted this generation or a newer one (its floor). Its announced key is the one
    /// its next ring opens with, and the key it keeps after that: a copy of a ring it already
    /// accepted (or refuses) sealed to it would open that ring, dropped keys and all, for as
    /// long as the key lives (I12). Such a member that cannot open its copy says so
    /// (`unsealable_generation`), and gets a new write, at a generation above every floor.
    pub fn may_seal_to(&self, member: &MemberRecord) -> bool {
        member
            .floor_generation
            .is_none_or(|f| f < self.ring.generation())
    }
}

/// Serialises a stored ring for the store. It holds no key bytes in the clear.
pub fn encode_ring(stored: &StoredRing) -> Vec<u8> {
    encode(stored, true)
}

fn encode(stored: &StoredRing, with_signature: bool) -> Vec<u8> {
    let ring = &stored.ring;
    let record = RingRecord {
        version: stored.version,
        generation: ring.generation(),
        term: stored.term,
        last_epoch: ring.last_epoch(),
        next_rotation_at_ms: ms(ring.next_rotation_at()),
        policy: PolicyRecord {
            interval_ms: u64::try_from(stored.policy.interval.as_millis()).unwrap_or(u64::MAX),
            retain: stored.policy.retain,
        },
        written_by: stored.written_by.clone(),
        keys: ring
            .keys()
            .iter()
            .map(|k| KeyRecord {
                epoch: k.epoch,
                state: k.state,
                created_at_ms: ms(k.created_at),
                staged_in: k.staged_in,
                retired_in: k.retired_in,
                fingerprint: k.key.to_string(),
            })
            .collect(),
        sealed_keys: b64_encode(&stored.envelope.sealed_keys),
        certificate: stored
            .signature
            .as_ref()
            .map(|s| b64_encode(&s.certificate)),
        signature: stored
            .signature
            .as_ref()
            .filter(|_| with_signature)
            .map(|s| b64_encode(&s.signature)),
    };
    serde_json::to_vec(&record).expect("a ring record always serialises: plain numbers and strings")
}

/// Parses and checks a ring record; a malformed one is rejected, never applied.
pub fn decode_ring(bytes: &[u8]) -> Result<StoredRing, RecordError> {
    let record: RingRecord = serde_json::from_slice(bytes).map_err(|e| shape("ring", &e))?;
    if !(OLDEST_RING_RECORD_VERSION..=RING_RECORD_VERSION).contains(&record.version) {
        return Err(RecordError::Version(record.version));
    }
    let policy = Policy {
        interval: Duration::from_millis(record.policy.interval_ms),
        retain: record.policy.retain,
    };
    policy
        .validate()
        .map_err(|e| RecordError::Policy(e.to_string()))?;
    let mut keys = Vec::with_capacity(record.keys.len());
    for k in &record.keys {
        keys.push(RingKey {
            epoch: k.epoch,
            state: k.state,
            created_at: from_ms(k.created_at_ms),
            staged_in: k.staged_in,
            retired_in: k.retired_in,
            key: Fingerprint::from_hex(&k.fingerprint).ok_or(RecordError::Fingerprint(k.epoch))?,
        });
    }
    let ring = RingMeta::from_parts(
        record.generation,
        keys,
        record.last_epoch,
        from_ms(record.next_rotation_at_ms),
        &policy,
    )?;
    let sealed_len = ring.keys().len() * seal::KEY_BYTES + seal::TAG_LEN;
    let sealed_keys = b64_decode(&record.sealed_keys)
        .filter(|b| b.len() == sealed_len)
        .ok_or_else(|| RecordError::SealedField {
            what: "sealed_keys".into(),
            len: sealed_len,
        })?;
    let signature = match (record.certificate, record.signature) {
        (Some(c), Some(s)) => Some(RingSignature {
            certificate: b64_decode(&c).ok_or(RecordError::Base64("the ring's certificate"))?,
            signature: b64_decode(&s).ok_or(RecordError::Base64("the ring's signature"))?,
        }),
        // A certificate without a signature (or the reverse) is an unsigned record.
        _ => None,
    };
    Ok(StoredRing {
        version: record.version,
        ring,
        policy,
        written_by: record.written_by,
        term: record.term,
        envelope: Envelope {
            sealed_keys,
            copies: Vec::new(),
        },
        signature,
    })
}

/// At most this many copies in one member's copy record (this write's, and the one before).
pub const MAX_COPIES_PER_RECORD: usize = 2;

/// Serialises one member's copy record for the store (`ring/copies/<member>`): a JSON array of
/// its sealed copies, this write's first. It holds data keys sealed to that member only.
pub fn encode_copies(copies: &[&SealedCopy]) -> Vec<u8> {
    let records: Vec<serde_json::Value> = copies
        .iter()
        .map(|c| {
            serde_json::from_slice(&encode_copy_record(c, true)).expect("a copy record is JSON")
        })
        .collect();
    serde_json::to_vec(&records).expect("a copy record always serialises: plain strings")
}

fn encode_copy_record(copy: &SealedCopy, with_signature: bool) -> Vec<u8> {
    let record = CopyRecord {
        member: copy.member.clone(),
        recipient: copy.recipient.to_string(),
        generation: copy.generation,
        ring: copy.ring.to_string(),
        enc: b64_encode(&copy.enc),
        key: b64_encode(&copy.sealed_dek),
        signature: copy
            .signature
            .as_ref()
            .filter(|_| with_signature)
            .map(|s| b64_encode(s)),
    };
    serde_json::to_vec(&record).expect("a copy record always serialises: plain strings")
}

/// Parses and checks `member`'s copy record (the member named by its key); a malformed one,
/// one with more than [`MAX_COPIES_PER_RECORD`] copies, or one holding a copy for another
/// member, is rejected.
pub fn decode_copies(member: &str, bytes: &[u8]) -> Result<Vec<SealedCopy>, RecordError> {
    let records: Vec<CopyRecord> =
        serde_json::from_slice(bytes).map_err(|e| shape("sealed copy", &e))?;
    if records.is_empty() || records.len() > MAX_COPIES_PER_RECORD {
        return Err(RecordError::CopyCount(records.len()));
    }
    records
        .into_iter()
        .map(|c| decode_copy_record(member, c))
        .collect()
}

fn decode_copy_record(member: &str, c: CopyRecord) -> Result<SealedCopy, RecordError> {
    fn fixed<const N: usize>(text: &str, what: String) -> Result<[u8; N], RecordError> {
        b64_decode(text)
            .and_then(|b| <[u8; N]>::try_from(b.as_slice()).ok())
            .ok_or(RecordError::SealedField { what, len: N })
    }
    if c.member != member {
        return Err(RecordError::CopyMember(c.member));
    }
    Ok(SealedCopy {
        recipient: MemberKeyId::from_hex(&c.recipient)
            .ok_or_else(|| RecordError::Recipient(c.member.clone()))?,
        generation: c.generation,
        ring: seal::WriteId::from_hex(&c.ring).ok_or(RecordError::CopyRing)?,
        enc: fixed(&c.enc, format!("the sealed copy for \"{}\": enc", c.member))?,
        sealed_dek: fixed(&c.key, format!("the sealed copy for \"{}\": key", c.member))?,
        signature: match c.signature {
            Some(s) => Some(b64_decode(&s).ok_or(RecordError::Base64("a copy's signature"))?),
            None => None,
        },
        member: c.member,
    })
}

/// What a ring's writer signs for each copy: the cluster and the copy record (which names its
/// member, recipient key and ring digest) without its signature.
fn copy_signing_bytes(cluster: &str, copy: &SealedCopy) -> Vec<u8> {
    let mut msg = b"stek ring copy v1\0".to_vec();
    msg.extend_from_slice(&(cluster.len() as u32).to_be_bytes());
    msg.extend_from_slice(cluster.as_bytes());
    msg.extend_from_slice(&encode_copy_record(copy, false));
    msg
}

/// A member's own record: who it is and what it has applied (its acknowledgement).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRecord {
    /// The node id.
    pub node_id: String,
    /// stek's version on that node.
    pub version: String,
    /// The formats of its targets.
    pub targets: Vec<String>,
    /// The ring generation it applied to every target (0: none yet).
    pub applied_generation: u64,
    /// Why its last apply failed, if it did.
    pub last_error: Option<String>,
    /// When it last wrote this record.
    pub updated_at_ms: u64,
    /// The sealing public key (base64 X25519) the member announced last: the leader seals its
    /// copy of the next ring to it. Members ratchet: each acknowledgement may announce a new
    /// key, and the private key of every older one is erased once no ring the member may
    /// still need opens with it. Checked when the record is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// A ring generation whose copy for this member did not open: the leader reseals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsealable_generation: Option<u64>,
    /// Its certificate (base64 DER), with `[identity]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Its signature (base64) over [`identity::member_binding`] of its cluster, node id and
    /// `public_key`: the leader seals only to a key so signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_signature: Option<String>,
    /// The digest of the ring it applied ([`stek_core::RingDigest`], hex): an acknowledgement
    /// counts only for the ring it names, never for another ring of the same generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_digest: Option<String>,
    /// The box's instance: a random id kept in its state directory (on the RAM disk), the
    /// same for every process of one boot. It tells a restart of this box from a second box
    /// with the same node id, and binds an acknowledgement to the registration it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The generation of its rollback floor: the newest ring it accepted, kept in its state
    /// directory across restarts. A ring the leader writes numbers above every member's floor,
    /// so no member refuses it as older than one it accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_generation: Option<u64>,
    /// The digest of that ring ([`stek_core::RingDigest`], hex): another ring of the floor's
    /// generation is one the member refuses, and the leader treats it as newer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_digest: Option<String>,
}

/// A member's acknowledgement alone: the fields of its [`MemberRecord`] that change at every
/// ring it applies, its announced sealing key among them.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRecord {
    /// The instance of the process that wrote it ("" for none): an acknowledgement counts
    /// only beside the member record of that same instance.
    instance: String,
    applied_generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    updated_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unsealable_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    floor_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    floor_digest: Option<String>,
}

/// The longest `last_error` a member record carries (a reload's stderr can be anything):
/// longer ones are cut, when written and when read.
pub const MAX_LAST_ERROR: usize = 1024;

/// `e` cut to [`MAX_LAST_ERROR`] bytes on a character boundary, marked as cut.
pub fn cut_error(e: &str) -> String {
    if e.len() <= MAX_LAST_ERROR {
        return e.to_owned();
    }
    let mut end = MAX_LAST_ERROR - 40;
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes cut)", &e[..end], e.len() - end)
}

impl MemberRecord {
    /// Encodes for the store.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("a member record always serialises: plain strings and numbers")
    }

    /// Parses a member record; a public key that is not 32 bytes of base64 rejects it.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let record: Self = serde_json::from_slice(bytes).map_err(|e| shape("member", &e))?;
        record.checked()
    }

    /// The record without its acknowledgement: what stays the same while its process runs
    /// (who it is, its targets, its certificate, its instance). Where the store keeps the
    /// acknowledgement in a record of its own (etcd's `acks/<member>`,
    /// [`MemberRecord::encode_ack`]), this is written once, at registration. The announced
    /// sealing key changes as the member ratchets, so it travels with the acknowledgement.
    pub fn identity(&self) -> Self {
        Self {
            applied_generation: 0,
            applied_digest: None,
            last_error: None,
            updated_at_ms: 0,
            unsealable_generation: None,
            public_key: None,
            key_signature: None,
            floor_generation: None,
            floor_digest: None,
            ..self.clone()
        }
    }

    /// Encodes the acknowledgement alone (about 330 bytes with `[identity]`, where the whole
    /// record is about 1.5 KB): what a member writes at every ring it applies, with the
    /// sealing key its next copy must be sealed to.
    pub fn encode_ack(&self) -> Vec<u8> {
        serde_json::to_vec(&AckRecord {
            instance: self.instance.clone().unwrap_or_default(),
            applied_generation: self.applied_generation,
            applied_digest: self.applied_digest.clone(),
            last_error: self.last_error.clone(),
            updated_at_ms: self.updated_at_ms,
            unsealable_generation: self.unsealable_generation,
            public_key: self.public_key.clone(),
            key_signature: self.key_signature.clone(),
            floor_generation: self.floor_generation,
            floor_digest: self.floor_digest.clone(),
        })
        .expect("an acknowledgement always serialises: plain strings and numbers")
    }

    /// This record with the acknowledgement `bytes` ([`MemberRecord::encode_ack`]) in place of
    /// its own, checked as a whole record is.
    pub fn with_ack(&self, bytes: &[u8]) -> Result<Self, RecordError> {
        let ack: AckRecord =
            serde_json::from_slice(bytes).map_err(|e| shape("acknowledgement", &e))?;
        let instance = self.instance.clone().unwrap_or_default();
        if ack.instance != instance {
            return Err(RecordError::AckOfAnotherInstance {
                // Chosen by whoever wrote the store: only what an instance may hold is shown.
                ack: ack
                    .instance
                    .chars()
                    .filter(char::is_ascii_hexdigit)
                    .take(32)
                    .collect(),
                record: instance,
            });
        }
        Self {
            applied_generation: ack.applied_generation,
            applied_digest: ack.applied_digest,
            last_error: ack.last_error,
            updated_at_ms: ack.updated_at_ms,
            unsealable_generation: ack.unsealable_generation,
            public_key: ack.public_key,
            key_signature: ack.key_signature,
            floor_generation: ack.floor_generation,
            floor_digest: ack.floor_digest,
            ..self.clone()
        }
        .checked()
    }

    fn checked(mut self) -> Result<Self, RecordError> {
        let record = &mut self;
        if record.public_key.is_some() && record.sealing_key().is_none() {
            return Err(RecordError::PublicKey);
        }
        let absurd = |g: u64| g > stek_core::MAX_GENERATION;
        if absurd(record.applied_generation)
            || record.unsealable_generation.is_some_and(absurd)
            || record.floor_generation.is_some_and(absurd)
        {
            return Err(RecordError::AbsurdGeneration);
        }
        let bad_digest = |d: &Option<String>| {
            d.as_deref()
                .is_some_and(|d| stek_core::RingDigest::from_hex(d).is_none())
        };
        if bad_digest(&record.applied_digest) || bad_digest(&record.floor_digest) {
            return Err(RecordError::Digest);
        }
        if record.instance.as_deref().is_some_and(|i| {
            i.is_empty() || i.len() > 32 || !i.bytes().all(|b| b.is_ascii_hexdigit())
        }) {
            return Err(RecordError::Instance);
        }
        record.last_error = record.last_error.as_deref().map(cut_error);
        Ok(self)
    }

    /// What a member signs when it announces its sealing key: the cluster, its node id, the
    /// key, and the rollback floor it announces it with (generation and digest). The floor is
    /// signed so that nobody but the member can claim it: the leader seals no copy of a ring at
    /// or below a member's floor to its announced key, and makes new keys when a live member's
    /// floor is ahead of the stored ring; a key announced with an old floor, put back, is a key
    /// the member erased, or one that opens only the ring of that floor or a newer one.
    fn announcement(&self, cluster: &str) -> Vec<u8> {
        let key = self.sealing_key().map(|k| k.to_bytes()).unwrap_or_default();
        let mut msg = identity::member_binding(cluster, &self.node_id, &key);
        msg.extend_from_slice(b"floor\0");
        msg.extend_from_slice(&self.floor_generation.unwrap_or(0).to_be_bytes());
        msg.extend_from_slice(self.floor_digest.as_deref().unwrap_or("").as_bytes());
        msg
    }

    /// Signs the key this record announces, with its floor, as `creds`, for cluster `cluster`.
    pub fn enroll(&mut self, cluster: &str, creds: &Credentials) {
        let msg = self.announcement(cluster);
        self.certificate = Some(b64_encode(creds.cert_der()));
        self.key_signature = Some(b64_encode(&creds.sign(&msg)));
    }

    /// Whether this member accepted a ring newer than `ring`, or another ring of its
    /// generation (its floor): it refuses `ring`.
    pub fn floor_is_ahead_of(&self, ring: &stek_core::RingMeta) -> bool {
        let generation = ring.generation();
        match self.floor_generation {
            Some(f) if f > generation => true,
            Some(f) if f == generation => self
                .floor_digest
                .as_deref()
                .is_some_and(|d| d != ring.digest().to_string()),
            _ => false,
        }
    }

    /// Checks that the member's certificate is this cluster's, names this member, is valid now
    /// and not revoked, and that it signed the sealing key it announces, with its floor.
    pub fn verify_enrollment(
        &self,
        trust: &Trust,
        now: SystemTime,
    ) -> Result<Verified, IdentityError> {
        let missing = |what: &str| {
            IdentityError::Signature(format!("{} (the record carries no {what})", self.node_id))
        };
        self.sealing_key()
            .ok_or_else(|| missing("sealing public key"))?;
        let cert = self
            .certificate
            .as_deref()
            .ok_or_else(|| missing("certificate"))?;
        let cert = b64_decode(cert).ok_or_else(|| missing("readable certificate"))?;
        let sig = self
            .key_signature
            .as_deref()
            .and_then(b64_decode)
            .ok_or_else(|| missing("key signature"))?;
        let msg = self.announcement(trust.cluster());
        trust.verify_member_signature(&cert, &self.node_id, &msg, &sig, now)
    }

    /// Whether this acknowledgement is for `ring`: the same generation and the same digest.
    pub fn acknowledges(&self, ring: &stek_core::RingMeta) -> bool {
        self.applied_generation == ring.generation()
            && self.applied_digest.as_deref() == Some(ring.digest().to_string().as_str())
    }

    /// The member's sealing public key, if it published a valid one.
    pub fn sealing_key(&self) -> Option<MemberKey> {
        self.public_key.as_deref().and_then(MemberKey::from_base64)
    }

    /// Now, for `updated_at_ms`.
    pub fn now_ms() -> u64 {
        ms(SystemTime::now())
    }
}

/// A request to rotate now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRecord {
    /// Who asked (node id or `cli@host`).
    pub requested_by: String,
    /// When.
    pub requested_at_ms: u64,
    /// The signer's certificate (base64 DER), with `[identity]`: a member's or an operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Its signature (base64) over [`RequestRecord::signing_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl RequestRecord {
    /// A new request by `by`, signed by `signer` when given, and its key under `prefix`: what
    /// every backend's `request_rotation` stores.
    pub fn new_signed(prefix: &str, by: &str, signer: Option<&Credentials>) -> (String, Self) {
        let (key, mut record) = Self::new_keyed(prefix, by);
        if let Some(creds) = signer {
            record.sign(&key, creds);
        }
        (key, record)
    }

    /// A new request by `by`, and its key under `prefix` (time-ordered, unique).
    pub fn new_keyed(prefix: &str, by: &str) -> (String, Self) {
        let now = MemberRecord::now_ms();
        let key = format!("{prefix}requests/{now:013}-{:08x}", rand::random::<u32>());
        (
            key,
            Self {
                requested_by: by.to_owned(),
                requested_at_ms: now,
                certificate: None,
                signature: None,
            },
        )
    }

    /// What the requester signs: the request's full key (which names the cluster and is
    /// unique), who and when.
    fn signing_bytes(&self, key: &str) -> Vec<u8> {
        let mut msg = b"stek rotation request v1\0".to_vec();
        for part in [key.as_bytes(), self.requested_by.as_bytes()] {
            msg.extend_from_slice(&(part.len() as u32).to_be_bytes());
            msg.extend_from_slice(part);
        }
        msg.extend_from_slice(&self.requested_at_ms.to_be_bytes());
        msg
    }

    /// Signs the request stored under `key` as `creds` (a member or an operator).
    pub fn sign(&mut self, key: &str, creds: &Credentials) {
        self.certificate = Some(b64_encode(creds.cert_der()));
        self.signature = Some(b64_encode(&creds.sign(&self.signing_bytes(key))));
    }

    /// Checks that a member or an operator of this cluster signed the request under `key`;
    /// returns who.
    pub fn verify(
        &self,
        key: &str,
        trust: &Trust,
        now: SystemTime,
    ) -> Result<Verified, IdentityError> {
        let (Some(cert), Some(sig)) = (
            self.certificate.as_deref().and_then(b64_decode),
            self.signature.as_deref().and_then(b64_decode),
        ) else {
            return Err(IdentityError::Signature(format!(
                "{} (the request carries no signature)",
                self.requested_by
            )));
        };
        trust.verify_signature(&cert, &self.signing_bytes(key), &sig, now)
    }

    /// Encodes for the store.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a request record always serialises")
    }

    /// Parses a request record.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        serde_json::from_slice(bytes).map_err(|e| shape("rotation request", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stek_core::{KeyHistory, OsKeySource};

    fn policy() -> Policy {
        Policy {
            interval: Duration::from_secs(60),
            retain: 1,
        }
    }

    fn sealed(members: &[(&str, &Identity)]) -> (KeyRing, StoredRing) {
        let p = policy();
        let r1 = KeyRing::bootstrap(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
            .unwrap();
        let r2 = r1
            .rotated(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
            .unwrap();
        let recipients: Vec<(String, MemberKey)> = members
            .iter()
            .map(|(id, who)| ((*id).to_owned(), *who.public()))
            .collect();
        let (stored, failed) = StoredRing::seal("c1", &r2, &p, "n1", &recipients);
        assert!(failed.is_empty());
        (r2, stored)
    }

    /// The ring as a reader puts it back together from its record and its copies' records.
    fn read_back(stored: &StoredRing) -> StoredRing {
        let copies = stored
            .copy_records()
            .iter()
            .flat_map(|(m, bytes)| decode_copies(m, bytes).unwrap())
            .collect();
        decode_ring(&encode_ring(stored))
            .unwrap()
            .with_copies(copies)
    }

    #[test]
    fn ring_round_trips_through_the_record_and_opens_for_each_member() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let (ring, stored) = sealed(&[("a", &a), ("b", &b)]);
        assert!(
            decode_ring(&encode_ring(&stored))
                .unwrap()
                .envelope
                .copies
                .is_empty(),
            "the ring record holds no copy"
        );
        let back = read_back(&stored);
        assert_eq!(back, stored);
        assert_eq!(back.written_by, "n1");
        assert_eq!(back.policy, policy());
        assert_eq!(back.ring, ring.meta().to_millis());
        for (id, who) in [("a", &a), ("b", &b)] {
            let opened = back.open("c1", id, who).unwrap();
            assert_eq!(opened, ring.to_millis(), "{id}");
        }
    }

    /// A CA for cluster "c1": its trust, and member credentials issued by it.
    fn test_ca() -> (Trust, impl Fn(&str) -> Credentials) {
        let day = Duration::from_secs(86_400);
        let ca = identity::init_ca("c1", day).unwrap();
        let trust = Trust::new(ca.cert.as_bytes(), "c1", &[]).unwrap();
        let for_creds = trust.clone();
        let creds_of = move |id: &str| {
            let role = identity::Role::Member(id.into());
            let pem = identity::issue(&ca.cert, &ca.key, &role, &[], day).unwrap();
            Credentials::new(&for_creds, pem.cert.as_bytes(), pem.key.as_bytes()).unwrap()
        };
        (trust, creds_of)
    }

    /// Each copy is a record of its own, signed by the ring's writer; its member checks that
    /// before opening it. A store writer can put only copies that fail that check, and even
    /// without `[identity]` its own copy unlocks nothing: the keys are sealed under the data
    /// key in the ring record, which it cannot change without breaking the ring's signature.
    #[test]
    fn each_copy_is_signed_by_the_ring_writer_and_a_forged_or_moved_one_is_refused() {
        let (trust, creds_of) = test_ca();
        let (a, b) = (Identity::generate(), Identity::generate());
        let (ring, mut stored) = sealed(&[("a", &a), ("b", &b)]);
        let n1 = creds_of("n1");
        stored.sign("c1", &n1);
        let back = read_back(&stored);
        let now = SystemTime::now();
        back.verify(&trust, now).unwrap();
        back.verify_copy("c1", "a", &trust, now).unwrap();
        back.verify_copy("c1", "b", &trust, now).unwrap();
        assert_eq!(back.open("c1", "a", &a).unwrap(), ring.to_millis());

        // A store writer seals a data key of its own to a's public key.
        let (own, _) = StoredRing::seal("c1", &ring, &policy(), "n1", &[("a".into(), *a.public())]);
        let forged = back
            .clone()
            .with_copies(vec![own.envelope.copies[0].clone()]);
        assert!(matches!(
            forged.verify_copy("c1", "a", &trust, now),
            Err(SealError::Unsigned(_))
        ));
        assert_eq!(
            forged.open("c1", "a", &a).unwrap_err(),
            SealError::KeysDoNotMatch,
            "opened without [identity], it unlocks none of the ring's keys"
        );
        // ... and signs it as another member: not the ring's writer.
        let mut signed_by_other = own.clone();
        signed_by_other.sign("c1", &creds_of("n2"));
        let forged = back
            .clone()
            .with_copies(vec![signed_by_other.envelope.copies[0].clone()]);
        assert!(matches!(
            forged.verify_copy("c1", "a", &trust, now),
            Err(SealError::Unsigned(_))
        ));
        // b's signed copy relabelled as a's: the signature covers the member.
        let mut moved = back.copy_for("b").unwrap().clone();
        moved.member = "a".into();
        let forged = back.clone().with_copies(vec![moved]);
        assert!(matches!(
            forged.verify_copy("c1", "a", &trust, now),
            Err(SealError::Unsigned(_))
        ));
        // The previous ring's signed copy, put back: signed, but made for another ring.
        let next = ring
            .rotated(
                SystemTime::now(),
                &policy(),
                &mut OsKeySource,
                &KeyHistory::new(),
            )
            .unwrap();
        let (mut newer, _) =
            StoredRing::seal("c1", &next, &policy(), "n1", &[("a".into(), *a.public())]);
        newer.sign("c1", &n1);
        let replayed = read_back(&newer).with_copies(vec![back.copy_for("a").unwrap().clone()]);
        replayed.verify_copy("c1", "a", &trust, now).unwrap();
        assert!(!replayed.usable_copy_for(&MemberRecord {
            public_key: Some(a.public().to_base64()),
            ..member_record("a")
        }));
        assert!(matches!(
            replayed.open("c1", "a", &a),
            Err(SealError::Replayed { .. })
        ));
        // The next ring's copy beside this ring: the leader is between its two writes.
        let ahead = back
            .clone()
            .with_copies(vec![newer.copy_for("a").unwrap().clone()]);
        assert!(matches!(
            ahead.open("c1", "a", &a),
            Err(SealError::Ahead { .. })
        ));
    }

    /// The writer seals one more copy of its stored ring for a member that joins, with the
    /// data key it opened from its own copy: the member opens it to the same ring, and checks
    /// it was signed by the ring's writer; the same copy signed by another member is refused,
    /// and a data key is never taken from a copy that does not open.
    #[test]
    fn a_copy_sealed_later_by_the_writer_opens_and_one_signed_by_another_is_refused() {
        let (trust, creds_of) = test_ca();
        let (writer, joiner) = (Identity::generate(), Identity::generate());
        let (ring, mut stored) = sealed(&[("n1", &writer)]);
        let n1 = creds_of("n1");
        stored.sign("c1", &n1);
        let back = read_back(&stored);
        let (opened, key) = back.open_keeping_key("c1", "n1", &writer).unwrap();
        assert_eq!(opened, ring.to_millis());
        assert_eq!(key.write(), back.write_id());
        assert!(!format!("{key:?}").contains("key:"), "{key:?}");
        let now = SystemTime::now();

        let joined = [("n9".to_owned(), *joiner.public())];
        let (records, failed) = back.seal_more_copies("c1", &key, &joined, Some(&n1));
        assert!(failed.is_empty());
        assert_eq!(records.len(), 1);
        let (member, bytes) = &records[0];
        assert_eq!(member, "n9");
        let copies = decode_copies("n9", bytes).unwrap();
        assert_eq!(copies.len(), 1, "one copy: the stored ring's");
        let mut all = back.envelope.copies.clone();
        all.extend(copies);
        let now_stored = back.clone().with_copies(all);
        assert_eq!(
            now_stored.write_id(),
            back.write_id(),
            "the ring is unchanged"
        );
        now_stored.copy_is_for_this_ring("n9").unwrap();
        now_stored.verify_copy("c1", "n9", &trust, now).unwrap();
        assert_eq!(
            now_stored.open("c1", "n9", &joiner).unwrap(),
            ring.to_millis()
        );
        let joiner_record = MemberRecord {
            public_key: Some(joiner.public().to_base64()),
            ..member_record("n9")
        };
        assert!(now_stored.usable_copy_for(&joiner_record));
        // A copy of this write whose generation label was raised does not open (the label is
        // bound); the leader must see it as lacking, not wait for the member to say so.
        let mut relabelled = now_stored.copy_for("n9").unwrap().clone();
        relabelled.generation += 1;
        let relabelled = back.clone().with_copies(vec![relabelled]);
        assert!(relabelled.open("c1", "n9", &joiner).is_err());
        assert!(!relabelled.usable_copy_for(&joiner_record));

        // Signed by a member that did not write the ring: refused before it is opened.
        let (records, _) = back.seal_more_copies("c1", &key, &joined, Some(&creds_of("n2")));
        let other = back
            .clone()
            .with_copies(decode_copies("n9", &records[0].1).unwrap());
        assert!(matches!(
            other.verify_copy("c1", "n9", &trust, now),
            Err(SealError::Unsigned(_))
        ));
        // A copy that does not open (a flipped bit) yields no data key.
        let mut tampered = back.copy_for("n1").unwrap().clone();
        tampered.sealed_dek[0] ^= 1;
        assert_eq!(
            back.clone()
                .with_copies(vec![tampered])
                .open_keeping_key("c1", "n1", &writer)
                .unwrap_err(),
            SealError::DoesNotOpen
        );
    }

    /// A ring's copy records keep each member's copy of the ring they replace, so that if the
    /// new ring never lands, the stored one still opens for everyone; once it lands, each
    /// member opens the new ring's.
    #[test]
    fn copy_records_keep_the_stored_rings_copies_until_the_new_ring_lands() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let (ring, current) = sealed(&[("a", &a), ("b", &b)]);
        let stored_now = read_back(&current);
        let next = ring
            .rotated(
                SystemTime::now(),
                &policy(),
                &mut OsKeySource,
                &KeyHistory::new(),
            )
            .unwrap();
        // b left: the next ring has a copy for a only.
        let (mut new, _) =
            StoredRing::seal("c1", &next, &policy(), "n1", &[("a".into(), *a.public())]);
        new.keep_copies_of(&stored_now);
        let records = new.copy_records();
        assert_eq!(
            records.len(),
            1,
            "no record for b, who has no copy of the new ring"
        );
        let copies = decode_copies("a", &records[0].1).unwrap();
        assert_eq!(copies.len(), 2);
        assert_eq!(copies[0].ring, new.write_id(), "the new ring's copy first");
        assert_eq!(copies[1].ring, current.write_id());
        // The new ring never landed: the stored ring still opens for a.
        let old_ring_now = decode_ring(&encode_ring(&current))
            .unwrap()
            .with_copies(copies.clone());
        old_ring_now.copy_is_for_this_ring("a").unwrap();
        assert_eq!(old_ring_now.open("c1", "a", &a).unwrap(), ring.to_millis());
        // It landed: the new ring opens for a.
        let landed = decode_ring(&encode_ring(&new)).unwrap().with_copies(copies);
        landed.copy_is_for_this_ring("a").unwrap();
        assert_eq!(landed.open("c1", "a", &a).unwrap(), next.to_millis());
    }

    /// A version 3 ring (written before the ratchet) reads and verifies as it was signed, so
    /// that an upgrade keeps the ring; a version this build does not know is refused with a
    /// message that says to upgrade every box together.
    #[test]
    fn a_version_3_ring_still_reads_and_verifies_and_an_unknown_version_says_upgrade_together() {
        let (trust, creds_of) = test_ca();
        let a = Identity::generate();
        let (_, mut stored) = sealed(&[("a", &a)]);
        assert_eq!(stored.version, RING_RECORD_VERSION);
        stored.version = 3;
        stored.sign("c1", &creds_of("n1"));
        let back = read_back(&stored);
        assert_eq!(back.version, 3);
        back.verify(&trust, SystemTime::now()).unwrap();
        back.open("c1", "a", &a).unwrap();
        for version in [2, RING_RECORD_VERSION + 1] {
            let mut v: serde_json::Value = serde_json::from_slice(&encode_ring(&stored)).unwrap();
            v["version"] = version.into();
            let err = decode_ring(&serde_json::to_vec(&v).unwrap())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("version {version} is not supported")),
                "{err}"
            );
            assert!(err.contains("upgrade together"), "{err}");
        }
    }

    /// What a leader keeps of a ring it accepted, to put back later: copies of that write
    /// sealed since are added, and a replayed copy of another write never replaces one.
    #[test]
    fn the_accepted_ring_takes_later_copies_of_its_write_and_never_a_replayed_one() {
        let (a, b, c) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let (_, older) = sealed(&[("a", &a), ("b", &b)]);
        let (ring, current) = sealed(&[("a", &a), ("b", &b)]);
        let mut accepted = read_back(&current);
        let mut joined = current.clone();
        // c joins: one more copy of this write.
        let key = current.open_keeping_key("c1", "a", &a).unwrap().1;
        let (records, _) = current.seal_more_copies("c1", &key, &[("c".into(), *c.public())], None);
        let mut copies = joined.envelope.copies.clone();
        copies.extend(decode_copies("c", &records[0].1).unwrap());
        joined = joined.with_copies(copies);
        accepted.keep_copies_of_this_write(&joined);
        assert!(accepted.copy_is_for_this_ring("c").is_ok());
        // b's copy replaced by a copy of another write (a replay): b's stays.
        let replayed: Vec<SealedCopy> = joined
            .envelope
            .copies
            .iter()
            .filter(|x| x.member != "b")
            .cloned()
            .chain(older.copy_for("b").cloned())
            .collect();
        accepted.keep_copies_of_this_write(&joined.clone().with_copies(replayed));
        assert!(accepted.copy_is_for_this_ring("b").is_ok());
        assert_eq!(accepted.open("c1", "b", &b).unwrap(), ring.to_millis());
        assert_eq!(accepted.copy_records().len(), 3);
    }

    /// A member signs the key it announces together with its floor: the same key with
    /// another floor (a store writer's low floor, to get an old ring sealed to the key; or a
    /// high one, to force new keys) does not verify, nor does another member's signature.
    #[test]
    fn an_announcement_binds_its_key_to_its_floor() {
        let (trust, creds_of) = test_ca();
        let (ring, _) = sealed(&[]);
        let mut rec = MemberRecord {
            public_key: Some(Identity::generate().public().to_base64()),
            floor_generation: Some(ring.generation()),
            floor_digest: Some(ring.digest().to_string()),
            ..member_record("n1")
        };
        rec.enroll("c1", &creds_of("n1"));
        let now = SystemTime::now();
        rec.verify_enrollment(&trust, now).unwrap();
        for forged in [
            MemberRecord {
                floor_generation: Some(1),
                ..rec.clone()
            },
            MemberRecord {
                floor_generation: Some(ring.generation() + 1),
                ..rec.clone()
            },
            MemberRecord {
                floor_digest: None,
                ..rec.clone()
            },
            MemberRecord {
                public_key: Some(Identity::generate().public().to_base64()),
                ..rec.clone()
            },
        ] {
            assert!(forged.verify_enrollment(&trust, now).is_err(), "{forged:?}");
        }
        let fresh = || {
            KeyRing::bootstrap(
                SystemTime::now(),
                &policy(),
                &mut OsKeySource,
                &stek_core::KeyHistory::new(),
            )
            .unwrap()
        };
        assert!(ring.generation() > 1);
        assert!(rec.floor_is_ahead_of(&fresh().meta()), "an older ring");
        assert!(!rec.floor_is_ahead_of(&ring.meta().to_millis()));
        let other = fresh().renumbered(ring.generation());
        assert!(
            rec.floor_is_ahead_of(&other.meta()),
            "another ring of its generation"
        );
    }

    fn member_record(id: &str) -> MemberRecord {
        MemberRecord {
            node_id: id.into(),
            version: "0.1.0".into(),
            targets: vec![],
            applied_generation: 0,
            last_error: None,
            updated_at_ms: 1,
            public_key: None,
            unsealable_generation: None,
            certificate: None,
            key_signature: None,
            applied_digest: None,
            floor_generation: None,
            instance: None,
            floor_digest: None,
        }
    }

    #[test]
    fn the_record_holds_no_key_bytes_in_any_encoding() {
        use base64::Engine as _;
        let a = Identity::generate();
        let (ring, stored) = sealed(&[("a", &a)]);
        let record = encode_ring(&stored);
        let text = String::from_utf8(record.clone()).unwrap();
        for k in ring.keys() {
            for part in [&k.key.name()[..], k.key.aes256(), k.key.hmac256()] {
                for w in part.windows(8) {
                    assert!(!record.windows(8).any(|r| r == w), "raw key bytes");
                }
                let hex: String = part[..8].iter().map(|b| format!("{b:02x}")).collect();
                assert!(!text.contains(&hex), "hex key bytes");
                let b64 = base64::engine::general_purpose::STANDARD.encode(&part[..12]);
                assert!(!text.contains(&b64), "base64 key bytes");
            }
        }
    }

    #[test]
    fn garbage_and_wrong_shapes_are_rejected_without_quoting_the_record() {
        let err = decode_ring(b"garbage").unwrap_err().to_string();
        assert!(err.contains("not a valid ring record"), "{err}");
        // A key string where a number belongs: serde would echo it; we must not.
        let secret = "c2VjcmV0LWtleS1ieXRlcy1zaG91bGQtbm90LWxlYWs=";
        let doc = format!("{{\"version\": \"{secret}\"}}");
        let err = decode_ring(doc.as_bytes()).unwrap_err().to_string();
        assert!(!err.contains(secret), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn a_record_that_breaks_an_invariant_or_a_length_is_rejected() {
        let a = Identity::generate();
        let (_, stored) = sealed(&[("a", &a)]);
        let bytes = encode_ring(&stored);
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            f(&mut v);
            match decode_ring(&serde_json::to_vec(&v).unwrap()) {
                Ok(_) => panic!("accepted: {v}"),
                Err(e) => e,
            }
        };
        let err = edit(&|v| v["keys"][2]["state"] = "active".into());
        assert!(matches!(err, RecordError::Ring(_)), "{err}");
        let err = edit(&|v| v["keys"][0]["fingerprint"] = "xyz".into()).to_string();
        assert!(err.contains("fingerprint is not 8 hex digits"), "{err}");
        let err = edit(&|v| v["sealed_keys"] = "AAAA".into()).to_string();
        assert!(err.contains("sealed_keys is not"), "{err}");
        let copy = &stored.copy_records()[0].1;
        let edit_copy = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_slice(copy).unwrap();
            f(&mut v[0]);
            match decode_copies("a", &serde_json::to_vec(&v).unwrap()) {
                Ok(_) => panic!("accepted: {v}"),
                Err(e) => e,
            }
        };
        let err = edit_copy(&|v| v["enc"] = "AAAA".into()).to_string();
        assert!(
            err.contains("sealed copy for \"a\": enc is not 32 bytes"),
            "{err}"
        );
        let err = edit_copy(&|v| v["recipient"] = "nope".into()).to_string();
        assert!(err.contains("no valid public key id"), "{err}");
        let err = edit_copy(&|v| v["member"] = "b".into());
        assert_eq!(
            err,
            RecordError::CopyMember("b".into()),
            "stored under a's key"
        );
        let err = edit_copy(&|v| v["ring"] = "zz".into());
        assert_eq!(err, RecordError::CopyRing);
        let err = edit_copy(&|v| v["signature"] = "%%".into());
        assert_eq!(err, RecordError::Base64("a copy's signature"));
        let one: serde_json::Value = serde_json::from_slice(copy).unwrap();
        let three = serde_json::json!([one[0], one[0], one[0]]);
        assert_eq!(
            decode_copies("a", &serde_json::to_vec(&three).unwrap()),
            Err(RecordError::CopyCount(3))
        );
        assert_eq!(decode_copies("a", b"[]"), Err(RecordError::CopyCount(0)));
        // An old record with the copies inside is refused by its version, never applied.
        let err = edit(&|v| {
            v["version"] = 2.into();
        })
        .to_string();
        assert!(err.contains("version 2"), "{err}");
        let err = edit(&|v| v["version"] = 1.into()).to_string();
        assert!(err.contains("version 1"), "{err}");
        let err = edit(&|v| v["policy"]["retain"] = 0.into());
        assert!(matches!(err, RecordError::Policy(_)), "{err}");
        // A v1 record (key bytes in the clear) is refused, never applied.
        let err = edit(&|v| {
            v["keys"][0]["aes"] = "AAAA".into();
        });
        assert!(matches!(err, RecordError::Shape { .. }), "{err}");
    }

    /// docs/architecture.md, "Record sizes": with 1000 members and every retain up to 6, the
    /// ring record every member reads stays about a kilobyte, and so does each member's copy.
    #[test]
    fn a_ring_sealed_for_1000_members_fits_one_store_request() {
        let ids: Vec<Identity> = (0..1000).map(|_| Identity::generate()).collect();
        for retain in [1usize, 6] {
            let p = Policy {
                interval: Duration::from_secs(60),
                retain,
            };
            let mut r =
                KeyRing::bootstrap(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
                    .unwrap();
            for _ in 0..retain + 1 {
                r = r
                    .rotated(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
                    .unwrap();
            }
            assert_eq!(r.keys().len(), p.max_keys());
            let recipients: Vec<(String, MemberKey)> = ids
                .iter()
                .enumerate()
                .map(|(i, who)| (format!("node-{i:04}.example.internal"), *who.public()))
                .collect();
            let (stored, _) = StoredRing::seal("production-edge", &r, &p, "node-0000", &recipients);
            let len = encode_ring(&stored).len();
            let copies = stored.copy_records();
            let largest = copies.iter().map(|(_, c)| c.len()).max().unwrap();
            eprintln!("retain {retain}: ring {len} bytes, largest copy {largest} bytes");
            assert_eq!(copies.len(), 1000);
            assert!(len < 2048, "the ring record is {len} bytes");
            assert!(largest < 512, "a copy record is {largest} bytes");
        }
    }

    #[test]
    fn member_and_request_records_round_trip_and_reject_garbage() {
        let m = MemberRecord {
            node_id: "n1".into(),
            version: "0.1.0".into(),
            targets: vec!["nginx".into()],
            applied_generation: 3,
            last_error: Some("reload failed".into()),
            updated_at_ms: 1,
            public_key: Some(Identity::generate().public().to_base64()),
            unsealable_generation: Some(3),
            certificate: None,
            key_signature: None,
            applied_digest: None,
            floor_generation: None,
            instance: None,
            floor_digest: None,
        };
        assert_eq!(MemberRecord::decode(&m.encode()).unwrap(), m);
        assert!(m.sealing_key().is_some());
        assert!(MemberRecord::decode(b"{}").is_err());
        let wrong = MemberRecord {
            public_key: Some("AAAA".into()),
            ..m
        };
        assert_eq!(
            MemberRecord::decode(&wrong.encode()),
            Err(RecordError::PublicKey)
        );
        let r = RequestRecord {
            requested_by: "cli".into(),
            requested_at_ms: 2,
            certificate: None,
            signature: None,
        };
        assert_eq!(RequestRecord::decode(&r.encode()).unwrap(), r);
        assert!(RequestRecord::decode(b"[1]").is_err());
    }

    /// A record split in two (who it is, written once; its acknowledgement, at every ring)
    /// reads back as the whole record; the acknowledgement is small, replaces the record's
    /// own fields, and is checked like them.
    #[test]
    fn an_acknowledgement_alone_merges_into_the_record_and_is_checked_like_it() {
        let (ring, _) = sealed(&[]);
        let mut whole = MemberRecord {
            public_key: Some(Identity::generate().public().to_base64()),
            certificate: Some("A".repeat(1000)),
            // An ECDSA P-256 signature in DER is 70 to 72 bytes: 96 characters of base64.
            key_signature: Some("B".repeat(96)),
            instance: Some("0123456789abcdef".into()),
            ..member_record("n1")
        };
        whole.applied_generation = ring.generation();
        whole.applied_digest = Some(ring.digest().to_string());
        whole.last_error = Some("reload failed".into());
        whole.unsealable_generation = Some(2);
        whole.floor_generation = Some(ring.generation());
        whole.updated_at_ms = 1_765_000_000_000;
        let identity = MemberRecord::decode(&whole.identity().encode()).unwrap();
        assert_eq!(identity.applied_generation, 0);
        assert_eq!(identity.certificate, whole.certificate);
        assert_eq!(identity.instance, whole.instance);
        assert_eq!(
            (
                identity.public_key.as_ref(),
                identity.key_signature.as_ref()
            ),
            (None, None),
            "the announced key ratchets: it travels with the acknowledgement"
        );
        let ack = whole.encode_ack();
        let plain = MemberRecord {
            public_key: None,
            key_signature: None,
            ..whole.clone()
        }
        .encode_ack();
        eprintln!(
            "acknowledgement: {} bytes, of which the announced key and its signature {}",
            ack.len(),
            ack.len() - plain.len()
        );
        assert!(ack.len() < 400, "{} bytes", ack.len());
        assert!(
            ack.len() - plain.len() < 200,
            "{} bytes",
            ack.len() - plain.len()
        );
        assert_eq!(identity.with_ack(&ack).unwrap(), whole);
        // An acknowledgement replaces what the identity record says, and no more.
        let older = MemberRecord {
            applied_generation: 1,
            ..whole.clone()
        };
        assert_eq!(whole.with_ack(&older.encode_ack()).unwrap(), older);
        // A ratchet: the next acknowledgement announces another key.
        let ratcheted = MemberRecord {
            public_key: Some(Identity::generate().public().to_base64()),
            ..whole.clone()
        };
        assert_eq!(
            identity.with_ack(&ratcheted.encode_ack()).unwrap(),
            ratcheted
        );
        // Checked as a whole record is: absurd numbers, a bad digest, a bad key, unknown
        // fields, a huge error (cut).
        for absurd in [
            MemberRecord {
                applied_generation: u64::MAX,
                ..whole.clone()
            },
            MemberRecord {
                floor_generation: Some(u64::MAX),
                ..whole.clone()
            },
        ] {
            assert_eq!(
                identity.with_ack(&absurd.encode_ack()),
                Err(RecordError::AbsurdGeneration)
            );
        }
        let bad = MemberRecord {
            applied_digest: Some("nope".into()),
            ..whole.clone()
        };
        assert_eq!(
            identity.with_ack(&bad.encode_ack()),
            Err(RecordError::Digest)
        );
        let bad_key = MemberRecord {
            public_key: Some("AAAA".into()),
            ..whole.clone()
        };
        assert_eq!(
            identity.with_ack(&bad_key.encode_ack()),
            Err(RecordError::PublicKey)
        );
        assert!(identity
            .with_ack(
                br#"{"instance":"0123456789abcdef","applied_generation":1,"updated_at_ms":1,"certificate":"x"}"#
            )
            .is_err());
        // The acknowledgement of a stek before the ratchet (it named a sealing key) is refused.
        assert!(identity
            .with_ack(br#"{"sealing_key":"","applied_generation":1,"updated_at_ms":1}"#)
            .is_err());
        // Another box's (or registration's) acknowledgement is not counted, and what it shows
        // of its instance is cut to hex digits.
        let other_box = MemberRecord {
            instance: Some("fedcba9876543210".into()),
            ..whole.clone()
        };
        assert_eq!(
            identity.with_ack(&other_box.encode_ack()),
            Err(RecordError::AckOfAnotherInstance {
                ack: "fedcba9876543210".into(),
                record: "0123456789abcdef".into()
            })
        );
        let forged = identity
            .with_ack(br#"{"instance":"\u001b[31mforged\nline","applied_generation":1,"updated_at_ms":1}"#)
            .unwrap_err()
            .to_string();
        assert!(!forged.chars().any(char::is_control), "{forged:?}");
        let long = MemberRecord {
            last_error: Some("x".repeat(100_000)),
            ..whole
        };
        let read = identity.with_ack(&long.encode_ack()).unwrap();
        assert!(read.last_error.unwrap().len() <= MAX_LAST_ERROR);
    }

    /// An instance is what a state directory makes (16 hex digits); anything else in a member
    /// record is refused, so no reader prints or compares something else.
    #[test]
    fn a_member_record_with_a_malformed_instance_is_refused() {
        for bad in [
            "",
            "not hex",
            "0123456789abcdef0123456789abcdef0",
            "\u{1b}[0m",
        ] {
            let rec = MemberRecord {
                instance: Some(bad.into()),
                ..member_record("n1")
            };
            assert_eq!(
                MemberRecord::decode(&rec.encode()),
                Err(RecordError::Instance),
                "{bad:?}"
            );
        }
        let good = MemberRecord {
            instance: Some("0123456789abcdef".into()),
            ..member_record("n1")
        };
        assert_eq!(MemberRecord::decode(&good.encode()).unwrap(), good);
    }

    #[test]
    fn a_member_record_with_an_absurd_generation_or_a_huge_error_is_bounded() {
        let rec = MemberRecord {
            node_id: "n1".into(),
            version: "v".into(),
            targets: vec![],
            applied_generation: 3,
            last_error: Some("é".repeat(100_000)),
            updated_at_ms: 0,
            public_key: None,
            unsealable_generation: None,
            certificate: None,
            key_signature: None,
            applied_digest: None,
            floor_generation: None,
            instance: None,
            floor_digest: None,
        };
        let read = MemberRecord::decode(&rec.encode()).unwrap();
        let e = read.last_error.unwrap();
        assert!(e.len() <= MAX_LAST_ERROR, "{}", e.len());
        assert!(e.ends_with("bytes cut)"), "{e}");
        assert_eq!(cut_error("short"), "short");
        let absurd = MemberRecord {
            applied_generation: u64::MAX - 1,
            ..rec.clone()
        };
        assert_eq!(
            MemberRecord::decode(&absurd.encode()),
            Err(RecordError::AbsurdGeneration)
        );
        let absurd = MemberRecord {
            unsealable_generation: Some(u64::MAX),
            ..rec.clone()
        };
        assert_eq!(
            MemberRecord::decode(&absurd.encode()),
            Err(RecordError::AbsurdGeneration)
        );
        let bad_digest = MemberRecord {
            applied_digest: Some("nope".into()),
            ..rec
        };
        assert_eq!(
            MemberRecord::decode(&bad_digest.encode()),
            Err(RecordError::Digest)
        );
    }
}
