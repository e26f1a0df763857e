//! The node's state directory on a RAM disk: its sealing private keys, its rollback floor and
//! its instance id.
//!
//! The keys that open this node's sealed copies of the ring must outlive the process (an
//! upgrade restarts every box at once, and a ring nobody can open is thrown away with every
//! ticket key in it) but not the machine: the ticket keys already sit in plaintext on the same
//! RAM disk, and a reboot must forget both. So they are kept in `state_dir`, which must be a
//! tmpfs or ramfs directory only this user can enter, in 0600 files. A lock file keeps two
//! nodes from sharing one directory (and so one key).
//!
//! The keys ratchet ([`crate::engine::ratchet`] decides; [`Sealing`] performs): at most two
//! private keys at any time, `sealing-<key id>.key`, and every key that opens no ring the node
//! may still need is overwritten, unlinked and the directory synced. Beside them:
//! - `floor`: the newest ring this node accepted (generation, digest, term, writer), written
//!   before the ring is applied and read before the first store read after a start, so that a
//!   restarted process refuses an older ring as the running one did;
//! - `instance`: 8 random bytes in hex, made at the first start after a boot: the store tells
//!   a restart of this box from a second box with the same node id by it.
//!
//! A reboot empties the directory: new keys, no floor, a new instance; every copy sealed to a
//! key from before opens with no key that exists.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use stek_core::RingDigest;
use stek_store::seal::{Identity, MemberKeyId};
use tracing::{info, warn};

use crate::engine::floor::Floor;
use crate::engine::ratchet::{self, Action, Roles};

