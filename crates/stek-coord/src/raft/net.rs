//! Peer traffic: one request per connection, each message a 4-byte big-endian length and a
//! JSON body. Carries Raft's own RPCs and the coordinator's client calls: over mutual TLS
//! between peers (`[identity]`), or over a Unix socket in a root-only directory for the
//! single-box default (an address `unix:/path`), where the kernel says who connected.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls::PeerTls;

use super::store::{Applied, Command, Data};
use super::TypeConfig;

/// The largest message accepted.
const MAX_FRAME: u32 = 64 << 20;

/// A request to a peer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Raft: replicate entries.
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft: election.
    Vote(VoteRequest<u64>),
    /// Raft: snapshot transfer.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Client: a change (leader only).
    Write(Command),
    /// Client: the linearizable state (leader only).
    State,
    /// Client: wait until the state's revision passes `after` (leader only).
    Wait {
        /// The revision already seen.
        after: u64,
        /// How long to wait at most.
        timeout_ms: u64,
    },
    /// Client: renew a lease (leader only).
    Heartbeat {
        /// The lease.
        lease: i64,
    },
    /// A peer without Raft state asks whether a group runs, and whether it counts `name`.
    Probe {
        /// The asking peer.
        name: String,
        /// The digest of the founding voters it proposes.
        proposal: u64,
    },
    /// A peer asks to be added to the group (leader only).
    Join {
        /// The peer's node id.
        name: String,
        /// Where the others reach it.
        addr: String,
    },
    /// Removes a peer from the group (leader only).
    Leave {
        /// The peer's node id.
        name: String,
    },
    /// The group's voters and learners.
    Members,
}

/// A peer's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Raft: replicate entries.
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// Raft: election.
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// Raft: snapshot transfer.
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// Client: what a write or heartbeat did.
    Applied(Applied),
    /// Client: the state.
    State(Data),
    /// Client: the current revision.
    Revision(u64),
    /// Client: the lease was renewed, as of this many milliseconds ago (when the leader last
    /// heard from a quorum: a renewal is worth no more than that).
    Renewed(u64),
    /// Client: ask the leader instead (its peer address, if known).
    NotLeader(Option<String>),
    /// Client: something failed on the peer.
    Error(String),
    /// Whether a group runs, and what its leader knows of the asker.
    Group {
        /// A membership exists (false from a peer that is itself starting without state).
        initialized: bool,
        /// The answer comes from the leader.
        leader: bool,
        /// The leader's address, if the answering peer knows it.
        leader_addr: Option<String>,
        /// The answering peer's last log index (0: only the group's first membership entry).
        last_index: u64,
        /// The asker is a voter or learner.
        member: bool,
        /// The leader has replicated entries to the asker in its term: the asker had a log.
        replicated: bool,
        /// The answering peer's last applied log index.
        committed: u64,
        /// The digest of the voters it proposes (no group yet) or runs with.
        proposal: u64,
    },
    /// The group's membership: (raft id, address) of each voter and learner.
    Members {
        /// Voters.
        voters: Vec<(u64, String)>,
        /// Non-voting learners.
        learners: Vec<(u64, String)>,
        /// The current leader's raft id, as this peer knows it.
        leader: Option<u64>,
    },
}

/// Sends one request and reads the reply (over mutual TLS when `tls` is given).
pub async fn call(
    addr: &str,
    req: &Request,
    timeout: Duration,
    tls: Option<&PeerTls>,
) -> std::io::Result<Reply> {
    call_peer(addr, None, req, timeout, tls).await
}

