//! HAProxy's runtime API for ticket keys: `show tls-keys <id>` and `set ssl tls-key <id> <key>`
//! over the admin-level stats socket, one command per connection.
//!
//! HAProxy holds a ring of three keys (previous, current, next). `set ssl tls-key` overwrites
//! the previous one with the pushed key, which becomes next, and the former next starts
//! encrypting. To make the running ring equal to the wanted one, stek pushes only the keys that
//! the running ring lacks at its end, so an up-to-date server is left alone and one rotation
//! is exactly one push. Commands carry key bytes: they are never logged or put in errors.
//!
//! Before a command is sent, the kernel is asked who listens on the socket (`SO_PEERCRED`):
//! root, stek's own user, or the owner of the socket file in a directory not every user can
//! write (`judge_listener`). Another local user who put a socket of their own at the path
//! gets no command, so no key. An answer is read up to [`MAX_ANSWER`] bytes, within
//! [`IO_TIMEOUT`] for the whole exchange.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stek_core::formats::SecretText;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use zeroize::Zeroizing;

/// How long one socket exchange (connect, command, whole answer) may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The most stek reads of one answer. HAProxy answers `show tls-keys <ref>` with a few hundred
/// bytes (a header and one line per key) and `set ssl tls-key` with one line: a longer answer
/// is not HAProxy's, and reading on would let whatever listens there grow stek's memory
/// without limit within [`IO_TIMEOUT`].
pub const MAX_ANSWER: usize = 256 * 1024;

/// A runtime API failure. Never contains key bytes.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The socket could not be used.
    #[error("HAProxy stats socket {socket}: {source} (is HAProxy running with `stats socket {socket} level admin`?)")]
    Socket {
        /// The socket path.
        socket: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("HAProxy stats socket {socket} did not answer within {IO_TIMEOUT:?}")]
    Timeout {
        /// The socket path.
        socket: PathBuf,
    },
    /// The process listening on the socket is neither root, stek's user, nor the socket
    /// file's owner: someone else's socket may have taken HAProxy's place.
    #[error("HAProxy stats socket {socket} is listened on by uid {peer}, not by uid {owner} who owns the socket file (nor by root or stek's uid {me}): another local user's process may have taken HAProxy's place, so no key was sent; see who listens there (`ss -xlp | grep {socket}`) and restart HAProxy")]
    Stranger {
        /// The socket path.
        socket: PathBuf,
        /// The uid the listening process ran as when it called listen(2).
        peer: u32,
        /// The socket file's owner.
        owner: u32,
        /// stek's effective uid.
        me: u32,
    },
    /// The process listening on the socket is not root or stek's user, and any user could
    /// have put the socket there.
    #[error("HAProxy stats socket {socket} is listened on by uid {peer}, and any local user can write its directory {dir} (mode {mode:04o}), so that socket may be any of theirs and no key was sent; put the stats socket in a directory only HAProxy's user can write (e.g. /run/haproxy), or let HAProxy bind it as root")]
    OpenDirectory {
        /// The socket path.
        socket: PathBuf,
        /// The uid the listening process ran as when it called listen(2).
        peer: u32,
        /// The directory the socket file is in.
        dir: PathBuf,
        /// That directory's permission bits.
        mode: u32,
    },
    /// The answer did not end within [`MAX_ANSWER`] bytes.
    #[error("HAProxy stats socket {socket} answered `{command}` with more than {MAX_ANSWER} bytes, so stek stopped reading (HAProxy's answer is a few hundred bytes); see what listens there (`ss -xlp | grep {socket}`)")]
    TooLong {
        /// The command name (without arguments).
        command: &'static str,
        /// The socket path.
        socket: PathBuf,
    },
    /// HAProxy refused the command.
    #[error("HAProxy refused `{command}` for {id} on {socket}: {answer}")]
    Refused {
        /// The command name (without arguments).
        command: &'static str,
        /// The ticket key reference (file path or #id).
        id: String,
        /// The socket path.
        socket: PathBuf,
        /// HAProxy's answer.
        answer: String,
    },
    /// After pushing, HAProxy's ring still differs from the wanted one.
    #[error("after pushing {pushed} key(s), HAProxy's ticket keys for {id} on {socket} still differ from the ring ({detail})")]
    Mismatch {
        /// The ticket key reference.
        id: String,
        /// The socket path.
        socket: PathBuf,
        /// How many keys were pushed.
        pushed: usize,
        /// Which positions differ, without key bytes.
        detail: String,
    },
}

