//! The RAM-disk writer: puts rendered key files on a tmpfs or ramfs, atomically.
//!
//! Each file is written to a temp file in the same directory (mode 0600, optional owner and
//! group), and only when every file of a target is fully written are they renamed over the old
//! ones. Any failure (full RAM disk, permission denied, missing directory) removes the temp
//! files and leaves the previous files exactly as they were (I5).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::statfs::{statfs, FsType};
use nix::unistd::{Gid, Uid};
use stek_core::formats::SecretBytes;

/// What the writer needs to know about a target.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Owner of the written files (default: the user stek runs as).
    pub owner: Option<Uid>,
    /// Group of the written files.
    pub group: Option<Gid>,
    /// The operator accepted keys on persistent storage for this target.
    pub allow_persistent_storage: bool,
    /// Leave an mtime strictly newer (whole seconds) than the file had (Traffic Server).
    pub mtime_must_advance: bool,
}

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// A file system type, named when known.
pub fn fs_name(t: FsType) -> String {
    #[allow(clippy::useless_conversion)] // f_type's width differs between platforms
    let raw = i64::from(t.0);
    let known = match raw {
        TMPFS_MAGIC => "tmpfs",
        RAMFS_MAGIC => "ramfs",
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x794c_7630 => "overlayfs",
        0x6969 => "nfs",
        0x2fc1_2fc1 => "zfs",
        0x0102_1997 => "9p",
        0x6573_5546 => "fuse",
        _ => "",
    };
    if known.is_empty() {
        format!("an unknown file system (type 0x{raw:x})")
    } else {
        known.to_owned()
    }
}

/// Why a target's files could not be written. The previous files are untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The directory is on persistent storage.
    #[error("{path} is on {fs}, not on a RAM disk; ticket keys must never touch persistent storage. Mount a tmpfs there (mount -t tmpfs -o size=1m,mode=0700 tmpfs {path}; add noswap on Linux 6.4+) or, if you accept keys on disk, set allow_persistent_storage = true for this target")]
    NotRamDisk {
        /// The target directory.
        path: PathBuf,
        /// The file system found.
        fs: String,
    },
    /// The directory does not exist.
    #[error("{path} does not exist; create it on a RAM disk: mkdir -p {path} && mount -t tmpfs -o size=1m,mode=0700 tmpfs {path}")]
    MissingDir {
        /// The target directory.
        path: PathBuf,
    },
    /// Other users could read or replace the key files.
    #[error("{path} has mode {mode:o}: other users can read or write it, and so read or replace ticket keys; run chmod o-rwx {path}")]
    OpenToOthers {
        /// The target directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file system call failed.
    #[error("cannot {op} {path}: {source}{hint}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> WriteError {
    let hint = match source.raw_os_error() {
        Some(libc_enospc) if libc_enospc == nix::libc::ENOSPC => {
            " (the RAM disk is full: enlarge it with mount -o remount,size=... or free space; the previous keys stay in place)"
        }
        Some(e) if e == nix::libc::EACCES || e == nix::libc::EPERM => {
            " (permission denied: run stek as a user that may write there and set owner/group, or fix the directory's owner)"
        }
        Some(e) if e == nix::libc::EROFS => " (the file system is read-only: remount it read-write)",
        Some(e) if e == nix::libc::ENOENT => " (the directory disappeared: recreate the RAM disk)",
        _ => "",
    };
    WriteError::Io {
        op,
        path: path.to_owned(),
        source,
        hint,
    }
}

/// Checks that `dir` exists, is on tmpfs or ramfs (unless allowed otherwise) and is closed to
/// other users. Returns the file system's name.
pub fn check_directory(dir: &Path, opts: &WriteOptions) -> Result<String, WriteError> {
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(WriteError::MissingDir {
                path: dir.to_owned(),
            })
        }
        Err(e) => return Err(io_err("inspect", dir, e)),
    };
    if !meta.is_dir() {
        return Err(io_err(
            "use as a directory",
            dir,
            io::Error::from_raw_os_error(nix::libc::ENOTDIR),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(WriteError::OpenToOthers {
            path: dir.to_owned(),
            mode,
        });
    }
    let st = statfs(dir).map_err(|e| io_err("statfs", dir, io::Error::from(e)))?;
    let fs = fs_name(st.filesystem_type());
    if fs != "tmpfs" && fs != "ramfs" && !opts.allow_persistent_storage {
        return Err(WriteError::NotRamDisk {
            path: dir.to_owned(),
            fs,
        });
    }
    Ok(fs)
}

/// Writes one file atomically (temp file + rename).
pub fn write_file(path: &Path, bytes: &SecretBytes, opts: &WriteOptions) -> Result<(), WriteError> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_files(&dir, &[(name, bytes.clone())], opts, &|_| false)
}

