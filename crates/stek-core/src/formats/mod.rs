//! Session ticket key files, one [`Format`] per server, all listed in [`REGISTRY`].
//!
//! Every format serialises the same abstract key (name, AES key, HMAC key) into the byte layout
//! and key order its server expects (see `shared/design/key-formats.md`):
//!
//! | format | container | bytes per key | encrypting key |
//! |---|---|---|---|
//! | `nginx` | directory of slot files `0.key`.. | 80 (name, HMAC, AES) or 48 (name, AES, HMAC) | `0.key` |
//! | `haproxy`, `haproxy-runtime` | base64 lines | 80 or 48 (name, AES, HMAC) | second-to-last line |
//! | `ats` | concatenated records | 48 (name, HMAC, AES) | first |
//! | `httpd` | one record | 48 (name, HMAC, AES) | its only key |
//! | `dnsdist` | concatenated records | 80 (name, AES, HMAC) | last |
//! | `envoy` | SDS secret (JSON) | 80 (name, HMAC, AES) | first |
//!
//! Spare positions (nginx slots, HAProxy's three lines) are filled with copies of a key the ring
//! already holds, never with fresh key material, so no node ever holds a key the cluster did not
//! agree on (I4).

use std::fmt;

use zeroize::Zeroizing;

use crate::key::TicketKey;
use crate::ring::KeyRing;

pub mod ats;
pub mod dnsdist;
pub mod envoy;
pub mod haproxy;
pub mod httpd;
pub mod nginx;

/// How many bytes a server reads per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySize {
    /// 16-byte name, AES-128, 16-byte HMAC key.
    Bytes48,
    /// 16-byte name, AES-256, HMAC-SHA256 with a 32-byte key.
    Bytes80,
}

impl KeySize {
    /// The size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            KeySize::Bytes48 => 48,
            KeySize::Bytes80 => 80,
        }
    }

    /// Parses a configured size.
    pub fn from_bytes(n: u64) -> Option<Self> {
        match n {
            48 => Some(KeySize::Bytes48),
            80 => Some(KeySize::Bytes80),
            _ => None,
        }
    }
}

impl fmt::Display for KeySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bytes())
    }
}

/// Where a format's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `path` is one file.
    File,
    /// `path` is a directory holding several files.
    Directory,
}

/// How a running server picks up a new ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Write the file(s), then run the target's reload command.
    Reload,
    /// Write the file, then push the ring over HAProxy's stats socket (`set ssl tls-key`).
    HaproxyRuntime,
}

/// The bytes a format produced for one ring. Zeroized on drop.
#[derive(Debug)]
pub enum Rendered {
    /// The content of the single file at the target's path.
    File(SecretBytes),
    /// Files to place in the target's directory, by file name.
    Directory(Vec<(String, SecretBytes)>),
}

/// Key material on its way to a file: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// An empty buffer with room for `n` bytes (so pushes never reallocate and leave copies).
    pub fn with_capacity(n: usize) -> Self {
        Self(Zeroizing::new(Vec::with_capacity(n)))
    }

    /// Appends bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// The bytes, for writing to a file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self(Zeroizing::new(v))
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// Key material as text (base64): zeroized on drop, never printed. `Debug` shows the length.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    /// Wraps text that holds key material.
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// The text, for a socket or a file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretText({} chars)", self.0.len())
    }
}

/// One server's key file format.
pub trait Format: fmt::Debug + Send + Sync {
    /// The registry entry this format was built from.
    fn info(&self) -> &'static FormatInfo;

    /// Serialises `ring` for this server.
    fn render(&self, ring: &KeyRing) -> Result<Rendered, FormatError>;

    /// The server configuration lines that read what this format writes at `path`.
    fn snippet(&self, path: &str) -> String;

    /// Warnings the operator must see when a target of this format starts (e.g. single-key
    /// servers that drop every outstanding ticket at each activation).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether every write must leave the file with an mtime strictly newer (in whole seconds)
    /// than the previous one, because the server ignores files whose mtime did not advance.
    fn mtime_must_advance(&self) -> bool {
        false
    }

