//! The ticket-sharing scenario every multi-key server must pass: two instances fed from one
//! ring, a ticket from A resumes on B, the active key encrypts, a retiring key still decrypts
//! after a rotation and a dropped key no longer does.

use std::collections::BTreeMap;
use std::time::Duration;

use stek_core::KeyRing;
use tracing::info;

use crate::tls::{resume, take_ticket, ticket_key_name, Handshake, Session, Tls};
use crate::{hex, wait_until, RingDriver, TestDir};

/// Two instances of one server and the way to apply a ring to both.
pub trait Pool {
    /// The server's name, for messages.
    fn name(&self) -> &str;
    /// Ports of instance A and B on 127.0.0.1.
    fn ports(&self) -> (u16, u16);
    /// Writes the ring for both instances and makes them load it (reload, runtime API, ...).
    fn apply(&mut self, ring: &KeyRing);
}

/// The usual pool: two instances whose targets (writer + reload runner) apply a ring.
#[derive(Debug)]
pub struct TargetPool {
    /// The server's name.
    pub name: &'static str,
    /// Ports of A and B.
    pub ports: (u16, u16),
    /// The targets that feed both instances.
    pub targets: Vec<stek_node::Target>,
}

impl TargetPool {
    /// A pool whose targets come from TOML through the real config parser.
    pub fn from_toml(name: &'static str, ports: (u16, u16), dir: &TestDir, toml: &str) -> Self {
        Self {
            name,
            ports,
            targets: crate::targets_from_toml(dir.path(), toml),
        }
    }
}

impl Pool for TargetPool {
    fn name(&self) -> &str {
        self.name
    }
    fn ports(&self) -> (u16, u16) {
        self.ports
    }
    fn apply(&mut self, ring: &KeyRing) {
        crate::apply_all(&self.targets, ring);
    }
}

/// Waits until fresh tickets from `port` carry `name`, i.e. the server reloaded and encrypts
/// with the ring's active key.
pub fn wait_for_encrypting_key(
    dir: &TestDir,
    port: u16,
    tls: Tls,
    name: [u8; 16],
    within: Duration,
) -> Session {
    let out = dir.join(&format!("probe-{port}-{tls:?}.pem"));
    let mut last = None;
    let mut session = None;
    wait_until(
        within,
        &format!("tickets from :{port} under key {}", hex(&name)),
        || {
            let s = take_ticket(port, tls, &out);
            let got = ticket_key_name(&s);
            last = Some(got);
            session = Some(s);
            got == name
        },
    );
    let _ = last;
    session.expect("wait_until returned only after a ticket was taken")
}

/// TLS 1.2 and 1.3: every server here resumes both.
pub const BOTH: &[Tls] = &[Tls::V12, Tls::V13];

/// Runs the scenario over `versions`. `settle` bounds how long a reload may take to show.
pub fn ticket_sharing(dir: &TestDir, pool: &mut dyn Pool, versions: &[Tls], settle: Duration) {
    let (a, b) = pool.ports();
    let name = pool.name().to_owned();
    let mut driver = RingDriver::new(1);
    let gen0 = driver.active_name();
    info!(
        "--- {name}: generation 1 applied; active key {}",
        hex(&gen0)
    );
    pool.apply(driver.ring());

    let mut first: BTreeMap<&str, Session> = BTreeMap::new();
    for &tls in versions {
        let key = if tls == Tls::V12 { "1.2" } else { "1.3" };
        wait_for_encrypting_key(dir, a, tls, gen0, settle);
        wait_for_encrypting_key(dir, b, tls, gen0, settle);
        info!("--- {name} TLS {key}: a ticket from A resumes on B");
        let t = take_ticket(a, tls, &dir.join(&format!("t0-{key}.pem")));
        assert_eq!(
            hex(&ticket_key_name(&t)),
            hex(&gen0),
            "{name}: A's ticket is not under the active key"
        );
        assert_eq!(
            resume(b, &t),
            Handshake::Reused,
            "{name} TLS {key}: ticket from A did not resume on B"
        );
        first.insert(key, t);
    }

    let gen1 = driver.rotate().active().key.name().to_owned();
    info!("--- {name}: rotated; active key {}", hex(&gen1));
    pool.apply(driver.ring());
    let mut second: BTreeMap<&str, Session> = BTreeMap::new();
    for &tls in versions {
        let key = if tls == Tls::V12 { "1.2" } else { "1.3" };
        wait_for_encrypting_key(dir, a, tls, gen1, settle);
        wait_for_encrypting_key(dir, b, tls, gen1, settle);
        info!("--- {name} TLS {key}: the retiring key's ticket still resumes on B");
        assert_eq!(
            resume(b, &first[key]),
            Handshake::Reused,
            "{name} TLS {key}: ticket under the now retiring key did not resume"
        );
        let t = take_ticket(a, tls, &dir.join(&format!("t1-{key}.pem")));
        assert_eq!(hex(&ticket_key_name(&t)), hex(&gen1));
        assert_eq!(resume(b, &t), Handshake::Reused);
        second.insert(key, t);
    }

    let gen2 = driver.rotate().active().key.name().to_owned();
    assert!(
        !driver.ring().keys().iter().any(|k| *k.key.name() == gen0),
        "retain = 1: the first key must be gone after two rotations"
    );
    info!(
        "--- {name}: rotated again; first key dropped; active {}",
        hex(&gen2)
    );
    pool.apply(driver.ring());
    for &tls in versions {
        let key = if tls == Tls::V12 { "1.2" } else { "1.3" };
        wait_for_encrypting_key(dir, a, tls, gen2, settle);
        wait_for_encrypting_key(dir, b, tls, gen2, settle);
        info!("--- {name} TLS {key}: the dropped key's ticket no longer resumes");
        assert_eq!(
            resume(b, &first[key]),
            Handshake::New,
            "{name} TLS {key}: ticket under a dropped key still resumed"
        );
        assert_eq!(
            resume(b, &second[key]),
            Handshake::Reused,
            "{name} TLS {key}: ticket under the retiring key did not resume"
        );
    }
}
