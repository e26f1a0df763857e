//! `stek status` and `stek rotate`: the operator's view of the cluster, read from the store.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::bail;
use stek_core::rotation::describe_blocker;
use stek_core::Policy;
use stek_node::Config;
use stek_store::status::{status_of, Status};
use stek_store::{ChangeStream, Coordinator, Snapshot};

use super::connect::{connect, request_signer, runtime, socket_hint, trust_of, Access};

fn print_text(s: &Status) {
    println!("cluster    {}", s.cluster);
    match (&s.leader, s.leader_term) {
        (Some(l), Some(t)) => println!("leader     {l} (term {t})"),
        _ => println!("leader     (none)"),
    }
    match s.generation {
        Some(g) => println!("generation {g}"),
        None => println!("generation (no ring yet)"),
    }
    if let Some(t) = &s.next_rotation_at {
        println!("next       {t}");
    }
    println!("rotation   {}", s.rotation.state);
    for b in &s.rotation.blocked_by {
        println!(
            "  blocked by {}",
            describe_blocker(
                &b.node_id,
                b.applied_generation,
                b.needed_generation,
                b.last_error.as_deref()
            )
        );
    }
    if s.pending_requests > 0 {
        println!("requests   {} pending", s.pending_requests);
    }
    let bound = stek_store::clock::CLOCK_BOUND.as_secs();
    if s.ring_clock_ahead_seconds > bound || s.writer_clock_ahead_seconds.is_some_and(|a| a > bound)
    {
        println!(
            "clock      SKEWED: the ring's writer's clock is ahead by {}s of this machine and {} of the members that acknowledged it; fix its time source",
            s.ring_clock_ahead_seconds,
            s.writer_clock_ahead_seconds.map_or("?".to_owned(), |a| format!("{a}s"))
        );
    }
    if let Some(why) = &s.refused_ring {
        println!("ring       REFUSED: {why}");
    }
    println!("\nmembers");
    println!(
        "  {:<20} {:<5} {:>7} {:>7}  {:<6} last error",
        "node", "live", "applied", "floor", "sealed"
    );
    for m in &s.members {
        println!(
            "  {:<20} {:<5} {:>7} {:>7}  {:<6} {}",
            m.node_id,
            if m.live { "yes" } else { "no" },
            m.applied_generation,
            m.floor_generation.map_or("-".to_owned(), |f| f.to_string()),
            if m.sealed_copy { "yes" } else { "no" },
            m.last_error.as_deref().unwrap_or("-")
        );
    }
    println!("\nkeys");
    println!("  {:<6} {:<9} {:<12} age", "epoch", "state", "fingerprint");
    for k in &s.keys {
        println!(
            "  {:<6} {:<9} {:<12} {}",
            k.epoch,
            k.state,
            k.fingerprint,
            humantime::format_duration(Duration::from_secs(k.age_seconds))
        );
    }
    if !s.refused_members.is_empty() {
        println!("\nrefused members (no key is sealed for them; they do not count for rotations)");
        for r in &s.refused_members {
            println!(
                "  {:<20} {:<5} {}",
                r.node_id,
                if r.live { "live" } else { "-" },
                r.reason
            );
        }
    }
    for r in &s.rejected_records {
        println!("\nrejected record {}: {}", r.key, r.error);
    }
    if let Some(by) = &s.ring_signed_by {
        println!("\nring signed by {by}");
    }
    if s.insecure {
        println!("\nINSECURE: insecure = true and no [identity]: anyone who can reach the store or a peer can enroll and read every ticket key");
    }
}

pub fn status(path: &Path, json: bool, access: &Access) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let trust = trust_of(&config)?;
    let mut snap = runtime()?
        .block_on(async {
            let store = connect(&config, access, None).await?;
            anyhow::Ok(store.snapshot().await?)
        })
        .map_err(|e| socket_hint(&config, e))?;
    let mut signed_by = None;
    if let Some(trust) = &trust {
        snap.authenticate(trust, SystemTime::now());
        if let Some(ring) = snap.valid_ring() {
            signed_by = Some(format!("member {} (term {})", ring.written_by, ring.term));
        }
    }
    let mut s = status_of(&config.cluster, &snap, &config.policy, SystemTime::now());
    s.ring_signed_by = signed_by;
    s.insecure = config.insecure && config.identity.is_none();
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_text(&s);
    }
    Ok(ExitCode::SUCCESS)
}

struct Rotate<'a> {
    config: &'a Config,
    wait: bool,
    timeout: Duration,
    /// With `[identity]`: the members to wait for are the enrolled ones only.
    trust: Option<stek_trust::identity::Trust>,
    /// Signs the request.
    signer: Option<stek_trust::identity::Credentials>,
}

