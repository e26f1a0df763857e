//! Every member's part, performed: open this node's sealed copy of the ring (the ratchet's
//! steps on the RAM disk first) and apply it to every target.

use std::time::{Instant, SystemTime};

use stek_core::KeyRing;
use stek_store::seal::SealError;
use stek_store::{Coordinator, OpenedCopy, StoredRing};
use tracing::{debug, error, info};

use super::{Node, SealFailure};
use crate::admin::{ErrorLabels, TargetLabels};
use crate::engine::floor::Floor;
use crate::engine::ratchet;

impl<C: Coordinator> Node<'_, C> {
    /// Opens this node's copy of a stored ring ([`crate::engine::follow::next`] says when: one it has not
    /// opened yet, or a copy that changed since one did not open).
    pub(super) fn open(&mut self, stored: &StoredRing, now: SystemTime) {
        let generation = stored.ring.generation();
        let digest = stored.ring.digest();
        let copy = stored.copy_for(&self.config.node_id);
        let floor_covers = self
            .sealing
            .floor()
            .is_some_and(|f| f.generation >= generation);
        let failure = |error| SealFailure {
            generation,
            digest,
            copy: copy.cloned(),
            error,
            floor_covers,
        };
        // A copy of another ring is waited out (the leader reseals); with [identity], a copy
        // is opened only if the ring's writer signed it; and only with a key this node still
        // holds (the one it announced, or the one that opened its floor's ring).
        let announced = self.sealing.announced().public().id();
        let opened = stored.open_copy(
            &self.config.cluster,
            &self.config.node_id,
            self.pki.map(|pki| (&pki.trust, now)),
            |recipient| {
                ratchet::opening_key(
                    self.sealing.roles(),
                    self.sealing.floor(),
                    generation,
                    digest,
                    recipient,
                )
                .and_then(|k| self.sealing.key(k))
                .ok_or(SealError::OtherRecipient {
                    copy: recipient,
                    mine: announced,
                })
            },
        );
        match opened {
            Ok(OpenedCopy {
                ring,
                data_key: key,
                opened_with: with,
            }) => {
                // The floor is on the RAM disk, and a key no ring needs any more is erased,
                // before anything is applied; a step that fails leaves the ring unopened, to
                // be tried again, while the node serves the keys it has.
                let actions = ratchet::on_open(self.sealing.roles(), Floor::of(stored, with));
                if let Err(e) = self.sealing.perform(&actions) {
                    let e = format!("cannot record generation {generation} in the state directory: {e}; keeping the keys on disk");
                    if self.state_error.as_ref() != Some(&e) {
                        error!("{e}");
                    }
                    self.state_error = Some(e);
                    return;
                }
                self.state_error = None;
                if actions.contains(&ratchet::Action::Promote) {
                    debug!(generation, opened_with = %with, announced = %self.sealing.announced().public().id(), "sealing key ratcheted: the key before is erased");
                }
                self.enroll();
                debug!(generation, "opened this node's sealed copy of the ring");
                self.history.remember(&ring);
                self.opened = Some(ring);
                self.data_key = Some(key);
                self.seal_error = None;
                self.accepted = Some(stored.clone());
            }
            // A copy of another write is logged as an error: it is left by a leader that
            // failed between its copies and its ring (rare), or put there by a writer of the
            // store, which must show.
            Err(e @ (SealError::NoCopy { .. } | SealError::Ahead { .. })) => {
                info!(generation, "{e}");
                self.seal_error = Some(failure(e));
            }
            Err(e) => {
                error!(generation, "{e}; keeping the keys on disk");
                self.seal_error = Some(failure(e));
            }
        }
    }

    pub(super) async fn apply(&mut self, ring: &KeyRing) {
        if let Some(applied) = &self.applied {
            if applied.keys() == ring.keys() {
                // Resealed (a member joined, or a copy was replaced): same keys, same files.
                debug!(
                    generation = ring.generation(),
                    "same keys as the applied ring; nothing to write"
                );
                self.applied = Some(ring.clone());
                return;
            }
        }
        let mut failures = Vec::new();
        for t in &self.config.targets {
            let target = TargetLabels {
                target: t.index.to_string(),
                format: t.format.info().name.to_owned(),
            };
            match t.apply(ring).await {
                Ok(applied) => {
                    if let Some(d) = applied.reload {
                        self.metrics
                            .reload_duration
                            .get_or_create(&target)
                            .observe(d.as_secs_f64());
                    }
                }
                Err(e) => {
                    self.metrics
                        .target_errors
                        .get_or_create(&ErrorLabels {
                            target: target.target,
                            format: target.format,
                            stage: e.stage().to_owned(),
                        })
                        .inc();
                    failures.push(e.to_string());
                }
            }
        }
        if failures.is_empty() {
            let keys: Vec<String> = ring
                .keys()
                .iter()
                .map(|k| k.fingerprint().to_string())
                .collect();
            info!(generation = ring.generation(), active = %ring.active().fingerprint(), keys = %keys.join(","), "applied ring to every target");
            self.applied = Some(ring.clone());
            self.last_error = None;
            self.apply_retry.succeeded();
        } else {
            let msg = failures.join("; ");
            let wait = self.apply_retry.failed(Instant::now());
            error!(
                generation = ring.generation(),
                "ring not applied: {msg}; retrying in {wait:?}"
            );
            self.last_error = Some(format!("generation {}: {msg}", ring.generation()));
        }
    }
}
