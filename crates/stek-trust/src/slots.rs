//! The connection guard of every listener of a node (the Raft peers' and the admin
//! endpoint's): at most so many connections are served at once; past that a new connection is
//! closed at once, and the refusals are logged at most once per [`REFUSED_LOG_INTERVAL`],
//! however many there are (a flood of connections must not flood the log too).
//!
//! [`Shares`] decides, for a listener whose clients can be told apart (the admin listener:
//! by the uid owning a local client's socket), who holds its connections: a fair share each,
//! and a client holding none is never turned away.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

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

/// What [`Shares::admit`] decided for a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share<K> {
    /// Served.
    Admitted,
    /// Served, in place of connection `closes` of client `of`: the caller closes that one now.
    InPlaceOf {
        /// The connection to close: the oldest of the client holding the most (the new
        /// connection's own client, when that one is at its cap).
        closes: u64,
        /// Whose it is.
        of: K,
    },
    /// Not served: every connection is taken and this client already holds as many as any
    /// other (so it holds at least one: a client holding none is never refused).
    Refused,
}

/// Who holds a listener's connections, among clients told apart by a key `K`: at most
/// `per_client` each and `limit` in all. Past a client's cap its own oldest connection makes
/// room for its newest; with every connection taken, a client holding fewer than the largest
/// holder takes the place of that holder's oldest. So one client (or a few) cannot lock the
/// others out, and a client holding no connection is always served. The oldest connection
/// goes because an answer takes milliseconds: the oldest is the likeliest to wait for nothing.
/// The decisions only: the caller numbers, accepts, closes and counts connections.
#[derive(Debug)]
pub struct Shares<K> {
    limit: usize,
    per_client: usize,
    /// Open connections by number, so oldest first.
    open: BTreeMap<u64, K>,
    held: HashMap<K, usize>,
}

impl<K: Clone + Eq + Hash> Shares<K> {
    /// `limit` connections in all, `per_client` for one client (each at least one).
    pub fn new(limit: usize, per_client: usize) -> Self {
        Shares {
            limit: limit.max(1),
            per_client: per_client.max(1),
            open: BTreeMap::new(),
            held: HashMap::new(),
        }
    }

    /// Decides for connection `id` of `who`, a number no open connection has, higher for a
    /// younger connection; an admitted one counts until released.
    pub fn admit(&mut self, id: u64, who: K) -> Share<K> {
        let mine = self.held(&who);
        let victim = if mine >= self.per_client {
            self.oldest(|k| *k == who)
        } else if self.open.len() >= self.limit {
            let most = self.held.values().copied().max().unwrap_or(0);
            if mine >= most {
                return Share::Refused;
            }
            self.oldest(|k| self.held.get(k) == Some(&most))
        } else {
            None
        };
        let closed = victim.and_then(|v| Some((v, self.remove(v)?)));
        *self.held.entry(who.clone()).or_default() += 1;
        self.open.insert(id, who);
        match closed {
            Some((closes, of)) => Share::InPlaceOf { closes, of },
            None => Share::Admitted,
        }
    }

    /// Connection `id` closed (nothing if it is not held here).
    pub fn release(&mut self, id: u64) {
        self.remove(id);
    }

    /// How many connections `who` holds.
    pub fn held(&self, who: &K) -> usize {
        self.held.get(who).copied().unwrap_or(0)
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    fn oldest(&self, whose: impl Fn(&K) -> bool) -> Option<u64> {
        self.open.iter().find(|(_, k)| whose(k)).map(|(id, _)| *id)
    }

    fn remove(&mut self, id: u64) -> Option<K> {
        let who = self.open.remove(&id)?;
        if let Some(n) = self.held.get_mut(&who) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&who);
            }
        }
        Some(who)
    }
}

/// A listener's connections shared among clients as [`Shares`] decides, performed: each
/// admitted connection holds a [`Place`] until it ends, and learns through it when another
/// connection has taken its place (its task then closes it).
#[derive(Debug)]
pub struct Places<K> {
    table: Mutex<PlaceTable<K>>,
}

#[derive(Debug)]
struct PlaceTable<K> {
    shares: Shares<K>,
    /// Each held place's way to tell its connection to close.
    close: HashMap<u64, oneshot::Sender<()>>,
    next: u64,
}

