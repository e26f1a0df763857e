//! A member's own record: who it is, what it applied (its acknowledgement), and the key it
//! announces.

use super::*;

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
