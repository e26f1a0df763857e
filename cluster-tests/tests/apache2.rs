//! Apache httpd 2.4 (Debian 2.4.71, OpenSSL 3): one 48-byte key in `SSLSessionTicketKeyFile`,
//! rotated by a graceful restart (SIGUSR1).
//!
//! What holds: httpd starts with stek's file, its tickets carry the active key's name, and after
//! a rotation + graceful restart they carry the new key's name (the old ticket no longer
//! resumes: one key, no staging).
//! What does not: tickets from one instance NEVER resume on another, even with an identical key
//! file, because mod_ssl passes a pointer to a stack buffer as the HMAC key (fixed on trunk in
//! r1876937, in no 2.4.x). The test named after the bug pins it, so a fixed httpd makes it fail
//! and reminds us to update the docs and the start-up warning.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_tests::tls::{resume, take_ticket, ticket_key_name, Handshake, Tls};
use cluster_tests::{
    apply_all, argv_toml, free_port, hex, init_logging, require_binary, self_signed_cert,
    targets_from_toml, wait_until, RingDriver, Server, TestDir,
};

/// MPM settings that keep httpd at one child process for its whole life, so every ticket is
/// issued and checked by the same process (its per-process HMAC key is then consistent).
const SINGLE_CHILD: &str = "StartServers 1\nServerLimit 1\nThreadsPerChild 25\n\
                            MaxRequestWorkers 25\nMinSpareThreads 1\nMaxSpareThreads 25\n";

struct Instance {
    dir: PathBuf,
    port: u16,
    server: Option<Server>,
}