    /// For directory formats: whether a file name in the target directory is one this format
    /// writes (e.g. nginx's `N.key`). Such files that the current ring no longer fills are
    /// removed, so no stale key bytes linger after `slots` is lowered.
    fn owns_file(&self, name: &str) -> bool {
        let _ = name;
        false
    }

    /// For servers with a runtime key API (HAProxy): the keys the running server must hold,
    /// oldest first, as base64.
    fn runtime_ring(&self, ring: &KeyRing) -> Option<Vec<SecretText>> {
        let _ = ring;
        None
    }
}

/// What the configuration says about one target's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatOptions {
    /// `key_size`, if set.
    pub key_size: Option<u64>,
    /// `slots`, if set (nginx only).
    pub slots: Option<u64>,
    /// The rotation policy's `retain`.
    pub retain: usize,
}

/// A registry entry: one server format.
#[derive(Debug)]
pub struct FormatInfo {
    /// The name used in `format = "..."`.
    pub name: &'static str,
    /// One line for `--help` and docs.
    pub summary: &'static str,
    /// File or directory.
    pub layout: Layout,
    /// Reload or runtime API.
    pub delivery: Delivery,
    /// The sizes the server reads.
    pub key_sizes: &'static [KeySize],
    /// The size used when the config says nothing.
    pub default_key_size: KeySize,
    /// Whether `slots` applies.
    pub takes_slots: bool,
    /// Builds the format from validated options.
    build: BuildFn,
}

/// Builds a format from a checked key size and the target's options.
type BuildFn = fn(KeySize, &FormatOptions) -> Result<Box<dyn Format>, FormatConfigError>;

/// Every format stek can write, in the order docs list them.
pub static REGISTRY: &[&FormatInfo] = &[
    &nginx::INFO,
    &haproxy::INFO,
    &haproxy::RUNTIME_INFO,
    &ats::INFO,
    &httpd::INFO,
    &dnsdist::INFO,
    &envoy::INFO,
];

/// Looks up a format by its configured name.
pub fn lookup(name: &str) -> Result<&'static FormatInfo, FormatConfigError> {
    REGISTRY
        .iter()
        .copied()
        .find(|f| f.name == name)
        .ok_or_else(|| FormatConfigError::UnknownFormat {
            name: name.to_owned(),
            known: known_names(),
        })
}

fn known_names() -> String {
    REGISTRY
        .iter()
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Builds the named format, checking `key_size` and `slots` against what the server accepts.
pub fn build(name: &str, options: &FormatOptions) -> Result<Box<dyn Format>, FormatConfigError> {
    let info = lookup(name)?;
    let key_size = match options.key_size {
        None => info.default_key_size,
        Some(n) => KeySize::from_bytes(n)
            .filter(|s| info.key_sizes.contains(s))
            .ok_or_else(|| FormatConfigError::KeySize {
                format: info.name,
                found: n,
                allowed: info
                    .key_sizes
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
            })?,
    };
    if options.slots.is_some() && !info.takes_slots {
        return Err(FormatConfigError::SlotsNotApplicable { format: info.name });
    }
    (info.build)(key_size, options)
}

/// A target's format settings that the server cannot use. Each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatConfigError {
    /// `format` names no known server.
    #[error("unknown format \"{name}\"; use one of: {known}")]
    UnknownFormat {
        /// What the config said.
        name: String,
        /// Every known format.
        known: String,
    },
    /// `key_size` is not one the server reads.
    #[error("key_size = {found} is not possible for format \"{format}\": it reads {allowed}-byte keys; set key_size to {allowed} or remove it")]
    KeySize {
        /// The format.
        format: &'static str,
        /// What the config said.
        found: u64,
        /// What the server reads.
        allowed: String,
    },
    /// `slots` was set for a format without slots.
    #[error("slots applies only to format \"nginx\"; remove it from this \"{format}\" target")]
    SlotsNotApplicable {
        /// The format.
        format: &'static str,
    },
    /// Too few nginx slots for the ring.
    #[error("slots = {found} is too few: a ring holds up to {needed} keys (active + staged + retain = {retain}); set slots to {needed} or more, or remove it to use {needed}")]
    TooFewSlots {
        /// What the config said.
        found: u64,
        /// 2 + retain.
        needed: usize,
        /// The policy's retain.
        retain: usize,
    },
}

