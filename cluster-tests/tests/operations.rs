//! Operating stek (issue 6), against real `stek node` processes and a real etcd: every metric
//! docs/metrics.md documents is scraped from a live cluster and moves (or not) on a rotation as
//! the docs say; `/readyz` is false while a node's reload fails; the audit trail, as JSON,
//! holds one line per lifecycle event of a rotation and of a leader change.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::time::Duration;

use cluster_tests::cluster::{active_key, check_invariants, Cluster, History};
use cluster_tests::wait_until;
use serde_json::Value;
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_stek-test-node");

/// (metric, moves on rotation: "yes" | "no" | "on leader", may be absent) from
/// docs/metrics.md's table. A labelled metric whose meaning says "absent" has no series until
/// its first event, and Prometheus clients then declare nothing.
fn documented_metrics() -> Vec<(String, String, bool)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .unwrap();
    let rows: Vec<(String, String, bool)> = doc
        .lines()
        .filter(|l| l.starts_with("| `stek_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let optional = !cells[3].is_empty() && cells[4].contains("absent");
            (
                cells[1].trim_matches('`').to_owned(),
                cells[5].to_owned(),
                optional,
            )
        })
        .collect();
    assert!(
        rows.len() >= 15,
        "docs/metrics.md lists the metrics: {rows:?}"
    );
    rows
}

/// Every sample line of `metric` (its family name, as documented) in a scrape.
fn samples(scrape: &str, metric: &str) -> Vec<String> {
    let family = metric.strip_suffix("_total").unwrap_or(metric);
    let mut out: Vec<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family).is_some_and(|rest| {
                rest.starts_with([' ', '{'])
                    || ["_total", "_bucket", "_count", "_sum", "_created"]
                        .iter()
                        .any(|s| rest.starts_with(s))
            })
        })
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

fn declared(scrape: &str, metric: &str) -> bool {
    let family = metric.strip_suffix("_total").unwrap_or(metric);
    scrape
        .lines()
        .any(|l| l.starts_with(&format!("# TYPE {family} ")))
}

fn scrape_all(c: &Cluster) -> Vec<String> {
    (0..c.nodes.len())
        .map(|i| {
            let (status, body) = c.admin_get(i, "/metrics");
            assert_eq!(status, 200, "{}: /metrics", c.nodes[i].id);
            body
        })
        .collect()
}

#[test]
fn every_documented_metric_is_served_and_moves_on_rotation_as_documented() {
    let mut c = Cluster::new(BIN, "metrics", 3);
    c.start_all();
    let status = c.wait_converged(Duration::from_secs(30));
    let mut history = History::default();
    check_invariants(&c, &status, &mut history);
    let leader = c
        .nodes
        .iter()
        .position(|n| status["leader"] == n.id.as_str())
        .unwrap();
    for i in 0..3 {
        assert_eq!(c.admin_get(i, "/healthz").0, 200);
        let (code, body) = c.admin_get(i, "/readyz");
        assert_eq!(code, 200, "{}: {body}", c.nodes[i].id);
        assert!(body.contains("applied generation"), "{body}");
    }
    assert_eq!(c.admin_get(0, "/nope").0, 404);
    // A follower's membership figures come from its full reads: the first within a second
    // or so of its start in a cluster this small, then every 30 s (a node whose first read
    // came before the others joined shows them at its second). They must be settled before
    // the rotation, or that read would show as a move.
    wait_until(
        Duration::from_secs(45),
        "every node's first full read (stek_members_live 3)",
        || {
            scrape_all(&c)
                .iter()
                .all(|s| samples(s, "stek_members_live") == ["stek_members_live 3"])
        },
    );

    let before = scrape_all(&c);
    let out = c.rotate_wait(1, "30s");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Not a terminal: one plain progress line per change, ending with everyone applied.
    assert!(text.contains("applied 3/3 live members\n"), "{text}");
    assert!(!text.contains('\r'), "{text}");
    let status = c.wait_converged(Duration::from_secs(15));
    check_invariants(&c, &status, &mut history);
    let after = scrape_all(&c);
    let metrics = documented_metrics();
    for (i, node) in c.nodes.iter().enumerate() {
        for (metric, moves, optional) in &metrics {
            assert!(
                *optional || declared(&after[i], metric),
                "{}: {metric} is documented but not served:\n{}",
                node.id,
                after[i]
            );
            let (was, is) = (samples(&before[i], metric), samples(&after[i], metric));
            let should_move = match moves.as_str() {
                "yes" => true,
                "no" => false,
                "on leader" => i == leader,
                other => panic!("docs/metrics.md: unknown 'moves on rotation' value {other}"),
            };
            assert_eq!(
                was != is,
                should_move,
                "{}: {metric} (documented: moves on rotation = {moves}) went from {was:?} to {is:?}",
                node.id
            );
        }
    }
    let leader_scrape = &after[leader];
    assert!(samples(leader_scrape, "stek_leader").contains(&"stek_leader 1".to_owned()));
    // Nothing served is key material: no sample names a key, and fingerprints are not needed.
    let needles = c.key_windows(&history);
    for (i, s) in after.iter().enumerate() {
        assert!(
            needles.find(s.as_bytes()).is_none(),
            "{}: key bytes in /metrics",
            c.nodes[i].id
        );
    }
}

