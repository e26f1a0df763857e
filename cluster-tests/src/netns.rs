//! Hosts in network namespaces the test makes itself, for faults that only a network can
//! produce: a partition is a host whose cable is pulled.
//!
//! Every host is a namespace with its own loopback and one veth, whose other end is a port of a
//! bridge in a hub namespace; hosts get 10.77.0.x/24. No namespace has a route out, and the
//! machine's own namespace is never touched, so traffic never leaves the namespaces made here.
//! Cutting a host sets its bridge port down: packets to and from it vanish (no reset, no
//! "unreachable"), as with a dead switch port, so peers see timeouts. Everything is deleted on
//! drop.

use std::collections::BTreeMap;
use std::process::Command;

/// The hub and the hosts.
#[derive(Debug)]
pub struct Net {
    hub: String,
    hosts: BTreeMap<String, Host>,
}

/// One host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace (`ip netns exec NS ...`).
    pub ns: String,
    /// Its address on the bridge.
    pub ip: String,
    /// Its port on the hub's bridge.
    port: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip runs (apt-get install iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root, or CAP_NET_ADMIN and CAP_SYS_ADMIN)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Net {
    /// Creates the hub and one host per name, all up and reachable from each other.
    pub fn new(names: &[&str]) -> Self {
        crate::require_binary("ip");
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let hub = format!("stek-{tag}-hub");
        ip(&["netns", "add", &hub]);
        let mut net = Self {
            hub,
            hosts: BTreeMap::new(),
        };
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &net.hub, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let host = Host {
                ns: format!("stek-{tag}-{name}"),
                ip: format!("10.77.0.{}", i + 1),
                port: format!("p{tag}{i}"),
            };
            ip(&["netns", "add", &host.ns]);
            ip(&["-n", &host.ns, "link", "set", "lo", "up"]);
            ip(&[
                "link", "add", &host.port, "netns", &net.hub, "type", "veth", "peer", "name",
                "eth0", "netns", &host.ns,
            ]);
            ip(&["-n", &net.hub, "link", "set", &host.port, "master", "br0"]);
            ip(&["-n", &net.hub, "link", "set", &host.port, "up"]);
            ip(&[
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &host.ns, "link", "set", "eth0", "up"]);
            net.hosts.insert((*name).to_owned(), host);
        }
        net
    }

    /// Host `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("no host {name} in this network"))
    }

    /// `program` to be run on host `name`.
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        exec_in(Some(self.host(name)), program)
    }

    /// Pulls host `name`'s cable: nothing reaches it, nothing leaves it.
    pub fn cut(&self, name: &str) {
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &self.host(name).port,
            "down",
        ]);
    }

    /// Plugs host `name` back in.
    pub fn heal(&self, name: &str) {
        ip(&["-n", &self.hub, "link", "set", &self.host(name).port, "up"]);
    }

    /// Runs `f` on a thread that lives in host `name`'s network namespace: every socket it
    /// opens (a tokio runtime built inside `f`, say) is on that host.
    pub fn on_host<T: Send>(&self, name: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.host(name).ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// `program` to be run on `host`, or here when `None`.
pub fn exec_in(host: Option<&Host>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match host {
        Some(h) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &h.ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of every veth, and so the pair.
        for h in self.hosts.values() {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .output();
    }
}
