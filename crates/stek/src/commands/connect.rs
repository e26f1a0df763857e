//! One way to connect: every command reaches the config's coordinator (etcd, or the embedded
//! group's peers) through [`connect`], with the same TLS material and credentials checks.

use std::path::Path;

use anyhow::{bail, Context};
use stek_coord::backend::Backend;
use stek_etcd::Etcd;
use stek_node::config::Coordination;
use stek_node::Config;
use stek_raft::client::RaftClient;

/// A client of the config's coordinator: etcd with the config's TLS and credentials, or the
/// embedded group's peers presenting `--cert` (an operator's) or the box's `[identity]`.
/// `home`: the local peer's address, tried first (a node on a peer box).
pub async fn connect(
    config: &Config,
    access: &Access,
    home: Option<String>,
) -> anyhow::Result<Backend> {
    match &config.coordination {
        Coordination::Etcd {
            endpoints,
            access: etcd_access,
        } => {
            if access.operator.is_some() {
                bail!("--cert and --key are for the embedded coordinator; with [etcd], an operator uses the etcd credentials in the config (an etcd user whose role reads the cluster's prefix and writes its requests/, docs/security.md)");
            }
            Ok(Backend::Etcd(Box::new(
                connect_etcd(config, endpoints, etcd_access).await?,
            )))
        }
        Coordination::Raft { peers, .. } => {
            let tls = match &access.operator {
                None => peer_tls(config)?,
                Some((cert, key)) => Some(operator_tls(config, cert, key)?),
            };
            Ok(Backend::Raft(
                RaftClient::new(&config.cluster, peers.values().cloned().collect(), home)
                    .with_tls(tls),
            ))
        }
    }
}

/// Adds what to do to an error from the single-box group's socket that says permission denied.
pub fn socket_hint(config: &Config, e: anyhow::Error) -> anyhow::Error {
    let local = matches!(&config.coordination, Coordination::Raft { peers, .. } if peers.values().any(|p| p.starts_with("unix:")));
    if local && format!("{e:#}").contains("Permission denied") {
        e.context("the single-box group's socket is only for root and the node's user: run this command with sudo")
    } else {
        e
    }
}

/// Whose certificate the CLI presents: the config's `[identity]` (a member's, on its box), or
/// `--cert`/`--key` (an operator's, from `stek ca issue --operator`).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `--cert` and `--key`.
    pub operator: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// `--cert`/`--key` checked against the config's CA (any role: the peers and the leader decide
/// what it may do), and the trust it was checked under.
pub fn operator_files(
    config: &Config,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(
    stek_node::config::IdentityPem,
    stek_trust::identity::Credentials,
    stek_trust::identity::Trust,
)> {
    let Some(files) = &config.identity else {
        bail!("--cert needs the cluster's CA: the config has no [identity] ca_file");
    };
    let files = stek_node::config::IdentityFiles {
        cert_file: cert.to_owned(),
        key_file: key.to_owned(),
        ..files.clone()
    };
    let pem = files.read(&config.path)?;
    let trust = stek_trust::identity::Trust::new(&pem.ca, &config.cluster, &files.revoked)?;
    let creds = stek_trust::identity::Credentials::new(&trust, &pem.cert, &pem.key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    tracing::debug!(role = %creds.role(), "presenting --cert");
    Ok((pem, creds, trust))
}

/// Mutual TLS with `--cert`/`--key` and the config's CA.
pub fn operator_tls(
    config: &Config,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<stek_raft::tls::PeerTls> {
    // Under the config's trust (its revocation list too): a peer must answer with a member's
    // certificate that is not revoked.
    let (pem, _, trust) = operator_files(config, cert, key)?;
    stek_raft::tls::PeerTls::trusted(&pem.ca, &pem.cert, &pem.key, trust)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))
}

/// Who signs a rotation request: `--cert`/`--key`, else this box's `[identity]`; nobody
/// without either (then a leader with `[identity]` ignores the request).
pub fn request_signer(
    config: &Config,
    access: &Access,
) -> anyhow::Result<Option<stek_trust::identity::Credentials>> {
    Ok(match &access.operator {
        Some((cert, key)) => Some(operator_files(config, cert, key)?.1),
        None => load_identity(config)?.map(|id| id.creds),
    })
}

/// The config's trust (`[identity]` CA and revocations), to check what the store holds.
pub fn trust_of(config: &Config) -> anyhow::Result<Option<stek_trust::identity::Trust>> {
    let Some(files) = &config.identity else {
        return Ok(None);
    };
    let ca = std::fs::read(&files.ca_file)
        .with_context(|| format!("cannot read [identity] ca_file {}", files.ca_file.display()))?;
    Ok(Some(stek_trust::identity::Trust::new(
        &ca,
        &config.cluster,
        &files.revoked,
    )?))
}

/// Connects to etcd with the config's TLS and credentials (secret files checked first).
pub async fn connect_etcd(
    config: &Config,
    endpoints: &[String],
    access: &stek_node::config::EtcdAccess,
) -> anyhow::Result<Etcd> {
    let secrets = access.read(&config.path)?;
    let security = stek_etcd::EtcdSecurity {
        ca_pem: secrets.ca_pem.clone(),
        identity: secrets
            .identity
            .as_ref()
            .map(|(c, k)| (c.clone(), k.to_vec())),
        user: secrets
            .user
            .as_ref()
            .map(|(u, p)| (u.clone(), p.to_string())),
    };
    Ok(Etcd::connect_secured(endpoints, &config.cluster, security).await?)
}

/// This node's `[identity]`, checked: its CA is the cluster's, its certificate names this
/// node as a member, is valid now and not revoked, and the key is the certificate's.
pub fn load_identity(
    config: &Config,
) -> anyhow::Result<Option<stek_trust::identity::NodeIdentity>> {
    let Some(files) = &config.identity else {
        return Ok(None);
    };
    let role = stek_trust::identity::Role::Member(config.node_id.clone());
    let (_, identity) = files.load(&config.path, &config.cluster, &role)?;
    Ok(Some(identity))
}

/// Mutual TLS between Raft peers (and with the CLI) from `[identity]`, authorising requests by
/// certificate (key file checked first).
pub fn peer_tls(config: &Config) -> anyhow::Result<Option<stek_raft::tls::PeerTls>> {
    let Some(files) = &config.identity else {
        return Ok(None);
    };
    let role = stek_trust::identity::Role::Member(config.node_id.clone());
    let (pem, identity) = files.load(&config.path, &config.cluster, &role)?;
    let built = stek_raft::tls::PeerTls::trusted(&pem.ca, &pem.cert, &pem.key, identity.trust)
        .map_err(|e| anyhow::anyhow!("config {}: [identity]: {e}", config.path.display()))?;
    Ok(Some(built))
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A client of the config's embedded group, presenting `--cert` or the box's `[identity]`
/// (`stek peers`, which only the embedded group has).
pub fn raft_client(config: &Config, access: &Access) -> anyhow::Result<RaftClient> {
    let Coordination::Raft { peers, .. } = &config.coordination else {
        bail!("stek peers is for the embedded coordinator; this config uses [etcd], whose membership etcd manages (etcdctl member)");
    };
    let tls = match &access.operator {
        None => peer_tls(config)?,
        Some((cert, key)) => Some(operator_tls(config, cert, key)?),
    };
    Ok(RaftClient::new(&config.cluster, peers.values().cloned().collect(), None).with_tls(tls))
}
