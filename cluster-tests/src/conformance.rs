//! One conformance suite for every `Coordinator` backend: election, fencing, membership and
//! liveness, ring writes, watch, acknowledgements and rotation requests. A backend passes when
//! every check here holds against a real instance of its store.

use std::future::Future;
use std::time::{Duration, SystemTime};

use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};
use stek_store::seal::Identity;
use stek_store::{ChangeStream, CoordError, Coordinator, MemberRecord, RingSlot, StoredRing};
use tracing::info;

fn policy() -> Policy {
    Policy {
        interval: Duration::from_secs(3600),
        retain: 1,
    }
}

/// Now, to the millisecond: the store keeps times in milliseconds.
fn now_ms() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(MemberRecord::now_ms())
}

fn record(id: &str, applied: u64) -> MemberRecord {
    MemberRecord {
        node_id: id.into(),
        version: "test".into(),
        targets: vec!["nginx".into()],
        applied_generation: applied,
        last_error: None,
        updated_at_ms: MemberRecord::now_ms(),
        public_key: None,
        unsealable_generation: None,
        certificate: None,
        key_signature: None,
        applied_digest: None,
        floor_generation: None,
        instance: None,
        floor_digest: None,
    }
}

/// `id`'s acknowledgement of `ring`.
fn ack_of(id: &str, ring: &KeyRing) -> MemberRecord {
    MemberRecord {
        applied_digest: Some(ring.digest().to_string()),
        ..record(id, ring.generation())
    }
}

/// `ring` sealed by `by` for member "b".
fn sealed(ring: &KeyRing, by: &str, b: &Identity) -> StoredRing {
    StoredRing::seal(
        "conformance",
        ring,
        &policy(),
        by,
        &[("b".into(), *b.public())],
    )
    .0
}

/// Every property, by name, in the order [`run_all`] runs them. Each takes two handles on one
/// store and leaves no leader and no lease of its own behind, so the properties run one after
/// another on one store (the Raft group, which takes seconds to form) or each on a fresh one
/// (a test per property: [`conformance_tests`]). `an_empty_namespace` needs a fresh store.
#[macro_export]
macro_rules! conformance_properties {
    ($m:path, $($args:tt)*) => {
        $m!(
            $($args)*;
            an_empty_namespace,
            one_leader_at_a_time_and_a_ring_write_serves_requests,
            an_acknowledgement_counts_only_for_the_ring_it_names,
            a_kept_alive_lease_holds_and_an_unrenewed_one_expires,
            a_deposed_or_stale_write_is_refused,
            served_in_one_write,
            one_node_id_one_process,
            forgetting_the_dead,
            what_a_watch_carries_is_what_a_read_shows,
            a_copy_for_a_member_that_joins_lands_beside_the_unchanged_ring,
            a_full_read_of_many_members,
            a_write_returns_the_revision_a_later_read_shows_it_at,
            a_replayed_write_lands_once,
            fenced_a_leader_write_in_an_ended_term,
            fenced_a_leader_write_on_a_replaced_ring,
            fenced_a_write_under_a_gone_lease,
            fenced_a_resign_in_another_term
        );
    };
}

/// One `#[test]` per property for a backend: `conformance_tests!(setup)`, where
/// `setup(test_name)` starts a fresh store and returns `(runtime, guard, handle_a, handle_b)`
/// (the guard keeps the store's process alive until the test ends); see coord_conformance.rs.
#[macro_export]
macro_rules! conformance_tests {
    ($setup:ident) => {
        $crate::conformance_properties!($crate::__conformance_each_test, $setup);
    };
}

/// [`conformance_tests`]'s expansion: a `#[test]` per property name.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_each_test {
    ($setup:ident; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let (rt, _guard, a, b) = $setup(stringify!($name));
                rt.block_on($crate::conformance::$name(&a, &b));
            }
        )*
    };
}

/// Runs every property in turn on one store; `make` returns a new handle on it.
pub async fn run_all<C, F, Fut>(make: F)
where
    C: Coordinator,
    F: Fn() -> Fut,
    Fut: Future<Output = C>,
{
    let a = make().await;
    let b = make().await;
    macro_rules! each {
        (; $($name:ident),*) => {
            $( $name(&a, &b).await; )*
        };
    }
    conformance_properties!(each,);
}

/// Waits (at most 5 s) until what `watch` carries equals what `read` shows: leader, ring,
/// ring revision, members and requests. A backend whose watch carries nothing passes.
async fn carried_matches_read<W, F, Fut>(watch: &mut W, what: &str, read: F)
where
    W: ChangeStream,
    F: Fn() -> Fut,
    Fut: Future<Output = stek_store::Snapshot>,
{
    let view = |s: &stek_store::Snapshot| {
        format!(
            "leader {:?}\nring {:?}\nring_revision {}\nmembers {:?}\nrequests {:?}\npartial {}",
            s.leader, s.ring, s.ring_revision, s.members, s.requests, s.partial
        )
    };
    let mut last = String::new();
    for _ in 0..50 {
        let Some(carried) = watch.snapshot() else {
            return;
        };
        last = view(&carried);
        if last == view(&read().await) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
    }
    panic!(
        "{what}: the watch carries\n{last}\nbut a read shows\n{}",
        view(&read().await)
    );
}