/// The sealing key file of a stek from before the ratchet (one key per boot): taken over as
/// the announced key at the first start of this version.
pub const LEGACY_SEALING_KEY_FILE: &str = "sealing.key";
/// The prefix of a sealing key's file: `sealing-<key id>.key`.
const KEY_PREFIX: &str = "sealing-";
const KEY_SUFFIX: &str = ".key";
/// The rollback floor's file.
pub const FLOOR_FILE: &str = "floor";
/// The instance id's file.
pub const INSTANCE_FILE: &str = "instance";
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
    #[error("state_dir {path}: {reason}; it holds the keys that open this node's ticket keys: make it owned by the user stek runs as, mode 0700")]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory is not on a RAM disk.
    #[error("state_dir {path} is on {fs}, not tmpfs or ramfs: the sealing keys would outlive a reboot on disk. Point state_dir at a RAM disk (the default is under /run)")]
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
    /// A key file is not a key.
    #[error("{path} is not a sealing key ({reason}); remove it and start the node again: it makes a new key and is sealed a new copy")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The floor or instance file is not what this stek writes.
    #[error("{path} is unreadable ({reason}); remove it and start the node again (a removed floor lets this process accept any valid ring once, as after a reboot)")]
    BadFile {
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

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the instance, the floor and the keys, brings the keys to what the ratchet keeps
    /// ([`ratchet::on_start`]: the floor's key and one announced key, a new one made if
    /// missing) and returns them, holding this directory.
    pub fn load(self) -> Result<Sealing, StateError> {
        self.clean_up_after_a_kill()?;
        let instance = self.instance()?;
        let floor = self.read_floor()?;
        self.take_over_legacy_key()?;
        let mut keys = Vec::new();
        for id in self.key_ids()? {
            keys.push(self.read_key(id)?);
        }
        let ids: Vec<MemberKeyId> = keys.iter().map(|k| k.public().id()).collect();
        let (roles, actions) = ratchet::on_start(&ids, floor.as_ref());
        let mut sealing = Sealing {
            dir: self,
            instance,
            floor,
            keys,
            roles,
            made_at_start: false,
        };
        sealing.made_at_start = actions.contains(&Action::MakeNext);
        sealing.perform(&actions)?;
        Ok(sealing)
    }

    /// What a process killed in the middle of a write or an erase left: a temp file (of a key
    /// never announced, or of a floor never renamed into place), overwritten and removed; a
    /// key file already overwritten with zeros but not yet unlinked, removed.
    fn clean_up_after_a_kill(&self) -> Result<(), StateError> {
        for entry in fs::read_dir(&self.path).map_err(io(&self.path, "list"))? {
            let entry = entry.map_err(io(&self.path, "list"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let half_erased = name.starts_with(KEY_PREFIX)
                && name.ends_with(KEY_SUFFIX)
                && fs::read(&path).is_ok_and(|b| !b.is_empty() && b.iter().all(|x| *x == 0));
            if name.ends_with(".tmp") || half_erased {
                self.erase_path(&path)?;
            }
        }
        Ok(())
    }

    /// The instance id, made (and synced) when the directory has none.
    fn instance(&self) -> Result<String, StateError> {
        let file = self.path.join(INSTANCE_FILE);
        match read_private(&file, 64).map_err(not_a_file)? {
            Some(bytes) => {
                let text = String::from_utf8(bytes.to_vec()).unwrap_or_default();
                let text = text.trim();
                if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(StateError::BadFile {
                        path: file,
                        reason: "not 16 hex digits".into(),
                    });
                }
                Ok(text.to_owned())
            }
            None => {
                let instance = format!("{:016x}", rand::random::<u64>());
                self.write_atomically(INSTANCE_FILE, instance.as_bytes())?;
                Ok(instance)
            }
        }
    }

    fn read_floor(&self) -> Result<Option<Floor>, StateError> {
        let file = self.path.join(FLOOR_FILE);
        let Some(bytes) = read_private(&file, 4096).map_err(not_a_file)? else {
            return Ok(None);
        };
        let bad = |reason: &str| StateError::BadFile {
            path: file.clone(),
            reason: reason.to_owned(),
        };
        let r: FloorFile = serde_json::from_slice(&bytes).map_err(|_| bad("not a floor record"))?;
        Ok(Some(Floor {
            generation: r.generation,
            digest: RingDigest::from_hex(&r.digest).ok_or_else(|| bad("a bad digest"))?,
            term: r.term,
            writer: r.writer,
            last_epoch: r.last_epoch,
            key: MemberKeyId::from_hex(&r.key).ok_or_else(|| bad("a bad key id"))?,
            retire: match r.retire {
                Some(k) => Some(MemberKeyId::from_hex(&k).ok_or_else(|| bad("a bad key id"))?),
                None => None,
            },
        }))
    }

    /// Renames a key file of a stek from before the ratchet to a key file of this one: it
    /// opens the stored ring's copy, and becomes `next` until the first ring is opened.
    fn take_over_legacy_key(&self) -> Result<(), StateError> {
        let legacy = self.path.join(LEGACY_SEALING_KEY_FILE);
        if !legacy.exists() {
            return Ok(());
        }
        let key = self.read_key_file(&legacy)?;
        let to = self.key_path(key.public().id());
        fs::rename(&legacy, &to).map_err(io(&to, "rename the sealing key of an earlier stek"))?;
        self.sync()?;
        info!(state_dir = %self.path.display(), key = %key.public().id(), "took over the sealing key of the stek before the ratchet");
        Ok(())
    }

    /// The ids of the key files here, sorted.
    fn key_ids(&self) -> Result<Vec<MemberKeyId>, StateError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(io(&self.path, "list"))? {
            let entry = entry.map_err(io(&self.path, "list"))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix(KEY_PREFIX)?.strip_suffix(KEY_SUFFIX))
            else {
                continue;
            };
            match MemberKeyId::from_hex(id) {
                Some(id) => ids.push(id),
                None => {
                    return Err(StateError::BadKey {
                        path: entry.path(),
                        reason: "its name is not a key id".into(),
                    })
                }
            }
        }
        ids.sort_by_key(ToString::to_string);
        Ok(ids)
    }

    fn key_path(&self, id: MemberKeyId) -> PathBuf {
        self.path.join(format!("{KEY_PREFIX}{id}{KEY_SUFFIX}"))
    }

    fn read_key(&self, id: MemberKeyId) -> Result<Identity, StateError> {
        let file = self.key_path(id);
        let key = self.read_key_file(&file)?;
        if key.public().id() != id {
            return Err(StateError::BadKey {
                path: file,
                reason: format!(
                    "it holds key {}, not the key its name says",
                    key.public().id()
                ),
            });
        }
        Ok(key)
    }

    fn read_key_file(&self, file: &Path) -> Result<Identity, StateError> {
        let bytes = read_private(file, 33)?.unwrap_or_default();
        (bytes.len() == 32)
            .then(|| Identity::from_secret(&bytes))
            .flatten()
            .ok_or_else(|| StateError::BadKey {
                path: file.to_owned(),
                reason: format!("{} bytes, not a 32-byte X25519 key", bytes.len()),
            })
    }

    /// Writes `bytes` as `name` (0600): a temp file, synced, renamed, the directory synced.
    fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let tmp = self.path.join(format!("{name}.tmp"));
        let file = self.path.join(name);
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io(&tmp, "create"))?;
        if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
            let _ = fs::remove_file(&tmp);
            return Err(io(&tmp, "write")(e));
        }
        fs::rename(&tmp, &file).map_err(io(&file, "rename into place"))?;
        self.sync()
    }

    /// Overwrites a key file in place (tmpfs keeps the same pages), syncs it, unlinks it and
    /// syncs the directory: the key's bytes are gone from the RAM disk, not only unlinked.
    fn erase(&self, id: MemberKeyId) -> Result<(), StateError> {
        self.erase_path(&self.key_path(id))
    }

    /// [`StateDir::erase`] of any file here.
    fn erase_path(&self, file: &Path) -> Result<(), StateError> {
        let file = file.to_owned();
        match OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&file)
        {
            Ok(mut f) => {
                let len = f.metadata().map_err(io(&file, "inspect"))?.len();
                let zeros = vec![0u8; usize::try_from(len).unwrap_or(32).max(32)];
                f.write_all(&zeros)
                    .and_then(|()| f.sync_all())
                    .map_err(io(&file, "overwrite"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&file, "open to erase")(e)),
        }
        fs::remove_file(&file).map_err(io(&file, "unlink"))?;
        self.sync()
    }

    fn sync(&self) -> Result<(), StateError> {
        fs::File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.path, "sync the directory"))
    }
}

