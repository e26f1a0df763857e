//! `stek status` and `stek rotate`: the operator's view of the cluster, read from the store.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde::Serialize;
use stek_coord::etcd::Etcd;
use stek_coord::raft::client::RaftClient;
use stek_coord::{Coordinator, RingSlot, Snapshot};
use stek_core::rotation::describe_blocker;
use stek_core::{decide_at, Decision, Policy};
use stek_node::config::Coordination;
use stek_node::Config;

/// Whose certificate the CLI presents: the config's `[identity]` (a member's, on its box), or
/// `--cert`/`--key` (an operator's, from `stek ca issue --operator`).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `--cert` and `--key`.
    pub operator: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Runs `f` with a client of the config's coordinator (etcd, or the embedded group's peers).
async fn with_store<T, F>(config: &Config, access: &Access, f: F) -> anyhow::Result<T>
where
    F: AsyncStoreFn<T>,
{
    match &config.coordination {
        Coordination::Etcd {
            endpoints,
            access: etcd_access,
        } => {
            if access.operator.is_some() {
                bail!("--cert and --key are for the embedded coordinator; with [etcd], an operator uses the etcd credentials in the config (an etcd user whose role reads the cluster's prefix and writes its requests/, docs/security.md)");
            }
            let etcd = connect_etcd(config, endpoints, etcd_access).await?;
            f.call(&etcd).await
        }
        Coordination::Raft { peers, .. } => {
            let tls = match &access.operator {
                None => peer_tls(config)?,
                Some((cert, key)) => Some(operator_tls(config, cert, key)?),
            };
            let client = RaftClient::new(&config.cluster, peers.values().cloned().collect(), None)
                .with_tls(tls);
            let local = peers.values().any(|p| p.starts_with("unix:"));
            f.call(&client).await.map_err(|e| {
                if local && format!("{e:#}").contains("Permission denied") {
                    e.context("the single-box group's socket is only for root and the node's user: run this command with sudo")
                } else {
                    e
                }
            })
        }
    }
}