/// A watch that keeps what its events carried (etcd's) shows exactly what a read shows: the
/// prefix watch what a full read does, a member's watch what that member's own read does,
/// through registration, acknowledgements, requests, ring writes with copies, and a member
/// forgotten.
pub async fn what_a_watch_carries_is_what_a_read_shows<C: Coordinator>(a: &C, b: &C) {
    info!("--- conformance: what a watch carries is what a read shows");
    let ttl = Duration::from_secs(3);
    let b_key = Identity::generate();
    let lease_a = a.grant_lease(ttl).await.unwrap();
    let _keep_a = a.keep_alive(lease_a, ttl).await.unwrap();
    let lease_b = b.grant_lease(ttl).await.unwrap();
    let keep_b = b.keep_alive(lease_b, ttl).await.unwrap();
    let start = a.snapshot().await.unwrap().revision;
    let mut all = a.watch(start).await.unwrap();
    let mut mine = b.watch_member(start, "b").await.unwrap();
    let full = || async { a.snapshot().await.unwrap() };
    let own = || async { b.snapshot_of_member("b").await.unwrap() };

    let mut rec = record("b", 0);
    rec.public_key = Some(b_key.public().to_base64());
    b.register(lease_b, &rec).await.unwrap();
    let term = a.campaign(lease_a, "a").await.unwrap().expect("a leads");
    carried_matches_read(&mut all, "after registration", full).await;
    carried_matches_read(&mut mine, "b, after registration", own).await;

    let req = b.request_rotation("b", None).await.unwrap();
    let (ring, at) = next_ring(a).await;
    a.write_ring(term, at, &sealed(&ring, "a", &b_key), &[req])
        .await
        .unwrap();
    carried_matches_read(&mut all, "after a ring write", full).await;
    carried_matches_read(&mut mine, "b, after a ring write", own).await;
    let carried = mine.snapshot();
    if let Some(snap) = carried {
        let stored = snap.valid_ring().expect("the ring, carried");
        assert_eq!(
            stored.open("conformance", "b", &b_key).unwrap(),
            ring,
            "b opens its copy from what its watch carried"
        );
    }

    rec.applied_generation = ring.generation();
    rec.applied_digest = Some(ring.digest().to_string());
    b.ack(&rec).await.unwrap();
    carried_matches_read(&mut all, "after an acknowledgement", full).await;
    carried_matches_read(&mut mine, "b, after its acknowledgement", own).await;

    drop(keep_b);
    b.revoke(lease_b).await.unwrap();
    assert!(a.forget_member(term, "b").await.unwrap(), "b is forgotten");
    carried_matches_read(&mut all, "after b was forgotten", full).await;
    a.resign(term).await.unwrap();
    a.revoke(lease_a).await.unwrap();
}