/// The floor file's JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloorFile {
    generation: u64,
    digest: String,
    term: i64,
    writer: String,
    last_epoch: u64,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retire: Option<String>,
}

/// A state file other than a key that others could read, said as such.
fn not_a_file(e: StateError) -> StateError {
    match e {
        StateError::BadKey { path, reason } => StateError::BadFile { path, reason },
        other => other,
    }
}

/// Reads `file` (at most `limit` bytes) if it exists, refusing one that others could read or
/// that is not this user's.
fn read_private(
    file: &Path,
    limit: u64,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, StateError> {
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(file, "open")(e)),
    };
    let meta = f.metadata().map_err(io(file, "inspect"))?;
    if meta.mode() & 0o077 != 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(StateError::BadKey {
            path: file.to_owned(),
            reason: format!(
                "mode {:o}, owner uid {}: others could have read it",
                meta.mode() & 0o7777,
                meta.uid()
            ),
        });
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(64));
    Read::by_ref(&mut f)
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(io(file, "read"))?;
    Ok(Some(bytes))
}

/// The node's sealing keys and rollback floor, held in memory and in its state directory.
/// Private keys zeroize on drop (x25519-dalek) and are never printed.
#[derive(Debug)]
pub struct Sealing {
    dir: StateDir,
    instance: String,
    floor: Option<Floor>,
    /// At most two.
    keys: Vec<Identity>,
    roles: Roles,
    made_at_start: bool,
}

impl Sealing {
    /// The box's instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The newest ring this node accepted (kept across restarts).
    pub fn floor(&self) -> Option<&Floor> {
        self.floor.as_ref()
    }

    /// Which key plays which part.
    pub fn roles(&self) -> Roles {
        self.roles
    }

    /// Whether the start found no key to announce and made one (a boot, or a new box).
    pub fn made_at_start(&self) -> bool {
        self.made_at_start
    }

