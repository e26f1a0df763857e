//! The node's TOML configuration, parsed and validated in one place so that every bad value is
//! rejected at load with the file, the key and what to change.
//!
//! ```toml
//! cluster = "edge"            # keyspace namespace, default "default"
//! node_id = "lb-1"            # default: the hostname
//! [rotation]
//! interval = "12h"            # humantime durations
//! retain = 2                  # retiring keys kept for decryption (at least 1)
//! lease_ttl = "10s"
//! [[target]]
//! format = "nginx"            # nginx | haproxy | haproxy-runtime | ats | httpd | dnsdist | envoy
//! path = "/run/stek/nginx"    # directory for nginx, file for the others
//! reload = ["nginx", "-s", "reload"]
//! verify = ["nginx", "-t"]
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{Gid, Group, Uid, User};
use serde::Deserialize;
use stek_core::formats::{self, Delivery, FormatOptions};
use stek_core::Policy;

use crate::haproxy_runtime::{id_for_file, RuntimeTarget};
use crate::reload::CommandSpec;
use crate::target::Target;
use crate::writer::WriteOptions;

/// A configuration that cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key of the wrong type or unknown.
    #[error("config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("config {path}: {key}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The offending key, e.g. `target[2].key_size`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: Option<String>,
    node_id: Option<String>,
    etcd: Option<RawEtcd>,
    raft: Option<RawRaft>,
    identity: Option<RawIdentity>,
    #[serde(default)]
    insecure: bool,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    rotation: RawRotation,
    #[serde(default)]
    target: Vec<RawTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    enabled: Option<bool>,
    listen: Option<String>,
}

/// Where the admin HTTP listener (/metrics, /healthz, /readyz) binds by default: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9477";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    compact_history: Option<bool>,
    compact_history_off_reason: Option<String>,
}

/// How a node authenticates to etcd and checks etcd's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdAccess {
    /// CA that signed etcd's server certificate (https endpoints).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and its key, for etcd's client-cert-auth.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// etcd user and the file holding its password.
    pub user: Option<(String, PathBuf)>,
}

/// The secrets an [`EtcdAccess`] points to, read from their files.
#[derive(Default)]
pub struct EtcdSecrets {
    /// PEM of the CA.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of the client certificate and of its key.
    pub identity: Option<(Vec<u8>, zeroize::Zeroizing<Vec<u8>>)>,
    /// User and password.
    pub user: Option<(String, zeroize::Zeroizing<String>)>,
}

impl std::fmt::Debug for EtcdSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSecrets")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl EtcdAccess {
    /// Reads the files, refusing secret files (client key, password) that other users can read.
    pub fn read(&self, config: &Path) -> Result<EtcdSecrets, ConfigError> {
        let read = |key: &str, p: &Path, secret: bool| {
            read_config_file(config, &format!("etcd.{key}"), p, secret)
        };
        let mut out = EtcdSecrets::default();
        if let Some(ca) = &self.ca_file {
            out.ca_pem = Some(read("ca_file", ca, false)?);
        }
        if let Some((cert, key)) = &self.client_cert {
            let cert = read("cert_file", cert, false)?;
            let key = zeroize::Zeroizing::new(read("key_file", key, true)?);
            out.identity = Some((cert, key));
        }
        if let Some((user, file)) = &self.user {
            let bytes = zeroize::Zeroizing::new(read("password_file", file, true)?);
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| ConfigError::Invalid {
                path: config.to_owned(),
                key: "etcd.password_file".into(),
                message: format!("{} is not UTF-8 text", file.display()),
            })?;
            let password = zeroize::Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned());
            out.user = Some((user.clone(), password));
        }
        Ok(out)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRaft {
    listen: Option<String>,
    #[serde(default)]
    peers: std::collections::BTreeMap<String, String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    client: bool,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    revoked: Vec<String>,
}

/// `[identity]`: the cluster CA, this node's certificate and key (made by `stek ca`), and the
/// serial numbers of revoked certificates. Used to sign (member records, rings), to verify
/// every other member, and for mutual TLS between Raft peers and with the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The cluster CA's certificate.
    pub ca_file: PathBuf,
    /// This node's certificate.
    pub cert_file: PathBuf,
    /// Its key; must not be readable by other users.
    pub key_file: PathBuf,
    /// Serial numbers (hex) of certificates no longer trusted.
    pub revoked: Vec<String>,
}

/// The PEM contents [`IdentityFiles`] point to.
pub struct IdentityPem {
    /// The CA.
    pub ca: Vec<u8>,
    /// This node's certificate.
    pub cert: Vec<u8>,
    /// Its key (zeroized on drop).
    pub key: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for IdentityPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityPem(..)")
    }
}

impl IdentityFiles {
    /// Reads the three files, refusing a key file others can read.
    pub fn read(&self, config: &Path) -> Result<IdentityPem, ConfigError> {
        Ok(IdentityPem {
            ca: read_config_file(config, "identity.ca_file", &self.ca_file, false)?,
            cert: read_config_file(config, "identity.cert_file", &self.cert_file, false)?,
            key: zeroize::Zeroizing::new(read_config_file(
                config,
                "identity.key_file",
                &self.key_file,
                true,
            )?),
        })
    }

