//! The deployment files, checked without running them: CI machines have no Docker engine and
//! do not boot the systemd units. So this parses docker-compose.yml and checks its services,
//! volumes and every file it refers to; loads every stek config there (the compose demo's and
//! the samples in docs/deploy/config/) with stek's own parser and checks that each feeds what
//! its server reads; and reads the hardening directives of the systemd units.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use stek_node::config::Coordination;
use stek_node::Config;
use yaml_rust2::{Yaml, YamlLoader};

const COMPOSE: &str = "docker-compose.yml";
const SAMPLES: &str = "docs/deploy/config";
const UNIT: &str = "docs/deploy/systemd/stek.service";
const MOUNT: &str = "docs/deploy/systemd/run-stek.mount";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cluster-tests sits inside the repository")
        .to_owned()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| {
        panic!(
            "cannot read {rel} (repository root {}): {e}",
            repo().display()
        )
    })
}

fn load_config(rel: &str) -> Config {
    let text = read(rel);
    Config::parse(Path::new(rel), &text).unwrap_or_else(|e| {
        let e = e.to_string();
        // dnsdist's sample gives its file to _dnsdist, a user the dnsdist package creates.
        let hint = if e.contains("does not exist on this machine") {
            " (install the server whose user the sample names; .ci/run installs them all)"
        } else {
            ""
        };
        panic!("{rel} does not load with stek's config parser: {e}{hint}")
    })
}

/// `bind :443 ...`, `ssl_session_ticket_key ...;`: the lines of `stek snippet` that the server
/// reads (its own comments left out), trimmed.
fn snippet_directives(config: &Config) -> Vec<String> {
    let t = &config.targets[0];
    t.format
        .snippet(&t.path.display().to_string())
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("--"))
        .map(str::to_owned)
        .collect()
}

// --- docker-compose.yml ---

fn compose() -> Yaml {
    let docs = YamlLoader::load_from_str(&read(COMPOSE))
        .unwrap_or_else(|e| panic!("{COMPOSE} is not valid YAML: {e}"));
    assert_eq!(
        docs.len(),
        1,
        "{COMPOSE} must hold exactly one YAML document"
    );
    docs.into_iter().next().unwrap()
}

fn service<'a>(c: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &c["services"][name];
    assert!(
        s.as_hash().is_some(),
        "{COMPOSE} has no service \"{name}\" (services: {:?})",
        keys(&c["services"])
    );
    s
}