#[test]
fn readyz_is_false_while_a_reload_fails_and_the_error_is_counted() {
    let mut c = Cluster::new(BIN, "readyz", 2);
    let bad = c.add_node(Some(&["false"]));
    c.start_all();
    wait_until(
        Duration::from_secs(30),
        "the failing node to be not ready",
        || {
            c.try_admin_get(bad, "/readyz")
                .is_some_and(|(code, body)| code == 503 && body.contains("not applied"))
        },
    );
    let (_, body) = c.admin_get(bad, "/readyz");
    info!("failing node: {}", body.trim());
    assert!(body.contains("reload"), "{body}");
    assert_eq!(
        c.admin_get(bad, "/healthz").0,
        200,
        "alive though not ready"
    );
    for i in 0..2 {
        wait_until(
            Duration::from_secs(20),
            "the good nodes to be ready",
            || c.try_admin_get(i, "/readyz").is_some_and(|r| r.0 == 200),
        );
    }
    let (_, scrape) = c.admin_get(bad, "/metrics");
    let errors = samples(&scrape, "stek_target_errors_total");
    assert!(
        errors
            .iter()
            .any(|l| l.contains("stage=\"reload\"") && !l.ends_with(" 0")),
        "the failing reload is counted: {errors:?}"
    );
    info!("--- the failing node stops; the others stay ready");
    c.kill(bad);
    for i in 0..2 {
        assert_eq!(c.admin_get(i, "/readyz").0, 200);
    }
}

fn audit_lines(c: &Cluster) -> Vec<Value> {
    let mut out = Vec::new();
    for n in &c.nodes {
        for line in n.log_text().lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a JSON log line ({e}): {line}", n.id));
            if v["target"] == "audit" {
                out.push(v);
            }
        }
    }
    out
}

fn find<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .collect()
}

#[test]
fn the_audit_trail_in_json_covers_a_rotation_and_a_leader_change() {
    let mut c = Cluster::new(BIN, "audit", 3);
    c.log_json = true;
    c.start_all();
    let status = c.wait_converged(Duration::from_secs(30));
    let old_epoch = active_key(&status)["epoch"].as_u64().unwrap();
    c.rotate_ok(2);
    c.wait_converged(Duration::from_secs(15));
    let lines = audit_lines(&c);
    for joined in ["n1", "n2", "n3"] {
        assert!(
            find(&lines, "member joined")
                .iter()
                .any(|v| v["fields"]["node"] == joined),
            "{joined} joined: {lines:?}"
        );
    }
    assert_eq!(find(&lines, "leader elected").len(), 1, "{lines:?}");
    let requested = find(&lines, "rotation requested");
    assert_eq!(requested.len(), 1, "{lines:?}");
    assert!(
        requested[0]["fields"]["requested_by"]
            .as_str()
            .unwrap()
            .starts_with("cli@"),
        "{:?}",
        requested[0]
    );
    let key = |message: &str| -> &Value {
        let found = find(&lines, message);
        assert_eq!(found.len(), 1, "one \"{message}\" line: {lines:?}");
        found[0]
    };
    let activated = key("key activated");
    let retired = key("key retired");
    let staged = key("key staged");
    assert_eq!(retired["fields"]["epoch"], old_epoch);
    assert_eq!(activated["fields"]["epoch"], old_epoch + 1);
    assert_eq!(staged["fields"]["epoch"], old_epoch + 2);
    for v in [activated, retired, staged] {
        let fp = v["fields"]["fingerprint"].as_str().unwrap();
        assert_eq!(fp.len(), 8, "a fingerprint, not key bytes: {v}");
    }

    info!("--- the leader stops gracefully; a follower is killed; a new leader takes over");
    let leader = c
        .nodes
        .iter()
        .position(|n| status["leader"] == n.id.as_str())
        .unwrap();
    c.stop(leader);
    wait_until(Duration::from_secs(10), "a new leader", || {
        find(&audit_lines(&c), "leader elected").len() == 2
    });
    let new_leader = find(&audit_lines(&c), "leader elected")
        .iter()
        .map(|v| v["fields"]["node"].as_str().unwrap().to_owned())
        .find(|n| *n != c.nodes[leader].id)
        .unwrap();
    let survivor = c.nodes.iter().position(|n| n.id == new_leader).unwrap();
    let victim = (0..3).find(|i| *i != leader && *i != survivor).unwrap();
    c.kill(victim);
    wait_until(
        Duration::from_secs(15),
        "the new leader to see the member expire",
        || {
            find(&audit_lines(&c), "member expired")
                .iter()
                .any(|v| v["fields"]["member"] == c.nodes[victim].id.as_str())
        },
    );
    let lines = audit_lines(&c);
    let old = &c.nodes[leader].id;
    assert_eq!(find(&lines, "leadership released").len(), 1, "{lines:?}");
    assert!(find(&lines, "member left")
        .iter()
        .any(|v| v["fields"]["node"] == old.as_str()));
    assert_ne!(new_leader, *old, "the leadership moved");
}