/// One HAProxy instance's ticket key reference, reached through its stats socket.
#[derive(Debug, Clone)]
pub struct RuntimeTarget {
    /// The admin-level stats socket.
    pub socket: PathBuf,
    /// The reference as HAProxy names it: the tls-ticket-keys file path, or `#<id>`.
    pub id: String,
}

/// Whom the kernel says listens on a stats socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// Root, stek's own user (which can read the key files anyway), or the socket file's owner
    /// in a directory not every user can write: it may receive keys.
    Trusted,
    /// Not the socket file's owner.
    Stranger,
    /// The socket file's owner, but in a directory every user can write (like /tmp), where any
    /// of them could have made the socket, and so own it.
    OpenDirectory,
}

/// Judges the process listening on a stats socket from the uid it listened as (`peer`, from
/// `SO_PEERCRED`), stek's effective uid (`me`), the socket file's owner and its directory's
/// permission bits. HAProxy started as root listens as root; one run as its own user owns its
/// socket, in a directory of its own. A local user who put a socket at the path owns it as
/// well, which is why the directory counts: one any user can write is refused.
fn judge_listener(peer: u32, me: u32, owner: u32, dir_mode: u32) -> Listener {
    if peer == 0 || peer == me {
        Listener::Trusted
    } else if peer != owner {
        Listener::Stranger
    } else if dir_mode & 0o002 != 0 {
        Listener::OpenDirectory
    } else {
        Listener::Trusted
    }
}

/// The directory a socket is judged by, with its mode: the one its configured path names and
/// the one it really is in (`real`, links followed), whichever others can write. A link planted
/// where the configured name lives (in /tmp, say), pointing to a socket in a directory of the
/// planter's own, would otherwise be judged by the planter's directory alone.
fn directory_to_judge(configured: &Path, real: &Path) -> std::io::Result<(PathBuf, u32)> {
    let named = configured
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let real_dir = real.parent().unwrap_or(Path::new("/"));
    let mut judged = Vec::with_capacity(2);
    for dir in [named, real_dir] {
        judged.push((dir.to_owned(), std::fs::metadata(dir)?.mode() & 0o7777));
    }
    let open = judged.iter().position(|(_, m)| m & 0o002 != 0).unwrap_or(1);
    Ok(judged.swap_remove(open))
}

impl RuntimeTarget {
    fn socket_error(&self, source: std::io::Error) -> RuntimeError {
        RuntimeError::Socket {
            socket: self.socket.clone(),
            source,
        }
    }

    /// Refuses a listener [`judge_listener`] does not trust.
    fn check_listener(&self, stream: &UnixStream) -> Result<(), RuntimeError> {
        let peer = stream.peer_cred().map_err(|e| self.socket_error(e))?.uid();
        let me = nix::unistd::geteuid().as_raw();
        // The socket file connect(2) reached, through any link, and the directory it is in.
        let real = std::fs::canonicalize(&self.socket).map_err(|e| self.socket_error(e))?;
        let owner = std::fs::metadata(&real)
            .map_err(|e| self.socket_error(e))?
            .uid();
        let (dir, mode) =
            directory_to_judge(Path::new(&self.socket), &real).map_err(|e| self.socket_error(e))?;
        match judge_listener(peer, me, owner, mode) {
            Listener::Trusted => Ok(()),
            Listener::Stranger => Err(RuntimeError::Stranger {
                socket: self.socket.clone(),
                peer,
                owner,
                me,
            }),
            Listener::OpenDirectory => Err(RuntimeError::OpenDirectory {
                socket: self.socket.clone(),
                peer,
                dir,
                mode,
            }),
        }
    }