    /// The private key with this id, if this node holds it.
    pub fn key(&self, id: MemberKeyId) -> Option<&Identity> {
        self.keys.iter().find(|k| k.public().id() == id)
    }

    /// The key this node announces: `next`, or `current` while no `next` could be made.
    pub fn announced(&self) -> &Identity {
        self.roles
            .next
            .or(self.roles.current)
            .and_then(|id| self.key(id))
            .or_else(|| self.keys.first())
            .expect("a Sealing always holds a key: load makes one, and the ratchet erases the old current only after making next its current")
    }

    /// How many private keys are held (never more than two).
    pub fn held(&self) -> usize {
        self.keys.len()
    }

    /// The state directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Performs the ratchet's actions in order: the floor is on the RAM disk before any key is
    /// erased or made, and a key is erased before the next one is made. A failure stops at the
    /// action that failed; memory holds what the directory holds.
    pub fn perform(&mut self, actions: &[Action]) -> Result<(), StateError> {
        for action in actions {
            let made = match action {
                Action::WriteFloor(f) => {
                    let text = serde_json::to_vec(&FloorFile {
                        generation: f.generation,
                        digest: f.digest.to_string(),
                        term: f.term,
                        writer: f.writer.clone(),
                        last_epoch: f.last_epoch,
                        key: f.key.to_string(),
                        retire: f.retire.map(|k| k.to_string()),
                    })
                    .expect("a floor record always serialises: plain numbers and strings");
                    self.dir.write_atomically(FLOOR_FILE, &text)?;
                    self.floor = Some(f.clone());
                    None
                }
                Action::Erase(id) => {
                    self.dir.erase(*id)?;
                    self.keys.retain(|k| k.public().id() != *id);
                    None
                }
                Action::Promote => None,
                Action::MakeNext => {
                    let key = Identity::generate();
                    let id = key.public().id();
                    let file = format!("{KEY_PREFIX}{id}{KEY_SUFFIX}");
                    self.dir.write_atomically(&file, &key.secret_bytes())?;
                    self.keys.push(key);
                    Some(id)
                }
            };
            self.roles = ratchet::after(self.roles, std::slice::from_ref(action), made);
        }
        if self.keys.len() > 2 {
            warn!(
                held = self.keys.len(),
                "more than two sealing keys held: a bug in the ratchet"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stek_store::StoredRing;

    fn shm_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("stek-state-test-")
            .tempdir_in("/dev/shm")
            .expect("a dir on /dev/shm")
    }

    fn load(dir: &Path) -> Sealing {
        StateDir::open(dir).expect("open").load().expect("load")
    }

    /// The key files in the directory, by id.
    fn key_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(KEY_PREFIX) && n.ends_with(KEY_SUFFIX))
            .collect();
        names.sort();
        names
    }

    fn stored(generation: u64) -> StoredRing {
        crate::engine::floor::test_ring(generation, 7, "n1")
    }

    /// What the runtime does when it opens a ring with `key`.
    fn open_with(s: &mut Sealing, generation: u64, key: MemberKeyId) {
        let actions = ratchet::on_open(s.roles(), Floor::of(&stored(generation), key));
        s.perform(&actions).unwrap();
    }

    #[test]
    fn a_restart_keeps_the_keys_the_floor_and_the_instance_and_they_are_private() {
        let base = shm_dir();
        let dir = base.path().join("state");
        let (instance, announced) = {
            let s = load(&dir);
            assert!(s.made_at_start());
            assert_eq!(s.held(), 1);
            assert!(s.floor().is_none());
            (s.instance().to_owned(), s.announced().public().id())
        };
        assert_eq!(instance.len(), 16);
        for f in key_files(&dir)
            .iter()
            .map(String::as_str)
            .chain([INSTANCE_FILE])
        {
            assert_eq!(
                fs::metadata(dir.join(f)).unwrap().mode() & 0o777,
                0o600,
                "{f}"
            );
        }
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let mut s = load(&dir);
        assert!(!s.made_at_start());
        assert_eq!(s.instance(), instance);
        assert_eq!(
            s.announced().public().id(),
            announced,
            "a restart keeps the key"
        );
        // It opens ring 5 with the announced key: floor, and a fresh key announced.
        open_with(&mut s, 5, announced);
        let next = s.announced().public().id();
        assert_ne!(next, announced);
        assert_eq!(s.roles().current, Some(announced));
        drop(s);
        let s = load(&dir);
        assert_eq!(
            s.floor().map(|f| f.generation),
            Some(5),
            "the floor survives"
        );
        assert_eq!(s.roles().current, Some(announced));
        assert_eq!(s.roles().next, Some(next));
        assert_eq!(s.instance(), instance);
        assert_eq!(
            fs::metadata(dir.join(FLOOR_FILE)).unwrap().mode() & 0o777,
            0o600
        );
    }

