//! Who a node is: certificates from the cluster's own CA, the way consul and nomad do it.
//!
//! `stek ca init` makes a CA for one cluster; `stek ca issue` makes a certificate for a member
//! (a node id) or for an operator (a name). A certificate names its cluster and its role in one
//! URI subject alternative name:
//!
//! | role | URI | extended key usage |
//! |---|---|---|
//! | the CA | `stek://<cluster>` | (a CA) |
//! | a member | `stek://<cluster>/member/<node id>` | server and client |
//! | an operator | `stek://<cluster>/operator/<name>` | client only |
//!
//! A member signs, with its certificate's key, the sealing public key it publishes
//! ([`member_binding`]) and, when it leads, every ring it writes ([`ring_signing_bytes`]'s
//! caller). [`Trust`] checks both: the certificate chains to the CA (rustls-webpki), is within
//! its validity, names this cluster and the member the record claims, and is not revoked; then
//! the signature verifies against it. An operator certificate can never pass as a member: its
//! URI says operator.
//!
//! Keys are ECDSA P-256 (rcgen's default); signatures are ECDSA P-256 SHA-256 in ASN.1 form
//! (ring). No X.509 or signature code is written here: rcgen issues, rustls-webpki verifies,
//! x509-parser reads the names.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The URI scheme of stek's certificate names.
const SCHEME: &str = "stek://";

/// Why a certificate, a key or a signature was not accepted. Never holds key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// A PEM file that holds no usable certificate or key.
    #[error("{what}: {reason}")]
    Pem {
        /// Which file.
        what: String,
        /// Why.
        reason: String,
    },
    /// The certificate is not one of this cluster's CA's (or is expired, or not yet valid).
    #[error("certificate does not verify against the cluster CA: {0}")]
    Chain(String),
    /// The certificate names no stek role, or another cluster.
    #[error("certificate names {found}, not {wanted}")]
    Name {
        /// What it names.
        found: String,
        /// What was needed.
        wanted: String,
    },
    /// The certificate's serial number is in the revocation list.
    #[error("certificate serial {0} is revoked ([identity] revoked)")]
    Revoked(String),
    /// The signature does not verify.
    #[error("signature does not verify against the certificate of {0}")]
    Signature(String),
    /// The key does not belong to the certificate.
    #[error("key_file does not hold the private key of cert_file")]
    KeyMismatch,
    /// rcgen could not issue.
    #[error("cannot issue the certificate: {0}")]
    Issue(String),
}

/// What a certificate makes its holder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A member: a node that receives keys and may lead.
    Member(String),
    /// An operator: may read the cluster's state and request rotations, nothing else.
    Operator(String),
}

impl Role {
    fn uri(&self, cluster: &str) -> String {
        match self {
            Self::Member(id) => format!("{SCHEME}{cluster}/member/{id}"),
            Self::Operator(name) => format!("{SCHEME}{cluster}/operator/{name}"),
        }
    }

    /// The member's node id, if this is a member.
    pub fn member(&self) -> Option<&str> {
        match self {
            Self::Member(id) => Some(id),
            Self::Operator(_) => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Member(id) => write!(f, "member {id}"),
            Self::Operator(name) => write!(f, "operator {name}"),
        }
    }
}

/// A certificate and its key, as PEM text.
#[derive(Clone)]
pub struct IssuedPem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8). Written 0600; never printed.
    pub key: zeroize::Zeroizing<String>,
}

impl fmt::Debug for IssuedPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedPem").finish_non_exhaustive()
    }
}

fn issue_error(e: impl fmt::Display) -> IdentityError {
    IdentityError::Issue(e.to_string())
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive INTEGER with no leading zero octet.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, valid_for: Duration) -> Result<(), IdentityError> {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks a minute apart.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now
        + time::Duration::try_from(valid_for).map_err(|_| issue_error("validity is too long"))?;
    Ok(())
}

