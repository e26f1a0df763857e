//! The embedded coordinator as a [`Coordinator`]: every call goes to the Raft leader (found
//! through any peer, following redirects), so reads are linearizable and liveness is the
//! leader's view.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::store::{Applied, Command, Keyspace, Outcome};
use super::wire::{call, Reply, Request};
use stek_store::records::{MemberRecord, RequestRecord};
use stek_store::StoredRing;
use stek_store::{
    Change, ChangeStream, CoordError, Coordinator, KeepAlive, LeaseId, Snapshot, Term,
};

/// How long one call may take (a wait may take its own timeout on top).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to keep looking for a leader (an election takes about a second).
const FIND_LEADER: Duration = Duration::from_secs(8);

/// A client of the embedded coordinator.
#[derive(Debug, Clone)]
pub struct RaftClient {
    peers: Vec<String>,
    prefix: String,
    hint: Arc<Mutex<Option<String>>>,
    tls: Option<Arc<super::tls::PeerTls>>,
}

impl RaftClient {
    /// A client for cluster `cluster` reaching the group through `peers` (addresses); `home`,
    /// if given, is tried first.
    pub fn new(cluster: &str, peers: Vec<String>, home: Option<String>) -> Self {
        Self {
            peers,
            prefix: format!("/stek/{cluster}/"),
            hint: Arc::new(Mutex::new(home)),
            tls: None,
        }
    }

    /// Talks to the peers over mutual TLS.
    pub fn with_tls(mut self, tls: Option<super::tls::PeerTls>) -> Self {
        self.tls = tls.map(Arc::new);
        self
    }

    fn endpoints(&self) -> String {
        format!("raft peers [{}]", self.peers.join(", "))
    }

