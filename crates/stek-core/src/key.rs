//! One session ticket key: a 16-byte name, a 32-byte AES key and a 32-byte HMAC key.
//!
//! The bytes never leave this type except through [`TicketKey::name`] (which is sent in clear in
//! every ticket anyway) and the server formats, which write them into zeroizing buffers.
//! `Debug` and `Display` print only the fingerprint, a short hash of the name.

use std::fmt;

use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of the key name that starts every ticket.
pub const NAME_LEN: usize = 16;
/// Length of the AES key kept for every key; 48-byte formats use its first 16 bytes.
pub const AES_LEN: usize = 32;
/// Length of the HMAC key kept for every key; 48-byte formats use its first 16 bytes.
pub const HMAC_LEN: usize = 32;

/// Where key bytes come from. Production uses the OS CSPRNG; tests use a seeded generator so
/// that golden files are stable.
pub trait KeySource {
    /// Fills `buf` with bytes that must be unpredictable to anyone but this process, or says
    /// that it could not: a key drawn from a failed read would be predictable (zeros, or
    /// whatever the buffer held), so the caller must not use `buf` after an error.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeySourceError>;
}

/// A key source that could not deliver bytes. The environment's fault, not the operator's
/// config: the leader writes nothing and tries again on its next pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySourceError {
    /// `getrandom(2)` failed (a seccomp filter that forbids it, a kernel without it).
    #[error("the operating system's random source (getrandom) failed: {0}")]
    Os(String),
    /// A generator handed in as a key source failed.
    #[error("the random generator failed: {0}")]
    Generator(String),
}

/// The operating system's CSPRNG (`getrandom(2)` on Linux).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsKeySource;

impl KeySource for OsKeySource {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeySourceError> {
        // `fill_bytes` would panic on a failed read; the leader must refuse the key and say
        // why instead, keeping the keys the nodes serve.
        rand::rngs::OsRng
            .try_fill_bytes(buf)
            .map_err(|e| KeySourceError::Os(e.to_string()))
    }
}

/// Any cryptographically secure generator is a key source (a seeded ChaCha in tests, which
/// never fails and gives the same bytes as `fill_bytes`).
impl<R: RngCore + CryptoRng> KeySource for R {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), KeySourceError> {
        self.try_fill_bytes(buf)
            .map_err(|e| KeySourceError::Generator(e.to_string()))
    }
}

/// The short, non-secret identity of a key shown in logs and status: the first 4 bytes of
/// SHA-256(name) in hex. The name itself is public (it leads every ticket), but printing a hash
/// keeps logs free of anything that looks like key material.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 4]);

impl Fingerprint {
    /// The fingerprint of a key name.
    pub fn of_name(name: &[u8; NAME_LEN]) -> Self {
        let digest = Sha256::digest(name);
        Self([digest[0], digest[1], digest[2], digest[3]])
    }