/// Makes a CA for cluster `cluster`, valid for `valid_for`.
pub fn init_ca(cluster: &str, valid_for: Duration) -> Result<IssuedPem, IdentityError> {
    let key = KeyPair::generate().map_err(issue_error)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("stek cluster CA for {cluster}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        format!("{SCHEME}{cluster}")
            .try_into()
            .map_err(issue_error)?,
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(serial());
    validity(&mut params, valid_for)?;
    let cert = params.self_signed(&key).map_err(issue_error)?;
    Ok(IssuedPem {
        cert: cert.pem(),
        key: zeroize::Zeroizing::new(key.serialize_pem()),
    })
}

/// The cluster a CA certificate (PEM) was made for.
pub fn ca_cluster(ca_pem: &str) -> Result<String, IdentityError> {
    let der = first_cert(ca_pem.as_bytes(), "ca.pem")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| IdentityError::Pem {
        what: "ca.pem".into(),
        reason: e.to_string(),
    })?;
    if !cert.is_ca() {
        return Err(IdentityError::Pem {
            what: "ca.pem".into(),
            reason: "is not a CA certificate".into(),
        });
    }
    uris(&cert)
        .into_iter()
        .find_map(|u| {
            u.strip_prefix(SCHEME)
                .filter(|c| !c.contains('/'))
                .map(str::to_owned)
        })
        .ok_or_else(|| IdentityError::Pem {
            what: "ca.pem".into(),
            reason: "names no stek cluster (not made by `stek ca init`)".into(),
        })
}

