//! `stek node`: one peer of the cluster.

use std::path::Path;
use std::process::ExitCode;

use std::sync::Arc;
use stek_node::config::Coordination;
use stek_raft::peer::{Peer, Storage};

use stek_node::admin::Metrics;
use stek_node::{Config, ConfigError};

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let protection = stek_node::hygiene::protect_process();
    if !protection.core_dumps_disabled {
        tracing::warn!("could not disable core dumps: a crash could write key bytes to disk");
    }
    if let Err(why) = &protection.memory_locked {
        tracing::warn!("key pages are not locked in memory: {why}");
    }
    // Refuse to start rather than write keys where they must not go (I5).
    for t in &config.targets {
        t.preflight()?;
        for w in t.warnings() {
            tracing::warn!(target = t.index, format = t.format.info().name, "{w}");
        }
    }
    let identity = super::connect::load_identity(&config)?;

    if identity.is_none() && config.insecure {
        tracing::warn!("insecure = true: no [identity], so anyone who can reach the coordination store or a peer can enroll a key of their own and read every ticket key; see docs/security.md");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let failure = rt.block_on(async {
        // A peer box runs its Raft peer beside the node; the node reaches the group (or etcd)
        // through the same client every command uses.
        let mut home = None;
        let peer = match &config.coordination {
            Coordination::Raft {
                listen,
                peers,
                data_dir,
                client: false,
            } => {
                if peers.len() == 1 {
                    tracing::info!("embedded coordinator, single box: a one-node group on {listen}");
                }
                if let (Some(id), Some((host, _))) = (&identity, listen.rsplit_once(':')) {
                    if !listen.starts_with("unix:") && !id.creds.names_host(host) {
                        return Err(ConfigError::Invalid {
                            path: config.path.clone(),
                            key: "identity.cert_file".into(),
                            message: format!("the certificate does not name {host}, where peers reach this node's Raft listener ({listen}); issue it with `stek ca issue --node {} --host {host}`", config.node_id),
                        }
                        .into());
                    }
                }
                home = peers.get(&config.node_id).cloned();
                Some((listen, peers, data_dir))
            }
            Coordination::Raft { peers, .. } => {
                tracing::info!("embedded coordinator, as a client of the peers {:?}", peers.keys().collect::<Vec<_>>());
                None
            }
            Coordination::Etcd { .. } => None,
        };
        let store = super::connect::connect(&config, &super::connect::Access::default(), home).await?;
        super::history::at_start(&config, &store);
        let sealing = open_state(&config)?;
        let metrics = admin(&config).await?;
        let Some((listen, peers, data_dir)) = peer else {
            stek_node::node::run(&config, store, metrics, identity.as_ref(), sealing, shutdown_signal()).await?;
            return anyhow::Ok(None);
        };
        let peer = Peer::start(
            &config.cluster,
            &config.node_id,
            listen,
            peers,
            Storage::Durable(data_dir.clone()),
            super::connect::peer_tls(&config)?,
        )
        .await?;
        {
            let metrics = metrics.clone();
            peer.count_refused_with(Box::new(move |why| {
                let reason = why.to_owned();
                metrics
                    .raft_refused
                    .get_or_create(&stek_node::admin::RefusedLabels { reason })
                    .inc();
            }));
        }
        // A Raft core that stopped (a storage failure, a panic) would leave this box serving a
        // frozen state: stop the node and exit non-zero instead, so that the service manager
        // restarts it.
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let stop = {
            let failed = failed.clone();
            let peer = peer.clone();
            async move {
                tokio::select! {
                    () = shutdown_signal() => {}
                    why = peer.failed() => {
                        tracing::error!("the Raft core stopped: {why}; exiting so that the service manager restarts this node");
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    }
                }
            }
        };
        let stopped = stek_node::node::run(&config, store, metrics, identity.as_ref(), sealing, stop).await;
        peer.shutdown().await;
        stopped?;
        let why = failed.lock().unwrap_or_else(|e| e.into_inner()).take();
        anyhow::Ok(why)
    })?;
    if let Some(why) = failure {
        eprintln!("stek node: the Raft core stopped: {why}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens (and locks) the node's state directory, its sealing keys and its rollback floor:
/// after every other input was read and checked, so that a bad config is what the operator
/// hears about first. The returned value holds the lock until the node stops.
fn open_state(config: &Config) -> anyhow::Result<stek_node::state::Sealing> {
    let sealing = stek_node::state::StateDir::open(&config.state_dir)?.load()?;
    let dir = config.state_dir.display();
    match sealing.floor() {
        None if sealing.made_at_start() => {
            tracing::info!(state_dir = %dir, "a new sealing key (this box's RAM disk was empty): the leader seals a copy of the ring for it")
        }
        None => {
            tracing::info!(state_dir = %dir, "sealing key kept from an earlier run: this node opens its copy of the ring again")
        }
        Some(f) => {
            tracing::info!(state_dir = %dir, floor = f.generation, "sealing keys and rollback floor kept from an earlier run: this node opens its copy of the ring again and refuses any ring older than generation {}", f.generation)
        }
    }
    Ok(sealing)
}

/// Starts the admin listener (after every secret was read and checked, so that a bad input is
/// what the operator is told about first).
async fn admin(config: &Config) -> anyhow::Result<Arc<Metrics>> {
    let metrics = Arc::new(Metrics::new());
    if let Some(listen) = config.admin_listen {
        let bound = stek_node::admin::serve(listen, metrics.clone())
            .await
            .map_err(|e| ConfigError::Invalid {
                path: config.path.clone(),
                key: "admin.listen".into(),
                message: format!("cannot listen on {listen}: {e}; choose another address, or set [admin] enabled = false"),
            })?;
        tracing::info!("admin listener on http://{bound}: /metrics /healthz /readyz");
    }
    Ok(metrics)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down: releasing leadership and lease");
}
