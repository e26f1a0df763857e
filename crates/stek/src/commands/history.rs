//! etcd's history at start, for `stek node` and `stek check` alike: the warning while `[etcd]
//! compact_history` is off, and whether this node's etcd user may compact at all (asked
//! without changing anything, so that a refusal shows at start rather than at the first key
//! drop, hours later).

use std::time::Duration;

use stek_etcd::{CompactionRight, Etcd, COMPACTION_ROLE};
use stek_node::config::Coordination;
use stek_node::Config;
use stek_store::CoordError;

/// How long the question may take before the node gives up asking (it never delays a start).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the store answered, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compaction {
    /// This node's user may compact.
    Granted,
    /// It may not: what to do, with the store's answer.
    Denied(String),
}

/// Asks etcd whether this node's user may compact (see [`Etcd::compaction_right`]).
pub async fn compaction(config: &Config, etcd: &Etcd) -> Result<Compaction, CoordError> {
    ask(etcd, user_of(config).as_deref()).await
}

/// The `[etcd] user`, if the config names one.
fn user_of(config: &Config) -> Option<String> {
    match &config.coordination {
        Coordination::Etcd { access, .. } => access.user.as_ref().map(|(u, _)| u.clone()),
        Coordination::Raft { .. } => None,
    }
}

async fn ask(etcd: &Etcd, user: Option<&str>) -> Result<Compaction, CoordError> {
    let answer = match tokio::time::timeout(PROBE_TIMEOUT, etcd.compaction_right()).await {
        Ok(answer) => answer?,
        Err(_) => {
            return Err(CoordError::Unreachable {
                endpoints: etcd.endpoints().to_owned(),
                reason: format!(
                    "no answer within {}",
                    humantime::format_duration(PROBE_TIMEOUT)
                ),
            })
        }
    };
    Ok(match answer {
        CompactionRight::Granted => Compaction::Granted,
        CompactionRight::Denied(answer) => Compaction::Denied(denied(user, &answer)),
    })
}

/// The warning for a user the store refuses compaction: which role it needs, and the two ways
/// out.
fn denied(user: Option<&str>, answer: &str) -> String {
    let (who, grant) = match user {
        Some(u) => (
            format!("etcd user \"{u}\""),
            format!("etcdctl user grant-role {u} {COMPACTION_ROLE}"),
        ),
        None => (
            "this node's etcd user (its client certificate's common name)".to_owned(),
            format!("etcdctl user grant-role <user> {COMPACTION_ROLE}"),
        ),
    };
    format!(
        "etcd refuses {who} compaction ({answer}), so the leader cannot compact superseded rings and the sealed copies of dropped keys out of etcd's history. Either give the user the `{COMPACTION_ROLE}` role ({grant}), or set [etcd] compact_history = false with compact_history_off_reason = \"...\" and run etcd with --auto-compaction-mode=revision --auto-compaction-retention=1000 (docs/security.md, \"History purge\")"
    )
}

/// At a node's start: the warning while compaction is off; while it is on, the question,
/// asked in the background (an etcd that is down must not hold up the start; the leader's
/// first compaction says so then).
pub fn at_start(config: &Config, store: &stek_coord::backend::Backend) {
    if let Some(warning) = config.history_kept_warning() {
        tracing::warn!("{warning}");
    }
    let stek_coord::backend::Backend::Etcd(etcd) = store else {
        return;
    };
    if !config.compact_history {
        return;
    }
    let etcd = (**etcd).clone();
    let user = user_of(config);
    tokio::spawn(async move {
        match ask(&etcd, user.as_deref()).await {
            Ok(Compaction::Granted) => tracing::info!(
                "etcd lets this node's user compact: after a ring write that drops keys, the leader compacts etcd's history up to it ([etcd] compact_history)"
            ),
            Ok(Compaction::Denied(warning)) => tracing::warn!("{warning}"),
            Err(e) => tracing::debug!("could not ask etcd whether this node may compact: {e}"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_user_the_role_and_both_ways_out() {
        let config = Config::parse(
            std::path::Path::new("/etc/stek/stek.toml"),
            "insecure = true\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nuser = \"stek-lb-1\"\npassword_file = \"/etc/stek/pw\"\n",
        )
        .unwrap();
        let w = denied(user_of(&config).as_deref(), "etcdserver: permission denied");
        for part in [
            "etcd refuses etcd user \"stek-lb-1\" compaction (etcdserver: permission denied)",
            "give the user the `root` role (etcdctl user grant-role stek-lb-1 root)",
            "compact_history = false with compact_history_off_reason",
            "--auto-compaction-mode=revision --auto-compaction-retention=",
        ] {
            assert!(w.contains(part), "{part:?} in {w}");
        }
        let by_cert = Config::parse(
            std::path::Path::new("/etc/stek/stek.toml"),
            "insecure = true\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
        )
        .unwrap();
        assert!(
            denied(user_of(&by_cert).as_deref(), "x").contains("client certificate's common name")
        );
    }
}
