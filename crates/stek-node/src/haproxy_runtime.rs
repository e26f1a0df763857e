//! HAProxy's runtime API for ticket keys: `show tls-keys <id>` and `set ssl tls-key <id> <key>`
//! over the admin-level stats socket, one command per connection.
//!
//! HAProxy holds a ring of three keys (previous, current, next). `set ssl tls-key` overwrites
//! the previous one with the pushed key, which becomes next, and the former next starts
//! encrypting. To make the running ring equal to the wanted one, stek pushes only the keys that
//! the running ring lacks at its end, so an up-to-date server is left alone and one rotation
//! is exactly one push. Commands carry key bytes: they are never logged or put in errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use stek_core::formats::SecretText;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use zeroize::Zeroizing;

/// How long one socket exchange may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

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

impl RuntimeTarget {
    async fn exchange(&self, line: &[u8], command: &'static str) -> Result<String, RuntimeError> {
        let work = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            stream.write_all(line).await?;
            stream.shutdown().await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(IO_TIMEOUT, work)
            .await
            .map_err(|_| RuntimeError::Timeout {
                socket: self.socket.clone(),
            })?
            .map_err(|source| RuntimeError::Socket {
                socket: self.socket.clone(),
                source,
            })?;
        let _ = command;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    /// The running ring, oldest first (previous, current, next), as base64.
    pub async fn show(&self) -> Result<Vec<SecretText>, RuntimeError> {
        let answer = Zeroizing::new(
            self.exchange(
                format!("show tls-keys {}\n", self.id).as_bytes(),
                "show tls-keys",
            )
            .await?,
        );
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