    async fn exchange(
        &self,
        line: &[u8],
        command: &'static str,
    ) -> Result<Zeroizing<String>, RuntimeError> {
        let work = async {
            let mut stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| self.socket_error(e))?;
            self.check_listener(&stream)?;
            stream
                .write_all(line)
                .await
                .map_err(|e| self.socket_error(e))?;
            stream.shutdown().await.map_err(|e| self.socket_error(e))?;
            // Room for any real answer at once: a buffer grown while reading leaves copies of
            // the keys behind.
            let mut answer = Zeroizing::new(Vec::with_capacity(4096));
            (&mut stream)
                .take(MAX_ANSWER as u64 + 1)
                .read_to_end(&mut answer)
                .await
                .map_err(|e| self.socket_error(e))?;
            if answer.len() > MAX_ANSWER {
                return Err(RuntimeError::TooLong {
                    command,
                    socket: self.socket.clone(),
                });
            }
            Ok(answer)
        };
        let answer =
            tokio::time::timeout(IO_TIMEOUT, work)
                .await
                .map_err(|_| RuntimeError::Timeout {
                    socket: self.socket.clone(),
                })??;
        Ok(Zeroizing::new(
            String::from_utf8_lossy(&answer).into_owned(),
        ))
    }

    /// The running ring, oldest first (previous, current, next), as base64.
    pub async fn show(&self) -> Result<Vec<SecretText>, RuntimeError> {
        let answer = self
            .exchange(
                format!("show tls-keys {}\n", self.id).as_bytes(),
                "show tls-keys",
            )
            .await?;
        let keys = parse_show(&answer);
        if keys.is_empty() {
            return Err(RuntimeError::Refused {
                command: "show tls-keys",
                id: self.id.clone(),
                socket: self.socket.clone(),
                answer: first_line_without_keys(&answer),
            });
        }
        Ok(keys)
    }

    /// Pushes one key; it becomes "next".
    pub async fn set(&self, key_b64: &str) -> Result<(), RuntimeError> {
        let mut line = Zeroizing::new(format!("set ssl tls-key {} ", self.id));
        line.push_str(key_b64);
        line.push('\n');
        let answer = self.exchange(line.as_bytes(), "set ssl tls-key").await?;
        if answer.contains("TLS ticket key updated") {
            Ok(())
        } else {
            Err(RuntimeError::Refused {
                command: "set ssl tls-key",
                id: self.id.clone(),
                socket: self.socket.clone(),
                answer: first_line_without_keys(&answer),
            })
        }
    }

    /// Makes the running ring equal to `wanted` (oldest first, three keys), pushing only what is
    /// missing, then reads it back. Returns how many keys were pushed.
    pub async fn apply(&self, wanted: &[SecretText]) -> Result<usize, RuntimeError> {
        let current = self.show().await?;
        let to_push = keys_to_push(&current, wanted);
        for key in &wanted[wanted.len() - to_push..] {
            self.set(key.expose()).await?;
        }
        let after = self.show().await?;
        if after.as_slice() != wanted {
            let detail = (0..wanted.len().max(after.len()))
                .map(|i| {
                    let same = after.get(i) == wanted.get(i);
                    format!("position {i}: {}", if same { "same" } else { "differs" })
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(RuntimeError::Mismatch {
                id: self.id.clone(),
                socket: self.socket.clone(),
                pushed: to_push,
                detail,
            });
        }
        Ok(to_push)
    }
}

/// How many keys from the end of `wanted` must be pushed so that the running ring, shifted by
/// that many pushes, equals `wanted`.
pub fn keys_to_push(current: &[SecretText], wanted: &[SecretText]) -> usize {
    let n = wanted.len();
    if current.len() != n {
        return n;
    }
    (0..=n)
        .find(|&k| {
            current[k..]
                .iter()
                .zip(&wanted[..n - k])
                .all(|(c, w)| c == w)
        })
        .unwrap_or(n)
}

/// Extracts the keys from a `show tls-keys <id>` answer: lines `<ref>.<n> <base64>`.
fn parse_show(answer: &str) -> Vec<SecretText> {
    answer
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (idx, key) = l.trim().split_once(' ')?;
            let (a, b) = idx.split_once('.')?;
            (a.chars().all(|c| c.is_ascii_digit()) && b.chars().all(|c| c.is_ascii_digit()))
                .then(|| SecretText::new(key.trim().to_owned()))
        })
        .collect()
}

