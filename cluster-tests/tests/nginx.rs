//! nginx 1.22: two real instances on loopback, each with its own slot directory written by
//! stek's writer from one ring and reloaded by stek's reload runner (`nginx -s reload`, then
//! `nginx -t` as verify). The nginx configuration includes stek's printed snippet verbatim.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_tests::scenario::{ticket_sharing, Pool};
use cluster_tests::tls::Tls;
use cluster_tests::{
    apply_all, argv_toml, free_port, init_logging, require_binary, self_signed_cert,
    targets_from_toml, wait_for_port, Server, TestDir,
};
use stek_core::KeyRing;
use stek_node::Target;

struct Instance {
    dir: PathBuf,
    conf: PathBuf,
    port: u16,
    server: Option<Server>,
}

struct Nginx {
    ports: (u16, u16),
    targets: Vec<Target>,
}

fn instance(root: &TestDir, tag: &str, cert: &Path, key: &Path) -> Instance {
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
    .with_conf(cert, key)
}

impl Instance {
    fn with_conf(self, cert: &Path, key: &Path) -> Self {
        // The snippet stek prints for this target, used as is.
        let snippet = stek_core::formats::build(
            "nginx",
            &stek_core::FormatOptions {
                key_size: None,
                slots: None,
                retain: 1,
            },
        )
        .unwrap()
        .snippet(&self.dir.join("keys").display().to_string());
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

impl Pool for Nginx {
    fn name(&self) -> &str {
        "nginx"
    }
    fn ports(&self) -> (u16, u16) {
        self.ports
    }
    fn apply(&mut self, ring: &KeyRing) {
        apply_all(&self.targets, ring);
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
    let mut pool = Nginx {
        ports: (a.port, b.port),
        targets: targets_from_toml(
            root.path(),
            &format!("{rotation}{}{}", a.target_toml(false), b.target_toml(false)),
        ),
    };
    pool.apply(cluster_tests::RingDriver::new(1).ring());
    a.start();
    b.start();
    pool.targets = targets_from_toml(
        root.path(),
        &format!("{rotation}{}{}", a.target_toml(true), b.target_toml(true)),
    );
    ticket_sharing(
        &root,
        &mut pool,
        &[Tls::V12, Tls::V13],
        Duration::from_secs(20),
    );
}
