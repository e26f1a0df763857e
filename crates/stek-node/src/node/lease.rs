//! The liveness lease, performed: join (a lease, a keep-alive, the member record under it),
//! and leave (resign, revoke) on shutdown.

use std::time::{Duration, Instant};

use stek_store::{CoordError, Coordinator, KeepAlive};
use tracing::{error, info, warn};

use super::{Node, NodeError, RESIGN_LIMIT};
use crate::engine::role::{self, HeldNodeId, Holder};

/// How a try to join ended.
pub(super) enum Joined {
    /// Live under a lease, kept alive.
    Live(KeepAlive),
    /// Not yet: try again `after`, growing the backoff (`back_off`) or not.
    Retry {
        /// When.
        after: Duration,
        /// Whether the store-error backoff doubles.
        back_off: bool,
    },
    /// This node must not run (another live process holds its node id).
    Refused(NodeError),
}

impl<C: Coordinator> Node<'_, C> {
    /// Takes a liveness lease and registers this node's record under it; on failure, says
    /// when to try again (`backoff`: the current store-error backoff), or that this node must
    /// not run ([`role::on_held_node_id`]).
    pub(super) async fn join(&mut self, backoff: Duration) -> Joined {
        match self.lease_and_register().await {
            Ok(mut k) => {
                self.held_since = None;
                // A lost lease says the store is down at once, even while a read waits out its
                // leader search.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let lost = std::mem::replace(&mut k.lost, rx);
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let reason = lost.await.unwrap_or_else(|_| "keep-alive stopped".into());
                    metrics.store_up.set(0);
                    let _ = tx.send(reason);
                });
                Joined::Live(k)
            }
            Err(CoordError::Held { node_id, holder }) => {
                self.metrics.store_up.set(0);
                self.metrics.node_id_held.set(1);
                self.metrics.set_ready(Err(format!(
                    "node id {node_id} is held by another lease ({holder})"
                )));
                let now = Instant::now();
                let since = *self.held_since.get_or_insert(now);
                let by = self.holder_of_node_id(&node_id).await;
                match role::on_held_node_id(since, now, self.config.lease_ttl, by) {
                    HeldNodeId::Contested { retry } => {
                        error!(target: "audit", node = %node_id, "node id held by a liveness key that no record signed for this node id names ({holder}): a store writer put it there, or a record was lost; not obeyed: this node keeps its keys and tries again every {retry:?} (remove the key from the store to end it)");
                        Joined::Retry {
                            after: retry,
                            back_off: false,
                        }
                    }
                    HeldNodeId::Refuse { patience } => {
                        error!(target: "audit", node = %node_id, "node id held by another live process ({holder}) for {patience:?}: refusing to run beside it");
                        Joined::Refused(NodeError::NodeIdHeld { node_id, holder })
                    }
                    HeldNodeId::Wait { patience, retry } => {
                        warn!("node id {node_id} is held by another live process ({holder}); waiting up to {patience:?} for its lease to expire (a process killed a moment ago) before refusing to start");
                        Joined::Retry {
                            after: retry,
                            back_off: false,
                        }
                    }
                }
            }
            Err(e) => {
                self.metrics.store_up.set(0);
                warn!("cannot join the cluster: {e}; retrying in {backoff:?}");
                Joined::Retry {
                    after: backoff,
                    back_off: true,
                }
            }
        }
    }

    /// Who holds this node's id ([`Holder`]): with `[identity]`, whether a member record
    /// of this node id signed with a certificate for it names another instance (a second
    /// process on another box), or nothing signed does (a key a store writer put there, which
    /// must not stop this node). A read that fails tells nothing: not obeyed either.
    async fn holder_of_node_id(&self, node_id: &str) -> Holder {
        let Some(pki) = self.pki else {
            return Holder::Unverifiable;
        };
        let Ok(mut snap) = self.coord.snapshot_of_member(node_id).await else {
            return Holder::Unsigned;
        };
        snap.authenticate(&pki.trust, self.clock.now());
        let mine = self.sealing.instance();
        let another = snap.members.iter().any(|m| {
            m.record.node_id == node_id && m.record.instance.as_deref().is_some_and(|i| i != mine)
        });
        if another {
            Holder::SignedByAnother
        } else {
            Holder::Unsigned
        }
    }

    async fn lease_and_register(&mut self) -> Result<KeepAlive, CoordError> {
        let lease = self.coord.grant_lease(self.config.lease_ttl).await?;
        let keepalive = self.coord.keep_alive(lease, self.config.lease_ttl).await?;
        if let Err(e) = self.coord.register(lease, &self.record()).await {
            // The lease is no use to anyone: end it now rather than leave one per try.
            drop(keepalive);
            let _ = tokio::time::timeout(RESIGN_LIMIT, self.coord.revoke(lease)).await;
            return Err(e);
        }
        self.metrics.node_id_held.set(0);
        info!(target: "audit", node = %self.config.node_id, "member joined");
        self.leading.role.joined(lease);
        Ok(keepalive)
    }

    /// Resigns the leadership and revokes the lease, each waited for at most
    /// [`RESIGN_LIMIT`]: shutting down hands over at once rather than after a lease TTL.
    pub(super) async fn leave(&mut self) {
        let limit = RESIGN_LIMIT;
        if let Some(term) = self.leading.role.step_down() {
            match tokio::time::timeout(limit, self.coord.resign(term)).await {
                Ok(Ok(())) => {
                    info!(target: "audit", node = %self.config.node_id, "leadership released")
                }
                _ => warn!("could not release the leadership; it ends when the lease expires"),
            }
        }
        if let Some(lease) = self.leading.role.lease() {
            self.leading.role.lease_ended();
            match tokio::time::timeout(limit, self.coord.revoke(lease)).await {
                Ok(Ok(())) => info!(target: "audit", node = %self.config.node_id, "member left"),
                _ => warn!("could not revoke the lease; the member expires with it"),
            }
        }
    }
}
