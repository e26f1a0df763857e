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

use crate::seal::{self, Envelope, Identity, MemberKey, MemberKeyId, SealError, SealedCopy};
use stek_trust::identity::{self, Credentials, IdentityError, Trust, Verified};

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

mod copy;
mod member;
mod request;
mod ring;

pub use copy::*;
pub use member::*;
pub use request::*;
pub use ring::*;

#[cfg(test)]
mod tests;
