//! openraft's view of the network: [`Network`] (its [`RaftNetworkFactory`]) gives a [`PeerLink`]
//! per peer, which sends each Raft RPC (append entries, vote, install snapshot) as one
//! [`call_peer`] to that peer's address, a connection per RPC. Under `[identity]` trust the
//! call checks that the certificate answering there names the peer's Raft id. Failures become
//! openraft's errors: a refused connection is `Unreachable`, any other failure or an unexpected
//! reply a `Network` error, the peer's own Raft error a `RemoteError`.
//!
//! Not here: the messages and the connection ([`wire`](crate::wire)), the receiving side
//! ([`listener`](crate::listener), and [`peer`](crate::peer), which hands the RPCs to its Raft
//! instance).

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use super::tls::PeerTls;
use super::wire::{call_peer, Reply, Request};
use super::TypeConfig;

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
