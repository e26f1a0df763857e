//! `stek demo`: rotates a key ring on this box and writes every server format to a RAM disk,
//! printing the ring after each step. Uses the same decision function, formats and writer as a
//! node; there is no cluster yet, so this box is the only (and always acknowledging) member.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use stek_core::{decide_at, next_ring, Decision, KeyRing, MemberView, OsKeySource, Policy};
use stek_node::Config;

pub struct Options {
    pub rotations: u32,
    pub interval: Duration,
    pub retain: usize,
    pub dir: Option<PathBuf>,
    pub keep: bool,
}

/// Removes the demo directory on every exit path unless asked to keep it.
struct Cleanup {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Never panics: stdout may be a closed pipe (`stek demo | head`), and the key files must
        // be removed regardless.
        let mut out = io::stdout();
        if self.keep {
            let _ = writeln!(out, "kept {}", self.dir.display());
        } else if fs::remove_dir_all(&self.dir).is_ok() {
            let _ = writeln!(out, "removed {}", self.dir.display());
        }
    }
}

pub fn run(o: Options) -> anyhow::Result<ExitCode> {
    let dir = o
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/stek-demo-{}", std::process::id())));
    let created = !dir.exists();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _cleanup = Cleanup {
        dir: dir.clone(),
        keep: o.keep || !created,
    };
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))?;
    fs::create_dir_all(dir.join("nginx"))?;
    fs::set_permissions(dir.join("nginx"), fs::Permissions::from_mode(0o700))?;

    let d = dir.display();
    let toml = format!(
        "cluster = \"demo\"\nnode_id = \"demo-1\"\n[rotation]\ninterval = \"{}\"\nretain = {}\n\
         [[target]]\nformat = \"nginx\"\npath = \"{d}/nginx\"\n\
         [[target]]\nformat = \"haproxy\"\npath = \"{d}/haproxy.keys\"\n\
         [[target]]\nformat = \"ats\"\npath = \"{d}/ats.key\"\n\
         [[target]]\nformat = \"httpd\"\npath = \"{d}/httpd.key\"\n\
         [[target]]\nformat = \"dnsdist\"\npath = \"{d}/dnsdist.keys\"\n\
         [[target]]\nformat = \"envoy\"\npath = \"{d}/envoy-sds.json\"\n",
        humantime::format_duration(o.interval),
        o.retain
    );
    let config = Config::parse(&dir.join("demo.toml"), &toml)?;
    for t in &config.targets {
        t.preflight()?;
    }
    let policy = Policy {
        interval: o.interval,
        retain: o.retain,
    };
    println!(
        "stek demo: {} rotations every {} on this box, writing {} formats to {d}",
        o.rotations,
        humantime::format_duration(o.interval),
        config.targets.len()
    );
    println!("(single box: the cluster arrives with `stek node`; Ctrl-C stops and cleans up)");
    for t in &config.targets {
        // Server facts only: the demo deliberately runs no reload commands.
        for w in t.format.warnings() {
            println!("warning: {}: {w}", t.format.info().name);
        }
    }
    println!();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut ring: Option<KeyRing> = None;
        let mut rotations = 0;
        let started = Instant::now();
        loop {
            let now = SystemTime::now();
            let me = MemberView {
                id: config.node_id.clone(),
                live: true,
                applied_generation: ring.as_ref().map_or(0, KeyRing::generation),
                last_error: None,
            };
            // The demo asks for a rotation at every tick, like `stek rotate` would.
            let decision = decide_at(now, ring.as_ref(), &policy, &[me], ring.is_some());
            if let Some(next) = next_ring(&decision, ring.as_ref(), now, &policy, &mut OsKeySource)? {
                let t0 = Instant::now();
                for t in &config.targets {
                    t.apply(&next).await?;
                }
                if matches!(decision, Decision::Rotate(_)) {
                    rotations += 1;
                }
                let shown = print_ring(&next, &decision, t0.elapsed(), config.targets.len());
                ring = Some(next);
                if shown.is_err() {
                    // Nobody is reading any more (closed pipe): stop and clean up quietly.
                    return anyhow::Ok(());
                }
            }
            if rotations >= o.rotations {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(o.interval) => {}
                _ = tokio::signal::ctrl_c() => {
                    println!("interrupted");
                    break;
                }
            }
        }
        let _ = writeln!(
            io::stdout(),
            "{rotations} rotation(s) in {:.1}s; every target always held the active, staged and retained keys",
            started.elapsed().as_secs_f64()
        );
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn print_ring(
    ring: &KeyRing,
    decision: &Decision,
    took: Duration,
    targets: usize,
) -> io::Result<()> {
    let what = match decision {
        Decision::Bootstrap => "bootstrap".to_owned(),
        Decision::Rotate(_) => "rotation".to_owned(),
        other => format!("{other:?}"),
    };
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "generation {} ({what}): applied to {targets} targets in {:.1} ms",
        ring.generation(),
        took.as_secs_f64() * 1000.0
    )?;
    writeln!(out, "  {:<6} {:<9} fingerprint", "epoch", "state")?;
    for k in ring.keys().iter().rev() {
        writeln!(
            out,
            "  {:<6} {:<9} {}",
            k.epoch,
            k.state.to_string(),
            k.fingerprint()
        )?;
    }
    writeln!(out)?;
    out.flush()
}
