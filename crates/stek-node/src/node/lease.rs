//! The liveness lease, performed: join (a lease, a keep-alive, the member record under it),
//! and leave (resign, revoke) on shutdown.

use std::time::{Duration, Instant};

use stek_store::{CoordError, Coordinator, KeepAlive};
use tracing::{error, info, warn};

use super::{Node, NodeError, RESIGN_LIMIT};
use crate::engine::role::{self, HeldNodeId};

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
                let now = Instant::now();
                let since = *self.held_since.get_or_insert(now);
                match role::on_held_node_id(since, now, self.config.lease_ttl) {
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

    async fn lease_and_register(&mut self) -> Result<KeepAlive, CoordError> {
        let lease = self.coord.grant_lease(self.config.lease_ttl).await?;
        let keepalive = self.coord.keep_alive(lease, self.config.lease_ttl).await?;
        self.coord.register(lease, &self.record()).await?;
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
