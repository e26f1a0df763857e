//! A real cluster on loopback: one etcd (own ports, data dir on /dev/shm) and several
//! `stek node` processes, plus the invariant checker of rotation.md that reads every node's
//! files and the store.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use stek_core::Fingerprint;
use tracing::info;

use crate::netns::{exec_in, Host, Net};
use crate::{free_port, Server, TestDir};

/// A private etcd.
#[derive(Debug)]
pub struct EtcdServer {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    server: Option<Server>,
    /// TLS material when the etcd serves https with client-cert-auth.
    pub tls: Option<EtcdTls>,
    /// The host it runs on, when in a test network (else 127.0.0.1 here).
    host: Option<Host>,
    /// The host etcdctl runs on, when in a test network.
    ctl_host: Option<Host>,
}

/// Files of a TLS etcd: CA, client certificate and key (0600), and the root password file.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA certificate.
    pub ca: PathBuf,
    /// Client certificate (CN=root).
    pub cert: PathBuf,
    /// Client key, mode 0600.
    pub key: PathBuf,
    /// The etcd user the nodes log in as: `root` unless [`EtcdServer::use_prefix_user`].
    pub user: String,
    /// That user's password, mode 0600.
    pub password_file: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and one certificate for every Raft peer (SAN 127.0.0.1, server and client use), key 0600.