/// A member that joins after the ring was written gets a copy of it alone
/// (`write_copies`): the ring and its revision stay, the member's own read and its watch
/// carry a copy it opens to the same keys, the other members' copies stay; a copy sealed
/// for a ring that was replaced since, or written in a term that ended, is refused.
pub async fn a_copy_for_a_member_that_joins_lands_beside_the_unchanged_ring<C: Coordinator>(
    a: &C,
    b: &C,
) {
    info!("--- conformance: one more copy of the stored ring, for a member that joins");
    let ttl = Duration::from_secs(3);
    let (a_key, b_key) = (Identity::generate(), Identity::generate());
    let lease_a = a.grant_lease(ttl).await.unwrap();
    let _keep_a = a.keep_alive(lease_a, ttl).await.unwrap();
    let lease_b = b.grant_lease(ttl).await.unwrap();
    let _keep_b = b.keep_alive(lease_b, ttl).await.unwrap();
    let term = a.campaign(lease_a, "a").await.unwrap().expect("a leads");
    let (ring, at) = next_ring(a).await;
    let mut stored = StoredRing::seal(
        "conformance",
        &ring,
        &policy(),
        "a",
        &[("a".into(), *a_key.public())],
    )
    .0;
    stored.term = term.0;
    a.write_ring(term, at, &stored, &[]).await.unwrap();
    let before = a.snapshot().await.unwrap();
    let written = before.valid_ring().expect("the ring").clone();
    let (opened, data_key) = written
        .open_keeping_key("conformance", "a", &a_key)
        .expect("the writer opens its own copy and keeps the data key");
    assert_eq!(opened, ring);

    let mut rec = record("b", 0);
    rec.public_key = Some(b_key.public().to_base64());
    b.register(lease_b, &rec).await.unwrap();
    let joined = b.snapshot_of_member("b").await.unwrap();
    let mut mine = b.watch_member(joined.revision, "b").await.unwrap();
    assert!(
        joined
            .valid_ring()
            .unwrap()
            .open("conformance", "b", &b_key)
            .is_err(),
        "b has no copy yet"
    );
    let (copies, failed) = written.seal_more_copies(
        "conformance",
        &data_key,
        &[("b".into(), *b_key.public())],
        None,
    );
    assert!(failed.is_empty() && copies.len() == 1);
    a.write_copies(term, before.ring_revision, &copies)
        .await
        .unwrap();
    let change = tokio::time::timeout(Duration::from_secs(5), mine.changed())
        .await
        .expect("b's watch reports its copy")
        .unwrap();
    assert!(
        change.concerns_follower("b"),
        "b wakes for its own copy: {change:?}"
    );
    carried_matches_read(&mut mine, "b, after its copy", || async {
        b.snapshot_of_member("b").await.unwrap()
    })
    .await;
    let after = a.snapshot().await.unwrap();
    assert_eq!(
        after.ring_revision, before.ring_revision,
        "the ring is not written again"
    );
    let now = after.valid_ring().unwrap();
    assert_eq!(now.write_id(), written.write_id());
    assert_eq!(
        now.open("conformance", "b", &b_key).unwrap(),
        ring,
        "b opens it"
    );
    assert_eq!(
        now.open("conformance", "a", &a_key).unwrap(),
        ring,
        "a's copy stays"
    );
    let own = b.snapshot_of_member("b").await.unwrap();
    assert_eq!(
        own.valid_ring()
            .unwrap()
            .open("conformance", "b", &b_key)
            .unwrap(),
        ring
    );

    info!("--- conformance: a copy for a replaced ring, or from an ended term, is refused");
    let (next, at) = next_ring(a).await;
    a.write_ring(term, at, &sealed(&next, "a", &b_key), &[])
        .await
        .unwrap();
    match a.write_copies(term, before.ring_revision, &copies).await {
        Err(CoordError::Conflict) => {}
        other => panic!("a copy sealed for a replaced ring must conflict, got {other:?}"),
    }
    let replaced = a.snapshot().await.unwrap();
    assert_eq!(
        replaced
            .valid_ring()
            .unwrap()
            .open("conformance", "b", &b_key)
            .unwrap(),
        next,
        "the refused copy did not land"
    );
    a.resign(term).await.unwrap();
    match a.write_copies(term, replaced.ring_revision, &copies).await {
        Err(CoordError::Fenced(t)) => assert_eq!(t, term),
        other => panic!("a copy from an ended term must be fenced, got {other:?}"),
    }
    a.revoke(lease_a).await.unwrap();
    b.revoke(lease_b).await.unwrap();
}

/// The next generation above the stored ring's (a Raft group refuses a ring that is not newer).
async fn next_ring<C: Coordinator>(store: &C) -> (KeyRing, i64) {
    let snap = store.snapshot().await.unwrap();
    let generation = snap.valid_ring().map_or(0, |r| r.ring.generation()) + 1;
    let ring = KeyRing::bootstrap(now_ms(), &policy(), &mut OsKeySource, &KeyHistory::new())
        .unwrap()
        .renumbered(generation);
    (ring, snap.ring_revision)
}

/// A fresh store holds nothing.
pub async fn an_empty_namespace<C: Coordinator>(a: &C, _b: &C) {
    info!("--- conformance: an empty namespace");
    let snap = a.snapshot().await.unwrap();
    assert!(snap.leader.is_none() && snap.members.is_empty() && snap.requests.is_empty());
    assert_eq!(snap.ring, RingSlot::Absent);
    assert_eq!(snap.ring_revision, 0);
}