/// `--cert`/`--key` checked against the config's CA (any role: the peers and the leader decide
/// what it may do).
fn operator_files(
    config: &Config,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(
    stek_node::config::IdentityPem,
    stek_coord::identity::Credentials,
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
    let trust = stek_coord::identity::Trust::new(&pem.ca, &config.cluster, &files.revoked)?;
    let creds = stek_coord::identity::Credentials::new(&trust, &pem.cert, &pem.key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    tracing::debug!(role = %creds.role(), "presenting --cert");
    Ok((pem, creds))
}

/// Mutual TLS with `--cert`/`--key` and the config's CA.
fn operator_tls(
    config: &Config,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<stek_coord::raft::tls::PeerTls> {
    let (pem, _) = operator_files(config, cert, key)?;
    stek_coord::raft::tls::PeerTls::from_pem(&pem.ca, &pem.cert, &pem.key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))
}

/// Who signs a rotation request: `--cert`/`--key`, else this box's `[identity]`; nobody
/// without either (then a leader with `[identity]` ignores the request).
fn request_signer(
    config: &Config,
    access: &Access,
) -> anyhow::Result<Option<stek_coord::identity::Credentials>> {
    Ok(match &access.operator {
        Some((cert, key)) => Some(operator_files(config, cert, key)?.1),
        None => load_identity(config)?.map(|id| id.creds),
    })
}

/// The config's trust (`[identity]` CA and revocations), to check what the store holds.
fn trust_of(config: &Config) -> anyhow::Result<Option<stek_coord::identity::Trust>> {
    let Some(files) = &config.identity else {
        return Ok(None);
    };
    let ca = std::fs::read(&files.ca_file)
        .with_context(|| format!("cannot read [identity] ca_file {}", files.ca_file.display()))?;
    Ok(Some(stek_coord::identity::Trust::new(
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
    let security = stek_coord::etcd::EtcdSecurity {
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
) -> anyhow::Result<Option<stek_coord::identity::NodeIdentity>> {
    let Some(files) = &config.identity else {
        return Ok(None);
    };
    let role = stek_coord::identity::Role::Member(config.node_id.clone());
    let (_, identity) = files.load(&config.path, &config.cluster, &role)?;
    Ok(Some(identity))
}

/// Mutual TLS between Raft peers (and with the CLI) from `[identity]`, authorising requests by
/// certificate (key file checked first).
pub fn peer_tls(config: &Config) -> anyhow::Result<Option<stek_coord::raft::tls::PeerTls>> {
    let Some(files) = &config.identity else {
        return Ok(None);
    };
    let role = stek_coord::identity::Role::Member(config.node_id.clone());
    let (pem, identity) = files.load(&config.path, &config.cluster, &role)?;
    let built = stek_coord::raft::tls::PeerTls::from_pem(&pem.ca, &pem.cert, &pem.key)
        .map_err(|e| anyhow::anyhow!("config {}: [identity]: {e}", config.path.display()))?;
    Ok(Some(built.with_trust(identity.trust)))
}

/// A job that can run against any coordinator (a generic async closure).
trait AsyncStoreFn<T> {
    async fn call<C: Coordinator>(self, store: &C) -> anyhow::Result<T>;
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The documented `stek status --json` document (docs/status.md).
#[derive(Debug, Serialize)]
struct Status {
    cluster: String,
    leader: Option<String>,
    /// The leadership's term: the store refuses ring writes under any other.
    leader_term: Option<i64>,
    generation: Option<u64>,
    next_rotation_at: Option<String>,
    rotation: RotationStatus,
    members: Vec<MemberStatus>,
    keys: Vec<KeyStatus>,
    pending_requests: usize,
    rejected_records: Vec<Rejected>,
    /// Member records whose certificate or key signature does not verify: no key is sealed
    /// for them and they do not count for rotations.
    refused_members: Vec<RefusedMember>,
    /// Who signed the stored ring, when it verified (`[identity]`).
    ring_signed_by: Option<String>,
    /// The config runs with `insecure = true` and no `[identity]`.
    insecure: bool,
    /// How far the stored ring's stamps are ahead of this machine's clock, in whole seconds
    /// (0 normally): its writer's clock ran at least that far ahead.
    ring_clock_ahead_seconds: u64,
    /// How far the ring's writer's clock is ahead of the members that acknowledged the ring,
    /// from their acknowledgements' stamps (null: no acknowledgement to compare with).
    writer_clock_ahead_seconds: Option<u64>,
}

#[derive(Debug, Serialize)]
struct RefusedMember {
    node_id: String,
    live: bool,
    reason: String,
}

#[derive(Debug, Serialize)]
struct RotationStatus {
    /// idle | due | waiting | no-ring | bad-ring
    state: &'static str,
    blocked_by: Vec<Blocked>,
}

#[derive(Debug, Serialize)]
struct Blocked {
    node_id: String,
    applied_generation: u64,
    needed_generation: u64,
    last_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct MemberStatus {
    node_id: String,
    live: bool,
    applied_generation: u64,
    last_error: Option<String>,
    version: String,
    targets: Vec<String>,
    /// The stored ring holds a copy sealed to this member's current public key.
    sealed_copy: bool,
    /// Its acknowledgement names the stored ring (generation and digest).
    applied_stored_ring: bool,
}

#[derive(Debug, Serialize)]
struct KeyStatus {
    epoch: u64,
    state: String,
    fingerprint: String,
    age_seconds: u64,
}

#[derive(Debug, Serialize)]
struct Rejected {
    key: String,
    error: String,
}

fn status_of(cluster: &str, snap: &Snapshot, config_policy: &Policy) -> Status {
    let now = SystemTime::now();
    let (ring, policy) = match &snap.ring {
        RingSlot::Valid(s) => (Some(&s.ring), s.policy),
        _ => (None, *config_policy),
    };
    let members = snap.member_views();
    let (state, blocked_by) = match (&snap.ring, ring) {
        (RingSlot::Rejected(_), _) => ("bad-ring", Vec::new()),
        (_, None) => ("no-ring", Vec::new()),
        (_, Some(r)) => match decide_at(now, Some(r), &policy, &members, !snap.requests.is_empty())
        {
            Decision::Wait { blocked_by, .. } => (
                "waiting",
                blocked_by
                    .into_iter()
                    .map(|b| Blocked {
                        node_id: b.member,
                        applied_generation: b.applied_generation,
                        needed_generation: b.needed_generation,
                        last_error: b.last_error,
                    })
                    .collect(),
            ),
            Decision::Idle { .. } => ("idle", Vec::new()),
            _ => ("due", Vec::new()),
        },
    };
    Status {
        cluster: cluster.to_owned(),
        leader: snap.leader.as_ref().map(|l| l.node_id.clone()),
        leader_term: snap.leader.as_ref().map(|l| l.term.0),
        generation: ring.map(|r| r.generation()),
        next_rotation_at: ring
            .map(|r| humantime::format_rfc3339_seconds(r.next_rotation_at()).to_string()),
        rotation: RotationStatus { state, blocked_by },
        members: snap
            .members
            .iter()
            .map(|m| MemberStatus {
                node_id: m.record.node_id.clone(),
                live: m.live,
                applied_generation: m.record.applied_generation,
                last_error: m.record.last_error.clone(),
                version: m.record.version.clone(),
                targets: m.record.targets.clone(),
                sealed_copy: match &snap.ring {
                    RingSlot::Valid(s) => s.usable_copy_for(&m.record),
                    _ => false,
                },
                applied_stored_ring: snap
                    .valid_ring()
                    .is_some_and(|s| m.record.acknowledges(&s.ring)),
            })
            .collect(),
        keys: ring
            .map(|r| {
                r.keys()
                    .iter()
                    .rev()
                    .map(|k| KeyStatus {
                        epoch: k.epoch,
                        state: k.state.to_string(),
                        fingerprint: k.fingerprint().to_string(),
                        age_seconds: now
                            .duration_since(k.created_at)
                            .unwrap_or_default()
                            .as_secs(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        pending_requests: snap.requests.len(),
        refused_members: snap
            .refused
            .iter()
            .map(|r| RefusedMember {
                node_id: r.node_id.clone(),
                live: r.live,
                reason: r.reason.clone(),
            })
            .collect(),
        ring_signed_by: None,
        insecure: false,
        ring_clock_ahead_seconds: snap
            .valid_ring()
            .map_or(0, |r| stek_coord::clock::ring_ahead(r, now).as_secs()),
        writer_clock_ahead_seconds: snap.valid_ring().and_then(|r| {
            stek_coord::clock::writer_ahead_of_members(r, &snap.members).map(|d| d.as_secs())
        }),
        rejected_records: snap
            .rejected
            .iter()
            .map(|(k, e)| Rejected {
                key: k.clone(),
                error: e.to_string(),
            })
            .collect(),
    }
}

fn print_text(s: &Status) {
    println!("cluster    {}", s.cluster);
    match (&s.leader, s.leader_term) {
        (Some(l), Some(t)) => println!("leader     {l} (term {t})"),
        _ => println!("leader     (none)"),
    }
    match s.generation {
        Some(g) => println!("generation {g}"),
        None => println!("generation (no ring yet)"),
    }
    if let Some(t) = &s.next_rotation_at {
        println!("next       {t}");
    }
    println!("rotation   {}", s.rotation.state);
    for b in &s.rotation.blocked_by {
        println!(
            "  blocked by {}",
            describe_blocker(
                &b.node_id,
                b.applied_generation,
                b.needed_generation,
                b.last_error.as_deref()
            )
        );
    }
    if s.pending_requests > 0 {
        println!("requests   {} pending", s.pending_requests);
    }
    let bound = stek_coord::clock::CLOCK_BOUND.as_secs();
    if s.ring_clock_ahead_seconds > bound || s.writer_clock_ahead_seconds.is_some_and(|a| a > bound)
    {
        println!(
            "clock      SKEWED: the ring's writer's clock is ahead by {}s of this machine and {} of the members that acknowledged it; fix its time source",
            s.ring_clock_ahead_seconds,
            s.writer_clock_ahead_seconds.map_or("?".to_owned(), |a| format!("{a}s"))
        );
    }
    println!("\nmembers");
    println!(
        "  {:<20} {:<5} {:>7}  {:<6} last error",
        "node", "live", "applied", "sealed"
    );
    for m in &s.members {
        println!(
            "  {:<20} {:<5} {:>7}  {:<6} {}",
            m.node_id,
            if m.live { "yes" } else { "no" },
            m.applied_generation,
            if m.sealed_copy { "yes" } else { "no" },
            m.last_error.as_deref().unwrap_or("-")
        );
    }
    println!("\nkeys");
    println!("  {:<6} {:<9} {:<12} age", "epoch", "state", "fingerprint");
    for k in &s.keys {
        println!(
            "  {:<6} {:<9} {:<12} {}",
            k.epoch,
            k.state,
            k.fingerprint,
            humantime::format_duration(Duration::from_secs(k.age_seconds))
        );
    }
    if !s.refused_members.is_empty() {
        println!("\nrefused members (no key is sealed for them; they do not count for rotations)");
        for r in &s.refused_members {
            println!(
                "  {:<20} {:<5} {}",
                r.node_id,
                if r.live { "live" } else { "-" },
                r.reason
            );
        }
    }
    for r in &s.rejected_records {
        println!("\nrejected record {}: {}", r.key, r.error);
    }
    if let Some(by) = &s.ring_signed_by {
        println!("\nring signed by {by}");
    }
    if s.insecure {
        println!("\nINSECURE: insecure = true and no [identity]: anyone who can reach the store or a peer can enroll and read every ticket key");
    }
}

struct ReadSnapshot;

impl AsyncStoreFn<Snapshot> for ReadSnapshot {
    async fn call<C: Coordinator>(self, store: &C) -> anyhow::Result<Snapshot> {
        Ok(store.snapshot().await?)
    }
}

pub fn status(path: &Path, json: bool, access: &Access) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let trust = trust_of(&config)?;
    let mut snap = runtime()?.block_on(with_store(&config, access, ReadSnapshot))?;
    let mut signed_by = None;
    if let Some(trust) = &trust {
        snap.authenticate(trust, SystemTime::now());
        if let Some(ring) = snap.valid_ring() {
            signed_by = Some(format!("member {} (term {})", ring.written_by, ring.term));
        }
    }
    let mut s = status_of(&config.cluster, &snap, &config.policy);
    s.ring_signed_by = signed_by;
    s.insecure = config.insecure && config.identity.is_none();
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_text(&s);
    }
    Ok(ExitCode::SUCCESS)
}

struct Rotate<'a> {
    config: &'a Config,
    wait: bool,
    timeout: Duration,
    /// With `[identity]`: the members to wait for are the enrolled ones only.
    trust: Option<stek_coord::identity::Trust>,
    /// Signs the request.
    signer: Option<stek_coord::identity::Credentials>,
}

impl AsyncStoreFn<ExitCode> for Rotate<'_> {
    async fn call<C: Coordinator>(self, store: &C) -> anyhow::Result<ExitCode> {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| self.config.node_id.clone());
        let key = store
            .request_rotation(&format!("cli@{host}"), self.signer.as_ref())
            .await?;
        println!("rotation requested ({key})");
        if !self.wait {
            return Ok(ExitCode::SUCCESS);
        }
        let deadline = Instant::now() + self.timeout;
        let mut served_at: Option<u64> = None;
        let mut progress = Progress::new();
        loop {
            let mut snap = store.snapshot().await?;
            if let Some(trust) = &self.trust {
                snap.authenticate(trust, SystemTime::now());
            }
            if served_at.is_none() && !snap.requests.contains(&key) {
                // The rotation that served the request is this ring or an earlier one.
                served_at = snap.valid_ring().map(|r| r.ring.generation());
                if let Some(g) = served_at {
                    println!("rotated: generation {g}; waiting for every live member to apply it");
                }
            }
            if let Some(g) = served_at {
                // Counted as the leader counts them: an acknowledgement of another ring with
                // this generation is no acknowledgement of this one.
                let views = snap.member_views();
                let live: Vec<_> = views.iter().filter(|m| m.live).collect();
                let waiting: Vec<&str> = live
                    .iter()
                    .filter(|m| m.applied_generation < g)
                    .map(|m| m.id.as_str())
                    .collect();
                progress.show(live.len() - waiting.len(), live.len(), &waiting);
                if waiting.is_empty() {
                    progress.finish();
                    let active = snap
                        .valid_ring()
                        .map(|r| {
                            format!(
                                "epoch {} ({})",
                                r.ring.active().epoch,
                                r.ring.active().fingerprint()
                            )
                        })
                        .unwrap_or_default();
                    println!("done: every live member applied generation {g}; active key {active}");
                    return Ok(ExitCode::SUCCESS);
                }
            }
            if Instant::now() >= deadline {
                progress.finish();
                let why = reason(&snap, served_at, &self.config.policy);
                bail!(
                    "rotation not complete after {}: {why}",
                    humantime::format_duration(self.timeout)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// "applied 2/3 live members": one line rewritten in place on a terminal, one plain line per
/// change otherwise (logs, CI).
struct Progress {
    terminal: bool,
    last: Option<(usize, usize)>,
    drawn: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::IsTerminal::is_terminal(&std::io::stdout()),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, applied: usize, live: usize, waiting: &[&str]) {
        if self.last == Some((applied, live)) {
            return;
        }
        self.last = Some((applied, live));
        let line = if waiting.is_empty() {
            format!("applied {applied}/{live} live members")
        } else {
            format!(
                "applied {applied}/{live} live members (waiting for {})",
                waiting.join(", ")
            )
        };
        if self.terminal {
            use std::io::Write as _;
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
            self.drawn = true;
        } else {
            println!("{line}");
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            println!();
            self.drawn = false;
        }
    }
}

pub fn rotate(
    path: &Path,
    wait: bool,
    timeout: Duration,
    access: &Access,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    runtime()?.block_on(with_store(
        &config,
        access,
        Rotate {
            config: &config,
            wait,
            timeout,
            trust: trust_of(&config)?,
            signer: request_signer(&config, access)?,
        },
    ))
}

fn reason(snap: &Snapshot, served_at: Option<u64>, policy: &Policy) -> String {
    if snap.leader.is_none() {
        return "there is no leader (are the nodes running and reaching the store?)".into();
    }
    let s = status_of("", snap, policy);
    let list = |v: Vec<String>| v.join("; ");
    match served_at {
        None if !s.rotation.blocked_by.is_empty() => format!(
            "the leader waits for members that have not applied the staged key: {}",
            list(
                s.rotation
                    .blocked_by
                    .iter()
                    .map(|b| describe_blocker(
                        &b.node_id,
                        b.applied_generation,
                        b.needed_generation,
                        b.last_error.as_deref()
                    ))
                    .collect()
            )
        ),
        None => format!(
            "the request is still pending (rotation state: {})",
            s.rotation.state
        ),
        Some(g) => format!(
            "the rotation happened (generation {g}) but these live members have not applied it: {}",
            list(
                s.members
                    .iter()
                    .filter(|m| m.live && m.applied_generation < g)
                    .map(|m| describe_blocker(
                        &m.node_id,
                        m.applied_generation,
                        g,
                        m.last_error.as_deref()
                    ))
                    .collect()
            )
        ),
    }
}

/// A client of the config's embedded group, presenting `--cert` or the box's `[identity]`.
fn raft_client(config: &Config, access: &Access) -> anyhow::Result<RaftClient> {
    let Coordination::Raft { peers, .. } = &config.coordination else {
        bail!("stek peers is for the embedded coordinator; this config uses [etcd], whose membership etcd manages (etcdctl member)");
    };
    let tls = match &access.operator {
        None => peer_tls(config)?,
        Some((cert, key)) => Some(operator_tls(config, cert, key)?),
    };
    Ok(RaftClient::new(&config.cluster, peers.values().cloned().collect(), None).with_tls(tls))
}

/// `stek peers list`.
pub fn peers_list(path: &Path, access: &Access) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let client = raft_client(&config, access)?;
    let m = runtime()?.block_on(client.members())?;
    let names: std::collections::BTreeMap<u64, String> = match &config.coordination {
        Coordination::Raft { peers, .. } => peers
            .keys()
            .map(|n| (stek_coord::raft::peer::raft_id(n), n.clone()))
            .collect(),
        Coordination::Etcd { .. } => Default::default(),
    };
    for (kind, list) in [("voter", &m.voters), ("learner", &m.learners)] {
        for (id, addr) in list {
            let name = names.get(id).map_or("?", String::as_str);
            let leads = if m.leader == Some(*id) {
                " (leader)"
            } else {
                ""
            };
            println!("{kind:<8} {name:<16} {addr:<24} raft id {id:016x}{leads}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `stek peers add`.
pub fn peers_add(
    path: &Path,
    node_id: &str,
    addr: &str,
    access: &Access,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let client = raft_client(&config, access)?;
    runtime()?
        .block_on(client.add_peer(node_id, addr))
        .with_context(|| format!("adding {node_id} at {addr}"))?;
    println!("added {node_id} ({addr}) to the raft group");
    Ok(ExitCode::SUCCESS)
}

/// `stek peers remove`.
pub fn peers_remove(path: &Path, node_id: &str, access: &Access) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let client = raft_client(&config, access)?;
    runtime()?
        .block_on(client.remove_peer(node_id))
        .with_context(|| format!("removing {node_id}"))?;
    println!("removed {node_id} from the raft group");
    Ok(ExitCode::SUCCESS)
}