/// Issues a certificate for `role` in the CA's cluster, signed by the CA (`ca_cert`, `ca_key`
/// as PEM). `hosts` (DNS names or IP addresses) are the names its Raft listener is reached at.
pub fn issue(
    ca_cert: &str,
    ca_key: &str,
    role: &Role,
    hosts: &[String],
    valid_for: Duration,
) -> Result<IssuedPem, IdentityError> {
    let cluster = ca_cluster(ca_cert)?;
    let ca_key = KeyPair::from_pem(ca_key).map_err(|e| IdentityError::Pem {
        what: "ca.key".into(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key).map_err(issue_error)?;
    let key = KeyPair::generate().map_err(issue_error)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let name = match role {
        Role::Member(id) | Role::Operator(id) => id,
    };
    dn.push(DnType::CommonName, name.as_str());
    dn.push(DnType::OrganizationalUnitName, format!("stek {cluster}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        role.uri(&cluster).try_into().map_err(issue_error)?,
    )];
    for h in hosts {
        params.subject_alt_names.push(match h.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(h.as_str().try_into().map_err(issue_error)?),
        });
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Member(_) => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Operator(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    validity(&mut params, valid_for)?;
    let cert = params.signed_by(&key, &issuer).map_err(issue_error)?;
    Ok(IssuedPem {
        cert: cert.pem(),
        key: zeroize::Zeroizing::new(key.serialize_pem()),
    })
}

/// The first certificate of a PEM file, as DER.
pub fn pem_to_der(pem: &[u8]) -> Result<Vec<u8>, IdentityError> {
    Ok(first_cert(pem, "certificate")?.to_vec())
}

fn first_cert(pem: &[u8], what: &str) -> Result<CertificateDer<'static>, IdentityError> {
    CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or_else(|| IdentityError::Pem {
            what: what.into(),
            reason: "holds no certificate".into(),
        })?
        .map_err(|e| IdentityError::Pem {
            what: what.into(),
            reason: e.to_string(),
        })
}

fn uris<'a>(cert: &'a X509Certificate<'a>) -> Vec<&'a str> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Lower-case hex of a certificate's serial number, as `[identity] revoked` lists it.
fn serial_hex(raw: &[u8]) -> String {
    raw.iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Normalises a serial number as an operator may write it (`0A:1b:..`, `0x0a1b..`).
pub fn normalise_serial(text: &str) -> Option<String> {
    let hex: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.chars().all(|c| c.is_ascii_hexdigit())
    {
        return None;
    }
    Some(hex.trim_start_matches("00").to_owned())
}

/// A verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// What it makes its holder.
    pub role: Role,
    /// Its serial number (lower-case hex), for `[identity] revoked`.
    pub serial: String,
    /// When it expires.
    pub not_after: SystemTime,
}

/// The cluster CA, the cluster name and the revocation list: decides who is who. Clones share
/// what they verified.
#[derive(Clone)]
pub struct Trust {
    ca: CertificateDer<'static>,
    cluster: String,
    revoked: BTreeSet<String>,
    /// Signatures already verified, by a digest of (certificate, signer, message, signature):
    /// a leader checks every member's enrollment on every pass, and a pass comes with every
    /// change. An entry is used only while its certificate is valid; the revocation list is
    /// fixed for the life of a `Trust`.
    /// Shared by clones ([`Trust::clone`]): what one clone verified, the others need not.
    verified: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>>,
}

/// At most this many verified signatures are remembered; the memory is emptied when full.
const VERIFIED_CACHE: usize = 8192;

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("cluster", &self.cluster)
            .field("revoked", &self.revoked.len())
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Trusts the CA in `ca_pem` for cluster `cluster`; `revoked` lists serial numbers (hex).
    /// Refuses a CA made for another cluster.
    pub fn new(ca_pem: &[u8], cluster: &str, revoked: &[String]) -> Result<Self, IdentityError> {
        let text = std::str::from_utf8(ca_pem).map_err(|_| IdentityError::Pem {
            what: "ca_file".into(),
            reason: "is not PEM text".into(),
        })?;
        let made_for = ca_cluster(text).map_err(|e| match e {
            IdentityError::Pem { reason, .. } => IdentityError::Pem {
                what: "ca_file".into(),
                reason,
            },
            other => other,
        })?;
        if made_for != cluster {
            return Err(IdentityError::Name {
                found: format!("the CA of cluster \"{made_for}\""),
                wanted: format!("the CA of cluster \"{cluster}\" (this node's `cluster`)"),
            });
        }
        let ca = first_cert(ca_pem, "ca_file")?;
        webpki::anchor_from_trusted_cert(&ca).map_err(|e| IdentityError::Pem {
            what: "ca_file".into(),
            reason: e.to_string(),
        })?;
        let mut set = BTreeSet::new();
        for r in revoked {
            set.insert(normalise_serial(r).ok_or_else(|| IdentityError::Pem {
                what: "[identity] revoked".into(),
                reason: format!("\"{r}\" is not a serial number in hex"),
            })?);
        }
        Ok(Self {
            ca,
            cluster: cluster.to_owned(),
            revoked: set,
            verified: Default::default(),
        })
    }

    /// The cluster.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Checks a certificate (DER) at `now`: it chains to the CA, is valid, names this cluster
    /// and a role, and is not revoked.
    pub fn verify(&self, der: &[u8], now: SystemTime) -> Result<Verified, IdentityError> {
        // A chain checked before, while the certificate is valid: every signature a member
        // makes is checked against the same certificate.
        let key = signature_key(der, "certificate", &[], &[]);
        if let Some(v) = self.remembered(&key, now) {
            return Ok(v);
        }
        let verified = self.verify_chain(der, now)?;
        self.remember(key, &verified);
        Ok(verified)
    }

    fn verify_chain(&self, der: &[u8], now: SystemTime) -> Result<Verified, IdentityError> {
        let der = CertificateDer::from(der);
        let ee = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| IdentityError::Chain(e.to_string()))?;
        let anchor = webpki::anchor_from_trusted_cert(&self.ca)
            .map_err(|e| IdentityError::Chain(e.to_string()))?;
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(secs)),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| IdentityError::Chain(e.to_string()))?;
        let (_, cert) =
            X509Certificate::from_der(&der).map_err(|e| IdentityError::Chain(e.to_string()))?;
        let serial = serial_hex(cert.raw_serial());
        if self.revoked.contains(&serial) {
            return Err(IdentityError::Revoked(serial));
        }
        let prefix = format!("{SCHEME}{}/", self.cluster);
        let names = uris(&cert);
        let role = names
            .iter()
            .find_map(|u| {
                let rest = u.strip_prefix(&prefix)?;
                if let Some(id) = rest.strip_prefix("member/") {
                    Some(Role::Member(id.to_owned()))
                } else {
                    rest.strip_prefix("operator/")
                        .map(|n| Role::Operator(n.to_owned()))
                }
            })
            .ok_or_else(|| IdentityError::Name {
                found: if names.is_empty() {
                    "no stek role".into()
                } else {
                    names.join(", ")
                },
                wanted: format!("a member or operator of cluster \"{}\"", self.cluster),
            })?;
        let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
        Ok(Verified {
            role,
            serial,
            not_after: UNIX_EPOCH + Duration::from_secs(not_after),
        })
    }

    /// A signature verified before with this certificate, by this signer, over this message,
    /// whose certificate is still valid at `now`.
    fn remembered(&self, key: &[u8; 32], now: SystemTime) -> Option<Verified> {
        let cache = self.verified.lock().ok()?;
        cache.get(key).filter(|v| now < v.not_after).cloned()
    }

    fn remember(&self, key: [u8; 32], verified: &Verified) {
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_CACHE {
                cache.clear();
            }
            cache.insert(key, verified.clone());
        }
    }

    /// Checks that `der` is a certificate of this cluster (any role) and that it signed `msg`.
    pub fn verify_signature(
        &self,
        der: &[u8],
        msg: &[u8],
        signature: &[u8],
        now: SystemTime,
    ) -> Result<Verified, IdentityError> {
        let key = signature_key(der, "", msg, signature);
        if let Some(v) = self.remembered(&key, now) {
            return Ok(v);
        }
        let verified = self.verify(der, now)?;
        let der = CertificateDer::from(der);
        let ee = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| IdentityError::Chain(e.to_string()))?;
        ee.verify_signature(webpki::ring::ECDSA_P256_SHA256, msg, signature)
            .map_err(|_| IdentityError::Signature(verified.role.to_string()))?;
        self.remember(key, &verified);
        Ok(verified)
    }

    /// Checks that `der` is member `node_id`'s certificate and that it signed `msg`.
    pub fn verify_member_signature(
        &self,
        der: &[u8],
        node_id: &str,
        msg: &[u8],
        signature: &[u8],
        now: SystemTime,
    ) -> Result<Verified, IdentityError> {
        // The signer is part of the key: a certificate that verified for one member is not
        // taken for another's.
        let key = signature_key(der, node_id, msg, signature);
        if let Some(v) = self.remembered(&key, now) {
            return Ok(v);
        }
        let verified = self.verify(der, now)?;
        if verified.role.member() != Some(node_id) {
            return Err(IdentityError::Name {
                found: verified.role.to_string(),
                wanted: format!("member {node_id}"),
            });
        }
        let der = CertificateDer::from(der);
        let ee = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| IdentityError::Chain(e.to_string()))?;
        ee.verify_signature(webpki::ring::ECDSA_P256_SHA256, msg, signature)
            .map_err(|_| IdentityError::Signature(verified.role.to_string()))?;
        self.remember(key, &verified);
        Ok(verified)
    }
}

