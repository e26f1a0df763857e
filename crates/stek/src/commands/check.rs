//! `stek check`: validates the config and the environment, and prints what to fix.

use std::path::Path;
use std::process::ExitCode;

use stek_node::Config;

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    println!(
        "config {}: ok (cluster \"{}\", node \"{}\", interval {}, retain {})",
        path.display(),
        config.cluster,
        config.node_id,
        humantime::format_duration(config.policy.interval),
        config.policy.retain
    );
    if config.targets.is_empty() {
        println!("warning: no [[target]] sections: this node writes keys for no server");
    }
    let mut problems = 0;
    for t in &config.targets {
        let label = format!(
            "target[{}] {} {}",
            t.index,
            t.format.info().name,
            t.path.display()
        );
        match t.preflight() {
            Ok(fs) => println!(
                "{label}: directory {} is private, on {fs}",
                t.directory().display()
            ),
            Err(e) => {
                problems += 1;
                println!("{label}: PROBLEM: {e}");
            }
        }
        for (what, cmd) in [("reload", &t.reload), ("verify", &t.verify)] {
            if let Some(program) = cmd.as_ref().and_then(|c| c.argv.first()) {
                if !program_exists(program) {
                    problems += 1;
                    println!("{label}: PROBLEM: {what} program \"{program}\" is not installed or not in PATH");
                }
            }
        }
        for w in t.warnings() {
            println!("{label}: warning: {w}");
        }
    }
    if problems > 0 {
        println!(
            "{problems} problem(s) found; the node would refuse to apply keys to these targets"
        );
        Ok(ExitCode::from(1))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn program_exists(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}
