//! The node's state directory: its sealing private key, on a RAM disk.
//!
//! The key that opens this node's sealed copy of the ring must outlive the process (an upgrade
//! restarts every box at once, and a ring nobody can open is thrown away with every ticket
//! key in it) but not the machine: the ticket keys already sit in plaintext on the same RAM
//! disk, and a reboot must forget both. So the key is kept in `state_dir`, which must be a
//! tmpfs or ramfs directory only this user can enter, in a 0600 file. A lock file keeps two
//! nodes from sharing one directory (and so one key).

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use stek_coord::seal::Identity;

/// The sealing key's file in the state directory.
pub const SEALING_KEY_FILE: &str = "sealing.key";
const LOCK_FILE: &str = "node.lock";

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file system call failed.
    #[error("state_dir {path}: cannot {action}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was attempted.
        action: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The directory is not private to this user.
    #[error("state_dir {path}: {reason}; it holds the key that opens this node's ticket keys: make it owned by the user stek runs as, mode 0700")]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory is not on a RAM disk.
    #[error("state_dir {path} is on {fs}, not tmpfs or ramfs: the sealing key would outlive a reboot on disk. Point state_dir at a RAM disk (the default is under /run)")]
    NotRamDisk {
        /// The directory.
        path: PathBuf,
        /// Its file system.
        fs: String,
    },
    /// Another process holds the directory.
    #[error("state_dir {path} is in use by another stek node (its lock {lock} is held): two nodes may not share a state_dir or a node_id")]
    InUse {
        /// The directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The key file is not a key.
    #[error("{path} is not a sealing key ({reason}); remove it and start the node again: it makes a new key and is sealed a new copy")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The node's state directory, locked for this process.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    _lock: Flock<fs::File>,
}

fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

impl StateDir {
    /// Creates `path` (0700) if missing, checks it (owner, mode, RAM disk) and locks it.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        if !path.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(io(path, "create the directory"))?;
        }
        let meta = fs::symlink_metadata(path).map_err(io(path, "inspect"))?;
        if !meta.is_dir() {
            return Err(StateError::NotPrivate {
                path: path.to_owned(),
                reason: "not a directory".into(),
            });
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(StateError::NotPrivate {
                path: path.to_owned(),
                reason: format!("owned by uid {}, not {euid}", meta.uid()),
            });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(StateError::NotPrivate {
                path: path.to_owned(),
                reason: format!("mode {:o} lets others in", meta.mode() & 0o7777),
            });
        }
        let st = nix::sys::statfs::statfs(path).map_err(|e| StateError::Io {
            path: path.to_owned(),
            action: "statfs",
            source: e.into(),
        })?;
        let fs_name = crate::writer::fs_name(st.filesystem_type());
        if fs_name != "tmpfs" && fs_name != "ramfs" {
            return Err(StateError::NotRamDisk {
                path: path.to_owned(),
                fs: fs_name,
            });
        }
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(io(path, "open its lock file"))?;
        let lock =
            Flock::lock(lock, FlockArg::LockExclusiveNonblock).map_err(|_| StateError::InUse {
                path: path.to_owned(),
                lock: lock_path.clone(),
            })?;
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The sealing key kept here, or a new one (written before it is used). The second value
    /// says whether it was made now.
    pub fn sealing_identity(&self) -> Result<(Identity, bool), StateError> {
        let file = self.path.join(SEALING_KEY_FILE);
        match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&file)
        {
            Ok(mut f) => {
                let meta = f.metadata().map_err(io(&file, "inspect"))?;
                if meta.mode() & 0o077 != 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
                    return Err(StateError::BadKey {
                        path: file,
                        reason: format!(
                            "mode {:o}, owner uid {}: others could have read it",
                            meta.mode() & 0o7777,
                            meta.uid()
                        ),
                    });
                }
                let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(33));
                Read::by_ref(&mut f)
                    .take(33)
                    .read_to_end(&mut bytes)
                    .map_err(io(&file, "read"))?;
                let identity = (bytes.len() == 32)
                    .then(|| Identity::from_secret(&bytes))
                    .flatten()
                    .ok_or_else(|| StateError::BadKey {
                        path: file.clone(),
                        reason: format!("{} bytes, not a 32-byte X25519 key", bytes.len()),
                    })?;
                Ok((identity, false))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let identity = Identity::generate();
                let tmp = self.path.join(format!("{SEALING_KEY_FILE}.tmp"));
                let _ = fs::remove_file(&tmp);
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&tmp)
                    .map_err(io(&tmp, "create"))?;
                f.write_all(&identity.secret_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io(&tmp, "write"))?;
                fs::rename(&tmp, &file).map_err(io(&file, "rename into place"))?;
                Ok((identity, true))
            }
            Err(e) => Err(io(&file, "open")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shm_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("stek-state-test-")
            .tempdir_in("/dev/shm")
            .expect("a dir on /dev/shm")
    }

    #[test]
    fn the_sealing_key_survives_a_restart_and_is_private() {
        let base = shm_dir();
        let dir = base.path().join("state");
        let first = {
            let s = StateDir::open(&dir).expect("open");
            let (id, made) = s.sealing_identity().expect("a key");
            assert!(made);
            id.public().to_bytes()
        };
        let meta = fs::metadata(dir.join(SEALING_KEY_FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let s = StateDir::open(&dir).expect("reopen");
        let (again, made) = s.sealing_identity().expect("the same key");
        assert!(!made);
        assert_eq!(again.public().to_bytes(), first, "a restart keeps the key");
    }

    #[test]
    fn a_second_node_on_one_state_dir_is_refused() {
        let base = shm_dir();
        let dir = base.path().join("state");
        let _held = StateDir::open(&dir).expect("first");
        let e = StateDir::open(&dir).expect_err("second");
        assert!(e.to_string().contains("in use by another stek node"), "{e}");
    }

    #[test]
    fn a_state_dir_on_disk_or_open_to_others_or_a_bad_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        // The build tree is on disk (CI's clone and this machine's are).
        let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        fs::set_permissions(disk.path(), fs::Permissions::from_mode(0o700)).unwrap();
        if nix::sys::statfs::statfs(disk.path())
            .map(|s| crate::writer::fs_name(s.filesystem_type()) != "tmpfs")
            .unwrap_or(false)
        {
            let e = StateDir::open(disk.path()).expect_err("on disk");
            assert!(matches!(e, StateError::NotRamDisk { .. }), "{e}");
        }
        let base = shm_dir();
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o750)).unwrap();
        let e = StateDir::open(base.path()).expect_err("group can enter");
        assert!(matches!(e, StateError::NotPrivate { .. }), "{e}");
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(base.path().join(SEALING_KEY_FILE), b"short").unwrap();
        fs::set_permissions(
            base.path().join(SEALING_KEY_FILE),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let s = StateDir::open(base.path()).unwrap();
        let e = s.sealing_identity().expect_err("5 bytes");
        assert!(e.to_string().contains("5 bytes"), "{e}");
        fs::set_permissions(
            base.path().join(SEALING_KEY_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = s.sealing_identity().expect_err("readable by others");
        assert!(e.to_string().contains("others could have read it"), "{e}");
    }
}
