//! This node's member record: what it announces (its sealing key and floor), what it applied,
//! and, with `[identity]`, its signed enrollment.

use stek_core::{KeyRing, RingDigest};
use stek_store::seal::{MemberKeyId, SealError};
use stek_store::{Coordinator, MemberRecord};

use super::Node;

/// What an announcement signs: the key and the floor it is announced with.
pub(super) type Announced = (MemberKeyId, Option<(u64, RingDigest)>);

impl<C: Coordinator> Node<'_, C> {
    pub(super) fn record(&self) -> MemberRecord {
        let mut record = self.bare_record();
        if let Some((cert, _, sig)) = &self.enrollment {
            record.certificate = Some(cert.clone());
            record.key_signature = Some(sig.clone());
        }
        record
    }

    fn announced(&self) -> Announced {
        (
            self.sealing.announced().public().id(),
            self.sealing.floor().map(|f| (f.generation, f.digest)),
        )
    }

    /// With `[identity]`, signs the key this node announces with its floor, once per change.
    pub(super) fn enroll(&mut self) {
        let Some(pki) = self.pki else { return };
        let announced = self.announced();
        if self
            .enrollment
            .as_ref()
            .is_some_and(|(_, a, _)| *a == announced)
        {
            return;
        }
        let mut enrolled = self.bare_record();
        enrolled.enroll(&self.config.cluster, &pki.creds);
        self.enrollment = enrolled
            .certificate
            .zip(enrolled.key_signature)
            .map(|(cert, sig)| (cert, announced, sig));
    }

    fn bare_record(&self) -> MemberRecord {
        MemberRecord {
            node_id: self.config.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            targets: self
                .config
                .targets
                .iter()
                .map(|t| t.format.info().name.to_owned())
                .collect(),
            applied_generation: self.applied.as_ref().map_or(0, KeyRing::generation),
            applied_digest: self.applied.as_ref().map(|r| r.digest().to_string()),
            last_error: match &self.seal_error {
                Some(f)
                    if !matches!(f.error, SealError::NoCopy { .. } | SealError::Ahead { .. }) =>
                {
                    Some(format!("generation {}: {}", f.generation, f.error))
                }
                _ => self.state_error.clone().or_else(|| self.last_error.clone()),
            }
            .as_deref()
            .map(stek_store::records::cut_error),
            updated_at_ms: u64::try_from(
                self.clock
                    .now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
            public_key: Some(self.sealing.announced().public().to_base64()),
            unsealable_generation: self
                .seal_error
                .as_ref()
                .filter(|f| f.leader_cannot_see())
                .map(|f| f.generation),
            certificate: None,
            key_signature: None,
            instance: Some(self.sealing.instance().to_owned()),
            floor_generation: self.sealing.floor().map(|f| f.generation),
            floor_digest: self.sealing.floor().map(|f| f.digest.to_string()),
        }
    }
}
