//! Real TLS servers on loopback for the multi-box tests: an nginx reading a stek slot
//! directory, and an HAProxy (master-worker) reading a stek key file and taking pushes on its
//! stats socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::socket_accepts;
use crate::{free_port, Server};

/// One nginx serving TLS on 127.0.0.1 with stek's slot files as its ticket keys.
#[derive(Debug)]
pub struct Nginx {
    /// Its prefix directory (config, pid, logs).
    pub dir: PathBuf,
    /// Its TLS port.
    pub port: u16,
    conf: PathBuf,
    server: Option<Server>,
}

impl Nginx {
    /// Writes the config (the snippet stek prints for `keys`, used as is) in `dir`.
    pub fn new(dir: PathBuf, keys: &Path, cert: &Path, key: &Path, retain: usize) -> Self {
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let port = free_port();
        let snippet = crate::snippet("nginx", keys, retain);
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
             ssl_session_cache off;\n{snippet}\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
            cert = cert.display(),
            key = key.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        Self {
            dir,
            port,
            conf: conf_path,
            server: None,
        }
    }

    /// `nginx -p DIR -c CONF` plus `extra`.
    pub fn argv(&self, extra: &[&str]) -> Vec<String> {
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

    /// A reload that does nothing until nginx runs (it starts once the first keys exist).
    pub fn reload_once_running(&self) -> Vec<String> {
        let reload = self.argv(&["-s", "reload"]).join(" ");
        vec![
            "sh".into(),
            "-c".into(),
            format!(
                "if [ -e {}/nginx.pid ]; then exec {reload}; fi",
                self.dir.display()
            ),
        ]
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.server.as_ref().expect("started").pid()
    }

    /// Panics if it has exited.
    pub fn assert_running(&mut self) {
        self.server.as_mut().expect("started").assert_running();
    }

    /// Starts it and waits until it listens on its port itself.
    pub fn start(&mut self) {
        let argv = self.argv(&["-e", &format!("{}/error.log", self.dir.display())]);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        let server = self
            .server
            .insert(Server::spawn("nginx", cmd, self.dir.join("stdout.log")));
        server.wait_listening(&[self.port], Duration::from_secs(20));
    }
}

/// One HAProxy (master-worker) serving TLS on 127.0.0.1 with a stek key file, and an admin
/// stats socket for `set ssl tls-key`.
#[derive(Debug)]
pub struct Haproxy {
    /// Its directory (config, socket, logs).
    pub dir: PathBuf,
    /// Its TLS port.
    pub port: u16,
    server: Option<Server>,
}

impl Haproxy {
    /// Writes the config in `dir`: `combined` is the certificate and key in one PEM, `keys`
    /// the tls-ticket-keys file (it must exist with keys before [`Haproxy::start`]).
    pub fn new(dir: PathBuf, combined: &Path, keys: &Path) -> Self {
        std::fs::create_dir_all(&dir).expect("haproxy dir");
        let port = free_port();
        let d = dir.display();
        let cfg = format!(
            "global\n  pidfile {d}/haproxy.pid\n  stats socket {d}/admin.sock mode 600 level admin\n\
             tune.ssl.cachesize 0\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 5s\n  timeout server 5s\n\
             frontend fe\n  bind 127.0.0.1:{port} ssl crt {crt} tls-ticket-keys {keys}\n\
             http-request return status 200 content-type text/plain string ok\n",
            crt = combined.display(),
            keys = keys.display(),
        );
        std::fs::write(dir.join("haproxy.cfg"), cfg).expect("haproxy.cfg");
        Self {
            dir,
            port,
            server: None,
        }
    }

    /// Starts it and waits until it listens on its port and its stats socket accepts.
    pub fn start(&mut self) {
        let mut cmd = Command::new("haproxy");
        cmd.args(["-W", "-db", "-f"])
            .arg(self.dir.join("haproxy.cfg"));
        let server =
            self.server
                .insert(Server::spawn("haproxy", cmd, self.dir.join("haproxy.log")));
        server.wait_listening(&[self.port], Duration::from_secs(20));
        let socket = self.dir.join("admin.sock");
        server.wait_for(
            Duration::from_secs(20),
            "its stats socket to accept",
            || socket_accepts(&socket),
        );
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.server.as_ref().expect("started").pid()
    }

    /// What it printed so far.
    pub fn log_text(&self) -> String {
        self.server.as_ref().expect("started").log_text()
    }

    /// The admin stats socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
}