    /// Reads and checks the files for node `node_id` of `cluster`: the CA is that cluster's,
    /// the certificate is its and names `role`, valid now and not revoked, and the key is the
    /// certificate's.
    pub fn load(
        &self,
        config: &Path,
        cluster: &str,
        role: &stek_trust::identity::Role,
    ) -> Result<(IdentityPem, stek_trust::identity::NodeIdentity), ConfigError> {
        let pem = self.read(config)?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: config.to_owned(),
            key: format!("identity.{key}"),
            message,
        };
        let trust = stek_trust::identity::Trust::new(&pem.ca, cluster, &self.revoked)
            .map_err(|e| invalid("ca_file", e.to_string()))?;
        let creds = stek_trust::identity::Credentials::new(&trust, &pem.cert, &pem.key)
            .map_err(|e| invalid("cert_file", format!("{}: {e}", self.cert_file.display())))?;
        if creds.role() != role {
            return Err(invalid(
                "cert_file",
                format!(
                    "{} is the certificate of {}, not of {role}; issue one with `stek ca issue`",
                    self.cert_file.display(),
                    creds.role()
                ),
            ));
        }
        Ok((pem, stek_trust::identity::NodeIdentity { trust, creds }))
    }
}

/// Reads a file named by the config; a `secret` file must not be readable by other users.
fn read_config_file(
    config: &Path,
    key: &str,
    p: &Path,
    secret: bool,
) -> Result<Vec<u8>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: config.to_owned(),
        key: key.to_owned(),
        message,
    };
    let meta =
        std::fs::metadata(p).map_err(|e| invalid(format!("cannot read {}: {e}", p.display())))?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
    if secret && mode & 0o077 != 0 {
        return Err(invalid(format!(
            "{} is readable by other users (mode {mode:o}); it holds a secret: run chmod 600 {}",
            p.display(),
            p.display()
        )));
    }
    std::fs::read(p).map_err(|e| invalid(format!("cannot read {}: {e}", p.display())))
}

/// Where the single-box default listens: a Unix socket in a root-only directory, so that no
/// TCP port is open and only root (the CLI run with sudo) reaches the one-node group.
/// `{cluster}` is replaced by the cluster name.
pub const DEFAULT_RAFT_SOCKET: &str = "unix:/run/stek/{cluster}.sock";

/// Where a Raft peer keeps its state by default (on disk: it holds only sealed copies).
pub const DEFAULT_RAFT_DATA_DIR: &str = "/var/lib/stek/{cluster}";

/// Where a node keeps its sealing key by default: on a RAM disk, so that a restarted process
/// opens its copy of the ring again while a reboot forgets it.
pub const DEFAULT_STATE_DIR: &str = "/run/stek/state/{cluster}";

