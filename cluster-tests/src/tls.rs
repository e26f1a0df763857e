//! A real TLS client: `openssl s_client` taking and resuming session tickets, and
//! `openssl sess_id` reading the key name at the start of a ticket.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// TLS protocol version to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// TLS 1.2: the ticket arrives in the handshake.
    V12,
    /// TLS 1.3: tickets arrive after the handshake.
    V13,
}

impl Tls {
    fn flag(self) -> &'static str {
        match self {
            Tls::V12 => "-tls1_2",
            Tls::V13 => "-tls1_3",
        }
    }
}

/// How a resumption attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// The server accepted the ticket.
    Reused,
    /// The server did a full handshake.
    New,
}

/// A session saved by `-sess_out`.
#[derive(Debug, Clone)]
pub struct Session {
    /// The PEM file.
    pub path: PathBuf,
    /// The protocol it was made with.
    pub tls: Tls,
}

fn s_client(port: u16, tls: Tls) -> Command {
    let mut c = Command::new("openssl");
    c.arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-servername")
        .arg("localhost")
        .arg(tls.flag());
    c
}

/// Connects and saves the session (with its ticket) to `out`. Keeps stdin open until the
/// session file appears, because TLS 1.3 tickets arrive after the handshake.
pub fn take_ticket(port: u16, tls: Tls, out: &Path) -> Session {
    let _ = fs::remove_file(out);
    let mut child = s_client(port, tls)
        .arg("-sess_out")
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut have = false;
    while Instant::now() < deadline {
        if fs::metadata(out).map(|m| m.len() > 0).unwrap_or(false) && ticket_bytes(out).is_some() {
            have = true;
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Closing stdin makes s_client send close_notify and exit.
    drop(child.stdin.take());
    let mut stdout = String::new();
    let exited = wait_bounded(&mut child, Duration::from_secs(5));
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    assert!(
        have,
        "no session ticket from 127.0.0.1:{port} over {tls:?} (client exited: {exited}); s_client said:\n{}",
        tail(&stdout)
    );
    Session {
        path: out.to_owned(),
        tls,
    }
}

/// Tries to resume `session` on `port`.
pub fn resume(port: u16, session: &Session) -> Handshake {
    let mut child = s_client(port, session.tls)
        .arg("-sess_in")
        .arg(&session.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client starts");
    // Give the handshake a moment before closing stdin (TLS 1.3 prints after it completes).
    std::thread::sleep(Duration::from_millis(300));
    drop(child.stdin.take());
    wait_bounded(&mut child, Duration::from_secs(10));
    let mut stdout = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    if stdout.contains("\nReused,") {
        Handshake::Reused
    } else if stdout.contains("\nNew,") {
        Handshake::New
    } else {
        panic!(
            "s_client to 127.0.0.1:{port} printed neither Reused nor New:\n{}",
            tail(&stdout)
        )
    }
}

fn wait_bounded(child: &mut std::process::Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The ticket bytes of a saved session (`openssl sess_id -text`), if it holds a ticket.
pub fn ticket_bytes(session: &Path) -> Option<Vec<u8>> {
    let out = Command::new("openssl")
        .args(["sess_id", "-noout", "-text", "-in"])
        .arg(session)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    parse_ticket_dump(&String::from_utf8_lossy(&out.stdout))
}

/// Parses the hex dump after "TLS session ticket:".
pub fn parse_ticket_dump(text: &str) -> Option<Vec<u8>> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.trim().starts_with("TLS session ticket:"));
    lines.next()?;
    let mut bytes = Vec::new();
    for line in lines {
        let line = line.trim_start();
        let Some((offset, rest)) = line.split_once(" - ") else {
            break;
        };
        if offset.len() != 4 || !offset.chars().all(|c| c.is_ascii_hexdigit()) {
            break;
        }
        // 16 bytes as "xx xx .. xx-xx .. xx", then two spaces and the ASCII column.
        let hex_part: String = rest.chars().take(47).collect();
        for tok in hex_part.replace('-', " ").split_whitespace() {
            match u8::from_str_radix(tok, 16) {
                Ok(b) if tok.len() == 2 => bytes.push(b),
                _ => break,
            }
        }
    }
    (!bytes.is_empty()).then_some(bytes)
}

/// [`take_ticket`] until the ticket is under the key named `name` (the active key of the ring
/// the server was last given), within `within`. A reload is asynchronous: for a moment after
/// `nginx -s reload` returns, a worker of the previous configuration still accepts, and its
/// ticket is under the previous ring's active key.
pub fn take_ticket_under(
    port: u16,
    tls: Tls,
    out: &Path,
    name: [u8; 16],
    within: Duration,
) -> Session {
    let deadline = Instant::now() + within;
    loop {
        let session = take_ticket(port, tls, out);
        let got = ticket_key_name(&session);
        if got == name {
            return session;
        }
        assert!(
            Instant::now() < deadline,
            "127.0.0.1:{port} still issues {tls:?} tickets under key name {} after {within:?}, not under the active key {}",
            hex(&got),
            hex(&name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 16-byte key name that starts the session's ticket.
pub fn ticket_key_name(session: &Session) -> [u8; 16] {
    let bytes = ticket_bytes(&session.path)
        .unwrap_or_else(|| panic!("{} holds no ticket", session.path.display()));
    assert!(bytes.len() >= 16, "ticket shorter than a key name");
    let mut name = [0u8; 16];
    name.copy_from_slice(&bytes[..16]);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_openssl_ticket_dump() {
        let dump = "SSL-Session:\n    Protocol  : TLSv1.2\n    TLS session ticket lifetime hint: 300 (seconds)\n    TLS session ticket:\n    0000 - 01 02 03 04 05 06 07 08-09 0a 0b 0c 0d 0e 0f 10   ................\n    0010 - aa bb                                             ..\n\n    Start Time: 1\n";
        let b = parse_ticket_dump(dump).unwrap();
        assert_eq!(b.len(), 18);
        assert_eq!(b[0], 1);
        assert_eq!(b[15], 0x10);
        assert_eq!(b[17], 0xbb);
        assert_eq!(parse_ticket_dump("no ticket here"), None);
    }
}