    /// Twenty rings: never more than two keys on the RAM disk, each erased key's file gone
    /// and its bytes overwritten first (checked through a hard link, which sees the same
    /// pages after the unlink), and a lost acknowledgement erases nothing.
    #[test]
    fn the_keys_ratchet_on_disk_and_an_erased_key_is_overwritten() {
        let base = shm_dir();
        let dir = base.path().join("state");
        let mut s = load(&dir);
        let mut erased = Vec::new();
        for generation in 1..=20 {
            let before = s.roles();
            let current = before.current;
            let witness = current.map(|c| {
                let link = base.path().join(format!("witness-{generation}"));
                fs::hard_link(dir.join(format!("{KEY_PREFIX}{c}{KEY_SUFFIX}")), &link).unwrap();
                (c, link)
            });
            let announced = s.announced().public().id();
            open_with(&mut s, generation, announced);
            assert!(key_files(&dir).len() <= 2, "{:?}", key_files(&dir));
            assert_eq!(s.held(), 2);
            if let Some((c, link)) = witness {
                assert!(s.key(c).is_none(), "the old current is erased");
                assert!(!dir.join(format!("{KEY_PREFIX}{c}{KEY_SUFFIX}")).exists());
                assert_eq!(fs::read(&link).unwrap(), vec![0u8; 32], "overwritten first");
                erased.push(c);
            }
        }
        assert_eq!(erased.len(), 19);
        // The floor's ring opened again with current (a restart): nothing changes.
        let floor = s.floor().cloned().unwrap();
        assert!(ratchet::on_open(s.roles(), floor.clone()).is_empty());
        assert_eq!(key_files(&dir).len(), 2);
    }

    /// A process killed between the floor and the erase: the next start erases the key the
    /// floor retired (it never announces it again), and makes a next.
    #[test]
    fn a_start_after_a_kill_before_the_erase_erases_the_retired_key() {
        let base = shm_dir();
        let dir = base.path().join("state");
        let mut s = load(&dir);
        let first = s.announced().public().id();
        open_with(&mut s, 1, first);
        let second = s.announced().public().id();
        let actions = ratchet::on_open(s.roles(), Floor::of(&stored(2), second));
        // Killed right after the floor was written.
        s.perform(&actions[..1]).unwrap();
        drop(s);
        assert_eq!(key_files(&dir).len(), 2, "the retired key is still on disk");
        let s = load(&dir);
        assert_eq!(s.roles().current, Some(second));
        assert!(
            s.key(first).is_none(),
            "the retired key is erased at the start"
        );
        assert!(s.roles().next.is_some_and(|n| n != first && n != second));
        assert_eq!(key_files(&dir).len(), 2);
    }

    /// A process killed during an erase (the key overwritten with zeros, not yet unlinked) or
    /// a write (a temp file left): the next start removes what it left and starts.
    #[test]
    fn a_start_after_a_kill_mid_erase_or_mid_write_cleans_up() {
        use std::os::unix::fs::PermissionsExt;
        let base = shm_dir();
        let dir = base.path().join("state");
        drop(load(&dir));
        let id = Identity::generate().public().id();
        let zeros = dir.join(format!("{KEY_PREFIX}{id}{KEY_SUFFIX}"));
        fs::write(&zeros, [0u8; 32]).unwrap();
        fs::set_permissions(&zeros, fs::Permissions::from_mode(0o600)).unwrap();
        let tmp = dir.join(format!("{KEY_PREFIX}{id}{KEY_SUFFIX}.tmp"));
        fs::write(&tmp, Identity::generate().secret_bytes().as_slice()).unwrap();
        let s = load(&dir);
        assert!(!zeros.exists() && !tmp.exists());
        assert_eq!(s.held(), 1);
    }