/// Where the cluster coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coordination {
    /// An etcd cluster.
    Etcd {
        /// Client URLs, e.g. `http://127.0.0.1:2379` or `https://...` with `ca_file`.
        endpoints: Vec<String>,
        /// TLS and authentication.
        access: EtcdAccess,
    },
    /// The embedded coordinator: the peers' own Raft group (the default without `[etcd]`).
    Raft {
        /// This peer's listener for Raft and client traffic (empty for a client).
        listen: String,
        /// The group's peers by node id, this one included unless it is a client. The first
        /// five by name are the voters when the group is first formed.
        peers: std::collections::BTreeMap<String, String>,
        /// `[raft] data_dir`: where this peer keeps its Raft state (vote, log, snapshots).
        data_dir: PathBuf,
        /// `[raft] client = true`: this box runs no peer and reaches the group through `peers`.
        client: bool,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRotation {
    #[serde(default = "default_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_retain")]
    retain: usize,
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    lease_ttl: Duration,
    #[serde(default = "default_min_request_interval", with = "humantime_serde")]
    min_request_interval: Duration,
    #[serde(default = "default_forget_dead_after", with = "humantime_serde")]
    forget_dead_after: Duration,
}

impl Default for RawRotation {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            retain: default_retain(),
            lease_ttl: default_lease_ttl(),
            min_request_interval: default_min_request_interval(),
            forget_dead_after: default_forget_dead_after(),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_retain() -> usize {
    2
}
fn default_min_request_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_forget_dead_after() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    format: String,
    path: PathBuf,
    reload: Option<Vec<String>>,
    verify: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    reload_timeout: Option<Duration>,
    reload_attempts: Option<u32>,
    owner: Option<String>,
    group: Option<String>,
    key_size: Option<u64>,
    slots: Option<u64>,
    socket: Option<PathBuf>,
    #[serde(default)]
    allow_persistent_storage: bool,
}

/// The default time one reload or verify attempt may take.
pub const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The default number of reload attempts.
pub const DEFAULT_RELOAD_ATTEMPTS: u32 = 3;

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// The keyspace namespace.
    pub cluster: String,
    /// This node's id.
    pub node_id: String,
    /// Rotation interval and retention.
    pub policy: Policy,
    /// Liveness lease length.
    pub lease_ttl: Duration,
    /// `[rotation] min_request_interval`: rotation requests (`stek rotate`) rotate at most once
    /// per this long, however many arrive; the schedule is not affected.
    pub min_request_interval: Duration,
    /// `[rotation] forget_dead_after`: the leader removes the record of a member it has seen
    /// dead (no liveness lease) for this long without a break.
    pub forget_dead_after: Duration,
    /// The coordination store.
    pub coordination: Coordination,
    /// `state_dir`: where the node's sealing private key lives (a RAM disk, root-only).
    pub state_dir: PathBuf,
    /// `[identity]`: who this node is, and whom it trusts.
    pub identity: Option<IdentityFiles>,
    /// `insecure = true`: runs a multi-peer or etcd cluster without `[identity]`, so that
    /// anyone who can reach the store or a peer can enroll and read every key. Logged at every
    /// start, shown by `stek status` and the `stek_insecure` metric.
    pub insecure: bool,
    /// The admin listener's address; `None` when `[admin] enabled = false`.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// `[etcd] compact_history` (on by default with `[etcd]`; always off with the embedded
    /// coordinator, whose peers purge their own logs): after a ring write drops keys, the
    /// leader compacts etcd's history up to that write, so no revision holding their sealed
    /// copies stays readable.
    pub compact_history: bool,
    /// `[etcd] compact_history_off_reason`: why an etcd cluster runs with `compact_history =
    /// false` (required then, and refused otherwise), logged in the warning at every start.
    pub compact_history_off_reason: Option<String>,
    /// The TLS servers on this box.
    pub targets: Vec<Target>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates config text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let cluster = raw.cluster.unwrap_or_else(|| "default".to_owned());
        check_name(&cluster).map_err(|m| invalid("cluster".into(), m))?;
        let node_id = match raw.node_id {
            Some(id) => id,
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .ok_or_else(|| {
                    invalid(
                        "node_id".into(),
                        "not set and the hostname cannot be read; set node_id = \"...\"".into(),
                    )
                })?,
        };
        check_name(&node_id).map_err(|m| invalid("node_id".into(), m))?;
        let policy = Policy {
            interval: raw.rotation.interval,
            retain: raw.rotation.retain,
        };
        policy.validate().map_err(|e| {
            let key = if policy.retain == 0 {
                "retain"
            } else {
                "interval"
            };
            invalid(format!("rotation.{key}"), e.to_string())
        })?;
        if raw.rotation.lease_ttl < Duration::from_secs(2) {
            return Err(invalid(
                "rotation.lease_ttl".into(),
                format!(
                    "{} is too short to survive a busy moment; use at least \"2s\" (default \"10s\")",
                    humantime_serde::re::humantime::format_duration(raw.rotation.lease_ttl)
                ),
            ));
        }
        let longest = Duration::from_millis(stek_store::keyspace::MAX_CONFIGURED_LEASE_TTL_MS);
        if raw.rotation.lease_ttl > longest {
            return Err(invalid(
                "rotation.lease_ttl".into(),
                format!(
                    "{} is longer than the {} a lease may last: a member that stopped would block rotations that long; use at most \"2m\" (default \"10s\")",
                    humantime_serde::re::humantime::format_duration(raw.rotation.lease_ttl),
                    humantime_serde::re::humantime::format_duration(longest)
                ),
            ));
        }
        let (compact_history, compact_history_off_reason) = match &raw.etcd {
            Some(e) => history_purge(e).map_err(|(key, m)| invalid(key.into(), m))?,
            None => (false, None),
        };
        let admin_listen = if raw.admin.enabled.unwrap_or(true) {
            let text = raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
            Some(text.parse().map_err(|_| {
                invalid(
                    "admin.listen".into(),
                    format!("\"{text}\" is not an address:port such as \"{DEFAULT_ADMIN_LISTEN}\""),
                )
            })?)
        } else {
            None
        };
        let coordination = match (raw.etcd, raw.raft) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "raft".into(),
                    "both [etcd] and [raft] are set; keep one: [etcd] to coordinate through etcd, [raft] (or neither) for the embedded coordinator".into(),
                ))
            }
            (Some(e), None) => etcd_section(e),
            (None, raft) => raft_section(raft, &cluster, &node_id),
        }
        .map_err(|(key, m)| invalid(key.into(), m))?;
        let identity = raw.identity.map(|i| IdentityFiles {
            ca_file: i.ca_file,
            cert_file: i.cert_file,
            key_file: i.key_file,
            revoked: i.revoked,
        });
        if let Some(i) = &identity {
            for r in &i.revoked {
                if stek_trust::identity::normalise_serial(r).is_none() {
                    return Err(invalid(
                        "identity.revoked".into(),
                        format!("\"{r}\" is not a certificate serial number in hex (as `stek status` and `openssl x509 -serial` print it)"),
                    ));
                }
            }
        }
        let open_door = match &coordination {
            Coordination::Etcd { .. } => Some("etcd"),
            Coordination::Raft { client: true, .. } => Some("a Raft client over TCP"),
            Coordination::Raft { listen, .. } if !listen.starts_with("unix:") => {
                Some("a Raft listener on TCP")
            }
            Coordination::Raft { .. } => None,
        };
        if let (Some(door), None, false) = (open_door, &identity, raw.insecure) {
            return Err(invalid(
                "identity".into(),
                format!("{door} needs [identity]: without it anyone who can reach the store or a peer can enroll a key of their own and read every ticket key. Make a CA and certificates with `stek ca init` and `stek ca issue` (docs/security.md, \"PKI walk-through\"), or set insecure = true to run without (a warning at every start)"),
            ));
        }
        let mut targets = Vec::with_capacity(raw.target.len());
        for (i, t) in raw.target.into_iter().enumerate() {
            let key = |k: &str| format!("target[{i}].{k}");
            let target = build_target(i, t, &policy).map_err(|(k, m)| invalid(key(k), m))?;
            if targets.iter().any(|other: &Target| {
                // Several HAProxy instances may share one file, each through its own socket.
                other.path == target.path && !(other.runtime.is_some() && target.runtime.is_some())
            }) {
                return Err(invalid(
                    key("path"),
                    format!(
                        "{} is already written by another target; give each target its own path",
                        target.path.display()
                    ),
                ));
            }
            targets.push(target);
        }
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR.replace("{cluster}", &cluster)));
        if !state_dir.is_absolute() {
            return Err(invalid(
                "state_dir".into(),
                format!("\"{}\" is not an absolute path", state_dir.display()),
            ));
        }
        Ok(Config {
            path: path.to_owned(),
            cluster,
            node_id,
            policy,
            lease_ttl: raw.rotation.lease_ttl,
            min_request_interval: raw.rotation.min_request_interval,
            forget_dead_after: raw.rotation.forget_dead_after,
            coordination,
            state_dir,
            identity,
            insecure: raw.insecure,
            admin_listen,
            compact_history,
            compact_history_off_reason,
            targets,
        })
    }

    /// The warning a node logs at every start (and `stek check` shows) while `[etcd]
    /// compact_history = false`: what the operator's reason costs. `None` when compaction is on
    /// or the store is not etcd.
    pub fn history_kept_warning(&self) -> Option<String> {
        let reason = self.compact_history_off_reason.as_deref()?;
        Some(format!(
            "[etcd] compact_history = false (reason given: \"{reason}\"): superseded rings and the sealed copies of every dropped key stay in etcd's history and in its backups until something else compacts them; once sealing keys ratchet those copies open with no key that still exists, but whoever reads that history keeps it. Remove compact_history = false to compact after every key drop (docs/security.md, \"History purge\")"
        ))
    }
}

