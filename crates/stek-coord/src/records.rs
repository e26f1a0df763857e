//! What the coordination store holds, as JSON, and how each record is checked on the way in.
//!
//! Every decoder rejects a malformed record with an error that names what is wrong but never
//! quotes the record (it may hold key bytes): serde's messages can echo a value, so only their
//! category and position are kept.
//!
//! Until sealed distribution lands, the ring record holds the key bytes (base64): whoever can
//! read the keyspace can read the keys. See docs/security notes in the README.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use stek_core::{KeyRing, KeyState, Policy, RingKey, TicketKey};
use zeroize::Zeroizing;

/// The record format version this build writes and reads.
pub const RING_RECORD_VERSION: u32 = 1;

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
    #[error("ring record version {0} is not supported by this stek (it reads version {RING_RECORD_VERSION}); upgrade stek on this node")]
    Version(u32),
    /// A key field with the wrong length or encoding.
    #[error("key epoch {epoch}: field {field} is not {len} bytes of base64")]
    KeyField {
        /// Which key.
        epoch: u64,
        /// Which field.
        field: &'static str,
        /// Expected length.
        len: usize,
    },
    /// The policy stored with the ring is unusable.
    #[error("ring record policy: {0}")]
    Policy(String),
    /// A key under the cluster prefix that stek never writes.
    #[error("unknown key under the cluster prefix (not written by stek); delete it")]
    UnknownKey,
    /// A member record stored under another node's key.
    #[error("member record names node \"{0}\", not the node its key is for")]
    WrongMember(String),
    /// The ring breaks an invariant.
    #[error("ring record breaks an invariant: {0}")]
    Ring(#[from] stek_core::ring::RingError),
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

/// Base64 text of key bytes: zeroized on drop, never printed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
struct B64(Zeroizing<String>);

impl fmt::Debug for B64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("B64(..)")
    }
}

impl B64 {
    fn encode(bytes: &[u8]) -> Self {
        let mut s = Zeroizing::new(String::new());
        base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut s);
        Self(s)
    }

    fn decode<const N: usize>(
        &self,
        epoch: u64,
        field: &'static str,
    ) -> Result<[u8; N], RecordError> {
        let err = || RecordError::KeyField {
            epoch,
            field,
            len: N,
        };
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(self.0.as_bytes())
                .map_err(|_| err())?,
        );
        <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| err())
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRecord {
    epoch: u64,
    state: KeyState,
    created_at_ms: u64,
    staged_in: u64,
    retired_in: Option<u64>,
    name: B64,
    aes: B64,
    hmac: B64,
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
    last_epoch: u64,
    next_rotation_at_ms: u64,
    policy: PolicyRecord,
    written_by: String,
    keys: Vec<KeyRecord>,
}

/// A ring read from the store, with the policy it was written under and by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRing {
    /// The ring.
    pub ring: KeyRing,
    /// The policy in force when it was written.
    pub policy: Policy,
    /// The leader that wrote it.
    pub written_by: String,
}

/// Serialises a ring for the store. The buffer is zeroized on drop.
pub fn encode_ring(ring: &KeyRing, policy: &Policy, written_by: &str) -> Zeroizing<Vec<u8>> {
    let record = RingRecord {
        version: RING_RECORD_VERSION,
        generation: ring.generation(),
        last_epoch: ring.last_epoch(),
        next_rotation_at_ms: ms(ring.next_rotation_at()),
        policy: PolicyRecord {
            interval_ms: u64::try_from(policy.interval.as_millis()).unwrap_or(u64::MAX),
            retain: policy.retain,
        },
        written_by: written_by.to_owned(),
        keys: ring
            .keys()
            .iter()
            .map(|k| KeyRecord {
                epoch: k.epoch,
                state: k.state,
                created_at_ms: ms(k.created_at),
                staged_in: k.staged_in,
                retired_in: k.retired_in,
                name: B64::encode(k.key.name()),
                aes: B64::encode(k.key.aes256()),
                hmac: B64::encode(k.key.hmac256()),
            })
            .collect(),
    };
    Zeroizing::new(
        serde_json::to_vec(&record)
            .expect("a ring record always serialises: plain numbers and strings"),
    )
}

