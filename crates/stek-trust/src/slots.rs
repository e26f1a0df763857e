//! The connection guard of every listener of a node (the Raft peers' and the admin
//! endpoint's): at most so many connections are served at once; past that a new connection is
//! closed at once, and the refusals are logged at most once per [`REFUSED_LOG_INTERVAL`],
//! however many there are (a flood of connections must not flood the log too).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Refused connections are logged at most this often.
pub const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Counts refusals (past a cap, or for a failed handshake), so that they are logged at most
/// once per [`REFUSED_LOG_INTERVAL`].
#[derive(Debug, Default)]
pub struct Refusals {
    unsaid: u64,
    last_said: Option<Instant>,
}

impl Refusals {
    /// Counts one refusal at `now`; the number to log, if it is time to say so.
    pub fn refuse(&mut self, now: Instant) -> Option<u64> {
        self.unsaid += 1;
        if self
            .last_said
            .is_some_and(|t| now.duration_since(t) < REFUSED_LOG_INTERVAL)
        {
            return None;
        }
        self.last_said = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }
}

/// How a listener says it closed connections for want of a slot: given how many since the
/// last time it said so, and how many it serves at once.
pub type SayFull = fn(closed: u64, limit: usize);

/// A listener's connection slots: a connection holds one for as long as it is served.
#[derive(Debug)]
pub struct Slots {
    limit: usize,
    free: Arc<Semaphore>,
    full: Mutex<Refusals>,
    say_full: SayFull,
}

impl Slots {
    /// `limit` slots; `say_full` logs the refusals (at most once an interval).
    pub fn new(limit: usize, say_full: SayFull) -> Arc<Self> {
        Arc::new(Slots {
            limit,
            free: Arc::new(Semaphore::new(limit)),
            full: Mutex::new(Refusals::default()),
            say_full,
        })
    }

    /// A slot, held until the permit is dropped; or `None` when all are taken (counted, and
    /// logged at most once an interval): the caller then closes the connection.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.free.clone().try_acquire_owned() {
            return Some(slot);
        }
        // A poisoned counter only means a panic while counting: the count will do.
        let said = self
            .full
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refuse(Instant::now());
        if let Some(n) = said {
            (self.say_full)(n, self.limit);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn refusals_are_logged_at_most_once_an_interval() {
        let mut refusals = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(refusals.refuse(t0), Some(1));
        for i in 1..100 {
            assert_eq!(refusals.refuse(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(refusals.refuse(t0 + REFUSED_LOG_INTERVAL), Some(100));
        assert_eq!(refusals.refuse(t0 + REFUSED_LOG_INTERVAL), None);
    }

    static SAID: AtomicU64 = AtomicU64::new(0);

    #[test]
    fn a_slot_is_free_again_once_dropped_and_a_full_listener_says_so_once() {
        let slots = Slots::new(2, |n, limit| {
            assert_eq!(limit, 2);
            SAID.fetch_add(n, Ordering::SeqCst);
        });
        let a = slots.take().expect("a first slot");
        let b = slots.take().expect("a second slot");
        assert!(slots.take().is_none(), "both are taken");
        assert!(slots.take().is_none());
        assert_eq!(
            SAID.load(Ordering::SeqCst),
            1,
            "said once, for the first refusal"
        );
        drop(a);
        let c = slots.take().expect("a's slot is free again");
        drop((b, c));
        assert!(slots.take().is_some());
    }
}