/// `[etcd]`: its endpoints (one scheme for all, https with a CA), client certificate and user.
fn etcd_section(e: RawEtcd) -> Result<Coordination, FieldError> {
    if e.endpoints.is_empty() {
        return Err((
            "etcd.endpoints",
            "is empty; list at least one client URL, e.g. [\"http://127.0.0.1:2379\"]".into(),
        ));
    }
    let https = e.endpoints.iter().any(|ep| ep.starts_with("https://"));
    for ep in &e.endpoints {
        let rest = ep
            .strip_prefix("http://")
            .or_else(|| ep.strip_prefix("https://"))
            .ok_or_else(|| {
                (
                    "etcd.endpoints",
                    format!("\"{ep}\" is not an http:// or https:// URL such as \"https://10.0.0.1:2379\""),
                )
            })?;
        if !is_host_port(rest) {
            return Err((
                "etcd.endpoints",
                format!("\"{ep}\" needs a host and a port, e.g. \"http://127.0.0.1:2379\""),
            ));
        }
        if https != ep.starts_with("https://") {
            return Err((
                "etcd.endpoints",
                "mixes http:// and https:// endpoints; use one scheme for all".into(),
            ));
        }
    }
    if https && e.ca_file.is_none() {
        return Err((
            "etcd.ca_file",
            "https:// endpoints need ca_file, the CA that signed etcd's certificate".into(),
        ));
    }
    if !https && (e.ca_file.is_some() || e.cert_file.is_some()) {
        return Err((
            "etcd.endpoints",
            "ca_file and cert_file need https:// endpoints".into(),
        ));
    }
    let client_cert = match (e.cert_file, e.key_file) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err((
                "etcd.key_file",
                "cert_file and key_file go together: set both, or neither".into(),
            ))
        }
    };
    let user = match (e.user, e.password_file) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        _ => {
            return Err((
                "etcd.password_file",
                "user and password_file go together: set both, or neither".into(),
            ))
        }
    };
    Ok(Coordination::Etcd {
        endpoints: e.endpoints,
        access: EtcdAccess {
            ca_file: e.ca_file,
            client_cert,
            user,
        },
    })
}

/// `[raft]` (or none): the embedded coordinator, as a peer or as a client of the group.
fn raft_section(
    raft: Option<RawRaft>,
    cluster: &str,
    node_id: &str,
) -> Result<Coordination, FieldError> {
    let raft = raft.unwrap_or(RawRaft {
        listen: None,
        peers: Default::default(),
        data_dir: None,
        client: false,
        ca_file: None,
        cert_file: None,
        key_file: None,
    });
    if raft.ca_file.is_some() || raft.cert_file.is_some() || raft.key_file.is_some() {
        return Err((
            "raft.ca_file",
            "[raft] ca_file, cert_file and key_file have moved to [identity] (the same three keys, plus revoked), and the certificates must name the cluster and the node: make them with `stek ca init` and `stek ca issue --node ID --host ADDR` (docs/security.md, \"PKI walk-through\")".into(),
        ));
    }
    let data_dir = raft
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RAFT_DATA_DIR.replace("{cluster}", cluster)));
    if !data_dir.is_absolute() {
        return Err((
            "raft.data_dir",
            format!("\"{}\" is not an absolute path", data_dir.display()),
        ));
    }
    if raft.client {
        if raft.peers.is_empty() {
            return Err((
                "raft.peers",
                "client = true reaches the group through its peers: list them (name = \"host:port\")".into(),
            ));
        }
        if raft.peers.contains_key(node_id) {
            return Err((
                "raft.client",
                format!("this node ({node_id}) is in the peers table, so it is a peer, not a client: remove it from peers, or drop client = true"),
            ));
        }
        if raft.listen.is_some() || raft.data_dir.is_some() {
            return Err((
                "raft.client",
                "a client runs no Raft peer: drop listen and data_dir".into(),
            ));
        }
        for (name, addr) in &raft.peers {
            check_name(name).map_err(|m| ("raft.peers", m))?;
            if !is_host_port(addr) {
                return Err((
                    "raft.peers",
                    format!("{name} = \"{addr}\" is not host:port, e.g. \"127.0.0.1:7702\""),
                ));
            }
        }
        Ok(Coordination::Raft {
            listen: String::new(),
            peers: raft.peers,
            data_dir,
            client: true,
        })
    } else {
        let listen = raft
            .listen
            .or_else(|| raft.peers.get(node_id).cloned())
            .unwrap_or_else(|| DEFAULT_RAFT_SOCKET.replace("{cluster}", cluster));
        match listen.strip_prefix("unix:") {
            Some(path) if !path.starts_with('/') => {
                return Err((
                    "raft.listen",
                    format!("\"{listen}\": a Unix socket needs an absolute path, e.g. \"unix:/run/stek/{cluster}.sock\""),
                ))
            }
            Some(_) if raft.peers.len() > 1 => {
                return Err((
                    "raft.listen",
                    format!("\"{listen}\" is a Unix socket, which other peers cannot reach; a group of several peers listens on host:port"),
                ))
            }
            Some(_) => {}
            None if !is_host_port(&listen) => {
                return Err((
                    "raft.listen",
                    format!("\"{listen}\" is not host:port, e.g. \"127.0.0.1:7701\", or unix:/path"),
                ))
            }
            None => {}
        }
        let mut peers = raft.peers;
        if peers.is_empty() {
            // Single-box mode: a one-node group.
            peers.insert(node_id.to_owned(), listen.clone());
        }
        if !peers.contains_key(node_id) {
            return Err((
                "raft.peers",
                format!("does not list this node (node_id = \"{node_id}\"); every peer, this one included, must be in the table with the address the others reach it at, or set client = true for a box that reaches the group as a client (beyond five peers, docs/configuration.md)"),
            ));
        }
        for (name, addr) in &peers {
            check_name(name).map_err(|m| ("raft.peers", m))?;
            let own_socket = peers.len() == 1 && addr == &listen;
            if !(is_host_port(addr) || own_socket) {
                return Err((
                    "raft.peers",
                    format!("{name} = \"{addr}\" is not host:port, e.g. \"127.0.0.1:7702\""),
                ));
            }
        }
        Ok(Coordination::Raft {
            listen,
            peers,
            data_dir,
            client: false,
        })
    }
}