/// Parses and checks a ring record; a malformed one is rejected, never applied.
pub fn decode_ring(bytes: &[u8]) -> Result<StoredRing, RecordError> {
    let record: RingRecord = serde_json::from_slice(bytes).map_err(|e| shape("ring", &e))?;
    if record.version != RING_RECORD_VERSION {
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
        let name = k.name.decode::<16>(k.epoch, "name")?;
        let aes = Zeroizing::new(k.aes.decode::<32>(k.epoch, "aes")?);
        let hmac = Zeroizing::new(k.hmac.decode::<32>(k.epoch, "hmac")?);
        keys.push(RingKey {
            epoch: k.epoch,
            state: k.state,
            created_at: from_ms(k.created_at_ms),
            staged_in: k.staged_in,
            retired_in: k.retired_in,
            key: TicketKey::from_parts(name, *aes, *hmac),
        });
    }
    let ring = KeyRing::from_parts(
        record.generation,
        keys,
        record.last_epoch,
        from_ms(record.next_rotation_at_ms),
        &policy,
    )?;
    Ok(StoredRing {
        ring,
        policy,
        written_by: record.written_by,
    })
}

/// A member's own record: who it is and what it has applied (its acknowledgement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl MemberRecord {
    /// Encodes for the store.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("a member record always serialises: plain strings and numbers")
    }

    /// Parses a member record.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        serde_json::from_slice(bytes).map_err(|e| shape("member", &e))
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
}

impl RequestRecord {
    /// A new request by `by`, and its key under `prefix` (time-ordered, unique).
    pub fn new_keyed(prefix: &str, by: &str) -> (String, Self) {
        let now = MemberRecord::now_ms();
        let key = format!("{prefix}requests/{now:013}-{:08x}", rand::random::<u32>());
        (
            key,
            Self {
                requested_by: by.to_owned(),
                requested_at_ms: now,
            },
        )
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
    use stek_core::OsKeySource;

    fn policy() -> Policy {
        Policy {
            interval: Duration::from_secs(60),
            retain: 1,
        }
    }

    #[test]
    fn ring_round_trips_through_the_record() {
        let p = policy();
        let r1 = KeyRing::bootstrap(SystemTime::now(), &p, &mut OsKeySource);
        let r2 = r1.rotated(SystemTime::now(), &p, &mut OsKeySource).unwrap();
        let bytes = encode_ring(&r2, &p, "n1");
        let back = decode_ring(&bytes).unwrap();
        assert_eq!(back.written_by, "n1");
        assert_eq!(back.policy, p);
        assert_eq!(back.ring.generation(), r2.generation());
        assert_eq!(back.ring.last_epoch(), r2.last_epoch());
        for (a, b) in back.ring.keys().iter().zip(r2.keys()) {
            assert_eq!(a.key, b.key);
            assert_eq!(
                (a.epoch, a.state, a.staged_in, a.retired_in),
                (b.epoch, b.state, b.staged_in, b.retired_in)
            );
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
    fn a_record_that_breaks_an_invariant_is_rejected() {
        let p = policy();
        let r = KeyRing::bootstrap(SystemTime::now(), &p, &mut OsKeySource);
        let bytes = encode_ring(&r, &p, "n1");
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["keys"][1]["state"] = "active".into();
        let err = decode_ring(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, RecordError::Ring(_)), "{err}");
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["keys"][0]["aes"] = "AAAA".into();
        let err = decode_ring(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("field aes is not 32 bytes"), "{err}");
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["version"] = 7.into();
        let err = decode_ring(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 7"), "{err}");
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["policy"]["retain"] = 0.into();
        assert!(decode_ring(&serde_json::to_vec(&v).unwrap()).is_err());
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
        };
        assert_eq!(MemberRecord::decode(&m.encode()).unwrap(), m);
        assert!(MemberRecord::decode(b"{}").is_err());
        let r = RequestRecord {
            requested_by: "cli".into(),
            requested_at_ms: 2,
        };
        assert_eq!(RequestRecord::decode(&r.encode()).unwrap(), r);
        assert!(RequestRecord::decode(b"[1]").is_err());
    }
}
