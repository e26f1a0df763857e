//! A rotation request (`stek rotate`).

use super::*;

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
