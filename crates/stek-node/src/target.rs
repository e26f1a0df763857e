//! One TLS server on this box: its format, where its files go, and how it picks them up.
//! [`Target::apply`] renders a ring, writes it, and reloads (or pushes through HAProxy's
//! runtime API), then verifies; the ring counts as applied only if every step succeeded.

use std::path::PathBuf;

use stek_core::formats::{Delivery, Format, FormatError, Layout, Rendered};
use stek_core::KeyRing;

use crate::haproxy_runtime::{RuntimeError, RuntimeTarget};
use crate::reload::{CommandError, CommandSpec, Purpose};
use crate::writer::{self, WriteError, WriteOptions};

/// A configured target.
#[derive(Debug)]
pub struct Target {
    /// Its position in the config (`target[i]`).
    pub index: usize,
    /// The server format.
    pub format: Box<dyn Format>,
    /// A directory (nginx) or a file (every other format).
    pub path: PathBuf,
    /// Owner, group, persistent-storage opt-out, mtime rule.
    pub write: WriteOptions,
    /// Runs after the files are written.
    pub reload: Option<CommandSpec>,
    /// Must succeed before the ring counts as applied.
    pub verify: Option<CommandSpec>,
    /// For `haproxy-runtime`: the stats socket.
    pub runtime: Option<RuntimeTarget>,
}

/// Why a ring was not applied to a target. The target's previous files are intact unless the
/// failure came after the write (reload, runtime push, verify).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The format cannot hold this ring.
    #[error("target[{index}] ({format} at {path}): {source}")]
    Render {
        /// The target's index.
        index: usize,
        /// Its format.
        format: &'static str,
        /// Its path.
        path: PathBuf,
        /// What the format said.
        source: FormatError,
    },
    /// The files could not be written.
    #[error("target[{index}] ({format}): {source}")]
    Write {
        /// The target's index.
        index: usize,
        /// Its format.
        format: &'static str,
        /// What the writer said.
        source: WriteError,
    },
    /// Reload or verify failed.
    #[error("target[{index}] ({format}): {source}")]
    Command {
        /// The target's index.
        index: usize,
        /// Its format.
        format: &'static str,
        /// What the runner said.
        source: CommandError,
    },
    /// The HAProxy runtime API failed.
    #[error("target[{index}] ({format}): {source}")]
    Runtime {
        /// The target's index.
        index: usize,
        /// Its format.
        format: &'static str,
        /// What the API said.
        source: RuntimeError,
    },
}

impl ApplyError {
    /// `write` (render or file write: the old files are intact) or `reload` (reload, runtime
    /// push or verify: the files are new but the server may not use them).
    pub fn stage(&self) -> &'static str {
        match self {
            ApplyError::Render { .. } | ApplyError::Write { .. } => "write",
            ApplyError::Command { .. } | ApplyError::Runtime { .. } => "reload",
        }
    }
}

/// What a successful apply measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Applied {
    /// How long the reload command or runtime push took, when there was one.
    pub reload: Option<std::time::Duration>,
}

impl Target {
    /// The directory whose file system and permissions matter.
    pub fn directory(&self) -> PathBuf {
        match self.format.info().layout {
            Layout::Directory => self.path.clone(),
            Layout::File => writer::parent_dir(&self.path),
        }
    }

    /// Checks, before anything is written, that the target directory is a private RAM disk.
    /// Returns the file system's name.
    pub fn preflight(&self) -> Result<String, WriteError> {
        writer::check_directory(&self.directory(), &self.write)
    }

    /// Renders, writes, delivers and verifies `ring` on this target.
    pub async fn apply(&self, ring: &KeyRing) -> Result<Applied, ApplyError> {
        let format = self.format.info().name;
        let rendered = self
            .format
            .render(ring)
            .map_err(|source| ApplyError::Render {
                index: self.index,
                format,
                path: self.path.clone(),
                source,
            })?;
        let written = match &rendered {
            Rendered::File(bytes) => writer::write_file(&self.path, bytes, &self.write),
            Rendered::Directory(files) => {
                let owned = |name: &str| self.format.owns_file(name);
                writer::write_files(&self.path, files, &self.write, &owned)
            }
        };
        written.map_err(|source| ApplyError::Write {
            index: self.index,
            format,
            source,
        })?;
        drop(rendered);
        let command_err = |source| ApplyError::Command {
            index: self.index,
            format,
            source,
        };
        let started = std::time::Instant::now();
        let mut applied = Applied::default();
        match (self.format.info().delivery, &self.runtime) {
            (Delivery::HaproxyRuntime, Some(runtime)) => {
                let wanted = self
                    .format
                    .runtime_ring(ring)
                    .expect("the haproxy-runtime format always has a runtime ring");
                runtime
                    .apply(&wanted)
                    .await
                    .map_err(|source| ApplyError::Runtime {
                        index: self.index,
                        format,
                        source,
                    })?;
                applied.reload = Some(started.elapsed());
            }
            _ => {
                if let Some(reload) = &self.reload {
                    reload.run(Purpose::Reload).await.map_err(command_err)?;
                    applied.reload = Some(started.elapsed());
                }
            }
        }
        if let Some(verify) = &self.verify {
            verify.run(Purpose::Verify).await.map_err(command_err)?;
        }
        Ok(applied)
    }

    /// What the operator must know about this target at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.format.warnings();
        if self.format.info().name == "httpd" {
            w.push(crate::httpd_bug::sharing_warning(self.reload.as_ref()));
        }
        if self.reload.is_none() && self.runtime.is_none() && self.format.info().name != "envoy" {
            w.push(format!(
                "target[{}] ({}) has no reload command: the server keeps its old keys until something else reloads it",
                self.index,
                self.format.info().name
            ));
        }
        w
    }
}
