//! dnsdist 1.7 (OpenSSL provider, DNS over TLS): two real instances on loopback, each with its
//! own ticket key file written by stek from one ring and reloaded through the console with
//! `reloadAllCertificates()`. The LAST record encrypts.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_tests::scenario::{ticket_sharing, TargetPool, BOTH};
use cluster_tests::tls::{take_ticket, Tls};
use cluster_tests::{
    argv_toml, free_port, init_logging, require_binary, self_signed_cert, write_first_ring, Server,
    TestDir,
};

struct Instance {
    dir: PathBuf,
    conf: PathBuf,
    dns_port: u16,
    dot_port: u16,
    console_port: u16,
    keys: PathBuf,
    server: Option<Server>,
}

impl Instance {
    fn new(root: &TestDir, tag: &str, cert: &Path, key: &Path, console_key: &str) -> Self {
        let dir = root.subdir(tag);
        let (dns, dot, console, backend) = (free_port(), free_port(), free_port(), free_port());
        let keys = dir.join("ticket.keys");
        let conf = dir.join("dnsdist.conf");
        // No outbound lookups; the backend is marked down and never contacted; no session
        // cache (numberOfStoredSessions=0), so only tickets can resume.
        std::fs::write(
            &conf,
            format!(
                "setSecurityPollSuffix(\"\")\ncontrolSocket(\"127.0.0.1:{console}\")\nsetKey(\"{console_key}\")\n\
                 setLocal(\"127.0.0.1:{dns}\")\n\
                 newServer{{address=\"127.0.0.1:{backend}\", checkInterval=86400}}:setDown()\n\
                 addTLSLocal(\"127.0.0.1:{dot}\", \"{cert}\", \"{key}\", {{provider=\"openssl\", \
                 ticketKeyFile=\"{keys}\", numberOfTicketsKeys=5, ticketsKeysRotationDelay=0, \
                 numberOfStoredSessions=0}})\n",
                cert = cert.display(),
                key = key.display(),
                keys = keys.display(),
            ),
        )
        .unwrap();
        Self {
            dir,
            conf,
            dns_port: dns,
            dot_port: dot,
            console_port: console,
            keys,
            server: None,
        }
    }

    fn console(&self, lua: &str) -> Vec<String> {
        vec![
            "dnsdist".into(),
            "-C".into(),
            self.conf.display().to_string(),
            "-c".into(),
            "-e".into(),
            lua.into(),
        ]
    }

    fn start(&mut self) {
        let mut cmd = Command::new("dnsdist");
        cmd.arg("-C")
            .arg(&self.conf)
            .args(["--supervised", "--disable-syslog"]);
        let server =
            self.server
                .insert(Server::spawn("dnsdist", cmd, self.dir.join("dnsdist.log")));
        server.wait_listening(
            &[self.dns_port, self.dot_port, self.console_port],
            Duration::from_secs(20),
        );
        let probe = self.dir.join("ready.pem");
        let port = self.dot_port;
        server.wait_for(Duration::from_secs(20), "dnsdist to serve DoT", || {
            std::panic::catch_unwind(|| take_ticket(port, Tls::V12, &probe)).is_ok()
        });
    }

    fn target_toml(&self, with_reload: bool) -> String {
        let mut s = format!(
            "[[target]]\nformat = \"dnsdist\"\npath = \"{}\"\n",
            self.keys.display()
        );
        if with_reload {
            let argv = self.console("reloadAllCertificates()");
            s += &format!(
                "reload = {}\nreload_timeout = \"10s\"\n",
                argv_toml(&argv.iter().map(String::as_str).collect::<Vec<_>>())
            );
        }
        s
    }
}

#[test]
fn dnsdist_instances_share_tickets_through_rotations() {
    init_logging();
    require_binary("dnsdist");
    require_binary("openssl");
    let root = TestDir::new("dnsdist");
    let (cert, key, _) = self_signed_cert(root.path());
    // Any 32 bytes in base64 (the console's shared secret, not a ticket key).
    let console_key = "c3Rlay1kbnNkaXN0LWNvbnNvbGUta2V5LTMyYnl0ZXM=";
    let mut a = Instance::new(&root, "a", &cert, &key, console_key);
    let mut b = Instance::new(&root, "b", &cert, &key, console_key);
    let rotation = "[rotation]\nretain = 1\n";
    // dnsdist refuses to start on a missing or short key file: write a first ring, then start.
    let initial = format!("{rotation}{}{}", a.target_toml(false), b.target_toml(false));
    write_first_ring(&root, &initial);
    a.start();
    b.start();
    let live = format!("{rotation}{}{}", a.target_toml(true), b.target_toml(true));
    let mut pool = TargetPool::from_toml("dnsdist", (a.dot_port, b.dot_port), &root, &live);
    ticket_sharing(&root, &mut pool, BOTH, Duration::from_secs(15));
    for i in [&a, &b] {
        assert!(
            !i.server
                .as_ref()
                .unwrap()
                .log_text()
                .contains("Error reloading certificates"),
            "a reload failed silently (the console exits 0 regardless)"
        );
    }
}