/// One leader at a time; its ring write deletes the requests it serves, the watch reports
/// both, and a member opens its copy.
pub async fn one_leader_at_a_time_and_a_ring_write_serves_requests<C: Coordinator>(a: &C, b: &C) {
    info!("--- conformance: election, one leader at a time");
    let ttl = Duration::from_secs(3);
    let b_id = Identity::generate();
    let lease_a = a.grant_lease(ttl).await.unwrap();
    let _keep_a = a.keep_alive(lease_a, ttl).await.unwrap();
    let lease_b = b.grant_lease(ttl).await.unwrap();
    let _keep_b = b.keep_alive(lease_b, ttl).await.unwrap();
    let term_a = a
        .campaign(lease_a, "a")
        .await
        .unwrap()
        .expect("a is elected");
    assert_eq!(b.campaign(lease_b, "b").await.unwrap(), None);
    let snap = b.snapshot().await.unwrap();
    let leader = snap.leader.expect("a leads");
    assert_eq!((leader.node_id.as_str(), leader.term), ("a", term_a));

    info!("--- conformance: ring write, watch and request service");
    let mut watch = b.watch(snap.revision).await.unwrap();
    let req = b.request_rotation("b", None).await.unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("the watch reports the request")
        .unwrap();
    assert!(changed.revision > snap.revision);
    if let Some(keys) = &changed.keys {
        assert!(
            keys.iter().any(|k| k.starts_with("requests/")),
            "the change names the request's key: {keys:?}"
        );
        assert!(
            !changed.concerns_follower("b"),
            "a request is the leader's business"
        );
    }
    assert_eq!(a.snapshot().await.unwrap().requests, vec![req.clone()]);
    let (ring, at) = next_ring(a).await;
    a.write_ring(
        term_a,
        at,
        &sealed(&ring, "a", &b_id),
        std::slice::from_ref(&req),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("the watch reports the ring")
        .unwrap();
    let snap = b.snapshot().await.unwrap();
    assert!(
        snap.requests.is_empty(),
        "served requests are deleted with the write"
    );
    let stored = snap.valid_ring().expect("a valid ring");
    assert_eq!(stored.ring, ring.meta());
    assert_eq!(stored.written_by, "a");
    assert!(
        snap.ring_revision > at,
        "a written ring has a newer revision"
    );
    assert_eq!(stored.open("conformance", "b", &b_id).unwrap(), ring);
    a.resign(term_a).await.unwrap();
    a.revoke(lease_a).await.unwrap();
    b.revoke(lease_b).await.unwrap();
}

/// Membership, acknowledgement and liveness; an acknowledgement counts only for the ring it
/// names; a member's own read shows its records.
pub async fn an_acknowledgement_counts_only_for_the_ring_it_names<C: Coordinator>(a: &C, b: &C) {
    info!("--- conformance: membership, acknowledgement, liveness");
    let ttl = Duration::from_secs(3);
    let lease_a = a.grant_lease(ttl).await.unwrap();
    let _keep_a = a.keep_alive(lease_a, ttl).await.unwrap();
    let lease_b = b.grant_lease(ttl).await.unwrap();
    let _keep_b = b.keep_alive(lease_b, ttl).await.unwrap();
    let term = a
        .campaign(lease_a, "ack-a")
        .await
        .unwrap()
        .expect("elected");
    let (ring, at) = next_ring(a).await;
    a.write_ring(
        term,
        at,
        &sealed(&ring, "ack-a", &Identity::generate()),
        &[],
    )
    .await
    .unwrap();
    a.register(lease_a, &record("ack-a", 0)).await.unwrap();
    b.register(lease_b, &record("ack-b", 0)).await.unwrap();
    let other = KeyRing::bootstrap(now_ms(), &policy(), &mut OsKeySource, &KeyHistory::new())
        .unwrap()
        .renumbered(ring.generation());
    b.ack(&ack_of("ack-b", &other)).await.unwrap();
    let views = a.snapshot().await.unwrap().member_views();
    let b_view = views.iter().find(|m| m.id == "ack-b").unwrap();
    assert_eq!(
        b_view.applied_generation, 0,
        "ack-b acknowledged another ring of this generation"
    );
    assert!(b_view
        .last_error
        .as_deref()
        .unwrap()
        .contains("another ring"));
    b.ack(&ack_of("ack-b", &ring)).await.unwrap();
    let snap = a.snapshot().await.unwrap();
    let views = snap.member_views();
    let mine: Vec<_> = views.iter().filter(|m| m.id.starts_with("ack-")).collect();
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|m| m.live));
    assert_eq!(
        mine.iter()
            .find(|m| m.id == "ack-b")
            .unwrap()
            .applied_generation,
        ring.generation()
    );
    // A member's own read: the same ring and leader, its own record and liveness, and no one
    // else's record (a backend may read everything instead, and then says so).
    for _ in 0..2 {
        // Twice: the second read may come from a cache of the unchanged ring.
        let own = b.snapshot_of_member("ack-b").await.unwrap();
        assert_eq!(own.valid_ring().unwrap().ring, ring.meta());
        assert_eq!(own.leader.as_ref().map(|l| l.term), Some(term));
        let b_rec = own
            .members
            .iter()
            .find(|m| m.record.node_id == "ack-b")
            .unwrap();
        assert!(b_rec.live);
        assert_eq!(b_rec.record.applied_generation, ring.generation());
        if own.partial {
            assert_eq!(own.members.len(), 1, "only ack-b's record");
        }
    }
    a.resign(term).await.unwrap();
    a.revoke(lease_a).await.unwrap();
    b.revoke(lease_b).await.unwrap();
}

