//! `stek peers list|add|remove`: the embedded group's membership.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use stek_node::config::Coordination;
use stek_node::Config;

use super::connect::{raft_client, runtime, Access};

/// `stek peers list`.
pub fn peers_list(path: &Path, access: &Access) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let client = raft_client(&config, access)?;
    let m = runtime()?.block_on(client.members())?;
    let names: std::collections::BTreeMap<u64, String> = match &config.coordination {
        Coordination::Raft { peers, .. } => peers
            .keys()
            .map(|n| (stek_raft::group::raft_id(n), n.clone()))
            .collect(),
        Coordination::Etcd { .. } => Default::default(),
    };
    for (kind, list) in [("voter", &m.voters), ("learner", &m.learners)] {
        for (id, addr) in list {
            let name = names.get(id).map_or("?", String::as_str);
            let leads = if m.leader == Some(*id) {
                " (leader)"
            } else {
                ""
            };
            println!("{kind:<8} {name:<16} {addr:<24} raft id {id:016x}{leads}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `stek peers add`.
pub fn peers_add(
    path: &Path,
    node_id: &str,
    addr: &str,
    access: &Access,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let client = raft_client(&config, access)?;
    runtime()?
        .block_on(client.add_peer(node_id, addr))
        .with_context(|| format!("adding {node_id} at {addr}"))?;
    println!("added {node_id} ({addr}) to the raft group");
    Ok(ExitCode::SUCCESS)
}

/// `stek peers remove` (the voter floor is the leader's to enforce: a caller that is not this
/// CLI sends the same request).
pub fn peers_remove(
    path: &Path,
    node_id: &str,
    below_voter_floor: bool,
    access: &Access,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let client = raft_client(&config, access)?;
    runtime()?
        .block_on(client.remove_peer(node_id, below_voter_floor))
        .with_context(|| format!("removing {node_id}"))?;
    println!("removed {node_id} from the raft group");
    Ok(ExitCode::SUCCESS)
}
