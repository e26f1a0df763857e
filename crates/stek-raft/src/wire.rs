//! The peer protocol on the wire: the messages ([`Request`], [`Reply`]), their framing (a 4-byte
//! big-endian length, then a JSON body; one request and one reply per connection), and one
//! exchange from the caller's side ([`call`], [`call_peer`]). It carries Raft's own RPCs and the
//! coordinator's client calls: over mutual TLS between peers (`[identity]`), or over a Unix
//! socket in a root-only directory for the single-box default (an address `unix:/path`), where
//! the kernel says who connected.
//!
//! The caller's side is here, not beside the listener, because it is what every caller of a peer
//! needs with the messages (the coordinator client, a peer probing or adding another, openraft's
//! network adapter), and it holds the caller's half of the peers'
//! authentication: with `[identity]` trust, the certificate answering at an address must name the
//! peer that address is listed for.
//!
//! Frames are of [`MAX_FRAME`] (64 MiB) at most, on either side, and a frame's buffer grows as
//! its bytes arrive (from [`FRAME_CHUNK`], 64 KiB, to at most twice what has arrived): a declared
//! length costs nothing until it is sent.
//!
//! Not here: serving (accepting connections and the bounds on what each may hold,
//! [`listener`](crate::listener)), what a peer answers ([`peer`](crate::peer)) and whom it
//! answers (`authorize`), openraft's view of the network ([`network`](crate::network)).

use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::group::raft_id;
use super::store::{Applied, Command, Keyspace, Outcome};
use super::tls::PeerTls;
use super::TypeConfig;

/// The largest message accepted.
pub const MAX_FRAME: u32 = 64 << 20;
/// A frame's first buffer; it grows from there only as the bytes arrive.
pub const FRAME_CHUNK: usize = 64 << 10;

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
        /// Remove a voter even if fewer than the voter floor would remain
        /// ([`may_remove`](crate::group::may_remove)); operators only. Absent from an older
        /// client's frame (read as false) and left out when false, so a frame without it
        /// reads the same to old and new peers.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        below_voter_floor: bool,
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
    /// Client: what a heartbeat, a membership change or a refused request did.
    Applied(Applied),
    /// Client: what a write did, and the revision it was applied at.
    Written(Outcome),
    /// Client: the state.
    State(Keyspace),
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
/// peer (or anyone else with a certificate of the CA) is refused, never counted twice. With
/// trust and no `expect` (a client following the group to its leader), the server's
/// certificate must still be a member's, under the same trust: an operator's or a revoked
/// member's certificate cannot answer for a peer.
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
                if let Some(trust) = &tls.trust {
                    let who = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|der| trust.verify(der, std::time::SystemTime::now()));
                    match who {
                        Some(Ok(v)) if matches!(&v.role, stek_trust::identity::Role::Member(n) if expect.is_none_or(|e| raft_id(n) == e)) =>
                            {}
                        Some(Ok(v)) => {
                            let wanted = if expect.is_some() {
                                "the peer it is listed for"
                            } else {
                                "a member: only members' boxes run peers"
                            };
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::PermissionDenied,
                                format!(
                                    "{addr} answered with the certificate of {}, not of {wanted}",
                                    v.role
                                ),
                            ));
                        }
                        Some(Err(e)) => {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::PermissionDenied,
                                format!("{addr}: {e}"),
                            ))
                        }
                        None => {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::PermissionDenied,
                                format!("{addr} presented no certificate"),
                            ))
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

/// Writes `req` on an open connection, reads the reply and closes this side. The crate's own, so
/// that the listener's tests can speak over a connection they opened themselves.
pub(crate) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
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
    let mut body = Vec::new();
    read_frame_into(stream, &mut body, MAX_FRAME).await?;
    Ok(body)
}

/// Reads one frame into `body`, whose buffer grows as the bytes arrive: to [`FRAME_CHUNK`]
/// first, then to at most twice what has arrived, never beyond the declared length. A peer
/// that declares a large frame and sends nothing costs one chunk. A frame above `largest`
/// bytes is refused unread.
pub(crate) async fn read_frame_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    body: &mut Vec<u8>,
    largest: u32,
) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > largest {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a peer sent a {len}-byte message; the limit is {largest}"),
        ));
    }
    let len = len as usize;
    body.clear();
    while body.len() < len {
        if body.len() == body.capacity() {
            // Doubling (from one chunk) keeps the copies few; the bytes must be here first.
            let grow = body.len().max(FRAME_CHUNK).min(len - body.len());
            body.reserve_exact(grow);
        }
        let left = (len - body.len()) as u64;
        let got = (&mut *stream).take(left).read_buf(body).await?;
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the connection closed {} bytes into a {len}-byte message",
                    body.len()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An older client's `Leave` (no flag) still decodes, as a removal that keeps the floor;
    /// a new client's without the flag is the same frame; with it, the flag arrives.
    #[test]
    fn a_leave_without_the_floor_flag_decodes_as_before() {
        let old = br#"{"Leave":{"name":"lb-3"}}"#;
        match serde_json::from_slice::<Request>(old).unwrap() {
            Request::Leave {
                name,
                below_voter_floor,
            } => assert_eq!((name.as_str(), below_voter_floor), ("lb-3", false)),
            other => panic!("{other:?}"),
        }
        let keep = Request::Leave {
            name: "lb-3".into(),
            below_voter_floor: false,
        };
        assert_eq!(serde_json::to_vec(&keep).unwrap(), old);
        let forced = Request::Leave {
            name: "lb-3".into(),
            below_voter_floor: true,
        };
        let bytes = serde_json::to_vec(&forced).unwrap();
        assert!(matches!(
            serde_json::from_slice::<Request>(&bytes).unwrap(),
            Request::Leave {
                below_voter_floor: true,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_frame_buffer_grows_only_as_its_bytes_arrive() {
        // A length just under the limit, then 100 bytes, then the end.
        let mut input = (MAX_FRAME - 1).to_be_bytes().to_vec();
        input.extend([7u8; 100]);
        let mut body = Vec::new();
        let e = read_frame_into(&mut &input[..], &mut body, MAX_FRAME)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        assert_eq!(body.len(), 100);
        assert!(body.capacity() <= FRAME_CHUNK, "{}", body.capacity());

        // The same length, then nothing: the reader waits with no more than a chunk reserved.
        let (mut writer, mut reader) = tokio::io::duplex(1024);
        writer
            .write_all(&(MAX_FRAME - 1).to_be_bytes())
            .await
            .unwrap();
        let mut body = Vec::new();
        let stalled = tokio::time::timeout(
            Duration::from_millis(100),
            read_frame_into(&mut reader, &mut body, MAX_FRAME),
        )
        .await;
        assert!(stalled.is_err(), "the frame cannot be complete");
        assert!(body.capacity() <= FRAME_CHUNK, "{}", body.capacity());
        drop(writer);
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_and_a_large_one_arrives_whole() {
        let over = (MAX_FRAME + 1).to_be_bytes();
        let e = read_frame(&mut &over[..]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");

        // Several chunks, written while they are read.
        let sent: Vec<u8> = (0..3 * FRAME_CHUNK + 17).map(|i| i as u8).collect();
        let (mut writer, mut reader) = tokio::io::duplex(4096);
        let write = {
            let sent = sent.clone();
            tokio::spawn(async move { write_frame(&mut writer, &sent).await })
        };
        let got = read_frame(&mut reader).await.unwrap();
        write.await.unwrap().unwrap();
        assert_eq!(got, sent);
        assert!(got.capacity() <= sent.len(), "{}", got.capacity());
    }
}