/// A ring this format cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// More keys than the target's fixed positions; writing would drop a key others may use.
    #[error("the ring holds {keys} keys but format \"{format}\" has room for {room}; raise slots (or lower retain) so no key is dropped early")]
    RingTooLarge {
        /// The format.
        format: &'static str,
        /// Keys in the ring.
        keys: usize,
        /// Positions available.
        room: usize,
    },
}

/// Appends one key in the "name, AES, HMAC" layout (HAProxy, dnsdist, nginx 48).
pub(crate) fn put_name_aes_hmac(out: &mut SecretBytes, key: &TicketKey, size: KeySize) {
    out.extend(key.name());
    match size {
        KeySize::Bytes48 => {
            out.extend(key.aes128());
            out.extend(key.hmac128());
        }
        KeySize::Bytes80 => {
            out.extend(key.aes256());
            out.extend(key.hmac256());
        }
    }
}

/// Appends one key in the "name, HMAC, AES" layout (nginx 80, Envoy, ATS, httpd).
pub(crate) fn put_name_hmac_aes(out: &mut SecretBytes, key: &TicketKey, size: KeySize) {
    out.extend(key.name());
    match size {
        KeySize::Bytes48 => {
            out.extend(key.hmac128());
            out.extend(key.aes128());
        }
        KeySize::Bytes80 => {
            out.extend(key.hmac256());
            out.extend(key.aes256());
        }
    }
}