#[derive(Debug, Clone)]
pub struct PeerPki {
    /// CA certificate.
    pub ca: PathBuf,
    /// The peers' certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// A cluster CA made as `stek ca init` makes it, in `dir` (ca.pem, ca.key 0600).
#[derive(Debug, Clone)]
pub struct ClusterCa {
    /// The directory holding ca.pem and ca.key.
    pub dir: PathBuf,
}

impl ClusterCa {
    /// Makes the CA of cluster `cluster` in `dir`.
    pub fn new(dir: &std::path::Path, cluster: &str) -> Self {
        let ca = stek_trust::identity::init_ca(cluster, Duration::from_secs(86_400)).unwrap();
        fs::write(dir.join("ca.pem"), &ca.cert).unwrap();
        write_secret(&dir.join("ca.key"), ca.key.as_bytes());
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The CA certificate.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues `role`'s certificate into `out` (`<name>.pem`, `<name>.key` 0600), naming `hosts`.
    pub fn issue(&self, role: &stek_trust::identity::Role, hosts: &[&str], out: &std::path::Path) {
        let name = match role {
            stek_trust::identity::Role::Member(n) | stek_trust::identity::Role::Operator(n) => n,
        };
        let issued = stek_trust::identity::issue(
            &fs::read_to_string(self.cert()).unwrap(),
            &fs::read_to_string(self.dir.join("ca.key")).unwrap(),
            role,
            &hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
            Duration::from_secs(86_400),
        )
        .unwrap();
        fs::create_dir_all(out).unwrap();
        fs::write(out.join(format!("{name}.pem")), &issued.cert).unwrap();
        write_secret(&out.join(format!("{name}.key")), issued.key.as_bytes());
    }

    /// Issues member `id`'s certificate (naming `ip`) into `out`.
    pub fn issue_member(&self, id: &str, ip: &str, out: &std::path::Path) {
        self.issue(
            &stek_trust::identity::Role::Member(id.to_owned()),
            &[ip],
            out,
        );
    }

    /// The `[identity]` section of member `id` whose files are in `dir`.
    pub fn identity_section(&self, id: &str, dir: &std::path::Path) -> String {
        format!(
            "[identity]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.cert().display(),
            dir.join(format!("{id}.pem")).display(),
            dir.join(format!("{id}.key")).display()
        )
    }
}

fn write_secret(path: &std::path::Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// A self-signed CA `name`.pem / `name`.key in `dir`.
fn make_ca(dir: &std::path::Path, name: &str, cn: &str) {
    let p = |n: &str| dir.join(n).display().to_string();
    let subj = format!("/CN={cn}");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &subj,
        "-keyout",
        &p(&format!("{name}.key")),
        "-out",
        &p(&format!("{name}.pem")),
    ]);
}

/// A key and a certificate `name`.key / `name`.pem signed by CA `ca`, with extensions `ext`.
fn sign(dir: &std::path::Path, ca: &str, name: &str, cn: &str, ext: &str) {
    let p = |n: &str| dir.join(n).display().to_string();
    fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let subj = format!("/CN={cn}");
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &subj,
        "-keyout",
        &p(&format!("{name}.key")),
        "-out",
        &p(&format!("{name}.csr")),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&format!("{name}.csr")),
        "-CA",
        &p(&format!("{ca}.pem")),
        "-CAkey",
        &p(&format!("{ca}.key")),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p(&format!("{name}.ext")),
        "-out",
        &p(&format!("{name}.pem")),
    ]);
    fs::set_permissions(
        dir.join(format!("{name}.key")),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// Makes a [`PeerPki`] in `dir`.
pub fn make_peer_pki(dir: &std::path::Path) -> PeerPki {
    make_ca(dir, "peer-ca", "stek-peer-ca");
    sign(
        dir,
        "peer-ca",
        "peer",
        "stek-peer",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    PeerPki {
        ca: dir.join("peer-ca.pem"),
        cert: dir.join("peer.pem"),
        key: dir.join("peer.key"),
    }
}

fn make_tls(dir: &std::path::Path) -> EtcdTls {
    make_ca(dir, "ca", "stek-test-ca");
    sign(
        dir,
        "ca",
        "server",
        "etcd",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    );
    sign(dir, "ca", "client", "root", "extendedKeyUsage=clientAuth\n");
    let password_file = dir.join("root.password");
    fs::write(&password_file, "stek-test-root-pw\n").unwrap();
    fs::set_permissions(&password_file, fs::Permissions::from_mode(0o600)).unwrap();
    EtcdTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client.key"),
        user: "root".into(),
        password_file,
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    }
}

impl EtcdServer {
    /// Starts etcd with its data dir under `root`.
    pub fn start(root: &TestDir) -> Self {
        crate::require_binary("etcd");
        Self::start_on(root, None)
    }

    /// Starts etcd on `hosts.0` of a test network, driven by etcdctl on `hosts.1`; here on
    /// 127.0.0.1 when `None`.
    pub fn start_on(root: &TestDir, hosts: Option<(Host, Host)>) -> Self {
        crate::require_binary("etcd");
        let (host, ctl_host) = hosts.unzip();
        let mut e = Self {
            dir: root.subdir("etcd"),
            client_port: free_port(),
            peer_port: free_port(),
            server: None,
            tls: None,
            host,
            ctl_host,
        };
        e.restart();
        e
    }

    /// Starts etcd serving only https with client-cert-auth, then turns on etcd auth with a
    /// root user whose password is in `tls.password_file`.
    pub fn start_secured(root: &TestDir) -> Self {
        crate::require_binary("etcd");
        let dir = root.subdir("etcd");
        let tls = make_tls(&dir);
        let mut e = Self {
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            server: None,
            tls: Some(tls),
            host: None,
            ctl_host: None,
        };
        e.restart();
        let pw = "root:stek-test-root-pw";
        let out = e.ctl(&["user", "add", pw]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = e.ctl(&["auth", "enable"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        e
    }

    /// Makes etcd user `user` with a role (of the same name) that may read and write only
    /// under `prefix`, as docs/security.md advises for each node, and has the nodes log in as
    /// it from their next start ([`EtcdServer::config_section`]). etcdctl stays root (its
    /// client certificate names root). A secured etcd only.
    pub fn use_prefix_user(&mut self, user: &str, prefix: &str) {
        let password = format!("{user}-pw");
        for args in [
            vec!["role", "add", user],
            vec![
                "role",
                "grant-permission",
                user,
                "readwrite",
                prefix,
                "--prefix=true",
            ],
            vec!["user", "add", &format!("{user}:{password}")],
            vec!["user", "grant-role", user, user],
        ] {
            let out = self.ctl(&args);
            assert!(
                out.status.success(),
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let t = self.tls.as_mut().expect("a secured etcd");
        let file = self.dir.join(format!("{user}.password"));
        fs::write(&file, format!("{password}\n")).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        t.user = user.into();
        t.password_file = file;
    }

    /// etcdctl with this etcd's endpoint and TLS flags.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = exec_in(self.ctl_host.as_ref(), "etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--command-timeout=3s");
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.cert.display()))
                .arg(format!("--key={}", t.key.display()));
        }
        cmd.args(args)
            .output()
            .expect("etcdctl runs (apt-get install etcd-client)")
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl(&["get", "/", "-w", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    }

    /// Every key and value under `prefix` as of `revision`, raw; `None` once compacted.
    pub fn dump_at(&self, prefix: &str, revision: i64) -> Option<Vec<u8>> {
        let out = self.ctl(&["get", prefix, "--prefix", &format!("--rev={revision}")]);
        if out.status.success() {
            return Some(out.stdout);
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("compacted"),
            "etcdctl get --rev={revision}: {err}"
        );
        None
    }

    /// The raw value of `key` now.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let out = self.ctl(&["get", key, "--print-value-only"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v = out.stdout;
        if v.last() == Some(&b'\n') {
            v.pop();
        }
        v
    }

    /// Puts `value` under `key`.
    pub fn put(&self, key: &str, value: &[u8]) {
        let out = self.ctl(&["put", key, &String::from_utf8_lossy(value)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip(), self.client_port)
    }

    fn ip(&self) -> &str {
        self.host.as_ref().map_or("127.0.0.1", |h| h.ip.as_str())
    }

    /// The `[etcd]` section a node uses to reach this etcd.
    pub fn config_section(&self) -> String {
        let mut s = format!("[etcd]\nendpoints = [\"{}\"]\n", self.endpoint());
        if let Some(t) = &self.tls {
            s += &format!(
                "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nuser = \"{}\"\npassword_file = \"{}\"\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display(),
                t.user,
                t.password_file.display()
            );
        }
        s
    }

    /// Starts (again) on the same ports and data dir.
    pub fn restart(&mut self) {
        let peer = format!("http://{}:{}", self.ip(), self.peer_port);
        let mut cmd = exec_in(self.host.as_ref(), "etcd");
        cmd.args(["--name", "test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")]);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let log = self.dir.join(format!("etcd-{}.log", rand::random::<u16>()));
        let mut server = Server::spawn("etcd", cmd, log);
        server.wait_listening(&[self.client_port, self.peer_port], Duration::from_secs(20));
        server.wait_for(Duration::from_secs(20), "etcd to be healthy", || {
            self.ctl(&["endpoint", "health"]).status.success()
        });
        self.server = Some(server);
    }

    /// A backup: `etcdctl snapshot save` of the whole store into `file` (a copy of etcd's
    /// database at this revision).
    pub fn snapshot_save(&self, file: &std::path::Path) {
        let out = self.ctl(&["snapshot", "save", &file.display().to_string()]);
        assert!(
            out.status.success(),
            "etcdctl snapshot save: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A restore from a backup, as after a disaster: etcd stopped, its data directory replaced
    /// by `etcdctl snapshot restore` of `file`, and etcd started again on the same ports. Its
    /// revisions go back to the backup's (etcd 3.4 cannot bump them), and so do its leases.
    pub fn restore(&mut self, file: &std::path::Path) {
        self.stop();
        let data = self.dir.join("data");
        let _ = fs::remove_dir_all(&data);
        let peer = format!("http://{}:{}", self.ip(), self.peer_port);
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(file)
            .arg("--data-dir")
            .arg(&data)
            .args(["--name", "test"])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--initial-advertise-peer-urls", &peer])
            .output()
            .expect("etcdctl runs");
        assert!(
            out.status.success(),
            "etcdctl snapshot restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.restart();
    }

    /// etcd's data directory (its WAL, snapshots and database: every revision it keeps, and
    /// the pages it freed).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Stops etcd (its data stays).
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// SIGKILL (its data stays).
    pub fn kill(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(s.pid() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs etcdctl against `endpoint`.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=3s")
        .args(args)
        .output()
        .expect("etcdctl runs (apt-get install etcd-client)")
}

/// Which coordinator the nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A private etcd.
    Etcd,
    /// The embedded Raft group (no external service).
    Raft,
}

/// One `stek node` process and its files.
#[derive(Debug)]
pub struct Node {
    /// Its node id.
    pub id: String,
    /// Its Raft peer address (embedded backend).
    pub raft_addr: String,
    /// Its admin listener (/metrics, /healthz, /readyz).
    pub admin_addr: String,
    /// More config (e.g. `[[target]]` sections) appended to its config file.
    pub extra_toml: String,
    /// Serial numbers in its `[identity] revoked`.
    pub revoked: Vec<String>,
    /// Embedded coordinator: this node runs no Raft peer and reaches the group as a client
    /// (`[raft] client = true`) through the nodes that are peers.
    pub raft_client: bool,
    /// Its nginx target's reload argv.
    pub reload: Vec<String>,
    /// Its config file.
    pub config: PathBuf,
    /// Its nginx slot directory (the target the checker reads).
    pub keys: PathBuf,
    /// Its directory (config, logs).
    pub dir: PathBuf,
    server: Option<Server>,
    starts: u32,
}

impl Node {
    /// The node's state directory (its sealing key), on /dev/shm like a box's RAM disk.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The node's Raft data directory (embedded coordinator).
    pub fn raft_data_dir(&self) -> PathBuf {
        self.dir.join("raft")
    }

    /// Wipes what a power loss wipes: the RAM disk (the key directory and the state
    /// directory), not the Raft data directory. The node must be stopped.
    pub fn wipe_ram_disk(&self) {
        assert!(!self.running(), "{} must be stopped first", self.id);
        let _ = fs::remove_dir_all(self.state_dir());
        for entry in fs::read_dir(&self.keys).into_iter().flatten().flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }

    /// The log of its current (or last) run.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("node-{}.log", self.starts))
    }

    /// Whether it runs.
    pub fn running(&self) -> bool {
        self.server.is_some()
    }

    /// How its process ended, once it has (`None` while it runs or was never started).
    pub fn exit_status(&self) -> Option<String> {
        self.server.as_ref().and_then(Server::exit_status)
    }

    /// Every slot file's bytes, by name.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        if let Ok(rd) = fs::read_dir(&self.keys) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".key") {
                    out.insert(name, fs::read(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Bytes and mtimes of every file, to prove nothing changed.
    pub fn files_with_mtimes(&self) -> BTreeMap<String, (Vec<u8>, i64, i64)> {
        self.files()
            .into_iter()
            .map(|(n, b)| {
                let m = fs::metadata(self.keys.join(&n)).unwrap();
                (n, (b, m.mtime(), m.mtime_nsec()))
            })
            .collect()
    }

    /// The names (first 16 bytes) of every key in its nginx slots; slot 0 first.
    pub fn key_names(&self) -> Vec<[u8; 16]> {
        let files = self.files();
        let mut slots: Vec<(usize, [u8; 16])> = files
            .iter()
            .filter_map(|(n, b)| {
                let i: usize = n.strip_suffix(".key")?.parse().ok()?;
                let mut name = [0u8; 16];
                name.copy_from_slice(b.get(..16)?);
                Some((i, name))
            })
            .collect();
        slots.sort();
        slots.into_iter().map(|(_, n)| n).collect()
    }
}

/// A cluster of `stek node`s around one etcd.
#[derive(Debug)]
pub struct Cluster {
    /// The test's directory.
    pub root: TestDir,
    /// The coordinator in use.
    pub backend: Backend,
    /// The etcd (etcd backend only).
    pub etcd: Option<EtcdServer>,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The stek CLI binary under test.
    pub bin: PathBuf,
    /// The keyspace namespace.
    pub name: String,
    /// The lease TTL of nodes added from now on.
    pub lease_ttl: Duration,
    /// The cluster CA (`stek ca init`): every node added gets a member certificate of it
    /// naming its id and its Raft address, and an `[identity]` section. `None` (set before
    /// adding nodes) runs the nodes with `insecure = true` instead.
    pub ca: Option<ClusterCa>,
    /// Lines added to every node's `[etcd]` section (e.g. `compact_history = true`).
    pub etcd_extra: String,
    /// The nodes' `RUST_LOG`.
    pub log_filter: String,
    /// Nodes log JSON lines (`--log-format json`).
    pub log_json: bool,
    /// `[rotation] interval` of the nodes.
    pub interval: String,
    /// `[rotation] min_request_interval` of the nodes ("0s": tests rotate back to back).
    pub min_request_interval: String,
    /// The test network, when every node (and etcd) runs on a host of its own: node `nX` on
    /// host `nX`, etcd on `etcd`, the CLI and etcdctl on `ctl`. Dropped last.
    pub net: Option<Net>,
}

/// The lease TTL the tests run with.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

impl Cluster {
    /// An etcd-backed cluster with `n` configured (not yet started) nodes `n1..`.
    pub fn new(bin: &str, tag: &str, n: usize) -> Self {
        Self::with_backend(bin, tag, n, Backend::Etcd)
    }

    /// A cluster on an etcd that serves only TLS with client certificates and etcd auth.
    pub fn secured(bin: &str, tag: &str, n: usize) -> Self {
        crate::init_logging();
        let root = TestDir::new(tag);
        let etcd = EtcdServer::start_secured(&root);
        Self::build(bin, root, n, Backend::Etcd, Some(etcd), None)
    }

    /// A cluster on `backend` with `n` configured (not yet started) nodes `n1..`. With the
    /// embedded backend every node must be added before the first one starts (the peers
    /// table lists them all).
    pub fn with_backend(bin: &str, tag: &str, n: usize, backend: Backend) -> Self {
        crate::init_logging();
        let root = TestDir::new(tag);
        let etcd = (backend == Backend::Etcd).then(|| EtcdServer::start(&root));
        Self::build(bin, root, n, backend, etcd, None)
    }

    /// Like [`Cluster::with_backend`], but every node, etcd and the CLI each on a host of a
    /// test network ([`Net`]), so that faults can cut them apart. Needs root.
    pub fn in_network(bin: &str, tag: &str, n: usize, backend: Backend) -> Self {
        crate::init_logging();
        let root = TestDir::new(tag);
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let mut hosts = vec!["ctl", "etcd"];
        hosts.extend(ids.iter().map(String::as_str));
        let net = Net::new(&hosts);
        let etcd = (backend == Backend::Etcd).then(|| {
            EtcdServer::start_on(
                &root,
                Some((net.host("etcd").clone(), net.host("ctl").clone())),
            )
        });
        Self::build(bin, root, n, backend, etcd, Some(net))
    }

    fn build(
        bin: &str,
        root: TestDir,
        n: usize,
        backend: Backend,
        etcd: Option<EtcdServer>,
        net: Option<Net>,
    ) -> Self {
        let mut c = Self {
            root,
            backend,
            etcd,
            nodes: Vec::new(),
            bin: PathBuf::from(bin),
            name: format!("t{}", rand::random::<u32>()),
            lease_ttl: LEASE_TTL,
            ca: None,
            etcd_extra: String::new(),
            log_filter: "info".into(),
            log_json: false,
            interval: "1h".into(),
            min_request_interval: "0s".into(),
            net,
        };
        c.ca = Some(ClusterCa::new(&c.root.subdir("ca"), &c.name));
        for _ in 0..n {
            c.add_node(None);
        }
        c
    }

    /// Runs nodes added from now on (and every node's next start) with `insecure = true` and
    /// no `[identity]`.
    pub fn insecure(&mut self) {
        self.ca = None;
    }

    /// Host `name` of the test network, if the cluster runs in one.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.net.as_ref().map(|n| n.host(name))
    }

    /// The test network (clusters made by [`Cluster::in_network`] only).
    pub fn net(&self) -> &Net {
        self.net
            .as_ref()
            .expect("this cluster runs in a test network")
    }

    /// The etcd (etcd backend only).
    pub fn etcd(&mut self) -> &mut EtcdServer {
        self.etcd.as_mut().expect("this cluster runs on etcd")
    }

    /// Adds a node; `reload` overrides its reload argv (default: `true`).
    pub fn add_node(&mut self, reload: Option<&[&str]>) -> usize {
        let i = self.nodes.len() + 1;
        let id = format!("n{i}");
        let dir = self.root.subdir(&id);
        let keys = dir.join("nginx");
        fs::create_dir_all(&keys).unwrap();
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).unwrap();
        let reload = reload
            .unwrap_or(&["true"])
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ip = self.host(&id).map_or("127.0.0.1", |h| h.ip.as_str());
        let raft_addr = format!("{ip}:{}", free_port());
        if let Some(ca) = &self.ca {
            ca.issue_member(&id, ip, &dir.join("identity"));
        }
        self.nodes.push(Node {
            id,
            raft_addr,
            admin_addr: format!("127.0.0.1:{}", free_port()),
            extra_toml: String::new(),
            revoked: Vec::new(),
            raft_client: false,
            reload,
            config: dir.join("stek.toml"),
            keys,
            dir,
            server: None,
            starts: 0,
        });
        i - 1
    }

    /// Writes node `i`'s config (the peers table lists every node added so far).
    fn write_config(&self, i: usize) {
        let node = &self.nodes[i];
        let coordination = match &self.etcd {
            Some(etcd) => etcd.config_section() + &self.etcd_extra,
            None => {
                let peers: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|n| !n.raft_client)
                    .map(|n| format!("{} = \"{}\"", n.id, n.raft_addr))
                    .collect();
                if node.raft_client {
                    format!(
                        "[raft]\nclient = true\npeers = {{ {} }}\n",
                        peers.join(", ")
                    )
                } else {
                    format!(
                        "[raft]\nlisten = \"{}\"\ndata_dir = \"{}\"\npeers = {{ {} }}\n",
                        node.raft_addr,
                        node.raft_data_dir().display(),
                        peers.join(", ")
                    )
                }
            }
        };
        let (top, identity) = match &self.ca {
            Some(ca) => (
                "",
                ca.identity_section(&node.id, &node.dir.join("identity"))
                    + &format!(
                        "revoked = {}\n",
                        crate::argv_toml(
                            &node.revoked.iter().map(String::as_str).collect::<Vec<_>>()
                        )
                    ),
            ),
            None => ("insecure = true\n", String::new()),
        };
        let reload: Vec<&str> = node.reload.iter().map(String::as_str).collect();
        fs::write(
            &node.config,
            format!(
                "cluster = \"{cluster}\"\nnode_id = \"{id}\"\nstate_dir = \"{state}\"\n{top}{coordination}{identity}\
                 [admin]\nlisten = \"{admin}\"\n[rotation]\ninterval = \"{interval}\"\nretain = 1\nlease_ttl = \"{ttl}s\"\nmin_request_interval = \"{min_request}\"\n\
                 [[target]]\nformat = \"nginx\"\npath = \"{keys}\"\nreload = {reload}\n\
                 reload_timeout = \"5s\"\nreload_attempts = 1\n{extra}",
                cluster = self.name,
                id = node.id,
                state = node.state_dir().display(),
                admin = node.admin_addr,
                interval = self.interval,
                min_request = self.min_request_interval,
                extra = node.extra_toml,
                ttl = self.lease_ttl.as_secs(),
                keys = node.keys.display(),
                reload = crate::argv_toml(&reload),
            ),
        )
        .unwrap();
    }

    /// Starts node `i` (0-based) and waits until it listens on its own ports.
    pub fn start(&mut self, i: usize) {
        self.spawn(i, true);
    }

    /// Starts node `i` without waiting for its listeners: for a node expected to exit at once.
    pub fn start_no_wait(&mut self, i: usize) {
        self.spawn(i, false);
    }

    fn spawn(&mut self, i: usize, wait: bool) {
        self.write_config(i);
        let mut cmd = exec_in(self.host(&self.nodes[i].id), &self.bin);
        let filter = self.log_filter.clone();
        let node = &mut self.nodes[i];
        node.starts += 1;
        if self.log_json {
            cmd.args(["--log-format", "json"]);
        }
        cmd.args(["node", "--config"])
            .arg(&node.config)
            .env("RUST_LOG", filter);
        let server = node
            .server
            .insert(Server::spawn(&node.id, cmd, node.log_path()));
        if !wait {
            return;
        }
        // The admin listener is bound before the store is reached, the Raft listener right
        // after: once both are the node's own, its ports are settled.
        let mut ports = vec![port_of(&node.admin_addr)];
        if self.etcd.is_none() && !node.raft_client {
            ports.push(port_of(&node.raft_addr));
        }
        server.wait_listening(&ports, Duration::from_secs(30));
    }

    /// Node `i`'s metric `name` (the first sample's value), read from its admin listener (in
    /// its own network namespace when it has one). `None` if it does not answer.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let addr = self.nodes[i].admin_addr.clone();
        let get = move || -> Option<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(&addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).ok()?;
            Some(body)
        };
        let body = match &self.net {
            Some(net) => net.on_host(&self.nodes[i].id, get),
            None => get(),
        }?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Starts every node.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(s) = node.server.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(s.pid() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// GET `path` from node `i`'s admin listener: (status, body).
    pub fn admin_get(&self, i: usize, path: &str) -> (u16, String) {
        crate::http_get(&self.nodes[i].admin_addr, path)
    }

    /// [`Cluster::admin_get`], or `None` while the node's listener is not up.
    pub fn try_admin_get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        crate::try_http_get(&self.nodes[i].admin_addr, path)
    }

    /// SIGSTOP (the process freezes; its lease runs on) or SIGCONT.
    pub fn pause(&self, i: usize, paused: bool) {
        let signal = if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        let s = self.nodes[i].server.as_ref().expect("node runs");
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(s.pid() as i32), signal).unwrap();
    }

    /// Every key file's bytes any node ever wrote, by the checker's history plus now.
    pub fn key_windows(&self, history: &History) -> crate::leaks::KeyWindows {
        let mut all: Vec<Vec<u8>> = history.seen.clone();
        for n in self.nodes.iter().filter(|n| n.running()) {
            all.extend(n.files().into_values());
        }
        crate::leaks::KeyWindows::of(all.iter().map(Vec::as_slice))
    }

    /// SIGTERM and wait (graceful stop).
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].server = None;
    }

    /// Runs the CLI with `args` against node `i`'s config.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        self.write_config(i);
        let mut cmd = exec_in(self.host("ctl"), &self.bin);
        cmd.arg(args[0])
            .arg("--config")
            .arg(&self.nodes[i].config)
            .args(&args[1..]);
        cmd.output().expect("stek CLI runs")
    }

    /// Runs a CLI subcommand (`args[0] args[1]`, e.g. `peers list`) with `args[2..]` against
    /// node `i`'s config.
    pub fn cli_sub(&self, i: usize, args: &[&str]) -> Output {
        self.write_config(i);
        let mut cmd = exec_in(self.host("ctl"), &self.bin);
        cmd.args(&args[..2])
            .arg("--config")
            .arg(&self.nodes[i].config)
            .args(&args[2..]);
        cmd.output().expect("stek CLI runs")
    }

    /// `stek status --json` through node `i`'s config.
    pub fn status(&self, i: usize) -> Value {
        let out = self.cli(i, &["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        typed_status(&out.stdout);
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// The typed `stek status --json` document of node `i` (`stek_store::status::Status`).
    pub fn status_doc(&self, i: usize) -> stek_store::status::Status {
        let out = self.cli(i, &["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        typed_status(&out.stdout)
    }

    /// Like [`Cluster::status`], but `None` while the store does not answer (an election).
    pub fn try_status(&self, i: usize) -> Option<Value> {
        let out = self.cli(i, &["status", "--json"]);
        if out.status.success() {
            typed_status(&out.stdout);
            serde_json::from_slice(&out.stdout).ok()
        } else {
            None
        }
    }

    /// The first running node's index.
    pub fn any_running(&self) -> usize {
        self.nodes
            .iter()
            .position(Node::running)
            .expect("a node runs")
    }

    /// Waits until a leader exists and every running node applied the current generation.
    /// On timeout the panic shows the last status read, and each node's last log lines.
    pub fn wait_converged(&self, within: Duration) -> Value {
        self.wait_converged_above(0, within)
    }

    /// Like [`Cluster::wait_converged`], for a generation above `above`: after every box lost
    /// its RAM disk, the dead processes' records still acknowledge the old ring (and their
    /// leases may still hold) until the new processes register.
    pub fn wait_converged_above(&self, above: u64, within: Duration) -> Value {
        let i = self.any_running();
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        loop {
            if let Some(s) = self.try_status(i) {
                last = s;
                let g = last["generation"].as_u64();
                let ok = !last["leader"].is_null()
                    && g.is_some_and(|g| g > above)
                    && self.nodes.iter().filter(|n| n.running()).all(|n| {
                        last["members"].as_array().unwrap().iter().any(|m| {
                            m["node_id"] == n.id.as_str()
                                && m["live"] == true
                                && m["applied_generation"].as_u64() == g
                        })
                    });
                if ok {
                    return last;
                }
            }
            if Instant::now() >= deadline {
                let tails: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        let log = n.log_text();
                        let lines: Vec<&str> = log.lines().collect();
                        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                        format!("--- {} (last lines)\n{tail}", n.id)
                    })
                    .collect();
                panic!(
                    "timed out after {within:?} waiting for the cluster to converge; last status: {last}\n{}{}",
                    tails.join("\n"),
                    crate::process::exited_note()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `stek rotate --wait` through node `i`.
    pub fn rotate_wait(&self, i: usize, timeout: &str) -> Output {
        self.cli(i, &["rotate", "--wait", "--timeout", timeout])
    }

    /// Starts every node, waits for them to converge and checks the invariants: the history
    /// the checker carries on from there.
    pub fn start_checked(&mut self) -> History {
        self.start_all();
        // A bound, not a speed claim: trace-level logging of a Raft group is slow on 2 cores.
        let status = self.wait_converged(Duration::from_secs(60));
        let mut history = History::default();
        check_invariants(self, &status, &mut history);
        history
    }

    /// One rotation through node `via`, then convergence and the invariant checker.
    pub fn rotate_and_check(&self, via: usize, history: &mut History) -> Value {
        self.rotate_ok(via);
        let status = self.wait_converged(Duration::from_secs(30));
        check_invariants(self, &status, history);
        status
    }

    /// `stek rotate --wait` through node `i`, which must succeed.
    pub fn rotate_ok(&self, i: usize) {
        let out = self.rotate_wait(i, "30s");
        assert!(
            out.status.success(),
            "rotate --wait failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The history check over every node's logs (every run of it): no generation was ever
    /// applied with two different rings (by its keys' fingerprints), on any node, and no
    /// node's applied generation ever went down, across its restarts too. The violations,
    /// and how many applies were read.
    pub fn applied_history_violations(&self) -> (Vec<String>, usize) {
        let field = |line: &str, name: &str| -> Option<String> {
            let rest = line.split(&format!(" {name}=")).nth(1)?;
            Some(rest.split_whitespace().next()?.to_owned())
        };
        let mut rings: BTreeMap<u64, (String, String)> = BTreeMap::new();
        let mut violations = Vec::new();
        let mut applies = 0;
        for n in &self.nodes {
            let mut last: Option<u64> = None;
            for starts in 1..=n.starts {
                let text = fs::read_to_string(n.dir.join(format!("node-{starts}.log")))
                    .unwrap_or_default();
                for line in text
                    .lines()
                    .filter(|l| l.contains("applied ring to every target"))
                {
                    let (Some(g), Some(keys)) = (
                        field(line, "generation").and_then(|g| g.parse::<u64>().ok()),
                        field(line, "keys"),
                    ) else {
                        continue;
                    };
                    applies += 1;
                    if last.is_some_and(|l| g < l) {
                        violations.push(format!(
                            "{} applied generation {g} after {} (run {starts})",
                            n.id,
                            last.unwrap_or(0)
                        ));
                    }
                    last = Some(g);
                    match rings.get(&g) {
                        Some((other, who)) if *other != keys => violations.push(format!(
                            "generation {g} applied as two rings: [{other}] by {who}, [{keys}] by {}",
                            n.id
                        )),
                        Some(_) => {}
                        None => {
                            rings.insert(g, (keys, n.id.clone()));
                        }
                    }
                }
            }
        }
        (violations, applies)
    }

    /// A leader's log lines "key activated", as epochs, from every node's logs.
    pub fn activated_epochs(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for n in &self.nodes {
            for starts in 1..=n.starts {
                let text = fs::read_to_string(n.dir.join(format!("node-{starts}.log")))
                    .unwrap_or_default();
                for line in text.lines().filter(|l| l.contains("key activated")) {
                    if let Some(e) = line
                        .split("epoch=")
                        .nth(1)
                        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                        .and_then(|d| d.parse().ok())
                    {
                        out.push(e);
                    }
                }
            }
        }
        out.sort_unstable();
        out
    }
}

fn fp(name: &[u8; 16]) -> String {
    Fingerprint::of_name(name).to_string()
}

/// What the checker remembers between steps.
#[derive(Debug, Default)]
pub struct History {
    /// Active epoch and key name after each checked step.
    pub actives: Vec<(u64, [u8; 16])>,
    /// Every key file's bytes ever seen, to search logs for leaks.
    pub seen: Vec<Vec<u8>>,
}

/// Checks rotation.md's invariants against the store (status) and every running node's files,
/// once the cluster has converged. Panics with the broken invariant.
pub fn check_invariants(c: &Cluster, status: &Value, history: &mut History) {
    let keys = status["keys"].as_array().expect("keys");
    let active: Vec<&Value> = keys.iter().filter(|k| k["state"] == "active").collect();
    assert_eq!(active.len(), 1, "exactly one active key: {status}");
    let active_epoch = active[0]["epoch"].as_u64().unwrap();
    let active_fp = active[0]["fingerprint"].as_str().unwrap().to_owned();
    assert!(keys.iter().filter(|k| k["state"] == "staged").count() <= 1);
    let mut epochs: Vec<u64> = keys.iter().map(|k| k["epoch"].as_u64().unwrap()).collect();
    epochs.sort_unstable();
    epochs.dedup();
    assert_eq!(epochs.len(), keys.len(), "an epoch appears twice: {status}");
    let store_fps: std::collections::BTreeSet<String> = keys
        .iter()
        .map(|k| k["fingerprint"].as_str().unwrap().to_owned())
        .collect();

    // A panic anywhere (even in a background task that did not kill the process) is a bug.
    for n in &c.nodes {
        for starts in 1..=n.starts {
            let text =
                fs::read_to_string(n.dir.join(format!("node-{starts}.log"))).unwrap_or_default();
            assert!(
                !text.contains("panicked at"),
                "{} panicked (run {starts}):\n{text}",
                n.id
            );
        }
    }
    let running: Vec<&Node> = c.nodes.iter().filter(|n| n.running()).collect();
    // Issue 5: every running member holds a copy of the ring it can open.
    for n in &running {
        let sealed = status["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["node_id"] == n.id.as_str())
            .map(|m| m["sealed_copy"].clone());
        assert_eq!(
            sealed,
            Some(Value::Bool(true)),
            "{} has no usable sealed copy: {status}",
            n.id
        );
    }
    let reference = running[0].files();
    for n in &running {
        let files = n.files();
        // Identical bytes everywhere: one ring, one serialisation.
        assert_eq!(
            files, reference,
            "{} holds other key files than {}",
            n.id, running[0].id
        );
        let names = n.key_names();
        // The encrypting key (slot 0) is the store's active key.
        assert_eq!(
            fp(&names[0]),
            active_fp,
            "{}: slot 0 is not the active key",
            n.id
        );
        let on_disk: std::collections::BTreeSet<String> = names.iter().map(fp).collect();
        assert_eq!(on_disk, store_fps, "{}: files and store disagree", n.id);
        // I5: 0600 on tmpfs (the test dirs are on /dev/shm).
        for f in files.keys() {
            let mode = fs::metadata(n.keys.join(f)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}/{f}", n.id);
        }
        for b in files.values() {
            if !history.seen.contains(b) {
                history.seen.push(b.clone());
            }
        }
    }
    // I1: what any node encrypts with, every node can decrypt.
    for enc in &running {
        let k = enc.key_names()[0];
        for dec in &running {
            assert!(
                dec.key_names().contains(&k),
                "I1: {}'s active key missing on {}",
                enc.id,
                dec.id
            );
        }
    }
    // Epochs advance by one per rotation, and (I2, retain = 1) the previous active key is still
    // there to decrypt tickets issued under it.
    if let Some((prev_epoch, prev_name)) = history.actives.last().copied() {
        if active_epoch != prev_epoch {
            assert_eq!(
                active_epoch,
                prev_epoch + 1,
                "epochs must advance by one per rotation"
            );
            for n in &running {
                assert!(
                    n.key_names().contains(&prev_name),
                    "I2: {} dropped the previous key too early",
                    n.id
                );
            }
        }
    }
    let name = running[0].key_names()[0];
    if history.actives.last().map(|a| a.0) != Some(active_epoch) {
        history.actives.push((active_epoch, name));
    }
    info!(
        "invariants hold at generation {} (active epoch {active_epoch})",
        status["generation"]
    );
}

/// The active key of a `stek status --json` document.
pub fn active_key(status: &Value) -> &Value {
    status["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["state"] == "active")
        .expect("an active key")
}

/// I6: no node's log holds key bytes (hex or base64 of any key file ever seen, or of its
/// secret halves).
pub fn assert_no_key_bytes_in_logs(c: &Cluster, history: &History) {
    let b64 = base64::engine::general_purpose::STANDARD;
    for n in &c.nodes {
        for starts in 1..=n.starts {
            let text =
                fs::read_to_string(n.dir.join(format!("node-{starts}.log"))).unwrap_or_default();
            for bytes in &history.seen {
                let secret = &bytes[16..];
                let hex: String = secret[..16].iter().map(|b| format!("{b:02x}")).collect();
                assert!(!text.contains(&hex), "{}: key bytes (hex) in the log", n.id);
                assert!(
                    !text.contains(&b64.encode(bytes)),
                    "{}: a key (base64) in the log",
                    n.id
                );
                assert!(
                    !text.contains(&b64.encode(&secret[..15])),
                    "{}: key bytes (base64) in the log",
                    n.id
                );
            }
        }
    }
}

/// Waits `d` while asserting every running node keeps running.
pub fn hold(c: &mut Cluster, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500));
    }
    for n in c.nodes.iter_mut().filter(|n| n.running()) {
        n.server.as_mut().unwrap().assert_running();
    }
}

/// A path inside the cluster's root.
pub fn path_in(c: &Cluster, p: &str) -> PathBuf {
    c.root.join(p)
}

/// The port of a `host:port` address.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// `stek status --json`'s output as the one typed document the CLI, the tests and
/// docs/status.md share: every status a test reads is checked against it.
fn typed_status(stdout: &[u8]) -> stek_store::status::Status {
    serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not a stek_store::status::Status document: {e}\n{}",
            String::from_utf8_lossy(stdout)
        )
    })
}
