//! Apache Traffic Server 9.2: two real instances on loopback (traffic_manager +
//! traffic_server, private run roots), each with its own ticket key file written by stek from
//! one ring and reloaded with `traffic_ctl config reload`. ATS reloads asynchronously (seconds)
//! and only re-reads a file whose mtime is newer than its last load, which the writer ensures.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::fs;
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
    port: u16,
    keys: PathBuf,
    server: Option<Server>,
}

impl Instance {
    fn new(root: &TestDir, tag: &str, tls_dir: &Path) -> Self {
        let dir = root.subdir(tag);
        let port = free_port();
        let keys_dir = dir.join("keys");
        fs::create_dir_all(&keys_dir).unwrap();
        fs::set_permissions(
            &keys_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let keys = keys_dir.join("ticket.key");
        let d = dir.display();
        for sub in ["etc", "var/log", "var/run", "var/cache"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let copy = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cp -a /etc/trafficserver/body_factory {d}/etc/ && cp /etc/trafficserver/*.yaml /etc/trafficserver/*.config {d}/etc/"
            ))
            .status()
            .unwrap();
        assert!(copy.success(), "copying /etc/trafficserver failed");
        fs::write(
            dir.join("runroot.yaml"),
            format!(
                "prefix: {d}\nexec_prefix: /usr\nbindir: /usr/bin\nsbindir: /usr/sbin\n\
                 sysconfdir: {d}/etc\ndatadir: {d}/var/cache\nincludedir: /usr/include\n\
                 libdir: /usr/lib/trafficserver\nlibexecdir: /usr/lib/trafficserver/modules\n\
                 localstatedir: {d}/var\nruntimedir: {d}/var/run\nlogdir: {d}/var/log\n\
                 cachedir: {d}/var/cache\n"
            ),
        )
        .unwrap();
        // The ticket key line is the snippet stek prints for this target.
        let snippet = cluster_tests::snippet("ats", &keys, 1);
        let ticket_line = snippet
            .lines()
            .find(|l| l.starts_with("CONFIG "))
            .expect("the ats snippet has a records.config line")
            .to_owned();
        let t = tls_dir.display();
        fs::write(
            dir.join("etc/records.config"),
            format!(
                "CONFIG proxy.config.admin.user_id STRING #-1\n\
                 CONFIG proxy.config.crash_log_helper STRING NULL\n\
                 CONFIG proxy.config.http.server_ports STRING {port}:ssl:ip-in=127.0.0.1\n\
                 CONFIG proxy.config.ssl.server.cert.path STRING {t}\n\
                 CONFIG proxy.config.ssl.server.private_key.path STRING {t}\n\
                 {ticket_line}\n\
                 CONFIG proxy.config.ssl.session_cache INT 0\n\
                 CONFIG proxy.config.dns.nameservers STRING 127.0.0.1:1\n\
                 CONFIG proxy.config.dns.resolv_conf STRING NULL\n\
                 CONFIG proxy.config.exec_thread.autoconfig INT 0\n\
                 CONFIG proxy.config.exec_thread.limit INT 1\n\
                 CONFIG proxy.config.exec_thread.affinity INT 0\n\
                 CONFIG proxy.config.accept_threads INT 0\n\
                 CONFIG proxy.config.task_threads INT 1\n\
                 CONFIG proxy.config.cache.threads_per_disk INT 1\n\
                 CONFIG proxy.config.net.connections_throttle INT 1000\n\
                 CONFIG proxy.config.diags.debug.enabled INT 1\n\
                 CONFIG proxy.config.diags.debug.tags STRING ssl_load\n"
            ),
        )
        .unwrap();
        // Identical on both instances, or they do not accept each other's tickets.
        fs::write(
            dir.join("etc/ssl_multicert.config"),
            "dest_ip=* ssl_cert_name=cert.pem ssl_key_name=key.pem\n",
        )
        .unwrap();
        fs::write(
            dir.join("etc/storage.config"),
            format!("{d}/var/cache/cache.db 16M\n"),
        )
        .unwrap();
        fs::File::create(dir.join("var/cache/cache.db"))
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        Self {
            dir,
            port,
            keys,
            server: None,
        }
    }

    fn runroot(&self) -> String {
        format!("--run-root={}/runroot.yaml", self.dir.display())
    }

    fn start(&mut self) {
        let out = format!("{}/var/log/traffic.out", self.dir.display());
        let mut cmd = Command::new("traffic_manager");
        cmd.arg(self.runroot())
            .args(["--nosyslog", "--bind_stdout", &out, "--bind_stderr", &out])
            .env("TS_RUNROOT", self.dir.join("runroot.yaml"));
        let mut server = Server::spawn("traffic_manager", cmd, self.dir.join("manager.log"));
        let diags = self.dir.join("var/log/diags.log");
        server.wait_for(
            Duration::from_secs(60),
            "Traffic Server to initialise",
            || {
                fs::read_to_string(&diags)
                    .map(|s| s.contains("Traffic Server is fully initialized"))
                    .unwrap_or(false)
            },
        );
        // traffic_manager holds the port before traffic_server serves it: the port is the
        // group's own, then a real handshake.
        server.wait_listening(&[self.port], Duration::from_secs(30));
        let probe = self.dir.join("ready.pem");
        let port = self.port;
        server.wait_for(Duration::from_secs(30), "a TLS handshake with ATS", || {
            std::panic::catch_unwind(|| take_ticket(port, Tls::V12, &probe)).is_ok()
        });
        self.server = Some(server);
    }

    fn target_toml(&self, with_reload: bool) -> String {
        let mut s = format!(
            "[[target]]\nformat = \"ats\"\npath = \"{}\"\n",
            self.keys.display()
        );
        if with_reload {
            s += &format!(
                "reload = {}\nreload_timeout = \"20s\"\n",
                argv_toml(&["traffic_ctl", &self.runroot(), "config", "reload"])
            );
        }
        s
    }
}

#[test]
fn traffic_server_instances_share_tickets_through_rotations() {
    init_logging();
    require_binary("traffic_manager");
    require_binary("traffic_ctl");
    require_binary("openssl");
    let root = TestDir::new("ats");
    let tls_dir = root.subdir("tls");
    self_signed_cert(&tls_dir);
    let mut a = Instance::new(&root, "a", &tls_dir);
    let mut b = Instance::new(&root, "b", &tls_dir);
    let rotation = "[rotation]\nretain = 1\n";
    // ATS refuses to start on a missing or short key file: write a first ring, then start.
    let initial = format!("{rotation}{}{}", a.target_toml(false), b.target_toml(false));
    write_first_ring(&root, &initial);
    a.start();
    b.start();
    let live = format!("{rotation}{}{}", a.target_toml(true), b.target_toml(true));
    let mut pool = TargetPool::from_toml("ats", (a.port, b.port), &root, &live);
    // Reloads take effect asynchronously, 2 to 12 s after traffic_ctl returns.
    ticket_sharing(&root, &mut pool, BOTH, Duration::from_secs(45));
}