/// Base64 of one key's bytes in a zeroizing buffer.
pub(crate) fn base64_key(bytes: &SecretBytes) -> SecretText {
    use base64::Engine as _;
    let mut s = SecretText::new(String::with_capacity(bytes.len() * 4 / 3 + 4));
    base64::engine::general_purpose::STANDARD.encode_string(bytes.as_bytes(), &mut s.0);
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::key::tests::patterned;
    use crate::ring::{KeyState, Policy, RingKey};
    use std::time::{Duration, SystemTime};

    /// A ring with recognisable keys: retiring epochs `1..=retiring`, then active, then staged.
    /// Key `n` has name `[n; 16]`.
    pub(crate) fn ring(retiring: u8) -> KeyRing {
        let mut keys = Vec::new();
        let active = retiring + 1;
        let generation = u64::from(active) + 1;
        for n in 1..=retiring {
            keys.push(RingKey {
                epoch: n.into(),
                state: KeyState::Retiring,
                created_at: SystemTime::UNIX_EPOCH,
                staged_in: 1,
                retired_in: Some(u64::from(n) + 1),
                key: patterned(n),
            });
        }
        for (n, state) in [(active, KeyState::Active), (active + 1, KeyState::Staged)] {
            keys.push(RingKey {
                epoch: n.into(),
                state,
                created_at: SystemTime::UNIX_EPOCH,
                staged_in: generation,
                retired_in: None,
                key: patterned(n),
            });
        }
        let policy = Policy {
            interval: Duration::from_secs(60),
            retain: usize::from(retiring.max(1)),
        };
        KeyRing::from_parts(
            generation,
            keys,
            u64::from(active) + 1,
            SystemTime::UNIX_EPOCH,
            &policy,
        )
        .expect("test ring is valid")
    }

    /// 80 bytes in nginx/Envoy order for patterned key n, built independently of the formats.
    pub(crate) fn hmac_aes_80(n: u8) -> Vec<u8> {
        let k = patterned(n);
        [&k.name()[..], &k.hmac256()[..], &k.aes256()[..]].concat()
    }

    /// 80 bytes in HAProxy/dnsdist order for patterned key n.
    pub(crate) fn aes_hmac_80(n: u8) -> Vec<u8> {
        let k = patterned(n);
        [&k.name()[..], &k.aes256()[..], &k.hmac256()[..]].concat()
    }

    /// 48 bytes name, HMAC16, AES16 (ATS, httpd).
    pub(crate) fn hmac_aes_48(n: u8) -> Vec<u8> {
        let k = patterned(n);
        [&k.name()[..], &k.hmac256()[..16], &k.aes256()[..16]].concat()
    }

    /// 48 bytes name, AES16, HMAC16 (nginx 48, HAProxy 48).
    pub(crate) fn aes_hmac_48(n: u8) -> Vec<u8> {
        let k = patterned(n);
        [&k.name()[..], &k.aes256()[..16], &k.hmac256()[..16]].concat()
    }

    pub(crate) fn opts(retain: usize) -> FormatOptions {
        FormatOptions {
            key_size: None,
            slots: None,
            retain,
        }
    }

    #[test]
    fn patterned_golden_bytes_are_what_the_layouts_say() {
        // Pin the test vectors themselves so a change in `patterned` cannot silently move
        // every golden test along with it.
        let v = hmac_aes_80(3);
        assert_eq!(&v[..16], &[3u8; 16]);
        assert_eq!(v[16], 0xB0 ^ 3);
        assert_eq!(v[17], 0xB0 ^ 3 ^ 3);
        assert_eq!(v[48], 0xA0 ^ 3);
        assert_eq!(v[49], 0xA0 ^ 3 ^ 1);
        assert_eq!(aes_hmac_48(3)[16], 0xA0 ^ 3);
        assert_eq!(aes_hmac_48(3)[32], 0xB0 ^ 3);
    }

    #[test]
    fn registry_names_are_unique_and_every_format_builds_with_defaults() {
        for (i, f) in REGISTRY.iter().enumerate() {
            assert!(REGISTRY[i + 1..].iter().all(|g| g.name != f.name));
            let built = build(f.name, &opts(1)).unwrap();
            assert_eq!(built.info().name, f.name);
            assert!(f.key_sizes.contains(&f.default_key_size));
            built.render(&ring(1)).unwrap();
        }
    }

    #[test]
    fn unknown_format_lists_the_known_ones() {
        let err = build("lighttpd", &opts(1)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"lighttpd\""));
        assert!(msg.contains("nginx | haproxy | haproxy-runtime | ats | httpd | dnsdist | envoy"));
    }

    #[test]
    fn wrong_key_size_says_what_the_server_reads() {
        let mut o = opts(1);
        o.key_size = Some(80);
        let msg = build("httpd", &o).unwrap_err().to_string();
        assert!(msg.contains("key_size = 80"), "{msg}");
        assert!(msg.contains("48"), "{msg}");
        o.key_size = Some(48);
        let msg = build("dnsdist", &o).unwrap_err().to_string();
        assert!(msg.contains("reads 80-byte keys"), "{msg}");
        o.key_size = Some(64);
        assert!(build("nginx", &o)
            .unwrap_err()
            .to_string()
            .contains("80 or 48"));
    }

    #[test]
    fn slots_only_for_nginx() {
        let mut o = opts(1);
        o.slots = Some(4);
        assert!(build("nginx", &o).is_ok());
        let msg = build("haproxy", &o).unwrap_err().to_string();
        assert!(msg.contains("slots applies only"), "{msg}");
    }

    #[test]
    fn secret_bytes_and_text_debug_show_only_the_length() {
        let b = SecretBytes::from(vec![0xAB; 80]);
        assert_eq!(format!("{b:?}"), "SecretBytes(80 bytes)");
        let t = base64_key(&b);
        assert_eq!(format!("{t:?}"), "SecretText(108 chars)");
        assert!(!format!("{:?}", vec![t.clone()]).contains("q6ur"));
    }
}