/// HAProxy's first answer line, for an error; never a key line.
fn first_line_without_keys(answer: &str) -> String {
    let line = answer
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap_or("(empty answer)");
    if parse_show(line).is_empty() {
        line.trim().to_owned()
    } else {
        "(key lines omitted)".to_owned()
    }
}

/// The reference name HAProxy uses for a tls-ticket-keys file: its path as written in the config.
pub fn id_for_file(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<SecretText> {
        v.iter().map(|s| SecretText::new(s.to_string())).collect()
    }

    #[test]
    fn pushes_only_what_the_running_ring_lacks() {
        assert_eq!(
            keys_to_push(&keys(&["a", "b", "c"]), &keys(&["a", "b", "c"])),
            0
        );
        assert_eq!(
            keys_to_push(&keys(&["a", "b", "c"]), &keys(&["b", "c", "d"])),
            1
        );
        assert_eq!(
            keys_to_push(&keys(&["a", "b", "c"]), &keys(&["c", "d", "e"])),
            2
        );
        assert_eq!(
            keys_to_push(&keys(&["a", "b", "c"]), &keys(&["x", "y", "z"])),
            3
        );
        // A padded file ring [s, a, s] after bootstrap, then rotation to [a, s, n].
        assert_eq!(
            keys_to_push(&keys(&["s", "a", "s"]), &keys(&["a", "s", "n"])),
            1
        );
        assert_eq!(keys_to_push(&keys(&["a", "b"]), &keys(&["a", "b", "c"])), 3);
    }

    /// Each row: who listens (as the kernel says), who stek is, who owns the socket file and
    /// its directory's mode; and whether keys may be sent.
    #[test]
    fn a_listener_is_trusted_only_as_root_stek_or_the_owner_of_a_socket_in_a_closed_directory() {
        use Listener::{OpenDirectory, Stranger, Trusted};
        let rows = [
            // HAProxy started as root listens as root, wherever its socket is (the cluster
            // test's case: root, socket in its own directory).
            (0, 0, 0, 0o700, Trusted),
            (0, 0, 0, 0o1777, Trusted),
            (0, 1000, 99, 0o755, Trusted),
            // stek's own user: it can read the key files anyway (the unit tests' case).
            (1000, 1000, 1000, 0o700, Trusted),
            // HAProxy run as its own user (99), its socket in its own directory, 0755 or
            // group-writable for its group (Debian's /run/haproxy is 2775).
            (99, 0, 99, 0o755, Trusted),
            (99, 0, 99, 0o2775, Trusted),
            // Someone else's process on a socket file it does not own.
            (1000, 0, 99, 0o755, Stranger),
            (1000, 0, 0, 0o700, Stranger),
            (65534, 1000, 1000, 0o700, Stranger),
            // A local user's own socket in a directory every user can write (/tmp): it owns
            // the file like HAProxy's user would, so the directory decides.
            (1000, 0, 1000, 0o1777, OpenDirectory),
            (65534, 0, 65534, 0o777, OpenDirectory),
            (99, 0, 99, 0o757, OpenDirectory),
        ];
        for (peer, me, owner, dir_mode, want) in rows {
            assert_eq!(
                judge_listener(peer, me, owner, dir_mode),
                want,
                "listener uid {peer}, stek uid {me}, socket owner {owner}, directory {dir_mode:o}"
            );
        }
    }

    /// A stats socket in a private directory, served by a thread of this process (so listened
    /// on by this uid, which owns the file): `answer` is what it sends back to one command,
    /// or, when `None`, 64 KiB blocks without end (as long as the client reads, 1 GiB at
    /// most). Returns the socket's path, and the thread, which returns what it received and
    /// how many bytes it sent.
    fn fake_haproxy(
        answer: Option<&'static str>,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        std::thread::JoinHandle<(Vec<u8>, usize)>,
    ) {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let served = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            let mut sent = 0;
            match answer {
                Some(a) => {
                    s.write_all(a.as_bytes()).unwrap();
                    sent = a.len();
                }
                None => {
                    let block = [b'A'; 64 * 1024];
                    // Ends when the client hangs up (a write error), or at 1 GiB.
                    for _ in 0..16 * 1024 {
                        if s.write_all(&block).is_err() {
                            break;
                        }
                        sent += block.len();
                    }
                }
            }
            (got, sent)
        });
        (dir, socket, served)
    }

    #[tokio::test]
    async fn a_listener_of_stek_s_own_user_gets_the_command_and_is_read() {
        let (_dir, socket, served) = fake_haproxy(Some(
            "# id secret\n# 0 (/run/stek/h)\n0.0 QUFB\n0.1 QkJC\n0.2 Q0ND\n",
        ));
        let target = RuntimeTarget {
            socket,
            id: "/run/stek/h".into(),
        };
        let got: Vec<String> = target
            .show()
            .await
            .unwrap()
            .iter()
            .map(|k| k.expose().to_owned())
            .collect();
        assert_eq!(got, ["QUFB", "QkJC", "Q0ND"]);
        assert_eq!(served.join().unwrap().0, b"show tls-keys /run/stek/h\n");
    }

    /// A peer that answers without end (hostile, or broken) is cut off at `MAX_ANSWER` bytes,
    /// long before the exchange's deadline, and stek's memory stays bounded.
    #[tokio::test]
    async fn a_listener_that_answers_without_end_is_cut_off_at_max_answer() {
        let (_dir, socket, served) = fake_haproxy(None);
        let target = RuntimeTarget {
            socket: socket.clone(),
            id: "/run/stek/h".into(),
        };
        let err = target.show().await.unwrap_err();
        assert!(matches!(err, RuntimeError::TooLong { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "HAProxy stats socket {s} answered `show tls-keys` with more than 262144 bytes, so stek stopped reading (HAProxy's answer is a few hundred bytes); see what listens there (`ss -xlp | grep {s}`)",
                s = socket.display()
            )
        );
        // stek hung up once past the cap: the writer got no further than the cap and what the
        // socket buffers hold (a few hundred KiB), nowhere near its 1 GiB.
        let (_, sent) = served.join().unwrap();
        assert!(sent < MAX_ANSWER + (16 << 20), "stek read on: {sent} bytes");
    }

    /// The environment variable that makes `helper_listen_as_another_user` listen.
    const LISTEN_AS_OTHER: &str = "STEK_TEST_LISTEN_AS_OTHER";

    /// A link planted in an open directory is judged by that directory, not only by the one
    /// it leads to; a socket named and living in a closed directory is judged by it.
    #[test]
    fn a_link_in_an_open_directory_is_judged_by_that_directory() {
        use std::os::unix::fs::PermissionsExt;
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let own = tempfile::tempdir().unwrap();
        std::fs::set_permissions(own.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let real = own.path().join("s.sock");
        std::fs::write(&real, b"").unwrap();
        let planted = open.path().join("haproxy.sock");
        std::os::unix::fs::symlink(&real, &planted).unwrap();
        let real_path = std::fs::canonicalize(&planted).unwrap();
        let (dir, mode) = directory_to_judge(&planted, &real_path).unwrap();
        assert_eq!((dir.as_path(), mode), (open.path(), 0o1777));
        let (dir, mode) = directory_to_judge(&real, &real_path).unwrap();
        assert_eq!((dir.as_path(), mode), (own.path(), 0o700));
        assert_eq!(
            judge_listener(1000, 0, 1000, 0o1777),
            Listener::OpenDirectory,
            "the planter's own listener, judged by the link's directory, gets nothing"
        );
    }

    /// A local user (nobody) who can write the socket's directory (mode 1777, like /tmp) puts a
    /// socket of their own where stek expects HAProxy's. They own the file, as HAProxy's user
    /// would own its own: the directory gives them away, and `set ssl tls-key` (which carries a
    /// key) is never sent to them.
    #[tokio::test]
    async fn a_socket_another_user_put_in_an_open_directory_gets_no_key() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        if !crate::test_support::needs_root("run a listener as another user (nobody)") {
            return;
        }
        let open = tempfile::Builder::new()
            .prefix("stek-haproxy-open-")
            .tempdir_in("/dev/shm")
            .unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        // A copy of this test binary nobody can run: the build tree may sit in a directory
        // only root can enter.
        let bin_dir = tempfile::Builder::new()
            .prefix("stek-haproxy-bin-")
            .tempdir_in("/dev/shm")
            .unwrap();
        std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = bin_dir.path().join("stek-node-tests");
        std::fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = open.path().join("admin.sock");
        let mut child = std::process::Command::new(&bin)
            .uid(65534)
            .gid(65534)
            .args([
                "--exact",
                "haproxy_runtime::tests::helper_listen_as_another_user",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(LISTEN_AS_OTHER, &socket)
            .current_dir("/")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "nobody's listener did not start: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let target = RuntimeTarget {
            socket: socket.clone(),
            id: "/run/stek/h".into(),
        };
        let err = target.set("QUFBQUFB").await.unwrap_err();
        // Whatever happened, the helper is not left behind.
        let ended = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < ended {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            matches!(
                err,
                RuntimeError::OpenDirectory {
                    peer: 65534,
                    mode: 0o1777,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "HAProxy stats socket {} is listened on by uid 65534, and any local user can write its directory ",
                socket.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("(mode 1777)"), "{msg}");
        assert!(!msg.contains("QUFBQUFB"), "never the key: {msg}");
        assert!(
            said.contains("received 0 bytes"),
            "nobody got nothing: {said}"
        );
    }

    /// Not a test on its own: `a_socket_another_user_put_in_an_open_directory_gets_no_key` runs
    /// this test binary as nobody with `STEK_TEST_LISTEN_AS_OTHER` set, to listen there and say
    /// how many bytes one connection brought.
    #[test]
    #[ignore = "a helper that a_socket_another_user_put_in_an_open_directory_gets_no_key runs as another user"]
    fn helper_listen_as_another_user() {
        use std::io::Read;
        let Some(path) = std::env::var_os(LISTEN_AS_OTHER) else {
            return;
        };
        let path = PathBuf::from(path);
        // Bound and listening before it appears at the path, as HAProxy does it.
        let tmp = path.with_extension("tmp");
        let listener = std::os::unix::net::UnixListener::bind(&tmp).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "nobody connected");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        println!("received {} bytes", got.len());
    }

    #[test]
    fn parses_show_tls_keys_output() {
        let answer = "# id secret\n# 0 (/run/stek/haproxy.keys)\n0.0 QUFB\n0.1 QkJC\n0.2 Q0ND\n\n";
        let got: Vec<String> = parse_show(answer)
            .iter()
            .map(|s| s.expose().to_owned())
            .collect();
        assert_eq!(got, vec!["QUFB", "QkJC", "Q0ND"]);
        assert_eq!(first_line_without_keys(answer), "(key lines omitted)");
        assert_eq!(
            first_line_without_keys("Unknown command.\n"),
            "Unknown command."
        );
    }
}