fn keys(map: &Yaml) -> Vec<String> {
    map.as_hash()
        .map(|h| {
            h.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A string, or a list of strings joined by spaces (`command:` takes both forms).
fn words(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Yaml::Array(a) => a
            .iter()
            .map(|w| {
                w.as_str()
                    .unwrap_or_else(|| panic!("{COMPOSE}: {w:?} in a command is not a string"))
                    .to_owned()
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MountKind {
    Bind,
    Volume,
    Tmpfs,
}

#[derive(Debug, Clone)]
struct Mount {
    kind: MountKind,
    source: String,
    target: String,
    nocopy: bool,
    /// `volume: subpath:` (long syntax only).
    subpath: Option<String>,
    /// `read_only: true` or `:ro`.
    read_only: bool,
}

/// A service's `volumes:`, in either the short (`src:dst:ro`) or the long syntax.
fn mounts(c: &Yaml, name: &str) -> Vec<Mount> {
    let Some(list) = service(c, name)["volumes"].as_vec() else {
        return Vec::new();
    };
    list.iter()
        .map(|m| match m {
            Yaml::String(s) => {
                let mut parts = s.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts.next().unwrap_or_else(|| {
                    panic!("{COMPOSE}: service {name}: volume \"{s}\" has no container path")
                });
                let kind = if source.starts_with(['.', '/', '~']) {
                    MountKind::Bind
                } else {
                    MountKind::Volume
                };
                let options: Vec<&str> = parts.flat_map(|o| o.split(',')).collect();
                Mount {
                    kind,
                    target: target.to_owned(),
                    nocopy: options.contains(&"nocopy"),
                    subpath: None,
                    read_only: options.contains(&"ro"),
                    source,
                }
            }
            Yaml::Hash(_) => {
                let field = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                let kind = match field("type").as_str() {
                    "bind" => MountKind::Bind,
                    "volume" => MountKind::Volume,
                    "tmpfs" => MountKind::Tmpfs,
                    other => panic!(
                        "{COMPOSE}: service {name}: a volume has type \"{other}\"; use bind, volume or tmpfs"
                    ),
                };
                Mount {
                    kind,
                    source: field("source"),
                    target: field("target"),
                    nocopy: m["volume"]["nocopy"].as_bool() == Some(true),
                    subpath: m["volume"]["subpath"].as_str().map(str::to_owned),
                    read_only: m["read_only"].as_bool() == Some(true),
                }
            }
            other => panic!("{COMPOSE}: service {name}: cannot read volume entry {other:?}"),
        })
        .collect()
}

fn bind_source_at(c: &Yaml, name: &str, target: &str) -> String {
    mounts(c, name)
        .into_iter()
        .find(|m| m.kind == MountKind::Bind && m.target == target)
        .unwrap_or_else(|| panic!("{COMPOSE}: service {name} bind-mounts nothing at {target}"))
        .source
}

/// The value after `flag` in a service's command.
fn command_arg(c: &Yaml, name: &str, flag: &str) -> String {
    let cmd = words(&service(c, name)["command"]);
    let i = cmd
        .iter()
        .position(|w| w == flag)
        .unwrap_or_else(|| panic!("{COMPOSE}: service {name}'s command {cmd:?} has no {flag}"));
    cmd.get(i + 1)
        .unwrap_or_else(|| panic!("{COMPOSE}: service {name}: {flag} is the last word"))
        .clone()
}

/// A path in the compose file, relative to the repository root (where the compose file is).
fn repo_path(p: &str) -> PathBuf {
    assert!(
        !p.starts_with(['/', '~']) && !p.split('/').any(|c| c == ".."),
        "{COMPOSE} refers to {p} outside the repository; the demo must only use files it ships"
    );
    match p.trim_start_matches("./") {
        "." | "" => repo(),
        rest => repo().join(rest),
    }
}

fn rel(p: &str) -> String {
    p.trim_start_matches("./").to_owned()
}

#[test]
fn compose_declares_etcd_three_stek_peers_three_nginx_and_the_client() {
    let c = compose();
    for name in [
        "etcd", "identity", "stek-1", "stek-2", "stek-3", "nginx-1", "nginx-2", "nginx-3", "client",
    ] {
        service(&c, name);
    }
}

/// The compose peers run with `[identity]`: a one-shot job makes the CA (whose key volume no
/// peer mounts) and the certificates; each peer mounts only its own directory, read-only.
#[test]
fn compose_peers_run_secured_with_their_own_certificate_only() {
    let c = compose();
    let job = service(&c, "identity");
    let script = words(&job["command"]).join(" ");
    assert!(
        script.contains("stek ca init") && script.contains("stek ca issue"),
        "{COMPOSE}: the identity job must make the CA and the certificates with stek ca: {script}"
    );
    for name in keys(&c["services"]) {
        let ca_key = mounts(&c, &name).iter().any(|m| m.source == "demo-ca");
        assert_eq!(
            ca_key,
            name == "identity",
            "{COMPOSE}: only the identity job may mount demo-ca (the CA's key); {name} does: {ca_key}"
        );
    }
    for n in 1..=3 {
        let stek = format!("stek-{n}");
        let id: Vec<Mount> = mounts(&c, &stek)
            .into_iter()
            .filter(|m| m.source == "demo-identity")
            .collect();
        assert_eq!(id.len(), 1, "{COMPOSE}: {stek} mounts demo-identity once");
        assert_eq!(
            id[0].subpath.as_deref(),
            Some(stek.as_str()),
            "{COMPOSE}: {stek} sees only its own certificate"
        );
        assert!(
            id[0].read_only,
            "{COMPOSE}: {stek} mounts its identity read-only"
        );
        assert_eq!(
            service(&c, &stek)["depends_on"]["identity"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{COMPOSE}: {stek} starts after the identity job"
        );
        let config = load_config(&format!("docs/deploy/compose/{stek}.toml"));
        let files = config.identity.expect("[identity] in the compose config");
        assert!(
            files.cert_file.starts_with(&id[0].target),
            "{}",
            files.cert_file.display()
        );
        assert!(files.cert_file.ends_with(format!("{stek}.pem")));
        assert!(!config.insecure);
    }
}

#[test]
fn etcd_is_a_single_member_reachable_only_inside_the_compose_network() {
    let c = compose();
    let etcd = service(&c, "etcd");
    assert_eq!(
        etcd["image"].as_str(),
        Some("quay.io/coreos/etcd:v3.5.17"),
        "{COMPOSE}: service etcd must run quay.io/coreos/etcd:v3.5.17"
    );
    assert!(
        etcd["ports"].is_badvalue(),
        "{COMPOSE}: service etcd publishes ports ({:?}); etcd must stay inside the compose network",
        etcd["ports"]
    );
    let cmd = words(&etcd["command"]);
    assert!(
        cmd.iter()
            .any(|w| w == "--listen-client-urls=http://0.0.0.0:2379"),
        "{COMPOSE}: etcd's command {cmd:?} does not listen on 0.0.0.0:2379, so the stek peers cannot reach it"
    );
}

#[test]
fn each_stek_peer_shares_a_private_tmpfs_volume_and_the_pid_namespace_with_its_nginx() {
    let c = compose();
    let mut volumes_seen = BTreeSet::new();
    for n in 1..=3 {
        let (stek, nginx) = (format!("stek-{n}"), format!("nginx-{n}"));
        assert_eq!(
            service(&c, &stek)["pid"].as_str(),
            Some(format!("service:{nginx}").as_str()),
            "{COMPOSE}: {stek} must share {nginx}'s PID namespace (pid: \"service:{nginx}\") so that its reload `kill -HUP 1` reaches nginx's master"
        );
        let named = |svc: &str| -> Vec<Mount> {
            mounts(&c, svc)
                .into_iter()
                .filter(|m| m.kind == MountKind::Volume)
                .collect()
        };
        let (stek_vols, nginx_vols) = (named(&stek), named(&nginx));
        let shared: Vec<&Mount> = stek_vols
            .iter()
            .filter(|m| nginx_vols.iter().any(|o| o.source == m.source))
            .collect();
        assert_eq!(
            shared.len(),
            1,
            "{COMPOSE}: {stek} and {nginx} must mount exactly one named volume in common (the key directory), found {shared:?}"
        );
        let key_vol = shared[0];
        let nginx_mount = nginx_vols
            .iter()
            .find(|m| m.source == key_vol.source)
            .unwrap();
        assert_eq!(
            key_vol.target, nginx_mount.target,
            "{COMPOSE}: volume {} is mounted at {} in {stek} but at {} in {nginx}; nginx.conf names the files at stek's path",
            key_vol.source, key_vol.target, nginx_mount.target
        );
        assert!(
            key_vol.nocopy && nginx_mount.nocopy,
            "{COMPOSE}: volume {} needs nocopy in both {stek} and {nginx}: otherwise Docker copies an image directory with mode 0755 into it and stek refuses it",
            key_vol.source
        );
        assert!(
            volumes_seen.insert(key_vol.source.clone()),
            "{COMPOSE}: volume {} is shared by more than one box; each stek/nginx pair needs its own RAM disk",
            key_vol.source
        );

        let decl = &c["volumes"][key_vol.source.as_str()];
        assert!(
            decl.as_hash().is_some(),
            "{COMPOSE}: volume {} is not declared under the top-level volumes:",
            key_vol.source
        );
        let opts = &decl["driver_opts"];
        assert_eq!(
            (opts["type"].as_str(), opts["device"].as_str()),
            (Some("tmpfs"), Some("tmpfs")),
            "{COMPOSE}: volume {} must be a tmpfs (driver_opts type: tmpfs, device: tmpfs); stek refuses a key directory on persistent storage",
            key_vol.source
        );
        let o = opts["o"].as_str().unwrap_or_default();
        assert!(
            o.split(',').any(|x| x == "mode=0700"),
            "{COMPOSE}: volume {}'s mount options \"{o}\" lack mode=0700; stek refuses a key directory open to other users",
            key_vol.source
        );
    }
}

#[test]
fn every_file_the_compose_file_refers_to_exists() {
    let c = compose();
    let mut referred = BTreeSet::new();
    for name in keys(&c["services"]) {
        let s = service(&c, &name);
        let build = &s["build"];
        if !build.is_badvalue() {
            let context = build
                .as_str()
                .or_else(|| build["context"].as_str())
                .unwrap_or(".");
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(
                repo_path(context).is_dir(),
                "{COMPOSE}: service {name} builds from context {context}, which is not a directory"
            );
            let path = repo_path(context).join(dockerfile);
            assert!(
                path.is_file(),
                "{COMPOSE}: service {name} builds with {}, which does not exist",
                path.display()
            );
            referred.insert(rel(&format!("{context}/{dockerfile}")));
        }
        for m in mounts(&c, &name) {
            if m.kind == MountKind::Bind {
                assert!(
                    repo_path(&m.source).exists(),
                    "{COMPOSE}: service {name} bind-mounts {} at {}, which does not exist in the repository",
                    m.source,
                    m.target
                );
                referred.insert(rel(&m.source));
            }
        }
    }
    let expected = [
        "docs/deploy/Dockerfile",
        "docs/deploy/compose/nginx.conf",
        "docs/deploy/compose/stek-1.toml",
        "docs/deploy/compose/stek-2.toml",
        "docs/deploy/compose/stek-3.toml",
        "docs/deploy/compose/client.sh",
    ];
    for e in expected {
        assert!(
            referred.contains(e),
            "{COMPOSE} no longer refers to {e} (it refers to {referred:?}); the demo needs it"
        );
    }
}

#[test]
fn compose_stek_configs_load_and_write_what_their_nginx_reads() {
    let c = compose();
    let mut clusters = BTreeSet::new();
    let mut node_ids = BTreeSet::new();
    for n in 1..=3 {
        let (stek, nginx) = (format!("stek-{n}"), format!("nginx-{n}"));
        let config_path = command_arg(&c, &stek, "--config");
        let source = rel(&bind_source_at(&c, &stek, &config_path));
        let config = load_config(&source);
        clusters.insert(config.cluster.clone());
        assert!(
            node_ids.insert(config.node_id.clone()),
            "{source}: node_id \"{}\" is also used by another peer",
            config.node_id
        );
        let Coordination::Etcd { endpoints, .. } = &config.coordination else {
            panic!("{source}: the compose demo coordinates through its etcd service; add [etcd] endpoints = [\"http://etcd:2379\"]")
        };
        // The sealing key must sit on a RAM disk of the container's own (stek refuses any
        // other file system), so a restarted stek opens its copy of the ring again.
        let state = mounts(&c, &stek)
            .into_iter()
            .find(|m| config.state_dir.starts_with(&m.target))
            .unwrap_or_else(|| {
                panic!(
                    "{source}: state_dir {} is not on a mount of {stek}",
                    config.state_dir.display()
                )
            });
        assert_eq!(
            state.kind,
            MountKind::Tmpfs,
            "{COMPOSE}: {stek}'s state_dir must be a tmpfs"
        );
        assert_eq!(
            service(&c, &stek)["volumes"]
                .as_vec()
                .unwrap()
                .iter()
                .find(|v| v["target"].as_str() == Some(state.target.as_str()))
                .and_then(|v| v["tmpfs"]["mode"].as_i64()),
            Some(0o700),
            "{COMPOSE}: {stek}'s state tmpfs must be mode 0700"
        );
        assert_eq!(
            endpoints,
            &["http://etcd:2379".to_owned()],
            "{source}: [etcd] endpoints must be the compose service etcd"
        );
        assert_eq!(
            config.targets.len(),
            1,
            "{source}: expected one target (nginx-{n})"
        );
        let t = &config.targets[0];
        assert_eq!(
            t.format.info().name,
            "nginx",
            "{source}: the target must be format \"nginx\""
        );
        let key_mount = mounts(&c, &stek)
            .into_iter()
            .find(|m| m.kind == MountKind::Volume && Path::new(&m.target) == t.path)
            .unwrap_or_else(|| {
                panic!(
                    "{source}: target path {} is not the mount point of a volume in {stek}; stek would write into the container's own file system",
                    t.path.display()
                )
            });
        assert!(
            mounts(&c, &nginx)
                .iter()
                .any(|m| m.source == key_mount.source && m.target == key_mount.target),
            "{source}: {nginx} does not see the volume {} at {}",
            key_mount.source,
            key_mount.target
        );
        assert_eq!(
            t.reload.as_ref().map(|r| r.argv.clone()),
            Some(vec!["kill".to_owned(), "-HUP".to_owned(), "1".to_owned()]),
            "{source}: reload must signal nginx's master, PID 1 of the shared PID namespace"
        );

        // nginx.conf must list exactly the slot files stek writes, at the shared path.
        let conf_source = rel(&bind_source_at(&c, &nginx, "/etc/nginx/nginx.conf"));
        let conf = read(&conf_source);
        let conf_lines: Vec<&str> = conf.lines().map(str::trim).collect();
        let wanted = snippet_directives(&config);
        for line in &wanted {
            assert!(
                conf_lines.contains(&line.as_str()),
                "{conf_source} lacks `{line}`, which `stek snippet --config {source}` prints"
            );
        }
        let is_slot = |l: &&str| l.starts_with("ssl_session_ticket_key");
        let conf_slots = conf_lines.iter().copied().filter(is_slot).count();
        let wanted_slots = wanted.iter().map(String::as_str).filter(is_slot).count();
        assert_eq!(
            conf_slots, wanted_slots,
            "{conf_source} must list exactly the slot files {source} makes stek write: nginx does not start when a listed file is missing"
        );
        // nginx-N starts once the last slot file exists; with another slot count it would wait
        // forever or start before stek wrote them all.
        let last_slot = wanted
            .iter()
            .filter_map(|l| l.strip_prefix("ssl_session_ticket_key "))
            .next_back()
            .unwrap()
            .trim_end_matches(';')
            .to_owned();
        let nginx_cmd = words(&service(&c, &nginx)["command"]).join(" ");
        assert!(
            nginx_cmd.contains(&last_slot),
            "{COMPOSE}: {nginx}'s command `{nginx_cmd}` must wait for the last slot file {last_slot} before starting nginx"
        );
    }
    assert_eq!(
        clusters.len(),
        1,
        "the compose peers must share one cluster name (one ring), found {clusters:?}"
    );
}

// --- docs/deploy/config ---

#[test]
fn every_sample_config_loads_with_one_target_of_its_format_and_shows_the_server_side() {
    let dir = repo().join(SAMPLES);
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {SAMPLES}: {e}"))
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".toml") {
            found.insert(stem.to_owned(), format!("{SAMPLES}/{name}"));
        }
    }
    let formats: BTreeSet<String> = stek_core::REGISTRY
        .iter()
        .map(|f| f.name.to_owned())
        .collect();
    let samples: BTreeSet<String> = found.keys().cloned().collect();
    assert_eq!(
        samples, formats,
        "{SAMPLES} must hold one <format>.toml per format stek knows"
    );
    for (format, rel) in &found {
        let config = load_config(rel);
        assert_eq!(
            config.targets.len(),
            1,
            "{rel}: a sample has exactly one [[target]]"
        );
        let t = &config.targets[0];
        assert_eq!(
            t.format.info().name,
            format,
            "{rel}: the file name says format \"{format}\", its target says \"{}\"",
            t.format.info().name
        );
        // HAProxy's runtime API and Envoy's watched directory take keys without a reload.
        let needs_reload = !matches!(format.as_str(), "haproxy-runtime" | "envoy");
        assert_eq!(
            t.reload.is_some(),
            needs_reload,
            "{rel}: format {format} {}",
            if needs_reload {
                "needs a reload command: the server reads its keys only when told to"
            } else {
                "must not have a reload command: its keys arrive without one"
            }
        );
        // The server-side lines, commented, exactly as `stek snippet` prints them for this path.
        let text = read(rel);
        let commented: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix('#'))
            .map(|l| l.trim_start_matches('#').trim())
            .collect();
        let wanted = snippet_directives(&config);
        assert!(!wanted.is_empty(), "stek snippet printed nothing for {rel}");
        for line in wanted {
            assert!(
                commented.contains(&line.as_str()),
                "{rel}: the server-side snippet in the comments lacks `{line}` (run stek snippet --config {rel})"
            );
        }
    }
}

// --- systemd units ---

/// `Key=value` lines of a unit file, comments left out; a key may repeat.
fn directives(rel: &str) -> Vec<(String, String)> {
    read(rel)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{rel}: `{l}` is not a Key=value line"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn values<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Space-separated items of every occurrence of `key`.
fn items<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    values(d, key)
        .into_iter()
        .flat_map(str::split_whitespace)
        .collect()
}

#[test]
fn stek_service_is_hardened() {
    let d = directives(UNIT);
    for (key, value, why) in [
        (
            "LimitCORE",
            "0",
            "a core dump would write key bytes to disk",
        ),
        (
            "NoNewPrivileges",
            "yes",
            "no reload program may gain privileges",
        ),
        (
            "LimitMEMLOCK",
            "infinity",
            "stek calls mlockall only when the memlock limit is unlimited",
        ),
        (
            "ProtectSystem",
            "strict",
            "only the key directory is writable",
        ),
        ("Restart", "on-failure", "a crashed peer must come back"),
        (
            "StateDirectory",
            "stek",
            "the embedded coordinator's Raft data directory /var/lib/stek must be writable under ProtectSystem=strict",
        ),
        (
            "StateDirectoryMode",
            "0700",
            "the Raft data directory is refused unless private",
        ),
    ] {
        assert_eq!(
            values(&d, key),
            vec![value],
            "{UNIT}: needs exactly one {key}={value} ({why})"
        );
    }
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        assert!(
            items(&d, key).contains(&"CAP_IPC_LOCK"),
            "{UNIT}: {key} lacks CAP_IPC_LOCK, which mlockall needs"
        );
    }
    let allowed = [
        "CAP_IPC_LOCK",
        "CAP_KILL",
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_DAC_OVERRIDE",
    ];
    let bounding = items(&d, "CapabilityBoundingSet");
    for cap in &bounding {
        assert!(
            allowed.contains(cap),
            "{UNIT}: CapabilityBoundingSet grants {cap}; stek and its reloads need only {allowed:?} (a leading ~ would turn the list into a deny list)"
        );
    }
    assert!(
        items(&d, "ReadWritePaths").contains(&"/run/stek"),
        "{UNIT}: ReadWritePaths lacks /run/stek: under ProtectSystem=strict stek could not write keys"
    );
    let exec = values(&d, "ExecStart");
    assert!(
        exec.len() == 1 && exec[0].ends_with("stek node --config /etc/stek/stek.toml"),
        "{UNIT}: ExecStart must run `stek node --config /etc/stek/stek.toml`, found {exec:?}"
    );
}

#[test]
fn run_stek_mount_is_a_private_tmpfs_that_the_service_requires() {
    let d = directives(MOUNT);
    assert_eq!(
        values(&d, "Type"),
        vec!["tmpfs"],
        "{MOUNT}: Type must be tmpfs: stek refuses key directories on persistent storage"
    );
    assert_eq!(
        values(&d, "Where"),
        vec!["/run/stek"],
        "{MOUNT}: Where must be /run/stek, the key directory of the samples"
    );
    let options = values(&d, "Options").join(",");
    assert!(
        options.split(',').any(|o| o == "mode=0700"),
        "{MOUNT}: Options \"{options}\" lack mode=0700: stek refuses a key directory open to other users"
    );
    // systemd requires a mount unit's name to be its escaped path: /run/stek -> run-stek.mount.
    let where_ = values(&d, "Where")[0];
    let escaped = format!("{}.mount", where_.trim_start_matches('/').replace('/', "-"));
    assert_eq!(
        Path::new(MOUNT).file_name().unwrap().to_string_lossy(),
        escaped,
        "{MOUNT}: systemd ignores a mount unit whose name is not its Where= path escaped"
    );
    let unit = directives(UNIT);
    assert!(
        items(&unit, "RequiresMountsFor").contains(&where_),
        "{UNIT}: RequiresMountsFor lacks {where_}: stek could start before its RAM disk is mounted"
    );
}
