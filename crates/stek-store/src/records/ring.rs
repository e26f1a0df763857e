//! The ring record: the ring's public description, the policy it was written under, by whom,
//! and its signature; its keys are sealed per member in copy records ([`super::copy`]).

use super::*;

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

/// Who writes a ring, and with what: the one argument of [`StoredRing::seal_write`].
#[derive(Debug, Clone, Copy)]
pub struct RingWriter<'a> {
    /// The cluster's name (bound into every copy).
    pub cluster: &'a str,
    /// The writer's node id.
    pub node_id: &'a str,
    /// The policy in force.
    pub policy: &'a Policy,
    /// Its leadership term.
    pub term: i64,
    /// Its member credentials, with `[identity]`: the ring and each copy are signed.
    pub creds: Option<&'a Credentials>,
}

/// This node's copy of a ring, opened ([`StoredRing::open_copy`]).
#[derive(Debug)]
pub struct OpenedCopy {
    /// The ring, with its key bytes.
    pub ring: KeyRing,
    /// The write's data key: its writer seals one more copy with it later
    /// ([`StoredRing::seal_more_copies`]).
    pub data_key: seal::DataKey,
    /// The key the copy was sealed to, that opened it.
    pub opened_with: MemberKeyId,
}

impl StoredRing {
    /// A leader's write of `ring`, sealed in one call: a copy for each of `recipients`
    /// (member id, public key), the copies of `current`'s write kept beside them for members
    /// that hold it ([`StoredRing::keep_copies_of`]), stamped with the writer's term and,
    /// with credentials, signed (the ring and each copy). Also returns the members no copy
    /// could be made for, and why.
    pub fn seal_write(
        writer: &RingWriter<'_>,
        ring: &KeyRing,
        recipients: &[(String, MemberKey)],
        current: Option<&StoredRing>,
    ) -> (Self, Vec<SealError>) {
        let (mut stored, failed) = Self::seal(
            writer.cluster,
            ring,
            writer.policy,
            writer.node_id,
            recipients,
        );
        stored.term = writer.term;
        if let Some(current) = current {
            stored.keep_copies_of(current);
        }
        if let Some(creds) = writer.creds {
            stored.sign(writer.cluster, creds);
        }
        (stored, failed)
    }

    /// Opens `member`'s copy in one call, in the order that tells every failure apart: the
    /// copy must be of this write ([`StoredRing::copy_is_for_this_ring`]: none, one ahead, or
    /// one of another ring), signed by the ring's writer when `trust` is given
    /// ([`StoredRing::verify_copy`], at `now`), and sealed to a key `key_for` yields for the
    /// recipient the copy names (the caller's choice of which of its keys may open it, or
    /// why none may: [`SealError::OtherRecipient`]).
    pub fn open_copy<'k>(
        &self,
        cluster: &str,
        member: &str,
        trust: Option<(&Trust, SystemTime)>,
        key_for: impl FnOnce(MemberKeyId) -> Result<&'k Identity, SealError>,
    ) -> Result<OpenedCopy, SealError> {
        self.copy_is_for_this_ring(member)?;
        if let Some((trust, now)) = trust {
            self.verify_copy(cluster, member, trust, now)?;
        }
        let generation = self.ring.generation();
        let recipient = self
            .copy_for(member)
            .ok_or(SealError::NoCopy { generation })?
            .recipient;
        let key = key_for(recipient)?;
        let (ring, data_key) = self.open_keeping_key(cluster, member, key)?;
        Ok(OpenedCopy {
            ring,
            data_key,
            opened_with: recipient,
        })
    }

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