    async fn request(&self, req: &Request) -> Result<Reply, CoordError> {
        let deadline = Instant::now() + FIND_LEADER;
        let mut last = String::from("no peer answered");
        loop {
            let hint = self.hint.lock().await.clone();
            let mut order: Vec<String> = hint.iter().cloned().collect();
            order.extend(
                self.peers
                    .iter()
                    .filter(|p| hint.as_ref() != Some(p))
                    .cloned(),
            );
            for addr in order {
                let mut target = addr;
                let limit = match req {
                    Request::Wait { timeout_ms, .. } => {
                        CALL_TIMEOUT + Duration::from_millis(*timeout_ms)
                    }
                    _ => CALL_TIMEOUT,
                };
                for _ in 0..3 {
                    match call(&target, req, limit, self.tls.as_deref()).await {
                        Ok(Reply::NotLeader(Some(leader))) if leader != target => target = leader,
                        Ok(Reply::NotLeader(_)) => {
                            last = "the group has no leader (election in progress, or quorum lost)"
                                .into();
                            break;
                        }
                        // A peer that has not joined yet: ask another.
                        Ok(Reply::Error(e)) if e.starts_with(super::peer::NOT_ADMITTED) => {
                            last = e;
                            break;
                        }
                        // The peer's own answer (a refusal, a failed change): asking others
                        // would only repeat it.
                        Ok(Reply::Error(e)) => {
                            return Err(CoordError::Refused {
                                by: format!("the peer at {target}"),
                                reason: e,
                            })
                        }
                        Ok(reply) => {
                            *self.hint.lock().await = Some(target);
                            return Ok(reply);
                        }
                        Err(e) => {
                            last = format!("{target}: {e}");
                            break;
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(CoordError::Unreachable {
                    endpoints: self.endpoints(),
                    reason: last,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn write(&self, cmd: Command) -> Result<Outcome, CoordError> {
        match self.request(&Request::Write(cmd)).await? {
            Reply::Written(outcome) => Ok(outcome),
            // A peer's refusal before the write reached the log (a member that does not
            // lead is fenced): no revision.
            Reply::Applied(applied) => Ok(Outcome {
                applied,
                revision: 0,
            }),
            other => Err(self.odd(other)),
        }
    }

    fn odd(&self, reply: Reply) -> CoordError {
        CoordError::Protocol {
            endpoints: self.endpoints(),
            reason: format!("{reply:?}"),
        }
    }

    fn snapshot_of(&self, data: &Keyspace) -> Snapshot {
        data.raw_snapshot(&self.prefix).check()
    }
}

/// The group's membership as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// (raft id, address) of each voter.
    pub voters: Vec<(u64, String)>,
    /// (raft id, address) of each non-voting learner.
    pub learners: Vec<(u64, String)>,
    /// The leader's raft id.
    pub leader: Option<u64>,
}

impl RaftClient {
    /// The group's voters and learners, from its leader.
    pub async fn members(&self) -> Result<Membership, CoordError> {
        match self.request(&Request::Members).await? {
            Reply::Members {
                voters,
                learners,
                leader,
            } => Ok(Membership {
                voters,
                learners,
                leader,
            }),
            other => Err(self.odd(other)),
        }
    }

    /// Adds peer `name`, reached at `addr`, to the group: a learner until it caught up, then a
    /// voter while the group has fewer than five.
    pub async fn add_peer(&self, name: &str, addr: &str) -> Result<(), CoordError> {
        let req = Request::Join {
            name: name.to_owned(),
            addr: addr.to_owned(),
        };
        match self.request(&req).await? {
            Reply::Applied(_) => Ok(()),
            other => Err(self.odd(other)),
        }
    }

    /// Removes peer `name` from the group (a learner takes a removed voter's place). The
    /// leader refuses to leave fewer voters than the group's floor
    /// ([`may_remove`](crate::group::may_remove)) unless `below_voter_floor`.
    pub async fn remove_peer(&self, name: &str, below_voter_floor: bool) -> Result<(), CoordError> {
        match self
            .request(&Request::Leave {
                name: name.to_owned(),
                below_voter_floor,
            })
            .await?
        {
            Reply::Applied(_) => Ok(()),
            other => Err(self.odd(other)),
        }
    }
}

/// Renews one lease through the group's leader.
struct Renewer {
    client: RaftClient,
    lease: LeaseId,
}

impl stek_store::Renew for Renewer {
    async fn renew(&mut self) -> stek_store::Renewal {
        let heartbeat = Request::Heartbeat {
            lease: self.lease.0,
        };
        match self.client.request(&heartbeat).await {
            Ok(Reply::Renewed(age_ms)) => {
                let now = tokio::time::Instant::now();
                let age = Duration::from_millis(age_ms);
                // A renewal older than this process's clock can say is not credited at all
                // (never at `now`): the lease then counts from the last renewal it can place.
                match now.checked_sub(age) {
                    Some(at) => stek_store::Renewal::Renewed(at),
                    None => stek_store::Renewal::Failed,
                }
            }
            Ok(Reply::Applied(Applied::NoLease)) => stek_store::Renewal::Gone,
            _ => stek_store::Renewal::Failed,
        }
    }
}

/// Waits on the leader's revision.
#[derive(Debug)]
pub struct RaftWatch {
    client: RaftClient,
    after: u64,
}

impl ChangeStream for RaftWatch {
    async fn changed(&mut self) -> Result<Change, CoordError> {
        loop {
            let req = Request::Wait {
                after: self.after,
                timeout_ms: 5_000,
            };
            match self.client.request(&req).await {
                Ok(Reply::Revision(r)) if r > self.after => {
                    self.after = r;
                    // The peer protocol says that something changed, not what.
                    return Ok(Change {
                        revision: i64::try_from(r).unwrap_or(i64::MAX),
                        keys: None,
                    });
                }
                // A new leader may be behind or ahead; either way re-read everything.
                Ok(Reply::Revision(r)) if r < self.after => {
                    return Err(CoordError::WatchBroken("the leader changed".into()))
                }
                Ok(Reply::Revision(_)) => {}
                Ok(other) => return Err(CoordError::WatchBroken(format!("{other:?}"))),
                Err(e) => return Err(CoordError::WatchBroken(e.to_string())),
            }
        }
    }
}

impl Coordinator for RaftClient {
    type Watch = RaftWatch;

    async fn snapshot(&self) -> Result<Snapshot, CoordError> {
        match self.request(&Request::State).await? {
            Reply::State(data) => Ok(self.snapshot_of(&data)),
            other => Err(self.odd(other)),
        }
    }

    async fn watch(&self, revision: i64) -> Result<RaftWatch, CoordError> {
        Ok(RaftWatch {
            client: self.clone(),
            after: u64::try_from(revision).unwrap_or(0),
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let lease = i64::from(rand::random::<u32>()) << 16 | i64::from(rand::random::<u16>());
        let ttl_ms = u64::try_from(ttl.max(Duration::from_secs(2)).as_millis()).unwrap_or(u64::MAX);
        self.write(Command::Grant { lease, ttl_ms }).await?;
        Ok(LeaseId(lease))
    }

    async fn keep_alive(&self, lease: LeaseId, ttl: Duration) -> Result<KeepAlive, CoordError> {
        Ok(KeepAlive::run(
            Renewer {
                client: self.clone(),
                lease,
            },
            ttl,
        ))
    }

    async fn register(&self, lease: LeaseId, member: &MemberRecord) -> Result<(), CoordError> {
        self.write(Command::register(lease, member))
            .await?
            .registered(&member.node_id)
    }

    async fn ack(&self, member: &MemberRecord) -> Result<(), CoordError> {
        self.write(Command::ack(member)).await?.accepted()
    }

    async fn campaign(&self, lease: LeaseId, node_id: &str) -> Result<Option<Term>, CoordError> {
        self.write(Command::Campaign {
            lease: lease.0,
            node_id: node_id.to_owned(),
        })
        .await?
        .elected()
    }

    async fn write_ring(
        &self,
        term: Term,
        ring_revision: i64,
        ring: &StoredRing,
        served_requests: &[String],
    ) -> Result<i64, CoordError> {
        let cmd = Command::write_ring(term, ring_revision, ring, served_requests);
        self.write(cmd).await?.written(term)
    }

    async fn write_copies(
        &self,
        term: Term,
        ring_revision: i64,
        copies: &[(String, Vec<u8>)],
    ) -> Result<i64, CoordError> {
        let cmd = Command::write_copies(term, ring_revision, copies);
        self.write(cmd).await?.written(term)
    }

    async fn forget_member(&self, term: Term, node_id: &str) -> Result<bool, CoordError> {
        self.write(Command::forget_member(term, node_id))
            .await?
            .forgotten(term)
    }

    /// Peers purge their logs on their own: each one, on applying a ring write that drops keys,
    /// snapshots and purges its log up to it (and every [`super::peer::RAFT_LOG_KEPT`] entries
    /// besides), so there is nothing to ask for, and nothing waits on an etcd setting.
    async fn purge_history(&self, _revision: i64) -> Result<bool, CoordError> {
        // Every peer purges its own log after applying a write that drops keys.
        Ok(false)
    }

    async fn resign(&self, term: Term) -> Result<(), CoordError> {
        self.write(Command::resign(term)).await.map(|_| ())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        self.write(Command::Revoke { lease: lease.0 })
            .await
            .map(|_| ())
    }

    async fn request_rotation(
        &self,
        by: &str,
        signer: Option<&stek_trust::identity::Credentials>,
    ) -> Result<String, CoordError> {
        let (key, record) = RequestRecord::new_signed(&self.prefix, by, signer);
        self.write(Command::PutRequest {
            key: key.clone(),
            value: record.encode(),
            by: None,
        })
        .await?
        .accepted()?;
        Ok(key)
    }
}