/// A connection's place among a listener's [`Places`], given back when dropped.
#[derive(Debug)]
pub struct Place<K: Clone + Eq + Hash> {
    of: Arc<Places<K>>,
    id: u64,
    /// Resolves when another connection has taken this place: close the connection.
    pub taken: oneshot::Receiver<()>,
}

/// A connection [`Places::admit`] turned away: its client already holds as many as any other
/// while every place is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoPlace;

impl<K: Clone + Eq + Hash> Places<K> {
    /// `limit` places in all, `per_client` for one client.
    pub fn new(limit: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Places {
            table: Mutex::new(PlaceTable {
                shares: Shares::new(limit, per_client),
                close: HashMap::new(),
                next: 0,
            }),
        })
    }

    /// The table. Nothing panics while it is held, so a poisoned lock still holds it right.
    fn table(&self) -> std::sync::MutexGuard<'_, PlaceTable<K>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection of `who`, and whose connection was told to close to make
    /// room for it, if one was; or [`NoPlace`].
    pub fn admit(self: &Arc<Self>, who: K) -> Result<(Place<K>, Option<K>), NoPlace> {
        let mut table = self.table();
        let id = table.next;
        table.next += 1;
        let closed = match table.shares.admit(id, who) {
            Share::Refused => return Err(NoPlace),
            Share::Admitted => None,
            Share::InPlaceOf { closes, of } => {
                if let Some(close) = table.close.remove(&closes) {
                    // Its task may have ended already: nobody to tell then.
                    let _ = close.send(());
                }
                Some(of)
            }
        };
        let (close, taken) = oneshot::channel();
        table.close.insert(id, close);
        let place = Place {
            of: self.clone(),
            id,
            taken,
        };
        Ok((place, closed))
    }

    /// How many places `who` holds.
    pub fn held(&self, who: &K) -> usize {
        self.table().shares.held(who)
    }

    /// How many places are held.
    pub fn open(&self) -> usize {
        self.table().shares.open()
    }
}

impl<K: Clone + Eq + Hash> Drop for Place<K> {
    fn drop(&mut self) {
        let mut table = self.of.table();
        table.close.remove(&self.id);
        table.shares.release(self.id);
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

    /// Admits `who` as the next connection (numbered from 0).
    fn next<K: Clone + Eq + Hash>(s: &mut Shares<K>, ids: &mut u64, who: K) -> Share<K> {
        *ids += 1;
        s.admit(*ids - 1, who)
    }

    #[test]
    fn a_client_past_its_cap_closes_its_own_oldest_and_others_are_untouched() {
        let (mut s, mut ids) = (Shares::new(10, 2), 0);
        assert_eq!(next(&mut s, &mut ids, "a"), Share::Admitted); // 0
        assert_eq!(next(&mut s, &mut ids, "b"), Share::Admitted); // 1
        assert_eq!(next(&mut s, &mut ids, "a"), Share::Admitted); // 2
                                                                  // a's third (3): its first (0) goes, b's stays; then a's fourth (4) closes 2.
        let closes = |closes| Share::InPlaceOf { closes, of: "a" };
        assert_eq!(next(&mut s, &mut ids, "a"), closes(0));
        assert_eq!(next(&mut s, &mut ids, "a"), closes(2));
        assert_eq!((s.held(&"a"), s.held(&"b"), s.open()), (2, 1, 3));
        // A closed connection frees its share; releasing one closed in another's place
        // changes nothing.
        s.release(3);
        s.release(0);
        assert_eq!((s.held(&"a"), s.open()), (1, 2));
        assert_eq!(next(&mut s, &mut ids, "a"), Share::Admitted);
        // A connection numbered below those it joins (it waited elsewhere first) is older
        // than they are: b's 1000 then 2, at b's cap, close 1 then 2, not 1000.
        let closes_b = |closes| Share::InPlaceOf { closes, of: "b" };
        assert_eq!(s.admit(1_000, "b"), Share::Admitted);
        assert_eq!(s.admit(2, "b"), closes_b(1));
        assert_eq!(s.admit(3_000, "b"), closes_b(2));
        assert_eq!(s.held(&"b"), 2);
    }

    #[test]
    fn with_every_connection_taken_a_client_holding_fewer_takes_the_largest_holders_oldest() {
        let closes = |closes, of| Share::InPlaceOf { closes, of };
        // (limit, per client, connections opened first (numbered from 0), the newcomer's
        // client, the decision)
        type Case = (
            usize,
            usize,
            &'static [&'static str],
            &'static str,
            Share<&'static str>,
        );
        let cases: [Case; 8] = [
            // Not full: served, nothing closed.
            (4, 4, &["a", "a", "b"], "c", Share::Admitted),
            // Full; d holds none: the largest holder (a, 2) loses its oldest.
            (4, 4, &["a", "a", "b", "c"], "d", closes(0, "a")),
            // Full; two largest holders: the older connection of the two goes.
            (4, 4, &["b", "a", "b", "a"], "c", closes(0, "b")),
            // Full; b holds 1, fewer than a's 3: a's oldest goes.
            (4, 4, &["b", "a", "a", "a"], "b", closes(1, "a")),
            // Full; a already holds the most: refused, nobody loses a connection.
            (4, 4, &["a", "b", "a", "a"], "a", Share::Refused),
            // Full with one each: a client holding one is refused, a new one is served.
            (3, 4, &["a", "b", "c"], "a", Share::Refused),
            (3, 4, &["a", "b", "c"], "d", closes(0, "a")),
            // Full and at its own cap: its own oldest goes (the cap comes first).
            (4, 2, &["b", "a", "b", "a"], "a", closes(1, "a")),
        ];
        for (limit, per_client, before, who, want) in cases {
            let (mut s, mut ids) = (Shares::new(limit, per_client), 0);
            for k in before {
                let set_up = next(&mut s, &mut ids, *k);
                assert!(set_up != Share::Refused, "{before:?}: set-up refused");
            }
            let open = s.open();
            assert_eq!(next(&mut s, &mut ids, who), want, "{before:?} then {who}");
            let opened = usize::from(want == Share::Admitted);
            assert_eq!(s.open(), open + opened, "{before:?} then {who}");
        }
    }

