//! Test-only helpers: tests that need something a developer's machine may lack (root, a
//! server) skip with a printed reason there, and fail under CI, where a skip would hide a
//! regression. Also used by the `stek` crate's CLI tests, through `#[path]`.

use std::io::Write;

/// `CI`'s value when it forbids skipping: set to anything but empty, `false` or `0`.
fn ci() -> Option<String> {
    std::env::var("CI").ok().filter(|v| {
        let v = v.trim();
        !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false")
    })
}

/// Returns `met`. When it is false: panics under CI, naming what is missing and how to get it;
/// elsewhere prints `SKIPPED <test>: <missing>` so the caller can return early (or leave out
/// the part of the test that needs it).
pub(crate) fn require(met: bool, missing: &str, how: &str) -> bool {
    if met {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    if let Some(ci) = ci() {
        panic!("{test}: {missing}; CI={ci}, so this fails instead of skipping: {how}");
    }
    // Straight to stderr: the test harness swallows `eprintln!` from a passing test, and a
    // skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {missing} ({how}; CI=true makes this a failure)"
    );
    false
}

/// For a test that needs root: true when running as root, else see [`require`].
pub(crate) fn needs_root(why: &str) -> bool {
    require(
        nix::unistd::Uid::effective().is_root(),
        &format!("needs root to {why}"),
        "run it as root, e.g. `sudo -E cargo test -p stek-node`",
    )
}
