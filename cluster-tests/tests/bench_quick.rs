//! The benchmark harness still runs: `stek-bench --quick` (N = 3, a few rotations, Raft,
//! failover, footprint) completes and writes every section. Figures are not judged here; they
//! are measured by the full run (docs/benchmark-results.md).

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::process::Command;

#[test]
fn the_quick_benchmark_runs_and_writes_every_section() {
    let out = Command::new(env!("CARGO_BIN_EXE_stek-bench"))
        .arg("--quick")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in [
        "## etcd's bare put-to-watch round trip",
        "## Rotation latency (request to every member applied), etcd",
        "| 3 | 5 |",
        "### Where the time of one rotation goes",
        "## `stek rotate --wait`, as a user times it (etcd, N = 3)",
        "## Rotation latency, embedded Raft coordinator",
        "| 3 | 5 |",
        "## Failover",
        "to the next completed rotation: ",
        "## Footprint of an idle node",
    ] {
        assert!(text.contains(section), "missing {section:?} in:\n{text}");
    }
    assert!(!text.contains("not measured"), "{text}");
    assert!(!text.contains("did not happen"), "{text}");
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/benchmark-results-quick.md"
    ))
    .unwrap();
    assert_eq!(file, text);
}