/// [`call`] to the peer whose Raft id is `expect`: with `[identity]` trust, the server's
/// certificate must name the member whose Raft id that is, so an address that leads to another
/// peer (or anyone else with a certificate of the CA) is refused, never counted twice.
pub async fn call_peer(
    addr: &str,
    expect: Option<u64>,
    req: &Request,
    timeout: Duration,
    tls: Option<&PeerTls>,
) -> std::io::Result<Reply> {
    let work = async {
        if let Some(path) = addr.strip_prefix("unix:") {
            let mut stream = tokio::net::UnixStream::connect(path).await?;
            return exchange(&mut stream, req).await;
        }
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        match tls {
            Some(tls) => {
                let name = PeerTls::server_name(addr).map_err(std::io::Error::other)?;
                let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
                let mut stream = connector.connect(name, stream).await?;
                if let (Some(expect), Some(trust)) = (expect, &tls.trust) {
                    let who = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|der| trust.verify(der, std::time::SystemTime::now()));
                    match who {
                        Some(Ok(v)) if matches!(&v.role, crate::identity::Role::Member(n) if super::raft_id(n) == expect) => {}
                        Some(Ok(v)) => {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::PermissionDenied,
                                format!("{addr} answered with the certificate of {}, not of the peer it is listed for", v.role),
                            ))
                        }
                        Some(Err(e)) => {
                            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("{addr}: {e}")))
                        }
                        None => {
                            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("{addr} presented no certificate")))
                        }
                    }
                }
                exchange(&mut stream, req).await
            }
            None => {
                let mut stream = stream;
                exchange(&mut stream, req).await
            }
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{addr} did not answer within {timeout:?}"),
        )
    })?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    req: &Request,
) -> std::io::Result<Reply> {
    write_frame(stream, &serde_json::to_vec(req)?).await?;
    let body = read_frame(stream).await?;
    let reply = serde_json::from_slice(&body)?;
    // Close our side cleanly (a TLS close_notify) so the peer sees no truncation.
    let _ = stream.shutdown().await;
    Ok(reply)
}

/// A peer's listener: TCP, or a Unix socket for the single-box default.
#[derive(Debug)]
pub enum Listener {
    /// host:port.
    Tcp(tokio::net::TcpListener),
    /// `unix:/path`: the socket, mode 0600 in a directory only its owner can enter.
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl Listener {
    /// Binds `addr`. A Unix socket's directory is made 0700 if missing and refused if another
    /// user owns it or can enter it; a socket a live process still answers on is refused, a
    /// stale one (a killed node's) replaced.
    pub async fn bind(addr: &str) -> std::io::Result<Self> {
        let Some(path) = addr.strip_prefix("unix:") else {
            return Ok(Self::Tcp(tokio::net::TcpListener::bind(addr).await?));
        };
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
        let path = std::path::PathBuf::from(path);
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other(format!("{}: no directory", path.display())))?;
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let meta = std::fs::symlink_metadata(dir)?;
        let me = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} must be a directory of uid {me} that no other user can enter (it is uid {}, mode {:o}); its socket gives full control of the cluster: chown it and chmod 700, or choose another [raft] listen = \"unix:/...\"",
                    dir.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            ));
        }
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if !m.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket; remove it", path.display()),
                ));
            }
            if tokio::net::UnixStream::connect(&path).await.is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use: another stek node of this cluster runs on this box",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self::Unix(listener, path))
    }
}

/// Writes one frame.
pub async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("message too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// Reads one frame.
pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a peer sent a {len}-byte message; the limit is {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// Raft's view of the network: a connection to one peer per RPC.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// Mutual TLS, when configured.
    pub tls: Option<Arc<PeerTls>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerLink {
        PeerLink {
            target,
            addr: node.addr.clone(),
            tls: self.tls.clone(),
        }
    }
}

/// Raft RPCs to one peer.
#[derive(Debug)]
pub struct PeerLink {
    target: u64,
    addr: String,
    tls: Option<Arc<PeerTls>>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

impl PeerLink {
    async fn send<E: std::error::Error>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Reply, RpcErr<E>> {
        call_peer(
            &self.addr,
            Some(self.target),
            &req,
            option.hard_ttl(),
            self.tls.as_deref(),
        )
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })
    }

    fn unexpected<E: std::error::Error>(&self, reply: Reply) -> RpcErr<E> {
        let e = std::io::Error::other(format!(
            "unexpected reply from peer {}: {reply:?}",
            self.target
        ));
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        match self.send(Request::Append(rpc), &option).await? {
            Reply::Append(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        match self.send(Request::InstallSnapshot(rpc), &option).await? {
            Reply::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        match self.send(Request::Vote(rpc), &option).await? {
            Reply::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }
}