    /// A process killed between two actions of a ratchet: the next start finds the floor
    /// written and one key, and makes the missing one.
    #[test]
    fn a_start_after_a_kill_mid_ratchet_makes_the_missing_key() {
        let base = shm_dir();
        let dir = base.path().join("state");
        let mut s = load(&dir);
        let first = s.announced().public().id();
        open_with(&mut s, 1, first);
        let second = s.announced().public().id();
        // Killed after the floor and the erase, before the new key was made.
        let f = Floor::of(&stored(2), second);
        s.perform(&[Action::WriteFloor(f.clone()), Action::Erase(first)])
            .unwrap();
        drop(s);
        assert_eq!(key_files(&dir).len(), 1);
        let s = load(&dir);
        assert_eq!(s.floor(), Some(&f));
        assert_eq!(s.roles().current, Some(second));
        assert!(s.roles().next.is_some_and(|n| n != second));
        assert_eq!(key_files(&dir).len(), 2);
    }

    /// A reboot empties the RAM disk: new keys, no floor, a new instance.
    #[test]
    fn a_reboot_forgets_the_keys_the_floor_and_the_instance() {
        let base = shm_dir();
        let dir = base.path().join("state");
        let (instance, key) = {
            let mut s = load(&dir);
            let k = s.announced().public().id();
            open_with(&mut s, 3, k);
            (s.instance().to_owned(), k)
        };
        fs::remove_dir_all(&dir).unwrap();
        let s = load(&dir);
        assert!(s.floor().is_none());
        assert_ne!(s.instance(), instance);
        assert!(s.key(key).is_none());
    }

    /// The key file of a stek before the ratchet is taken over as the announced key.
    #[test]
    fn the_sealing_key_of_an_earlier_stek_is_taken_over() {
        let base = shm_dir();
        let dir = base.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let old = Identity::generate();
        let path = dir.join(LEGACY_SEALING_KEY_FILE);
        fs::write(&path, old.secret_bytes().as_slice()).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let s = load(&dir);
        assert!(!path.exists());
        assert!(!s.made_at_start());
        assert_eq!(s.announced().public().id(), old.public().id());
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
    fn a_state_dir_on_disk_or_open_to_others_or_a_bad_file_is_refused() {
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
        let private = |name: &str, bytes: &[u8]| {
            let p = base.path().join(name);
            fs::write(&p, bytes).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let short = private(LEGACY_SEALING_KEY_FILE, b"short");
        let load_err = || StateDir::open(base.path()).unwrap().load().unwrap_err();
        let e = load_err();
        assert!(e.to_string().contains("5 bytes"), "{e}");
        fs::set_permissions(&short, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_err();
        assert!(e.to_string().contains("others could have read it"), "{e}");
        fs::remove_file(&short).unwrap();
        // A key whose name is not the key it holds.
        let other = Identity::generate();
        let named = private(
            &format!(
                "{KEY_PREFIX}{}{KEY_SUFFIX}",
                Identity::generate().public().id()
            ),
            other.secret_bytes().as_slice(),
        );
        let e = load_err();
        assert!(e.to_string().contains("not the key its name says"), "{e}");
        fs::remove_file(&named).unwrap();
        let floor = private(FLOOR_FILE, b"{\"generation\": \"x\"}");
        let e = load_err();
        assert!(e.to_string().contains("unreadable"), "{e}");
        fs::remove_file(&floor).unwrap();
        private(INSTANCE_FILE, b"nope");
        let e = load_err();
        assert!(e.to_string().contains("16 hex digits"), "{e}");
    }
}