/// `[etcd] compact_history` and `compact_history_off_reason`: on unless turned off with a
/// reason, since an opt-out nobody explained is how old sealed copies end up kept for good.
/// Returns (compact, the reason when off), or the key at fault and what to do.
fn history_purge(e: &RawEtcd) -> Result<(bool, Option<String>), FieldError> {
    let reason = e.compact_history_off_reason.as_deref().map(str::trim);
    match (e.compact_history.unwrap_or(true), reason) {
        (true, None) => Ok((true, None)),
        (true, Some(_)) => Err((
            "etcd.compact_history_off_reason",
            "is set, but compact_history is not false: remove compact_history_off_reason, or set compact_history = false if history is to be kept".into(),
        )),
        (false, None | Some("")) => Err((
            "etcd.compact_history_off_reason",
            "compact_history = false keeps superseded rings and the sealed copies of dropped keys in etcd's history and backups: say why in compact_history_off_reason = \"...\" (e.g. \"etcd runs --auto-compaction-mode=revision --auto-compaction-retention=1000\"), or remove compact_history = false".into(),
        )),
        (false, Some(r)) if r.chars().any(char::is_control) => Err((
            "etcd.compact_history_off_reason",
            "holds a line break or another control character; it is logged at every start: write it on one line".into(),
        )),
        (false, Some(r)) => Ok((false, Some(r.to_owned()))),
    }
}

fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Err(format!(
            "\"{s}\" is not a valid name; use 1 to 128 letters, digits, '-', '_' or '.'"
        ))
    } else {
        Ok(())
    }
}

type FieldError = (&'static str, String);

fn build_target(index: usize, t: RawTarget, policy: &Policy) -> Result<Target, FieldError> {
    let info = formats::lookup(&t.format).map_err(|e| ("format", e.to_string()))?;
    let options = FormatOptions {
        key_size: t.key_size,
        slots: t.slots,
        retain: policy.retain,
    };
    let format = formats::build(&t.format, &options).map_err(|e| {
        let key = match e {
            formats::FormatConfigError::KeySize { .. } => "key_size",
            formats::FormatConfigError::SlotsNotApplicable { .. }
            | formats::FormatConfigError::TooFewSlots { .. } => "slots",
            formats::FormatConfigError::UnknownFormat { .. } => "format",
        };
        (key, e.to_string())
    })?;
    if !t.path.is_absolute() {
        return Err((
            "path",
            format!(
                "\"{}\" is relative; give an absolute path on a RAM disk such as /run/stek/{}",
                t.path.display(),
                info.name
            ),
        ));
    }
    let owner = t
        .owner
        .as_deref()
        .map(resolve_user)
        .transpose()
        .map_err(|m| ("owner", m))?;
    let group = t
        .group
        .as_deref()
        .map(resolve_group)
        .transpose()
        .map_err(|m| ("group", m))?;
    let timeout = t.reload_timeout.unwrap_or(DEFAULT_RELOAD_TIMEOUT);
    if timeout.is_zero() {
        return Err(("reload_timeout", "must be more than 0, e.g. \"30s\"".into()));
    }
    let attempts = t.reload_attempts.unwrap_or(DEFAULT_RELOAD_ATTEMPTS);
    if attempts == 0 {
        return Err(("reload_attempts", "must be at least 1".into()));
    }
    let command = |argv: Option<Vec<String>>, key: &'static str| match argv {
        Some(v) if v.is_empty() || v[0].is_empty() => Err((
            key,
            "is empty; give the program and its arguments, e.g. [\"nginx\", \"-s\", \"reload\"]"
                .to_owned(),
        )),
        Some(argv) => Ok(Some(CommandSpec {
            argv,
            timeout,
            attempts,
            backoff: Duration::from_millis(500),
        })),
        None => Ok(None),
    };
    let reload = command(t.reload, "reload")?;
    let verify = command(t.verify, "verify")?;
    let runtime = match (info.delivery, t.socket) {
        (Delivery::HaproxyRuntime, Some(socket)) => Some(RuntimeTarget {
            socket,
            id: id_for_file(&t.path),
        }),
        (Delivery::HaproxyRuntime, None) => {
            return Err((
                "socket",
                "format \"haproxy-runtime\" needs the admin stats socket, e.g. socket = \"/run/haproxy/admin.sock\" (HAProxy: `stats socket /run/haproxy/admin.sock level admin`)".into(),
            ))
        }
        (_, Some(_)) => {
            return Err((
                "socket",
                format!(
                    "applies only to format \"haproxy-runtime\"; remove it from this \"{}\" target",
                    info.name
                ),
            ))
        }
        (_, None) => None,
    };
    if runtime.is_some() && reload.is_some() {
        return Err((
            "reload",
            "format \"haproxy-runtime\" applies keys through the stats socket without a reload; remove reload, or use format \"haproxy\" to reload instead".into(),
        ));
    }
    Ok(Target {
        index,
        path: t.path,
        write: WriteOptions {
            owner,
            group,
            allow_persistent_storage: t.allow_persistent_storage,
            mtime_must_advance: format.mtime_must_advance(),
        },
        format,
        reload,
        verify,
        runtime,
    })
}

