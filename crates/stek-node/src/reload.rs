//! The reload runner: runs a target's `reload` or `verify` argv (never through a shell) with a
//! timeout, captures exit status and stderr into the error, and retries with backoff. Nothing
//! counts as applied until it succeeded.

use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// What a command is for, shown in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Makes the server load the new files.
    Reload,
    /// Proves the server really loaded them (a reload's exit status can lie).
    Verify,
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Purpose::Reload => "reload",
            Purpose::Verify => "verify",
        })
    }
}

/// A command to run: argv, timeout and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// Program and arguments; the program is looked up in PATH.
    pub argv: Vec<String>,
    /// How long one attempt may take before it is killed.
    pub timeout: Duration,
    /// How many attempts in all (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubles after each failure.
    pub backoff: Duration,
}

/// The longest stderr kept in an error.
const STDERR_LIMIT: usize = 2048;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The argv is empty.
    #[error("{purpose} command is empty; give an argv such as [\"nginx\", \"-s\", \"reload\"]")]
    Empty {
        /// Reload or verify.
        purpose: Purpose,
    },
    /// The program could not be started.
    #[error("{purpose} command {argv} could not start: {source} (is it installed and in PATH?)")]
    Spawn {
        /// Reload or verify.
        purpose: Purpose,
        /// The argv as shown to the user.
        argv: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It ran past its timeout and was killed.
    #[error("{purpose} command {argv} did not finish within {timeout:?} and was killed (attempt {attempt} of {attempts})")]
    Timeout {
        /// Reload or verify.
        purpose: Purpose,
        /// The argv as shown to the user.
        argv: String,
        /// The limit.
        timeout: Duration,
        /// Which attempt.
        attempt: u32,
        /// Of how many.
        attempts: u32,
    },
    /// It exited unsuccessfully.
    #[error("{purpose} command {argv} failed with {status} (attempt {attempt} of {attempts}){}", stderr_suffix(.stderr))]
    Failed {
        /// Reload or verify.
        purpose: Purpose,
        /// The argv as shown to the user.
        argv: String,
        /// Exit code or signal.
        status: String,
        /// What it wrote to stderr, trimmed and truncated.
        stderr: String,
        /// Which attempt.
        attempt: u32,
        /// Of how many.
        attempts: u32,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

fn show_argv(argv: &[String]) -> String {
    format!("{argv:?}")
}

impl CommandSpec {
    /// Runs the command until it succeeds or its attempts are used up; returns the last error.
    pub async fn run(&self, purpose: Purpose) -> Result<(), CommandError> {
        let attempts = self.attempts.max(1);
        let mut backoff = self.backoff;
        let mut attempt = 1;
        loop {
            match self.run_once(purpose, attempt, attempts).await {
                Ok(()) => return Ok(()),
                Err(e @ (CommandError::Empty { .. } | CommandError::Spawn { .. })) => {
                    return Err(e)
                }
                Err(e) if attempt >= attempts => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "{purpose} failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    attempt += 1;
                }
            }
        }
    }

    async fn run_once(
        &self,
        purpose: Purpose,
        attempt: u32,
        attempts: u32,
    ) -> Result<(), CommandError> {
        let Some((program, args)) = self.argv.split_first() else {
            return Err(CommandError::Empty { purpose });
        };
        let argv = show_argv(&self.argv);
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills whatever it started too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CommandError::Spawn {
                purpose,
                argv: argv.clone(),
                source,
            })?;
        let pid = child.id();
        let mut stderr_pipe = child.stderr.take();
        let work = async {
            let mut buf = Vec::new();
            if let Some(pipe) = stderr_pipe.as_mut() {
                // Bounded read: a chatty reload cannot grow our memory.
                let _ = pipe.take(64 * 1024).read_to_end(&mut buf).await;
            }
            let status = child.wait().await;
            (status, buf)
        };
        let (status, stderr) = match tokio::time::timeout(self.timeout, work).await {
            Ok(done) => done,
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(CommandError::Timeout {
                    purpose,
                    argv,
                    timeout: self.timeout,
                    attempt,
                    attempts,
                });
            }
        };
        let status = status.map_err(|source| CommandError::Spawn {
            purpose,
            argv: argv.clone(),
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        let shown = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => status.to_string(),
        };
        let mut text = String::from_utf8_lossy(&stderr).trim().to_owned();
        if text.len() > STDERR_LIMIT {
            let mut cut = STDERR_LIMIT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" [...]");
        }
        Err(CommandError::Failed {
            purpose,
            argv,
            status: shown,
            stderr: text,
            attempt,
            attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn spec(argv: &[&str], timeout_ms: u64, attempts: u32) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
            attempts,
            backoff: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn success_is_ok() {
        spec(&["true"], 5000, 1).run(Purpose::Reload).await.unwrap();
    }

    #[tokio::test]
    async fn failure_carries_exit_status_and_stderr() {
        let err = spec(&["sh", "-c", "echo 'bad key file' >&2; exit 3"], 5000, 1)
            .run(Purpose::Reload)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit status 3"), "{msg}");
        assert!(msg.contains("bad key file"), "{msg}");
        assert!(msg.starts_with("reload command"), "{msg}");
    }

    #[tokio::test]
    async fn argv_is_not_interpreted_by_a_shell() {
        // With a shell, `;` would run `false`; as argv, echo prints it literally and succeeds.
        spec(&["echo", "ok;", "false"], 5000, 1)
            .run(Purpose::Verify)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_with_its_children_at_the_timeout() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("child-survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let err = spec(&["sh", "-c", &script], 300, 1)
            .run(Purpose::Reload)
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(
            err.to_string().contains("did not finish within 300ms"),
            "{err}"
        );
        // The runner returned long before the 30 s sleep would have ended...
        assert!(started.elapsed() < Duration::from_secs(20));
        // ...and the background child was killed with its group.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !marker.exists(),
            "a child of the timed-out command kept running"
        );
    }

    #[tokio::test]
    async fn retries_until_success() {
        let d = tempfile::tempdir().unwrap();
        let counter = d.path().join("n");
        // Fails twice, then succeeds.
        let script = format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge 3 ]",
            c = counter.display()
        );
        spec(&["sh", "-c", &script], 5000, 3)
            .run(Purpose::Reload)
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    }

    #[tokio::test]
    async fn gives_up_after_the_last_attempt_and_says_so() {
        let err = spec(&["false"], 5000, 2)
            .run(Purpose::Reload)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("attempt 2 of 2"), "{err}");
    }

    #[tokio::test]
    async fn missing_program_says_to_check_path() {
        let err = spec(&["stek-no-such-program"], 5000, 3)
            .run(Purpose::Reload)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("could not start"), "{msg}");
        assert!(msg.contains("PATH"), "{msg}");
        let err = spec(&[], 5000, 1).run(Purpose::Reload).await.unwrap_err();
        assert!(err.to_string().contains("command is empty"));
    }
}
