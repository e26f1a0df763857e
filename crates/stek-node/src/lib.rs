//! stek's node runtime: the pieces that touch the machine.
//!
//! - [`config`]: the TOML config, validated at load.
//! - [`writer`]: the RAM-disk writer (statfs check, temp file + rename, mode 0600).
//! - [`command`]: the reload/verify runner (argv, timeout, retries).
//! - [`haproxy_runtime`]: HAProxy's stats-socket ticket key API.
//! - [`target`]: one TLS server, applying a ring end to end.
//! - [`admin`]: the admin HTTP listener and the node's Prometheus metrics.
//! - [`state`]: the node's sealing key on its RAM disk.
//!
//! Depends on `stek-core` for keys, rings and formats; never the other way round. Knows nothing
//! of the CLI.

pub mod admin;
pub mod config;
pub mod engine;
pub mod haproxy_runtime;
pub mod httpd_bug;
pub mod hygiene;
pub mod node;
pub mod reload;
pub mod state;
pub mod target;
#[cfg(test)]
mod test_support;
pub mod writer;

pub use config::{Config, ConfigError};
pub use target::{Applied, ApplyError, Target};
