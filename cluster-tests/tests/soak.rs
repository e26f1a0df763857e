//! Cross-box resumption soak (issue 7, part 1): three boxes, each with a real nginx and a real
//! HAProxy fed through its runtime API, stek rotating every 2 s on the embedded coordinator
//! for 30 s (`STEK_SOAK_SECS` for longer). Client threads take tickets from random boxes and
//! resume them on other boxes over TLS 1.2 and 1.3, and judge every attempt against the key
//! files of the box that resumed it (`cluster_tests::resumption`): inside the decrypt window
//! (the key was there before and after) it must resume; outside it (gone for 1.5 s) it must
//! not.
//!
//! Then, on the same servers, per-box independent keys (what servers do by default): nothing
//! may resume across boxes, which shows the clients really cross boxes. The naive-rotation
//! baseline, which has nothing to assert (its rate is a figure, not a property), is measured by
//! `stek-bench soak` on the same fleet (`cluster_tests::soak`).

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::time::Duration;

use cluster_tests::soak::{report, results_path, SoakFleet};
use tracing::info;

const BIN: &str = env!("CARGO_BIN_EXE_stek-test-node");

#[test]
fn soak_cross_box_resumption_with_rotations_every_2s_and_independent_keys_as_the_control() {
    let secs: u64 = std::env::var("STEK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut fleet = SoakFleet::start(BIN, "soak");
    let stek = fleet.run_stek(secs);
    let independent = fleet.independent(Duration::from_secs(8));
    let report = report(&stek, &[("per-box independent keys", &independent)]);
    println!("{report}");
    let results = results_path();
    std::fs::write(&results, &report).unwrap();
    info!("written to {}", results.display());

    let t = &stek.tally;
    assert!(
        stek.rotations as u64 >= secs / 4,
        "the cluster rotated ({} in {secs} s)",
        stek.rotations
    );
    assert!(t.attempts >= 20, "enough attempts: {t:?}");
    assert!(
        t.inside >= t.attempts / 2,
        "most attempts were judged: {t:?}"
    );
    assert!(
        t.outside >= 1,
        "aged tickets reached past the window: {report}"
    );
    assert_eq!(t.inside_failed, 0, "no valid ticket lost: {report}");
    assert_eq!(t.outside_resumed, 0, "no dropped key resumed: {report}");
    // The client really crosses boxes: with independent keys nothing resumes elsewhere.
    assert_eq!(
        independent.resumed, 0,
        "independent keys cannot resume across boxes: {report}"
    );
    assert!(independent.attempts >= 5, "{report}");
}