/// What a verified signature is remembered by: SHA-256 over each part, length-prefixed.
fn signature_key(der: &[u8], signer: &str, msg: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [der, signer.as_bytes(), msg, signature] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// This node's certificate and the key that signs for it.
pub struct Credentials {
    cert: CertificateDer<'static>,
    key: EcdsaKeyPair,
    verified: Verified,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("role", &self.verified.role)
            .field("serial", &self.verified.serial)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Loads a certificate and its key (PEM) and checks them against `trust` now: a revoked,
    /// expired or foreign certificate, or a key of another certificate, is refused.
    pub fn new(trust: &Trust, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        let cert = first_cert(cert_pem, "cert_file")?;
        let verified = trust.verify(&cert, SystemTime::now())?;
        let key = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(PrivateKeyDer::Pkcs8(k)) => k,
            Ok(_) => return Err(IdentityError::Pem {
                what: "key_file".into(),
                reason:
                    "is not a PKCS#8 key (\"BEGIN PRIVATE KEY\"); use one made by `stek ca issue`"
                        .into(),
            }),
            Err(e) => {
                return Err(IdentityError::Pem {
                    what: "key_file".into(),
                    reason: e.to_string(),
                })
            }
        };
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            key.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| IdentityError::Pem {
            what: "key_file".into(),
            reason: format!("not an ECDSA P-256 key ({e}); use one made by `stek ca issue`"),
        })?;
        let creds = Self {
            cert,
            key,
            verified,
        };
        let probe = b"stek key check";
        let sig = creds.sign(probe);
        let ee = webpki::EndEntityCert::try_from(&creds.cert)
            .map_err(|e| IdentityError::Chain(e.to_string()))?;
        ee.verify_signature(webpki::ring::ECDSA_P256_SHA256, probe, &sig)
            .map_err(|_| IdentityError::KeyMismatch)?;
        Ok(creds)
    }

    /// Signs `msg` (ECDSA P-256 SHA-256, ASN.1).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.key
            .sign(&ring::rand::SystemRandom::new(), msg)
            .map(|s| s.as_ref().to_vec())
            .expect("ECDSA signing with the OS RNG does not fail")
    }

    /// The certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert
    }

    /// What it makes this node.
    pub fn role(&self) -> &Role {
        &self.verified.role
    }

    /// Its serial number.
    pub fn serial(&self) -> &str {
        &self.verified.serial
    }

    /// Whether the certificate names `host` (an IP address or DNS name), as a peer reaching
    /// this node's Raft listener at it checks.
    pub fn names_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Ok(name) = ServerName::try_from(host.to_owned()) else {
            return false;
        };
        webpki::EndEntityCert::try_from(&self.cert)
            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