fn resolve_user(name: &str) -> Result<Uid, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(Uid::from_raw(n));
    }
    match User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid),
        _ => Err(format!(
            "user \"{name}\" does not exist on this machine; give an existing user name or a numeric uid"
        )),
    }
}

fn resolve_group(name: &str) -> Result<Gid, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        _ => Err(format!(
            "group \"{name}\" does not exist on this machine; give an existing group name or a numeric gid"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/stek/stek.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const GOOD: &str = r#"
cluster = "edge"
node_id = "lb-1"
[rotation]
interval = "12h"
retain = 2
lease_ttl = "10s"
[[target]]
format = "nginx"
path = "/run/stek/nginx"
reload = ["nginx", "-s", "reload"]
verify = ["nginx", "-t"]
[[target]]
format = "haproxy-runtime"
path = "/run/stek/haproxy.keys"
socket = "/run/haproxy/admin.sock"
[[target]]
format = "ats"
path = "/run/stek/ats.key"
reload = ["traffic_ctl", "config", "reload"]
reload_timeout = "5s"
owner = "root"
group = "0"
"#;

    #[test]
    fn a_full_config_loads_with_its_values() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.cluster, "edge");
        assert_eq!(c.node_id, "lb-1");
        assert_eq!(c.policy.interval, Duration::from_secs(43200));
        assert_eq!(c.policy.retain, 2);
        assert_eq!(c.targets.len(), 3);
        assert_eq!(c.targets[0].format.info().name, "nginx");
        assert_eq!(
            c.targets[1].runtime.as_ref().unwrap().id,
            "/run/stek/haproxy.keys"
        );
        assert!(c.targets[2].write.mtime_must_advance);
        assert_eq!(
            c.targets[2].reload.as_ref().unwrap().timeout,
            Duration::from_secs(5)
        );
        assert_eq!(c.targets[2].write.owner, Some(Uid::from_raw(0)));
    }

    #[test]
    fn defaults_apply_when_keys_are_missing() {
        let c = parse("node_id = \"a\"\n").unwrap();
        assert_eq!(c.cluster, "default");
        assert_eq!(c.policy.retain, 2);
        assert_eq!(c.policy.interval, Duration::from_secs(43200));
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
    }

    /// A lease longer than the store keeps one is refused: a stopped member would block
    /// rotations as long as it lasts; the bounds are accepted.
    #[test]
    fn a_lease_ttl_is_between_two_seconds_and_two_minutes() {
        let with = |ttl: &str| format!("node_id = \"a\"\n[rotation]\nlease_ttl = \"{ttl}\"\n");
        for ok in ["2s", "10s", "2m"] {
            assert!(parse(&with(ok)).is_ok(), "{ok}");
        }
        let m = err(&with("1s"));
        assert!(
            m.contains("rotation.lease_ttl") && m.contains("at least"),
            "{m}"
        );
        let m = err(&with("121s"));
        assert!(
            m.contains("rotation.lease_ttl") && m.contains("at most \"2m\""),
            "{m}"
        );
        let m = err(&with("1day"));
        assert!(m.contains("at most"), "{m}");
    }

    #[test]
    fn unknown_format_names_file_key_and_choices() {
        let m = err("[[target]]\nformat = \"caddy\"\npath = \"/run/stek/x\"\n");
        assert!(
            m.starts_with("config /etc/stek/stek.toml: target[0].format:"),
            "{m}"
        );
        assert!(m.contains("nginx | haproxy"), "{m}");
    }

    #[test]
    fn a_48_byte_key_for_an_80_byte_format_says_what_to_change() {
        let m = err("[[target]]\nformat = \"dnsdist\"\npath = \"/run/stek/d\"\nkey_size = 48\n");
        assert!(m.contains("target[0].key_size"), "{m}");
        assert!(m.contains("set key_size to 80"), "{m}");
    }

    #[test]
    fn zero_slots_is_rejected_with_the_minimum() {
        let m = err("[[target]]\nformat = \"nginx\"\npath = \"/run/stek/n\"\nslots = 0\n");
        assert!(m.contains("target[0].slots"), "{m}");
        assert!(m.contains("set slots to 4"), "{m}");
    }

    #[test]
    fn retain_zero_is_rejected() {
        let m = err("[rotation]\nretain = 0\n");
        assert!(m.contains("rotation.retain"), "{m}");
        assert!(m.contains("set retain to 1 or more"), "{m}");
    }

    #[test]
    fn typos_and_bad_types_point_at_the_line() {
        let m = err("[rotation]\nintervall = \"1h\"\n");
        assert!(m.contains("intervall"), "{m}");
        assert!(m.contains("line 2"), "{m}");
        let m = err("[rotation]\ninterval = \"soon\"\n");
        assert!(m.contains("interval"), "{m}");
    }

    #[test]
    fn runtime_target_needs_a_socket_and_no_reload() {
        let m = err("[[target]]\nformat = \"haproxy-runtime\"\npath = \"/run/stek/h\"\n");
        assert!(m.contains("target[0].socket"), "{m}");
        let m = err("[[target]]\nformat = \"haproxy\"\npath = \"/run/stek/h\"\nsocket = \"/s\"\n");
        assert!(
            m.contains("applies only to format \"haproxy-runtime\""),
            "{m}"
        );
        let m = err("[[target]]\nformat = \"haproxy-runtime\"\npath = \"/run/stek/h\"\nsocket = \"/s\"\nreload = [\"true\"]\n");
        assert!(m.contains("target[0].reload"), "{m}");
    }

    #[test]
    fn relative_paths_empty_argv_and_unknown_users_are_rejected() {
        let m = err("[[target]]\nformat = \"httpd\"\npath = \"keys/httpd.key\"\n");
        assert!(m.contains("is relative"), "{m}");
        let m = err("[[target]]\nformat = \"httpd\"\npath = \"/run/stek/h\"\nreload = []\n");
        assert!(m.contains("target[0].reload: is empty"), "{m}");
        let m = err("[[target]]\nformat = \"httpd\"\npath = \"/run/stek/h\"\nowner = \"no-such-user-stek\"\n");
        assert!(m.contains("target[0].owner"), "{m}");
    }

    #[test]
    fn two_targets_writing_one_path_are_rejected() {
        let m = err("[[target]]\nformat = \"httpd\"\npath = \"/run/stek/h\"\n[[target]]\nformat = \"ats\"\npath = \"/run/stek/h\"\n");
        assert!(m.contains("target[1].path"), "{m}");
    }

    #[test]
    fn etcd_endpoints_are_checked() {
        let c =
            parse("insecure = true\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n").unwrap();
        assert_eq!(
            c.coordination,
            Coordination::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                access: EtcdAccess::default(),
            }
        );
        let Coordination::Raft { listen, peers, .. } =
            parse("node_id = \"a\"\n").unwrap().coordination
        else {
            panic!("no [etcd]: the embedded coordinator")
        };
        assert_eq!(listen, "unix:/run/stek/default.sock");
        assert_eq!(
            peers.get("a").map(String::as_str),
            Some("unix:/run/stek/default.sock")
        );
        let m = err("[etcd]\nendpoints = []\n");
        assert!(m.contains("etcd.endpoints: is empty"), "{m}");
        let m = err("[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n");
        assert!(m.contains("is not an http:// or https:// URL"), "{m}");
        let m = err("[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\n");
        assert!(
            m.contains("etcd.ca_file: https:// endpoints need ca_file"),
            "{m}"
        );
        let m = err("[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\nca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"\n");
        assert!(m.contains("cert_file and key_file go together"), "{m}");
        let m = err("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nuser = \"stek\"\n");
        assert!(m.contains("user and password_file go together"), "{m}");
        let m = err("[etcd]\nendpoints = [\"http://etcd\"]\n");
        assert!(m.contains("needs a host and a port"), "{m}");
    }

    /// etcd's history is compacted unless the config turns it off and says why; the reason is
    /// what the warning at every start repeats.
    #[test]
    fn etcd_history_is_compacted_unless_turned_off_with_a_reason() {
        let etcd = "insecure = true\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";
        let c = parse(etcd).unwrap();
        assert!(c.compact_history, "on by default");
        assert_eq!(c.history_kept_warning(), None);
        let c = parse(&format!("{etcd}compact_history = true\n")).unwrap();
        assert!(c.compact_history);

        for off in [
            "compact_history = false\n",
            "compact_history = false\ncompact_history_off_reason = \"  \"\n",
        ] {
            let m = err(&format!("{etcd}{off}"));
            assert!(
                m.starts_with(
                    "config /etc/stek/stek.toml: etcd.compact_history_off_reason: compact_history = false keeps"
                ),
                "{m}"
            );
            assert!(
                m.contains("say why in compact_history_off_reason")
                    && m.contains("or remove compact_history = false"),
                "{m}"
            );
        }
        let m = err(&format!(
            "{etcd}compact_history_off_reason = \"etcd auto-compaction\"\n"
        ));
        assert!(
            m.contains("etcd.compact_history_off_reason: is set, but compact_history is not false"),
            "{m}"
        );
        let m = err(&format!(
            "{etcd}compact_history = false\ncompact_history_off_reason = \"a\\nb\"\n"
        ));
        assert!(m.contains("write it on one line"), "{m}");

        let c = parse(&format!(
            "{etcd}compact_history = false\ncompact_history_off_reason = \" etcd auto-compaction, retention 1000 \"\n"
        ))
        .unwrap();
        assert!(!c.compact_history);
        let w = c.history_kept_warning().unwrap();
        assert!(
            w.contains("reason given: \"etcd auto-compaction, retention 1000\"")
                && w.contains("stay in etcd's history and in its backups")
                && w.contains("open with no key that still exists"),
            "{w}"
        );

        // The embedded coordinator purges its own log: the etcd setting does not apply.
        let c = parse("node_id = \"a\"\n").unwrap();
        assert!(!c.compact_history && c.history_kept_warning().is_none());
    }

    #[test]
    fn raft_section_is_checked() {
        let c = parse("node_id = \"n2\"\ninsecure = true\n[raft]\nlisten = \"127.0.0.1:7702\"\npeers = { n1 = \"127.0.0.1:7701\", n2 = \"127.0.0.1:7702\", n3 = \"127.0.0.1:7703\" }\n").unwrap();
        let Coordination::Raft { listen, peers, .. } = c.coordination else {
            panic!("raft")
        };
        assert_eq!(listen, "127.0.0.1:7702");
        assert_eq!(peers.len(), 3);
        let m = err("node_id = \"n9\"\n[raft]\npeers = { n1 = \"127.0.0.1:7701\" }\n");
        assert!(m.contains("raft.peers: does not list this node"), "{m}");
        let m = err("node_id = \"n1\"\n[raft]\npeers = { n1 = \"localhost\" }\n");
        assert!(m.contains("is not host:port"), "{m}");
        let m = err(
            "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[raft]\nlisten = \"127.0.0.1:1\"\n",
        );
        assert!(m.contains("keep one"), "{m}");
    }

    /// The Raft data directory and the state directory have defaults per cluster, must be
    /// absolute; a client box lists the peers but not itself, and has no listener or data.
    #[test]
    fn raft_data_dir_state_dir_and_client_boxes_are_checked() {
        let c = parse("cluster = \"edge\"\n").unwrap();
        assert_eq!(c.state_dir, Path::new("/run/stek/state/edge"));
        let Coordination::Raft {
            data_dir, client, ..
        } = &c.coordination
        else {
            panic!("raft")
        };
        assert_eq!(data_dir, Path::new("/var/lib/stek/edge"));
        assert!(!client);
        let m = err("state_dir = \"run/x\"\n");
        assert!(
            m.contains("state_dir: \"run/x\" is not an absolute path"),
            "{m}"
        );
        let m = err("[raft]\ndata_dir = \"x\"\n");
        assert!(m.contains("raft.data_dir"), "{m}");
        let peers = "peers = { n1 = \"127.0.0.1:7701\", n2 = \"127.0.0.1:7702\" }\n";
        let c = parse(&format!(
            "node_id = \"n7\"\ninsecure = true\n[raft]\nclient = true\n{peers}"
        ))
        .unwrap();
        assert!(
            matches!(c.coordination, Coordination::Raft { client: true, ref peers, .. } if peers.len() == 2)
        );
        let m = err(&format!(
            "node_id = \"n1\"\ninsecure = true\n[raft]\nclient = true\n{peers}"
        ));
        assert!(m.contains("is in the peers table, so it is a peer"), "{m}");
        let m = err("node_id = \"n7\"\ninsecure = true\n[raft]\nclient = true\n");
        assert!(m.contains("list them"), "{m}");
        let m = err(&format!("node_id = \"n7\"\ninsecure = true\n[raft]\nclient = true\nlisten = \"127.0.0.1:1\"\n{peers}"));
        assert!(m.contains("a client runs no Raft peer"), "{m}");
        let m = err(&format!("node_id = \"n7\"\n[raft]\nclient = true\n{peers}"));
        assert!(m.contains("a Raft client over TCP needs [identity]"), "{m}");
        let m = err(&format!(
            "node_id = \"n7\"\ninsecure = true\n[raft]\nlisten = \"127.0.0.1:7707\"\n{peers}"
        ));
        assert!(m.contains("or set client = true"), "{m}");
    }

    /// A store or a peer listener that others can reach needs `[identity]` (or an explicit
    /// `insecure = true`); the single-box default listens on a Unix socket and needs neither.
    #[test]
    fn reachable_coordination_needs_identity_or_insecure() {
        let etcd = "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";
        let m = err(etcd);
        assert!(m.contains("identity: etcd needs [identity]"), "{m}");
        assert!(
            m.contains("stek ca init") && m.contains("insecure = true"),
            "{m}"
        );
        let raft = "node_id = \"n1\"\n[raft]\nlisten = \"127.0.0.1:7701\"\n";
        let m = err(raft);
        assert!(m.contains("a Raft listener on TCP needs [identity]"), "{m}");
        let c = parse(&format!("insecure = true\n{raft}")).unwrap();
        assert!(c.insecure && c.identity.is_none());
        let c = parse(&format!(
            "node_id = \"n1\"\n{}[identity]\nca_file = \"/ca.pem\"\ncert_file = \"/n1.pem\"\nkey_file = \"/n1.key\"\nrevoked = [\"0A:1B\"]\n",
            &raft["node_id = \"n1\"\n".len()..]
        ))
        .unwrap();
        assert_eq!(c.identity.unwrap().revoked, vec!["0A:1B".to_owned()]);
        let m = err("insecure = true\n[identity]\nca_file = \"/ca.pem\"\ncert_file = \"/n1.pem\"\nkey_file = \"/n1.key\"\nrevoked = [\"zz\"]\n");
        assert!(
            m.contains("identity.revoked: \"zz\" is not a certificate serial"),
            "{m}"
        );
        // The single-box default: a one-node group on a Unix socket, no identity needed.
        let c = parse("cluster = \"edge\"\n").unwrap();
        assert!(
            matches!(&c.coordination, Coordination::Raft { listen, .. } if listen == "unix:/run/stek/edge.sock")
        );
        let m = err("[raft]\nlisten = \"unix:run/x.sock\"\n");
        assert!(m.contains("needs an absolute path"), "{m}");
        let m = err("node_id = \"a\"\n[raft]\nlisten = \"unix:/run/x.sock\"\npeers = { a = \"unix:/run/x.sock\", b = \"127.0.0.1:2\" }\n");
        assert!(m.contains("other peers cannot reach"), "{m}");
        // The old [raft] TLS keys say where they went.
        let m = err("insecure = true\n[raft]\nca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n");
        assert!(
            m.contains("moved to [identity]") && m.contains("stek ca issue"),
            "{m}"
        );
    }

    #[test]
    fn secret_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let pw = d.path().join("password");
        std::fs::write(&pw, "s3cret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let access = EtcdAccess {
            ca_file: None,
            client_cert: None,
            user: Some(("stek".into(), pw.clone())),
        };
        let m = access
            .read(Path::new("/etc/stek/stek.toml"))
            .unwrap_err()
            .to_string();
        assert!(m.contains("etcd.password_file"), "{m}");
        assert!(m.contains("chmod 600"), "{m}");
        assert!(!m.contains("s3cret"), "{m}");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secrets = access.read(Path::new("/etc/stek/stek.toml")).unwrap();
        assert_eq!(secrets.user.as_ref().unwrap().1.as_str(), "s3cret");
        assert!(!format!("{secrets:?}").contains("s3cret"));
    }

    #[test]
    fn missing_file_names_the_path() {
        let m = Config::load(Path::new("/nonexistent/stek.toml"))
            .unwrap_err()
            .to_string();
        assert!(m.contains("/nonexistent/stek.toml"), "{m}");
    }
}
