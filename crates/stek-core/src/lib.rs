//! stek's core: ticket keys, the key ring and its lifecycle, the leader's rotation decisions,
//! and the key file format of every supported server.
//!
//! Pure by design: no tokio, no network, no filesystem. Time and randomness come in as
//! arguments (`decide_at(now, ..)`, a [`key::KeySource`]), so every decision is testable and
//! repeatable. Everything else in stek depends on this crate; it depends on nothing of stek's.

pub mod formats;
pub mod hex;
pub mod key;
pub mod ring;
pub mod rotation;
pub mod weak;

pub use formats::{Format, FormatOptions, Rendered, REGISTRY};
pub use key::{Fingerprint, KeySource, KeySourceError, OsKeySource, TicketKey};
pub use ring::{
    KeyMaterial, KeyRing, KeyState, Policy, RingDigest, RingKey, RingMeta, MAX_GENERATION,
};
pub use rotation::{decide_at, next_ring, Decision, MemberView};
pub use weak::{KeyHistory, WeakKey};