impl Instance {
    fn new(root: &Path, tag: &str, cert: &Path, key: &Path, keyfile: &Path, mpm: &str) -> Self {
        let dir = root.join(tag);
        std::fs::create_dir_all(dir.join("www")).unwrap();
        let port = free_port();
        let d = dir.display();
        let snippet = cluster_tests::snippet("httpd", keyfile, 1);
        // Children run as `daemon` (httpd refuses User root); the root parent reads the key.
        let conf = format!(
            "ServerRoot {d}\nServerName localhost\nDefaultRuntimeDir {d}\nPidFile {d}/httpd.pid\n\
             ErrorLog {d}/error.log\nLogLevel info\nMutex file:{d} default\n\
             LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so\n\
             LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\n\
             LoadModule ssl_module /usr/lib/apache2/modules/mod_ssl.so\n{mpm}\
             User daemon\nGroup daemon\nListen 127.0.0.1:{port}\nDocumentRoot {d}/www\n\
             <VirtualHost 127.0.0.1:{port}>\n  SSLEngine on\n  SSLCertificateFile {cert}\n\
             SSLCertificateKeyFile {key}\n{snippet}</VirtualHost>\n",
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(dir.join("httpd.conf"), conf).unwrap();
        Self {
            dir,
            port,
            server: None,
        }
    }

    fn start(&mut self) {
        let mut cmd = Command::new("apache2");
        cmd.arg("-f")
            .arg(self.dir.join("httpd.conf"))
            .arg("-DFOREGROUND");
        let mut server = Server::spawn("apache2", cmd, self.dir.join("stdout.log"));
        server.wait_listening(&[self.port], Duration::from_secs(20));
        server.wait_for(
            Duration::from_secs(20),
            "httpd to resume normal operations",
            || self.restarts() >= 1,
        );
        self.server = Some(server);
    }

    /// AH00489 "resuming normal operations" is logged once per (re)start.
    fn restarts(&self) -> usize {
        std::fs::read_to_string(self.dir.join("error.log"))
            .map(|l| l.matches("AH00489").count())
            .unwrap_or(0)
    }

    fn pid(&self) -> String {
        self.server.as_ref().expect("started").pid().to_string()
    }
}

/// A directory the `daemon` user can traverse (httpd's children open files under it), with
/// the key file in a root-only subdirectory.
fn httpd_root(tag: &str) -> (TestDir, PathBuf) {
    let root = TestDir::new(tag);
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let keys = root.subdir("keys");
    (root, keys.join("ticket.key"))
}

#[test]
fn httpd_uses_the_active_key_and_a_graceful_restart_picks_up_the_next() {
    init_logging();
    require_binary("apache2");
    let (root, keyfile) = httpd_root("httpd");
    let (cert, key, _) = self_signed_cert(root.path());
    let mut a = Instance::new(root.path(), "a", &cert, &key, &keyfile, "");
    let target = format!(
        "[rotation]\nretain = 1\n[[target]]\nformat = \"httpd\"\npath = \"{}\"\n",
        keyfile.display()
    );
    let mut driver = RingDriver::new(1);
    apply_all(&targets_from_toml(root.path(), &target), driver.ring());
    assert_eq!(std::fs::metadata(&keyfile).unwrap().len(), 48);
    a.start();

    tracing::info!("--- httpd starts with stek's file and encrypts under the active key");
    let first = driver.active_name();
    let mut old = Vec::new();
    for tls in [Tls::V12, Tls::V13] {
        let t = take_ticket(a.port, tls, &root.join(&format!("first-{tls:?}.pem")));
        assert_eq!(hex(&ticket_key_name(&t)), hex(&first), "{tls:?}");
        old.push(t);
    }

    tracing::info!("--- rotation, graceful restart by stek's reload runner");
    let live = targets_from_toml(
        root.path(),
        &format!(
            "{target}reload = {}\nreload_timeout = \"10s\"\n",
            argv_toml(&["kill", "-USR1", &a.pid()])
        ),
    );
    let warnings = live[0].warnings().join("\n");
    assert!(warnings.contains("every key activation"), "{warnings}");
    assert!(
        warnings.contains("NEVER resume on another"),
        "stek must warn that this httpd cannot share tickets: {warnings}"
    );
    let restarts = a.restarts();
    driver.rotate();
    apply_all(&live, driver.ring());
    wait_until(Duration::from_secs(10), "the graceful restart", || {
        a.restarts() > restarts
    });
    let second = driver.active_name();
    for tls in [Tls::V12, Tls::V13] {
        let t = take_ticket(a.port, tls, &root.join(&format!("second-{tls:?}.pem")));
        assert_eq!(hex(&ticket_key_name(&t)), hex(&second), "{tls:?}");
    }
    tracing::info!("--- httpd holds one key: the previous key's tickets are gone");
    for t in &old {
        assert_eq!(resume(a.port, t), Handshake::New, "{:?}", t.tls);
    }
}

#[test]
fn httpd_2_4_tickets_never_resume_on_another_instance_mod_ssl_stack_hmac_key_bug() {
    init_logging();
    require_binary("apache2");
    let (root, keyfile) = httpd_root("httpd-bug");
    let (cert, key, _) = self_signed_cert(root.path());
    let target = format!(
        "[rotation]\nretain = 1\n[[target]]\nformat = \"httpd\"\npath = \"{}\"\n",
        keyfile.display()
    );
    let driver = RingDriver::new(1);
    apply_all(&targets_from_toml(root.path(), &target), driver.ring());
    let mut a = Instance::new(root.path(), "a", &cert, &key, &keyfile, SINGLE_CHILD);
    let mut b = Instance::new(root.path(), "b", &cert, &key, &keyfile, SINGLE_CHILD);
    a.start();
    b.start();
    let active = hex(&driver.active_name());
    for tls in [Tls::V12, Tls::V13] {
        for attempt in 0..3 {
            let t = take_ticket(a.port, tls, &root.join(&format!("a-{tls:?}-{attempt}.pem")));
            assert_eq!(hex(&ticket_key_name(&t)), active);
            // Control: the client and the key file work; A resumes its own ticket.
            assert_eq!(
                resume(a.port, &t),
                Handshake::Reused,
                "{tls:?}: same-instance resumption on a single-child httpd"
            );
            // B loaded the same key (its own tickets carry the same name)...
            let own = take_ticket(b.port, tls, &root.join(&format!("b-{tls:?}-{attempt}.pem")));
            assert_eq!(hex(&ticket_key_name(&own)), active);
            // ...and still refuses A's ticket. If this starts to resume, httpd was fixed:
            // update docs/servers.md and stek_node::httpd_bug::has_sharing_bug.
            assert_eq!(
                resume(b.port, &t),
                Handshake::New,
                "{tls:?}: httpd resumed another instance's ticket; the 2.4 HMAC bug is gone"
            );
        }
    }
}