/// The directory a file target lives in.
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Writes several files into `dir`: all temp files first, then every rename. If anything fails
/// before the renames, no existing file has changed. Afterwards, files for which `owned` is
/// true but that were not written are removed (stale slots holding old key bytes).
pub fn write_files(
    dir: &Path,
    files: &[(String, SecretBytes)],
    opts: &WriteOptions,
    owned: &dyn Fn(&str) -> bool,
) -> Result<(), WriteError> {
    check_directory(dir, opts)?;
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(files.len());
    let result = (|| {
        for (name, bytes) in files {
            let target = dir.join(name);
            let temp = dir.join(format!(".{name}.stek-tmp-{}", std::process::id()));
            staged.push((temp.clone(), target.clone()));
            stage(&temp, &target, bytes, opts)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (temp, _) in &staged {
            let _ = fs::remove_file(temp);
        }
        return Err(e);
    }
    for (i, (temp, target)) in staged.iter().enumerate() {
        if let Err(e) = fs::rename(temp, target) {
            for (t, _) in &staged[i..] {
                let _ = fs::remove_file(t);
            }
            return Err(io_err("rename into place", target, e));
        }
    }
    prune(dir, files, owned)
}

fn prune(
    dir: &Path,
    written: &[(String, SecretBytes)],
    owned: &dyn Fn(&str) -> bool,
) -> Result<(), WriteError> {
    let entries = fs::read_dir(dir).map_err(|e| io_err("list", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owned(&name) && !written.iter().any(|(w, _)| *w == name) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| io_err("remove the stale key file", &path, e))?;
            tracing::info!(path = %path.display(), "removed a stale key file this target no longer uses");
        }
    }
    Ok(())
}

fn stage(
    temp: &Path,
    target: &Path,
    bytes: &SecretBytes,
    opts: &WriteOptions,
) -> Result<(), WriteError> {
    // A leftover temp file from a crashed run is ours to replace.
    let _ = fs::remove_file(temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)
        .map_err(|e| io_err("create", temp, e))?;
    if opts.owner.is_some() || opts.group.is_some() {
        std::os::unix::fs::fchown(
            &file,
            opts.owner.map(|u| u.as_raw()),
            opts.group.map(|g| g.as_raw()),
        )
        .map_err(|e| io_err("set the owner of", temp, e))?;
    }
    file.write_all(bytes.as_bytes())
        .map_err(|e| io_err("write", temp, e))?;
    file.flush().map_err(|e| io_err("write", temp, e))?;
    if opts.mtime_must_advance {
        set_advanced_mtime(&file, target).map_err(|e| io_err("set the mtime of", temp, e))?;
    }
    Ok(())
}

/// Sets the mtime to a whole second strictly after both the current file's mtime and the
/// current second. Traffic Server reloads the file only if its mtime is strictly newer than the
/// wall-clock second of its last load, which may be this very second: so "now" is not enough
/// and the file gets `now + 1` (or one more than its previous mtime, whichever is later).
fn set_advanced_mtime(file: &File, previous: &Path) -> io::Result<()> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let after_previous = match fs::metadata(previous) {
        Ok(m) => u64::try_from(m.mtime()).unwrap_or(0) + 1,
        Err(_) => 0,
    };
    let secs = (now + 1).max(after_previous);
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A private directory on /dev/shm (tmpfs on Linux).
    fn shm_dir() -> tempfile::TempDir {
        let d = tempfile::Builder::new()
            .prefix("stek-writer-")
            .tempdir_in("/dev/shm")
            .unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    fn bytes(b: &[u8]) -> SecretBytes {
        SecretBytes::from(b.to_vec())
    }

    #[test]
    fn writes_mode_0600_and_leaves_no_temp_files() {
        let d = shm_dir();
        let p = d.path().join("ticket.key");
        write_file(&p, &bytes(b"first"), &WriteOptions::default()).unwrap();
        write_file(&p, &bytes(b"second"), &WriteOptions::default()).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ticket.key")]);
    }

    #[test]
    fn refuses_persistent_storage_naming_path_and_fs_and_how_to_fix() {
        // The crate directory is on the machine's disk, not a RAM disk.
        let d = tempfile::Builder::new()
            .prefix("stek-disk-")
            .tempdir_in(env!("CARGO_MANIFEST_DIR"))
            .unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let p = d.path().join("k");
        let err = write_file(&p, &bytes(b"x"), &WriteOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, WriteError::NotRamDisk { .. }), "{msg}");
        assert!(msg.contains(&d.path().display().to_string()), "{msg}");
        assert!(msg.contains("mount -t tmpfs"), "{msg}");
        assert!(msg.contains("allow_persistent_storage = true"), "{msg}");
        assert!(!p.exists());
        let allowed = WriteOptions {
            allow_persistent_storage: true,
            ..WriteOptions::default()
        };
        write_file(&p, &bytes(b"x"), &allowed).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"x");
    }

    #[test]
    fn missing_directory_says_how_to_create_it() {
        let d = shm_dir();
        let p = d.path().join("nope/ticket.key");
        let msg = write_file(&p, &bytes(b"x"), &WriteOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("does not exist"), "{msg}");
        assert!(msg.contains("mkdir -p"), "{msg}");
    }

    #[test]
    fn refuses_a_directory_open_to_other_users() {
        let d = shm_dir();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let msg = write_file(&d.path().join("k"), &bytes(b"x"), &WriteOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("mode 755"), "{msg}");
        assert!(msg.contains("chmod o-rwx"), "{msg}");
    }

    #[test]
    fn a_failure_half_way_leaves_every_previous_file_intact() {
        let d = shm_dir();
        let opts = WriteOptions::default();
        let files = |tag: &str| -> Vec<(String, SecretBytes)> {
            (0..3)
                .map(|i| (format!("{i}.key"), bytes(format!("{tag}{i}").as_bytes())))
                .collect()
        };
        let none = |_: &str| false;
        write_files(d.path(), &files("old"), &opts, &none).unwrap();
        // Make the third temp file impossible to create: a directory in its place.
        let blocker = d
            .path()
            .join(format!(".2.key.stek-tmp-{}", std::process::id()));
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("pin"), b"").unwrap();
        let err = write_files(d.path(), &files("new"), &opts, &none).unwrap_err();
        assert!(err.to_string().contains("cannot"), "{err}");
        for i in 0..3 {
            assert_eq!(
                fs::read(d.path().join(format!("{i}.key"))).unwrap(),
                format!("old{i}").as_bytes()
            );
        }
        assert!(!d
            .path()
            .join(format!(".0.key.stek-tmp-{}", std::process::id()))
            .exists());
    }

    #[test]
    fn a_full_or_read_only_ram_disk_keeps_the_old_file_and_says_why() {
        // CI runs as root; elsewhere the test says why it is skipped instead of passing silently.
        if !crate::test_support::needs_root("mount a tiny tmpfs, fill it, remount it read-only") {
            return;
        }
        let d = shm_dir();
        let mnt = d.path().join("small");
        fs::create_dir(&mnt).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8k,mode=0700", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs failed");
        // Unmounts even when an assertion fails.
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let _guard = Unmount(mnt.clone());
        let p = mnt.join("ticket.key");
        write_file(&p, &bytes(b"old"), &WriteOptions::default()).unwrap();
        let huge = bytes(&vec![7u8; 64 * 1024]);
        let msg = write_file(&p, &huge, &WriteOptions::default())
            .unwrap_err()
            .to_string();
        let content = fs::read(&p).unwrap();
        assert!(msg.contains("the RAM disk is full"), "{msg}");
        assert_eq!(content, b"old");
        // A read-only RAM disk: the same promise, another message.
        let ro = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(ro.success(), "remount ro failed");
        let msg = write_file(&p, &bytes(b"new"), &WriteOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("read-only"), "{msg}");
        let content = fs::read(&p).unwrap();
        assert_eq!(content, b"old");
    }

    #[test]
    fn owned_files_that_were_not_written_are_removed_and_others_kept() {
        let d = shm_dir();
        let opts = WriteOptions::default();
        let owned = |n: &str| n.ends_with(".key");
        let three: Vec<_> = (0..3).map(|i| (format!("{i}.key"), bytes(b"k"))).collect();
        write_files(d.path(), &three, &opts, &owned).unwrap();
        fs::write(d.path().join("notes.txt"), b"operator's file").unwrap();
        write_files(d.path(), &three[..2], &opts, &owned).unwrap();
        assert!(d.path().join("1.key").exists());
        assert!(
            !d.path().join("2.key").exists(),
            "stale slot must be removed"
        );
        assert!(
            d.path().join("notes.txt").exists(),
            "files stek does not own stay"
        );
    }

    #[test]
    fn mtime_advances_by_at_least_a_second_on_every_write() {
        let d = shm_dir();
        let p = d.path().join("ats.key");
        let opts = WriteOptions {
            mtime_must_advance: true,
            ..WriteOptions::default()
        };
        let mut last = 0;
        for i in 0..4u8 {
            let before = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            write_file(&p, &bytes(&[i; 48]), &opts).unwrap();
            let m = fs::metadata(&p).unwrap().mtime();
            assert!(m > last, "write {i}: mtime {m} did not advance past {last}");
            // Strictly after the second of the write, so a load in this second cannot hide it.
            assert!(
                m > before,
                "write {i}: mtime {m} is not after the current second {before}"
            );
            last = m;
        }
    }

    #[test]
    fn owner_and_group_are_applied() {
        if !crate::test_support::needs_root("chown a key file to another user (nobody)") {
            return;
        }
        let d = shm_dir();
        let p = d.path().join("k");
        let opts = WriteOptions {
            owner: Some(Uid::from_raw(65534)),
            group: Some(Gid::from_raw(65534)),
            ..WriteOptions::default()
        };
        write_file(&p, &bytes(b"x"), &opts).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o600));
    }
}
