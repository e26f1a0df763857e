//! Mutual TLS between the embedded coordinator's peers (and its clients): every connection
//! presents a certificate signed by the cluster's CA and checks the other side's.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::UnixTime;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use stek_trust::identity::{IdentityError, Trust};

/// The peer TLS configuration, both directions, and whom the certificates make who.
#[derive(Clone)]
pub struct PeerTls {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
    /// With it, a peer authorises every request by the caller's certificate (member or
    /// operator, and which); without, any certificate of the CA may do anything.
    pub(crate) trust: Option<Arc<stek_trust::identity::Trust>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls(mutual)")
    }
}

impl PeerTls {
    /// Builds both sides from PEM: the CA every peer trusts, and this peer's certificate and
    /// key (used as server certificate and as client certificate).
    /// Any certificate of the CA may connect and do anything: tests, and clusters without
    /// `[identity]` trust; [`PeerTls::trusted`] is the rest.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        Self::build(ca_pem, cert_pem, key_pem, None)
    }

    /// [`PeerTls::from_pem`] under `trust`: the server completes a handshake only with a
    /// client whose certificate `trust` verifies (this cluster, a role, not revoked), so a
    /// revoked or foreign certificate never reaches the listener's connection places; and a
    /// peer authorises every request by the caller's role (see `Peer`'s `authorize`).
    pub fn trusted(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
        trust: stek_trust::identity::Trust,
    ) -> Result<Self, String> {
        Self::build(ca_pem, cert_pem, key_pem, Some(Arc::new(trust)))
    }

    fn build(
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
        trust: Option<Arc<stek_trust::identity::Trust>>,
    ) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem) {
            let ca = ca.map_err(|e| format!("ca_file: {e}"))?;
            roots.add(ca).map_err(|e| format!("ca_file: {e}"))?;
        }
        if roots.is_empty() {
            return Err("ca_file holds no certificate".into());
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cert_file: {e}"))?;
        if chain.is_empty() {
            return Err("cert_file holds no certificate".into());
        }
        let key = || PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key_file: {e}"));
        let chain_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| format!("ca_file: {e}"))?;
        let verifier: Arc<dyn ClientCertVerifier> = match &trust {
            Some(trust) => Arc::new(TrustedClients {
                chain: chain_verifier,
                trust: trust.clone(),
            }),
            None => chain_verifier,
        };
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key()?)
            .map_err(|e| format!("cert_file/key_file: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key()?)
            .map_err(|e| format!("cert_file/key_file: {e}"))?;
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            trust,
        })
    }

    /// Opens a mutual-TLS connection to peer `addr` from the local address `from` (the
    /// system's choice when `None`), its handshake done and nothing sent: for callers that
    /// speak the wire protocol themselves, such as tests that hold connections the way an
    /// attacker would.
    pub async fn connect(
        &self,
        addr: &str,
        from: Option<std::net::IpAddr>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let to: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let socket = match to {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        if let Some(from) = from {
            socket.bind(std::net::SocketAddr::new(from, 0))?;
        }
        let stream = socket.connect(to).await?;
        let name = Self::server_name(addr).map_err(std::io::Error::other)?;
        tokio_rustls::TlsConnector::from(self.client.clone())
            .connect(name, stream)
            .await
    }

    /// The name a peer's certificate must carry for address `addr` (its host: an IP or a name).
    pub(crate) fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|e| format!("{addr}: {e}"))
    }
}

/// A peer's check of a client's certificate under `[identity]`: the chain to the CA as rustls
/// checks it, then [`Trust`]'s word (this cluster, a member or operator role, not revoked), so
/// that a certificate that makes its holder nobody fails the handshake (a revoked one with the
/// TLS alert for a revoked certificate) and never holds one of the listener's places.
#[derive(Debug)]
struct TrustedClients {
    chain: Arc<dyn ClientCertVerifier>,
    trust: Arc<Trust>,
}

impl ClientCertVerifier for TrustedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
        match self.trust.verify(end_entity.as_ref(), at) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(IdentityError::Revoked(_)) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            Err(e) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(e)),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