    #[test]
    fn clients_opening_without_end_never_lock_out_one_that_holds_none() {
        let (mut s, mut ids) = (Shares::<String>::new(64, 8), 0);
        for _ in 0..1000 {
            assert!(next(&mut s, &mut ids, "attacker".into()) != Share::Refused);
        }
        assert_eq!((s.held(&"attacker".into()), s.open()), (8, 8));
        assert_eq!(next(&mut s, &mut ids, "probe".into()), Share::Admitted);
        s.release(ids - 1); // the probe's, answered
                            // Twenty clients at their caps fill the listener; a newcomer still gets in.
        for i in 0..20 {
            for _ in 0..100 {
                let _ = next(&mut s, &mut ids, format!("u{i}"));
            }
        }
        assert_eq!(s.open(), 64);
        assert!(s.held(&"attacker".into()) <= 8);
        let probe = next(&mut s, &mut ids, "probe".into());
        assert!(matches!(probe, Share::InPlaceOf { .. }), "{probe:?}");
        assert_eq!(s.held(&"probe".into()), 1);
    }

    #[test]
    fn a_place_taken_by_another_tells_its_connection_and_a_dropped_one_is_free_again() {
        let places = Places::new(3, 2);
        let (mut a0, closed) = places.admit("a").unwrap();
        assert_eq!(closed, None);
        let (a1, _) = places.admit("a").unwrap();
        let (b0, _) = places.admit("b").unwrap();
        // a at its cap: its oldest is told to close; nobody else's is.
        let (mut a2, closed) = places.admit("a").unwrap();
        assert_eq!(closed, Some("a"));
        assert!(a0.taken.try_recv().is_ok(), "a's oldest is told to close");
        assert_eq!((places.held(&"a"), places.open()), (2, 3));
        // Full: newcomer c takes the place of the largest holder's (a's) oldest; then b,
        // holding as many as anyone, is refused.
        let (mut c0, closed) = places.admit("c").unwrap();
        assert_eq!(closed, Some("a"));
        assert_eq!(places.held(&"a"), 1);
        assert!(
            places.admit("b").is_err(),
            "b holds as many as anyone, all taken"
        );
        // The closed connection's task drops its place: nothing changes twice.
        drop(a0);
        drop(a1);
        assert_eq!(places.open(), 3);
        drop(b0);
        assert_eq!(places.open(), 2);
        let (_b1, closed) = places.admit("b").unwrap();
        assert_eq!(closed, None, "b's dropped place was free again");
        assert!(a2.taken.try_recv().is_err(), "a2 was never told");
        assert!(c0.taken.try_recv().is_err());
    }
}