/// A kept-alive lease outlives its TTL (and so does its leadership); one that is not renewed
/// expires, and the member's record stays, not live.
pub async fn a_kept_alive_lease_holds_and_an_unrenewed_one_expires<C: Coordinator>(a: &C, b: &C) {
    info!("--- conformance: a kept-alive lease outlives its TTL");
    let ttl = Duration::from_secs(3);
    let lease = a.grant_lease(ttl).await.unwrap();
    let _keep = a.keep_alive(lease, ttl).await.unwrap();
    a.register(lease, &record("kept", 0)).await.unwrap();
    let term = a.campaign(lease, "kept").await.unwrap().expect("elected");
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    let snap = b.snapshot().await.unwrap();
    assert!(snap
        .members
        .iter()
        .any(|m| m.record.node_id == "kept" && m.live));
    assert_eq!(snap.leader.unwrap().node_id, "kept");

    info!("--- conformance: a lease that is not renewed expires; the record stays, not live");
    let short = b.grant_lease(Duration::from_secs(2)).await.unwrap();
    b.register(short, &record("lapsed", 1)).await.unwrap();
    let mut expired = false;
    for _ in 0..40 {
        let snap = a.snapshot().await.unwrap();
        let m = snap
            .members
            .iter()
            .find(|m| m.record.node_id == "lapsed")
            .unwrap();
        if !m.live {
            assert_eq!(m.record.applied_generation, 1);
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(expired, "the lease did not expire within 10 s");
    a.resign(term).await.unwrap();
    a.revoke(lease).await.unwrap();
}

/// A deposed leader's write is fenced; a write decided on another ring conflicts
/// (compare-and-swap); a resigned leader's write is fenced.
pub async fn a_deposed_or_stale_write_is_refused<C: Coordinator>(a: &C, b: &C) {
    info!("--- conformance: fencing, a deposed leader's write is refused");
    let ttl = Duration::from_secs(3);
    let b_id = Identity::generate();
    let lease_a = a.grant_lease(ttl).await.unwrap();
    let _keep_a = a.keep_alive(lease_a, ttl).await.unwrap();
    let lease_b = b.grant_lease(ttl).await.unwrap();
    let _keep_b = b.keep_alive(lease_b, ttl).await.unwrap();
    let term_a = a
        .campaign(lease_a, "a")
        .await
        .unwrap()
        .expect("a is elected");
    let (ring, at) = next_ring(a).await;
    a.write_ring(term_a, at, &sealed(&ring, "a", &b_id), &[])
        .await
        .unwrap();
    a.revoke(lease_a).await.unwrap();
    let snap = b.snapshot().await.unwrap();
    assert!(
        snap.leader.is_none(),
        "revoking the lease ends the leadership"
    );
    let term_b = b
        .campaign(lease_b, "b")
        .await
        .unwrap()
        .expect("b is elected");
    assert_ne!(term_b, term_a);
    let (next, at) = next_ring(b).await;
    match a
        .write_ring(term_a, at, &sealed(&next, "a", &b_id), &[])
        .await
    {
        Err(CoordError::Fenced(t)) => assert_eq!(t, term_a),
        other => panic!("a deposed leader's write must be fenced, got {other:?}"),
    }
    let shown = |s: &stek_store::Snapshot| s.valid_ring().unwrap().ring.clone();
    assert_eq!(shown(&b.snapshot().await.unwrap()), ring.meta());
    info!("--- conformance: a write decided on another ring is refused (compare-and-swap)");
    match b
        .write_ring(term_b, at - 1, &sealed(&next, "b", &b_id), &[])
        .await
    {
        Err(CoordError::Conflict) => {}
        other => panic!("a write on a stale ring revision must conflict, got {other:?}"),
    }
    assert_eq!(shown(&a.snapshot().await.unwrap()), ring.meta());
    b.write_ring(term_b, at, &sealed(&next, "b", &b_id), &[])
        .await
        .unwrap();
    assert_eq!(shown(&a.snapshot().await.unwrap()), next.meta());

    info!("--- conformance: resign");
    b.resign(term_b).await.unwrap();
    assert!(a.snapshot().await.unwrap().leader.is_none());
    let (again, at) = next_ring(a).await;
    match b
        .write_ring(term_b, at, &sealed(&again, "b", &b_id), &[])
        .await
    {
        Err(CoordError::Fenced(_)) => {}
        other => panic!("a resigned leader's write must be fenced, got {other:?}"),
    }
    b.revoke(lease_b).await.unwrap();
}

/// 200 pending rotation requests (more than one etcd transaction may hold) are all served by
/// one ring write.
pub async fn served_in_one_write<C: Coordinator>(a: &C, b: &C) {
    let b_id = &Identity::generate();
    info!("--- conformance: 200 pending requests are served by one write");
    let lease = b.grant_lease(Duration::from_secs(10)).await.unwrap();
    let _keep = b.keep_alive(lease, Duration::from_secs(10)).await.unwrap();
    let term = b.campaign(lease, "b").await.unwrap().expect("b is elected");
    let mut keys = Vec::new();
    for _ in 0..200 {
        keys.push(a.request_rotation("a", None).await.unwrap());
    }
    let snap = a.snapshot().await.unwrap();
    assert_eq!(snap.requests.len(), 200);
    let (next, at) = next_ring(a).await;
    b.write_ring(term, at, &sealed(&next, "b", b_id), &keys)
        .await
        .expect("a write serving 200 requests lands");
    let after = a.snapshot().await.unwrap();
    assert!(
        after.requests.is_empty(),
        "every served request is deleted: {} left",
        after.requests.len()
    );
    assert_eq!(after.valid_ring().unwrap().ring, next.meta());
    b.resign(term).await.unwrap();
    b.revoke(lease).await.unwrap();
}

/// A second live process with a registered node id is refused, and named; a restart of the
/// same box (its instance kept in its state directory) takes the node id over, even though
/// its sealing key has ratcheted since.
pub async fn one_node_id_one_process<C: Coordinator>(first: &C, second: &C) {
    info!("--- conformance: one node id, one live process");
    let ttl = Duration::from_secs(10);
    let instance = "0a1b2c3d4e5f6071";
    let mut rec = record("dup", 0);
    rec.public_key = Some(Identity::generate().public().to_base64());
    rec.instance = Some(instance.into());
    let l1 = first.grant_lease(ttl).await.unwrap();
    let _k1 = first.keep_alive(l1, ttl).await.unwrap();
    first.register(l1, &rec).await.unwrap();
    first
        .register(l1, &rec)
        .await
        .expect("registering again under its own lease");
    // The first process acknowledges generation 7; the process that takes the node id over
    // below registers having applied nothing, and that is what the store must show.
    first
        .ack(&MemberRecord {
            applied_generation: 7,
            ..rec.clone()
        })
        .await
        .unwrap();
    let l2 = second.grant_lease(ttl).await.unwrap();
    let _k2 = second.keep_alive(l2, ttl).await.unwrap();
    let mut other = rec.clone();
    other.instance = Some("ffffffff00000000".into());
    match second.register(l2, &other).await {
        Err(CoordError::Held { node_id, holder }) => {
            assert_eq!(node_id, "dup");
            assert!(
                holder.contains(instance) && holder.contains("pid"),
                "the holder is named: {holder}"
            );
        }
        other => panic!("a second process with a live node id must be refused, got {other:?}"),
    }
    let restarted = MemberRecord {
        public_key: Some(Identity::generate().public().to_base64()),
        ..rec.clone()
    };
    second
        .register(l2, &restarted)
        .await
        .expect("the same box (same instance, a newer sealing key) takes its node id over");
    let snap = first.snapshot().await.unwrap();
    let dup = snap
        .members
        .iter()
        .find(|m| m.record.node_id == "dup")
        .expect("dup is a member");
    assert!(dup.live);
    assert_eq!(
        dup.record.applied_generation, 0,
        "an earlier process's acknowledgement is never taken for the new one's"
    );
    second.revoke(l2).await.unwrap();
    first.revoke(l1).await.unwrap();
}

/// The leader removes a dead member's record, never a live one's, and only in its term.
pub async fn forgetting_the_dead<C: Coordinator>(a: &C, _b: &C) {
    info!("--- conformance: a dead member's record is forgotten, a live one's is not");
    let ttl = Duration::from_secs(10);
    let lease = a.grant_lease(ttl).await.unwrap();
    let _keep = a.keep_alive(lease, ttl).await.unwrap();
    let term = a.campaign(lease, "f-lead").await.unwrap().expect("elected");
    a.register(lease, &record("f-live", 0)).await.unwrap();
    let short = a.grant_lease(ttl).await.unwrap();
    a.register(short, &record("f-gone", 0)).await.unwrap();
    a.revoke(short).await.unwrap();
    assert!(
        !a.forget_member(term, "f-live").await.unwrap(),
        "a live member stays"
    );
    assert!(a.forget_member(term, "f-gone").await.unwrap());
    assert!(
        !a.forget_member(term, "f-gone").await.unwrap(),
        "already gone"
    );
    let snap = a.snapshot().await.unwrap();
    let ids: Vec<&str> = snap
        .members
        .iter()
        .map(|m| m.record.node_id.as_str())
        .collect();
    assert!(
        ids.contains(&"f-live") && !ids.contains(&"f-gone"),
        "{ids:?}"
    );
    a.resign(term).await.unwrap();
    match a.forget_member(term, "f-live").await {
        Err(CoordError::Fenced(_)) => {}
        other => panic!("a deposed leader may not forget members, got {other:?}"),
    }
    a.revoke(lease).await.unwrap();
}

/// A full read returns every record however many there are (etcd reads in pages).
pub async fn a_full_read_of_many_members<C: Coordinator>(a: &C, _b: &C) {
    info!("--- conformance: a full read of 520 member records");
    for i in 0..520 {
        a.ack(&record(&format!("m{i:04}"), 1)).await.unwrap();
    }
    let snap = a.snapshot().await.unwrap();
    let many = snap
        .members
        .iter()
        .filter(|m| m.record.node_id.starts_with('m'))
        .count();
    assert_eq!(many, 520, "every member record is read");
}

/// "a" leads, and seals the next ring for itself (`a_key`), and more copies of it for "b"
/// (`b_key`), without writing them: (term, lease, the ring, its record, b's copies).
async fn lead_with_copies<C: Coordinator>(
    a: &C,
    a_key: &Identity,
    b_key: &Identity,
) -> (
    stek_store::Term,
    stek_store::LeaseId,
    KeyRing,
    StoredRing,
    Vec<(String, Vec<u8>)>,
) {
    let lease = a.grant_lease(Duration::from_secs(10)).await.unwrap();
    let term = a.campaign(lease, "a").await.unwrap().expect("a leads");
    let (ring, _) = next_ring(a).await;
    let mut stored = StoredRing::seal(
        "conformance",
        &ring,
        &policy(),
        "a",
        &[("a".into(), *a_key.public())],
    )
    .0;
    stored.term = term.0;
    let (_, data_key) = stored
        .open_keeping_key("conformance", "a", a_key)
        .expect("the writer opens its own copy");
    let (copies, failed) = stored.seal_more_copies(
        "conformance",
        &data_key,
        &[("b".into(), *b_key.public())],
        None,
    );
    assert!(failed.is_empty());
    (term, lease, ring, stored, copies)
}

/// The revision a write returns is the store's: above the revision of the read before it,
/// and a read after it is at that revision or later and shows the write (the ring at exactly
/// that revision). The node relies on it to tell its own write's events from others'.
pub async fn a_write_returns_the_revision_a_later_read_shows_it_at<C: Coordinator>(a: &C, b: &C) {
    info!("--- conformance: a write returns its revision; a later read shows it");
    let (a_key, b_key) = (Identity::generate(), Identity::generate());
    let before = a.snapshot().await.unwrap().revision;
    let (term, lease, ring, stored, copies) = lead_with_copies(a, &a_key, &b_key).await;
    assert!(
        term.0 > before,
        "a term is the revision of the campaign's write"
    );
    let snap = b.snapshot().await.unwrap();
    assert!(snap.revision >= term.0);
    assert_eq!(snap.leader.map(|l| l.term), Some(term));

    let read = a.snapshot().await.unwrap();
    let written = a
        .write_ring(term, read.ring_revision, &stored, &[])
        .await
        .unwrap();
    assert!(
        written > read.revision,
        "the ring write's revision {written} is above the read before it ({})",
        read.revision
    );
    let snap = b.snapshot().await.unwrap();
    assert!(snap.revision >= written);
    assert_eq!(
        snap.ring_revision, written,
        "the ring was written at that revision"
    );
    assert_eq!(snap.valid_ring().unwrap().ring, ring.meta());

    let copied = a.write_copies(term, written, &copies).await.unwrap();
    assert!(copied > written, "more copies are a later write");
    let own = b.snapshot_of_member("b").await.unwrap();
    assert!(own.revision >= copied);
    assert_eq!(
        own.valid_ring()
            .unwrap()
            .open("conformance", "b", &b_key)
            .unwrap(),
        ring,
        "the copy is there"
    );
    a.resign(term).await.unwrap();
    a.revoke(lease).await.unwrap();
}

/// A write retried after it landed (its reply lost) lands once: a ring write's replay is
/// answered with the revision it landed at and changes nothing; copies, an acknowledgement,
/// a registration under its own lease, a resignation and a revocation may be applied again;
/// forgetting a member again answers that it is gone.
pub async fn a_replayed_write_lands_once<C: Coordinator>(a: &C, b: &C) {
    info!("--- conformance: a replayed write lands once");
    let (a_key, b_key) = (Identity::generate(), Identity::generate());
    let (term, lease, ring, stored, copies) = lead_with_copies(a, &a_key, &b_key).await;
    let at = a.snapshot().await.unwrap().ring_revision;
    let req = b.request_rotation("b", None).await.unwrap();
    let served = std::slice::from_ref(&req);
    let first = a.write_ring(term, at, &stored, served).await.unwrap();
    let pending = a.snapshot().await.unwrap().requests.len();
    let later = b.request_rotation("b", None).await.unwrap();
    let again = a.write_ring(term, at, &stored, served).await;
    assert_eq!(
        again.ok(),
        Some(first),
        "a replay is answered with the revision the write landed at"
    );
    let snap = b.snapshot().await.unwrap();
    assert_eq!(snap.ring_revision, first, "the ring was not written again");
    assert_eq!(
        snap.requests.len(),
        pending + 1,
        "the later request is not served by the replay"
    );

    let copied = a.write_copies(term, first, &copies).await.unwrap();
    let recopied = a.write_copies(term, first, &copies).await.unwrap();
    assert!(recopied >= copied);
    assert_eq!(b.snapshot().await.unwrap().ring_revision, first);

    let member = b.grant_lease(Duration::from_secs(10)).await.unwrap();
    b.register(member, &record("b", 0)).await.unwrap();
    b.register(member, &record("b", 0))
        .await
        .expect("registering again under its own lease");
    b.ack(&ack_of("b", &ring)).await.unwrap();
    b.ack(&ack_of("b", &ring)).await.unwrap();
    b.revoke(member).await.unwrap();
    b.revoke(member).await.expect("a lease revoked twice");
    assert!(a.forget_member(term, "b").await.unwrap());
    assert!(!a.forget_member(term, "b").await.unwrap(), "gone already");
    let (next, at) = next_ring(a).await;
    a.write_ring(term, at, &sealed(&next, "a", &b_key), &[later])
        .await
        .unwrap();
    a.resign(term).await.unwrap();
    a.resign(term).await.expect("resigning twice");
    assert!(a.snapshot().await.unwrap().leader.is_none());
    a.revoke(lease).await.unwrap();
}

/// Every leader write (a ring, copies, forgetting a member) in a term that ended is fenced,
/// naming that term, and changes nothing.
pub async fn fenced_a_leader_write_in_an_ended_term<C: Coordinator>(a: &C, b: &C) {
    info!("--- conformance: fenced, a leader write in an ended term");
    let (a_key, b_key) = (Identity::generate(), Identity::generate());
    let (term, lease, _, _, copies) = lead_with_copies(a, &a_key, &b_key).await;
    let dead = b.grant_lease(Duration::from_secs(10)).await.unwrap();
    b.register(dead, &record("fenced-dead", 0)).await.unwrap();
    b.revoke(dead).await.unwrap();
    a.resign(term).await.unwrap();
    let before = b.snapshot().await.unwrap();
    let (next, at) = next_ring(a).await;
    let fenced = |what: &str, r: Result<(), CoordError>| match r {
        Err(CoordError::Fenced(t)) => assert_eq!(t, term, "{what}"),
        other => panic!("{what} in an ended term must be fenced, got {other:?}"),
    };
    fenced(
        "a ring write",
        a.write_ring(term, at, &sealed(&next, "a", &b_key), &[])
            .await
            .map(|_| ()),
    );
    fenced(
        "a copy write",
        a.write_copies(term, at, &copies).await.map(|_| ()),
    );
    fenced(
        "forgetting a member",
        a.forget_member(term, "fenced-dead").await.map(|_| ()),
    );
    let after = b.snapshot().await.unwrap();
    assert_eq!(after.ring_revision, before.ring_revision);
    assert!(after
        .members
        .iter()
        .any(|m| m.record.node_id == "fenced-dead"));
    a.revoke(lease).await.unwrap();
}

/// A ring write or a copy write decided on a ring that was replaced since conflicts (the
/// compare-and-swap on the ring's revision), and changes nothing.
pub async fn fenced_a_leader_write_on_a_replaced_ring<C: Coordinator>(a: &C, _b: &C) {
    info!("--- conformance: fenced, a leader write on a replaced ring");
    let (a_key, b_key) = (Identity::generate(), Identity::generate());
    let (term, lease, _, _, copies) = lead_with_copies(a, &a_key, &b_key).await;
    let (first, at) = next_ring(a).await;
    a.write_ring(term, at, &sealed(&first, "a", &b_key), &[])
        .await
        .unwrap();
    let (second, now) = next_ring(a).await;
    a.write_ring(term, now, &sealed(&second, "a", &b_key), &[])
        .await
        .unwrap();
    let (third, _) = next_ring(a).await;
    let stored = a.snapshot().await.unwrap().ring_revision;
    match a
        .write_ring(term, now, &sealed(&third, "a", &b_key), &[])
        .await
    {
        Err(CoordError::Conflict) => {}
        other => panic!("a ring write on a replaced ring must conflict, got {other:?}"),
    }
    match a.write_copies(term, now, &copies).await {
        Err(CoordError::Conflict) => {}
        other => panic!("copies for a replaced ring must conflict, got {other:?}"),
    }
    let snap = a.snapshot().await.unwrap();
    assert_eq!(snap.ring_revision, stored);
    assert_eq!(snap.valid_ring().unwrap().ring, second.meta());
    a.resign(term).await.unwrap();
    a.revoke(lease).await.unwrap();
}

/// A registration or a campaign under a lease that is gone (revoked, or expired) is refused
/// with [`CoordError::LeaseExpired`]: nothing is written under a lease that cannot end it.
pub async fn fenced_a_write_under_a_gone_lease<C: Coordinator>(a: &C, b: &C) {
    info!("--- conformance: fenced, a write under a gone lease");
    let lease = a.grant_lease(Duration::from_secs(10)).await.unwrap();
    a.revoke(lease).await.unwrap();
    match a.register(lease, &record("gone-lease", 0)).await {
        Err(CoordError::LeaseExpired) => {}
        other => panic!("registering under a gone lease must be refused, got {other:?}"),
    }
    match a.campaign(lease, "gone-lease").await {
        Err(CoordError::LeaseExpired) => {}
        other => panic!("a campaign under a gone lease must be refused, got {other:?}"),
    }
    let snap = b.snapshot().await.unwrap();
    assert!(snap.leader.is_none());
    assert!(!snap
        .members
        .iter()
        .any(|m| m.record.node_id == "gone-lease"));
}

/// Resigning a term that is not the leader's changes nothing: the leader keeps its term.
pub async fn fenced_a_resign_in_another_term<C: Coordinator>(a: &C, b: &C) {
    info!("--- conformance: fenced, a resignation in another term");
    let lease = a.grant_lease(Duration::from_secs(10)).await.unwrap();
    let _keep = a.keep_alive(lease, Duration::from_secs(10)).await.unwrap();
    let term = a.campaign(lease, "a").await.unwrap().expect("a leads");
    b.resign(stek_store::Term(term.0 - 1)).await.unwrap();
    b.resign(stek_store::Term(term.0 + 1)).await.unwrap();
    let leader = b.snapshot().await.unwrap().leader.expect("a still leads");
    assert_eq!((leader.node_id.as_str(), leader.term), ("a", term));
    a.resign(term).await.unwrap();
    a.revoke(lease).await.unwrap();
}