    /// Parses the 8 hex digits [`Display`](fmt::Display) prints.
    pub fn from_hex(text: &str) -> Option<Self> {
        crate::hex::parse(text).map(Self)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A session ticket encryption key. Zeroized on drop; never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct TicketKey {
    name: [u8; NAME_LEN],
    aes: [u8; AES_LEN],
    hmac: [u8; HMAC_LEN],
}

impl TicketKey {
    /// Draws a fresh key from `source`. It is not checked for weakness: a key that joins a
    /// ring is drawn through the ring, which refuses weak ones (see [`crate::weak`]).
    pub fn generate(source: &mut dyn KeySource) -> Result<Self, KeySourceError> {
        let mut key = Self {
            name: [0; NAME_LEN],
            aes: [0; AES_LEN],
            hmac: [0; HMAC_LEN],
        };
        source.fill(&mut key.name)?;
        source.fill(&mut key.aes)?;
        source.fill(&mut key.hmac)?;
        Ok(key)
    }

    /// Builds a key from its three parts (used when reading a ring back from the store).
    pub fn from_parts(name: [u8; NAME_LEN], aes: [u8; AES_LEN], hmac: [u8; HMAC_LEN]) -> Self {
        Self { name, aes, hmac }
    }

    /// The 16-byte name that starts every ticket encrypted under this key.
    pub fn name(&self) -> &[u8; NAME_LEN] {
        &self.name
    }

    /// The full 32-byte AES key (AES-256 formats).
    pub fn aes256(&self) -> &[u8; AES_LEN] {
        &self.aes
    }

    /// The full 32-byte HMAC-SHA256 key (80-byte formats).
    pub fn hmac256(&self) -> &[u8; HMAC_LEN] {
        &self.hmac
    }

    /// The first 16 bytes of the AES key (48-byte formats, AES-128).
    pub fn aes128(&self) -> &[u8] {
        &self.aes[..16]
    }

    /// The first 16 bytes of the HMAC key (48-byte formats).
    pub fn hmac128(&self) -> &[u8] {
        &self.hmac[..16]
    }

    /// The printable identity of this key.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_name(&self.name)
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {}", self.fingerprint())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A deterministic key source for golden tests.
    pub(crate) fn seeded(seed: u64) -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(seed)
    }

    /// A key whose bytes are easy to recognise in golden output: name = [n; 16],
    /// aes = 0xA0.. pattern, hmac = 0xB0.. pattern.
    pub(crate) fn patterned(n: u8) -> TicketKey {
        let mut aes = [0u8; AES_LEN];
        let mut hmac = [0u8; HMAC_LEN];
        for i in 0..32 {
            aes[i] = 0xA0 ^ n ^ (i as u8);
            hmac[i] = 0xB0 ^ n ^ (i as u8).wrapping_mul(3);
        }
        TicketKey::from_parts([n; NAME_LEN], aes, hmac)
    }

    #[test]
    fn debug_and_display_show_only_the_fingerprint() {
        let key = patterned(7);
        let shown = format!("{key:?} {key} {:#?}", key);
        assert!(shown.contains(&key.fingerprint().to_string()));
        // No byte of the key may appear as hex or as a decimal array element.
        assert!(!shown.contains("0707"));
        assert!(!shown.contains("[7"));
        assert!(!shown
            .to_lowercase()
            .contains(&format!("{:02x}", key.aes256()[1])));
    }

    #[test]
    fn generated_keys_differ_and_use_all_parts() {
        let mut src = seeded(1);
        let a = TicketKey::generate(&mut src).unwrap();
        let b = TicketKey::generate(&mut src).unwrap();
        assert_ne!(a.name(), b.name());
        assert_ne!(a.aes256(), b.aes256());
        assert_ne!(a.name()[..], a.aes256()[..16]);
        assert_ne!(a.aes256(), a.hmac256());
    }

    #[test]
    fn os_source_fills_every_byte_position() {
        // 32 keys from the OS: every name byte position must vary at least once; an all-zero or
        // constant source would fail this.
        let keys: Vec<_> = (0..32)
            .map(|_| TicketKey::generate(&mut OsKeySource).unwrap())
            .collect();
        for pos in 0..NAME_LEN {
            assert!(keys.iter().any(|k| k.name()[pos] != keys[0].name()[pos]));
        }
    }

    #[test]
    fn fingerprint_is_stable_and_short() {
        let key = patterned(1);
        let fp = key.fingerprint().to_string();
        assert_eq!(fp.len(), 8);
        assert_eq!(fp, Fingerprint::of_name(&[1; 16]).to_string());
        assert_ne!(fp, patterned(2).fingerprint().to_string());
        assert_eq!(Fingerprint::from_hex(&fp), Some(key.fingerprint()));
        for bad in ["", "0123456", "0123456789", "0123456g", "é1234567"] {
            assert_eq!(Fingerprint::from_hex(bad), None, "{bad}");
        }
    }
}