impl Rotate<'_> {
    async fn call<C: Coordinator>(self, store: &C) -> anyhow::Result<ExitCode> {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| self.config.node_id.clone());
        // Watch from before the request, so that no change it causes is missed: the wait
        // reads again when the store says something changed, not on a timer.
        let mut watch = match self.wait {
            true => {
                let before = store.snapshot().await?;
                store.watch(before.revision).await.ok()
            }
            false => None,
        };
        let key = store
            .request_rotation(&format!("cli@{host}"), self.signer.as_ref())
            .await?;
        println!("rotation requested ({key})");
        if !self.wait {
            return Ok(ExitCode::SUCCESS);
        }
        let deadline = Instant::now() + self.timeout;
        let mut served_at: Option<u64> = None;
        let mut progress = Progress::new();
        loop {
            let mut snap = store.snapshot().await?;
            if let Some(trust) = &self.trust {
                snap.authenticate(trust, SystemTime::now());
            }
            if served_at.is_none() && !snap.requests.contains(&key) {
                // The rotation that served the request is this ring or an earlier one.
                served_at = snap.valid_ring().map(|r| r.ring.generation());
                if let Some(g) = served_at {
                    println!("rotated: generation {g}; waiting for every live member to apply it");
                }
            }
            if let Some(g) = served_at {
                // Counted as the leader counts them: an acknowledgement of another ring with
                // this generation is no acknowledgement of this one.
                let views = snap.member_views();
                let live: Vec<_> = views.iter().filter(|m| m.live).collect();
                let waiting: Vec<&str> = live
                    .iter()
                    .filter(|m| m.applied_generation < g)
                    .map(|m| m.id.as_str())
                    .collect();
                progress.show(live.len() - waiting.len(), live.len(), &waiting);
                if waiting.is_empty() {
                    progress.finish();
                    let active = snap
                        .valid_ring()
                        .map(|r| {
                            format!(
                                "epoch {} ({})",
                                r.ring.active().epoch,
                                r.ring.active().fingerprint()
                            )
                        })
                        .unwrap_or_default();
                    println!("done: every live member applied generation {g}; active key {active}");
                    return Ok(ExitCode::SUCCESS);
                }
            }
            if Instant::now() >= deadline {
                progress.finish();
                let why = reason(&snap, served_at, &self.config.policy);
                bail!(
                    "rotation not complete after {}: {why}",
                    humantime::format_duration(self.timeout)
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match watch.as_mut() {
                // Read again on the next change; at least once a second, in case the watch
                // missed one (a store that restarted).
                Some(w) => match tokio::time::timeout(left.min(RECHECK), w.changed()).await {
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(_)) => watch = store.watch(snap.revision).await.ok(),
                },
                None => tokio::time::sleep(left.min(POLL_WITHOUT_WATCH)).await,
            }
        }
    }
}

/// `rotate --wait` reads the store again at least this often, whatever its watch says.
const RECHECK: Duration = Duration::from_secs(1);
/// ... and this often when the store cannot be watched.
const POLL_WITHOUT_WATCH: Duration = Duration::from_millis(200);

/// "applied 2/3 live members": one line rewritten in place on a terminal, one plain line per
/// change otherwise (logs, CI).
struct Progress {
    terminal: bool,
    last: Option<(usize, usize)>,
    drawn: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::IsTerminal::is_terminal(&std::io::stdout()),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, applied: usize, live: usize, waiting: &[&str]) {
        if self.last == Some((applied, live)) {
            return;
        }
        self.last = Some((applied, live));
        let line = if waiting.is_empty() {
            format!("applied {applied}/{live} live members")
        } else {
            format!(
                "applied {applied}/{live} live members (waiting for {})",
                waiting.join(", ")
            )
        };
        if self.terminal {
            use std::io::Write as _;
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
            self.drawn = true;
        } else {
            println!("{line}");
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            println!();
            self.drawn = false;
        }
    }
}

pub fn rotate(
    path: &Path,
    wait: bool,
    timeout: Duration,
    access: &Access,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let job = Rotate {
        config: &config,
        wait,
        timeout,
        trust: trust_of(&config)?,
        signer: request_signer(&config, access)?,
    };
    runtime()?
        .block_on(async {
            let store = connect(&config, access, None).await?;
            job.call(&store).await
        })
        .map_err(|e| socket_hint(&config, e))
}

fn reason(snap: &Snapshot, served_at: Option<u64>, policy: &Policy) -> String {
    if snap.leader.is_none() {
        return "there is no leader (are the nodes running and reaching the store?)".into();
    }
    let s = status_of("", snap, policy, SystemTime::now());
    let list = |v: Vec<String>| v.join("; ");
    match served_at {
        None if !s.rotation.blocked_by.is_empty() => format!(
            "the leader waits for members that have not applied the staged key: {}",
            list(
                s.rotation
                    .blocked_by
                    .iter()
                    .map(|b| describe_blocker(
                        &b.node_id,
                        b.applied_generation,
                        b.needed_generation,
                        b.last_error.as_deref()
                    ))
                    .collect()
            )
        ),
        None => format!(
            "the request is still pending (rotation state: {})",
            s.rotation.state
        ),
        Some(g) => format!(
            "the rotation happened (generation {g}) but these live members have not applied it: {}",
            list(
                s.members
                    .iter()
                    .filter(|m| m.live && m.applied_generation < g)
                    .map(|m| describe_blocker(
                        &m.node_id,
                        m.applied_generation,
                        g,
                        m.last_error.as_deref()
                    ))
                    .collect()
            )
        ),
    }
}
