//! A member's copy record (`ring/copies/<member>`): the ring's data key sealed to that member
//! alone, for this write and the one before.

use super::*;

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
pub(super) fn copy_signing_bytes(cluster: &str, copy: &SealedCopy) -> Vec<u8> {
    let mut msg = b"stek ring copy v1\0".to_vec();
    msg.extend_from_slice(&(cluster.len() as u32).to_be_bytes());
    msg.extend_from_slice(cluster.as_bytes());
    msg.extend_from_slice(&encode_copy_record(copy, false));
    msg
}