/// A node's trust and credentials together: what `[identity]` loads.
#[derive(Debug)]
pub struct NodeIdentity {
    /// Whom it trusts.
    pub trust: Trust,
    /// Who it is.
    pub creds: Credentials,
}

/// What a member signs to enroll: its cluster, its node id and the sealing public key it
/// publishes. A copy is sealed only to a key so signed.
pub fn member_binding(cluster: &str, node_id: &str, sealing_key: &[u8]) -> Vec<u8> {
    let mut msg = b"stek member sealing key v1\0".to_vec();
    for part in [cluster.as_bytes(), node_id.as_bytes(), sealing_key] {
        msg.extend_from_slice(&(part.len() as u32).to_be_bytes());
        msg.extend_from_slice(part);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    struct Pki {
        ca: IssuedPem,
        trust: Trust,
    }

    fn pki(cluster: &str) -> Pki {
        let ca = init_ca(cluster, DAY).unwrap();
        let trust = Trust::new(ca.cert.as_bytes(), cluster, &[]).unwrap();
        Pki { ca, trust }
    }

    fn member(p: &Pki, id: &str) -> IssuedPem {
        issue(
            &p.ca.cert,
            &p.ca.key,
            &Role::Member(id.into()),
            &["127.0.0.1".into(), "n1.example".into()],
            DAY,
        )
        .unwrap()
    }

    fn der(pem: &str) -> Vec<u8> {
        first_cert(pem.as_bytes(), "test").unwrap().to_vec()
    }

    #[test]
    fn a_member_certificate_names_its_cluster_and_node_and_signs() {
        let p = pki("c1");
        assert_eq!(ca_cluster(&p.ca.cert).unwrap(), "c1");
        let n1 = member(&p, "n1");
        let creds = Credentials::new(&p.trust, n1.cert.as_bytes(), n1.key.as_bytes()).unwrap();
        assert_eq!(creds.role(), &Role::Member("n1".into()));
        assert!(creds.names_host("127.0.0.1"));
        assert!(creds.names_host("n1.example"));
        assert!(!creds.names_host("127.0.0.2"));
        let msg = member_binding("c1", "n1", &[7; 32]);
        let sig = creds.sign(&msg);
        let now = SystemTime::now();
        let v = p
            .trust
            .verify_member_signature(&der(&n1.cert), "n1", &msg, &sig, now)
            .unwrap();
        assert_eq!(v.serial, creds.serial());
        // Another node id, another message, a flipped signature: refused.
        let err = p
            .trust
            .verify_member_signature(&der(&n1.cert), "n2", &msg, &sig, now)
            .unwrap_err();
        assert!(
            err.to_string().contains("names member n1, not member n2"),
            "{err}"
        );
        let other = member_binding("c1", "n1", &[8; 32]);
        assert!(matches!(
            p.trust
                .verify_member_signature(&der(&n1.cert), "n1", &other, &sig, now),
            Err(IdentityError::Signature(_))
        ));
    }

    #[test]
    fn an_operator_certificate_never_passes_as_a_member() {
        let p = pki("c1");
        let op = issue(
            &p.ca.cert,
            &p.ca.key,
            &Role::Operator("alice".into()),
            &[],
            DAY,
        )
        .unwrap();
        let creds = Credentials::new(&p.trust, op.cert.as_bytes(), op.key.as_bytes()).unwrap();
        assert_eq!(creds.role(), &Role::Operator("alice".into()));
        let msg = member_binding("c1", "alice", &[1; 32]);
        let sig = creds.sign(&msg);
        let err = p
            .trust
            .verify_member_signature(&der(&op.cert), "alice", &msg, &sig, SystemTime::now())
            .unwrap_err();
        assert!(err.to_string().contains("operator alice"), "{err}");
    }

    #[test]
    fn foreign_expired_revoked_and_mismatched_certificates_are_refused() {
        let p = pki("c1");
        let n1 = member(&p, "n1");
        // Another CA of the same cluster name.
        let other = pki("c1");
        let stranger = member(&other, "n1");
        let err = p.trust.verify(&der(&stranger.cert), SystemTime::now());
        assert!(matches!(err, Err(IdentityError::Chain(_))), "{err:?}");
        // A CA of another cluster is refused as the trust anchor.
        let c2 = init_ca("c2", DAY).unwrap();
        let err = Trust::new(c2.cert.as_bytes(), "c1", &[]).unwrap_err();
        assert!(err.to_string().contains("cluster \"c2\""), "{err}");
        // Expired: checked a year later.
        let later = SystemTime::now() + 365 * DAY;
        assert!(matches!(
            p.trust.verify(&der(&n1.cert), later),
            Err(IdentityError::Chain(_))
        ));
        // Revoked by serial, written the way openssl prints it.
        let serial = p
            .trust
            .verify(&der(&n1.cert), SystemTime::now())
            .unwrap()
            .serial;
        let colons: Vec<String> = serial
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_ascii_uppercase())
            .collect();
        let revoking = Trust::new(p.ca.cert.as_bytes(), "c1", &[colons.join(":")]).unwrap();
        assert_eq!(
            revoking.verify(&der(&n1.cert), SystemTime::now()),
            Err(IdentityError::Revoked(serial))
        );
        assert!(matches!(
            Credentials::new(&revoking, n1.cert.as_bytes(), n1.key.as_bytes()),
            Err(IdentityError::Revoked(_))
        ));
        // A key of another certificate.
        let n2 = member(&p, "n2");
        assert_eq!(
            Credentials::new(&p.trust, n1.cert.as_bytes(), n2.key.as_bytes()).unwrap_err(),
            IdentityError::KeyMismatch
        );
        assert!(Trust::new(p.ca.cert.as_bytes(), "c1", &["xyz".into()]).is_err());
    }

    #[test]
    fn a_certificate_made_outside_stek_names_no_role() {
        let p = pki("c1");
        let key = KeyPair::generate().unwrap();
        let ca_key = KeyPair::from_pem(&p.ca.key).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&p.ca.cert, ca_key).unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let err = p.trust.verify(cert.der(), SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("names no stek role"), "{err}");
    }
}
