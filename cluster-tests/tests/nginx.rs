//! nginx 1.22: two real instances on loopback, each with its own slot directory written by
//! stek's writer from one ring and reloaded by stek's reload runner (`nginx -s reload`, then
//! `nginx -t` as verify). The nginx configuration includes stek's printed snippet verbatim.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_tests::scenario::{ticket_sharing, TargetPool, BOTH};
use cluster_tests::tls::Tls;
use cluster_tests::{
    apply_all, argv_toml, free_port, init_logging, require_binary, self_signed_cert,
    targets_from_toml, wait_for_port, Server, TestDir,
};

struct Instance {
    dir: PathBuf,
    conf: PathBuf,
    port: u16,
    server: Option<Server>,
}

fn instance(root: &TestDir, tag: &str, cert: &Path, key: &Path) -> Instance {
    instance_for_retain(root, tag, cert, key, 1)
}

fn instance_for_retain(
    root: &TestDir,
    tag: &str,
    cert: &Path,
    key: &Path,
    retain: usize,
) -> Instance {
    let dir = root.subdir(tag);
    let port = free_port();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o700);
    std::fs::set_permissions(dir.join("keys"), mode).unwrap();
    Instance {
        conf: dir.join("nginx.conf"),
        dir,
        port,
        server: None,
    }
    .with_conf(cert, key, retain)
}

impl Instance {
    fn with_conf(self, cert: &Path, key: &Path, retain: usize) -> Self {
        // The snippet stek prints for this target, used as is.
        let snippet = cluster_tests::snippet("nginx", &self.dir.join("keys"), retain);
        let d = self.dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
             ssl_session_cache off;\n{snippet}\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
            port = self.port,
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(&self.conf, conf).unwrap();
        self
    }

    fn nginx_argv(&self, extra: &[&str]) -> Vec<String> {
        let mut v = vec![
            "nginx".to_owned(),
            "-p".to_owned(),
            format!("{}/", self.dir.display()),
            "-c".to_owned(),
            self.conf.display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn start(&mut self) {
        let argv = self.nginx_argv(&["-e", &format!("{}/error.log", self.dir.display())]);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        self.server = Some(Server::spawn("nginx", cmd, self.dir.join("stdout.log")));
        wait_for_port(self.port, Duration::from_secs(10));
        self.server.as_mut().unwrap().assert_running();
    }

    fn target_toml(&self, with_reload: bool) -> String {
        let reload = self.nginx_argv(&["-s", "reload"]);
        let verify = self.nginx_argv(&["-t", "-q"]);
        let refs = |v: &[String]| argv_toml(&v.iter().map(String::as_str).collect::<Vec<_>>());
        let mut s = format!(
            "[[target]]\nformat = \"nginx\"\npath = \"{}/keys\"\n",
            self.dir.display()
        );
        if with_reload {
            s += &format!(
                "reload = {}\nverify = {}\nreload_timeout = \"10s\"\n",
                refs(&reload),
                refs(&verify)
            );
        }
        s
    }
}

#[test]
fn nginx_instances_share_tickets_through_rotations() {
    init_logging();
    require_binary("nginx");
    require_binary("openssl");
    let root = TestDir::new("nginx");
    let (cert, key, _) = self_signed_cert(root.path());
    let mut a = instance(&root, "a", &cert, &key);
    let mut b = instance(&root, "b", &cert, &key);
    let rotation = "[rotation]\nretain = 1\n";

    // nginx cannot start without its key files: write a first ring without a reload.
    let mut pool = TargetPool {
        name: "nginx",
        ports: (a.port, b.port),
        targets: targets_from_toml(
            root.path(),
            &format!("{rotation}{}{}", a.target_toml(false), b.target_toml(false)),
        ),
    };
    apply_all(&pool.targets, cluster_tests::RingDriver::new(1).ring());
    a.start();
    b.start();
    pool.targets = targets_from_toml(
        root.path(),
        &format!("{rotation}{}{}", a.target_toml(true), b.target_toml(true)),
    );
    ticket_sharing(&root, &mut pool, BOTH, Duration::from_secs(20));
}

/// The trap from key-formats.md: a reload whose exit status says nothing. An operator lowers
/// `retain` (so stek writes 3 slots and removes the stale 3.key) but nginx.conf still lists 4.
/// SIGHUP "succeeds", the master logs [emerg] and keeps its old workers and keys; only the
/// target's `verify` (`nginx -t`) turns that into an apply error. nginx keeps serving.
/// (On nginx 1.22, `nginx -s reload` parses the config itself and does exit 1 here; a plain
/// SIGHUP, as systemd's ExecReload=kill -HUP does, exits 0.)
#[test]
fn regression_nginx_reload_exit_status_lies_and_verify_catches_it() {
    init_logging();
    require_binary("nginx");
    let root = TestDir::new("nginx-verify");
    let (cert, key, _) = self_signed_cert(root.path());
    let mut a = instance_for_retain(&root, "a", &cert, &key, 2);
    let mut driver = cluster_tests::RingDriver::new(1);
    apply_all(
        &targets_from_toml(
            root.path(),
            &format!("[rotation]\nretain = 2\n{}", a.target_toml(false)),
        ),
        driver.ring(),
    );
    a.start();
    let before = driver.active_name();
    let pid = a.server.as_ref().unwrap().pid().to_string();
    let verify = a.nginx_argv(&["-t", "-q"]);
    let refs = |v: &[String]| argv_toml(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let lowered = format!(
        "[rotation]\nretain = 1\n[[target]]\nformat = \"nginx\"\npath = \"{}/keys\"\n\
         reload = {}\nverify = {}\nreload_attempts = 1\n",
        a.dir.display(),
        argv_toml(&["kill", "-HUP", &pid]),
        refs(&verify),
    );
    let live = targets_from_toml(root.path(), &lowered);

    tracing::info!("--- stek now writes 3 slots; nginx.conf still reads 4");
    driver.rotate();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(live[0].apply(driver.ring())).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("target[0] (nginx): verify command"),
        "the reload (SIGHUP) succeeded, so verify must be what failed: {msg}"
    );
    assert!(
        msg.contains("3.key"),
        "nginx -t's stderr names the file: {msg}"
    );
    assert!(
        !a.dir.join("keys/3.key").exists(),
        "the stale slot's key bytes must be gone"
    );
    let signal_reload = Command::new("nginx")
        .args(&a.nginx_argv(&["-s", "reload"])[1..])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        !signal_reload.success(),
        "nginx 1.22's -s reload parses the config and fails here"
    );

    tracing::info!("--- nginx logged [emerg] and still serves the keys it had");
    cluster_tests::wait_until(
        Duration::from_secs(10),
        "nginx to log the failed reload",
        || {
            std::fs::read_to_string(a.dir.join("error.log"))
                .map(|l| l.contains("[emerg]") && l.contains("3.key"))
                .unwrap_or(false)
        },
    );
    a.server.as_mut().unwrap().assert_running();
    let s = cluster_tests::tls::take_ticket(a.port, Tls::V12, &root.join("after.pem"));
    assert_eq!(
        cluster_tests::hex(&cluster_tests::tls::ticket_key_name(&s)),
        cluster_tests::hex(&before)
    );
}
