use super::*;
use stek_core::{KeyHistory, OsKeySource};

fn policy() -> Policy {
    Policy {
        interval: Duration::from_secs(60),
        retain: 1,
    }
}

fn sealed(members: &[(&str, &Identity)]) -> (KeyRing, StoredRing) {
    let p = policy();
    let r1 =
        KeyRing::bootstrap(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new()).unwrap();
    let r2 = r1
        .rotated(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
        .unwrap();
    let recipients: Vec<(String, MemberKey)> = members
        .iter()
        .map(|(id, who)| ((*id).to_owned(), *who.public()))
        .collect();
    let (stored, failed) = StoredRing::seal("c1", &r2, &p, "n1", &recipients);
    assert!(failed.is_empty());
    (r2, stored)
}

/// The ring as a reader puts it back together from its record and its copies' records.
fn read_back(stored: &StoredRing) -> StoredRing {
    let copies = stored
        .copy_records()
        .iter()
        .flat_map(|(m, bytes)| decode_copies(m, bytes).unwrap())
        .collect();
    decode_ring(&encode_ring(stored))
        .unwrap()
        .with_copies(copies)
}

#[test]
fn ring_round_trips_through_the_record_and_opens_for_each_member() {
    let (a, b) = (Identity::generate(), Identity::generate());
    let (ring, stored) = sealed(&[("a", &a), ("b", &b)]);
    assert!(
        decode_ring(&encode_ring(&stored))
            .unwrap()
            .envelope
            .copies
            .is_empty(),
        "the ring record holds no copy"
    );
    let back = read_back(&stored);
    assert_eq!(back, stored);
    assert_eq!(back.written_by, "n1");
    assert_eq!(back.policy, policy());
    assert_eq!(back.ring, ring.meta().to_millis());
    for (id, who) in [("a", &a), ("b", &b)] {
        let opened = back.open("c1", id, who).unwrap();
        assert_eq!(opened, ring.to_millis(), "{id}");
    }
}

/// A CA for cluster "c1": its trust, and member credentials issued by it.
fn test_ca() -> (Trust, impl Fn(&str) -> Credentials) {
    let day = Duration::from_secs(86_400);
    let ca = identity::init_ca("c1", day).unwrap();
    let trust = Trust::new(ca.cert.as_bytes(), "c1", &[]).unwrap();
    let for_creds = trust.clone();
    let creds_of = move |id: &str| {
        let role = identity::Role::Member(id.into());
        let pem = identity::issue(&ca.cert, &ca.key, &role, &[], day).unwrap();
        Credentials::new(&for_creds, pem.cert.as_bytes(), pem.key.as_bytes()).unwrap()
    };
    (trust, creds_of)
}

/// Each copy is a record of its own, signed by the ring's writer; its member checks that
/// before opening it. A store writer can put only copies that fail that check, and even
/// without `[identity]` its own copy unlocks nothing: the keys are sealed under the data
/// key in the ring record, which it cannot change without breaking the ring's signature.
#[test]
fn each_copy_is_signed_by_the_ring_writer_and_a_forged_or_moved_one_is_refused() {
    let (trust, creds_of) = test_ca();
    let (a, b) = (Identity::generate(), Identity::generate());
    let (ring, mut stored) = sealed(&[("a", &a), ("b", &b)]);
    let n1 = creds_of("n1");
    stored.sign("c1", &n1);
    let back = read_back(&stored);
    let now = SystemTime::now();
    back.verify(&trust, now).unwrap();
    back.verify_copy("c1", "a", &trust, now).unwrap();
    back.verify_copy("c1", "b", &trust, now).unwrap();
    assert_eq!(back.open("c1", "a", &a).unwrap(), ring.to_millis());

    // A store writer seals a data key of its own to a's public key.
    let (own, _) = StoredRing::seal("c1", &ring, &policy(), "n1", &[("a".into(), *a.public())]);
    let forged = back
        .clone()
        .with_copies(vec![own.envelope.copies[0].clone()]);
    assert!(matches!(
        forged.verify_copy("c1", "a", &trust, now),
        Err(SealError::Unsigned(_))
    ));
    assert_eq!(
        forged.open("c1", "a", &a).unwrap_err(),
        SealError::KeysDoNotMatch,
        "opened without [identity], it unlocks none of the ring's keys"
    );
    // ... and signs it as another member: not the ring's writer.
    let mut signed_by_other = own.clone();
    signed_by_other.sign("c1", &creds_of("n2"));
    let forged = back
        .clone()
        .with_copies(vec![signed_by_other.envelope.copies[0].clone()]);
    assert!(matches!(
        forged.verify_copy("c1", "a", &trust, now),
        Err(SealError::Unsigned(_))
    ));
    // b's signed copy relabelled as a's: the signature covers the member.
    let mut moved = back.copy_for("b").unwrap().clone();
    moved.member = "a".into();
    let forged = back.clone().with_copies(vec![moved]);
    assert!(matches!(
        forged.verify_copy("c1", "a", &trust, now),
        Err(SealError::Unsigned(_))
    ));
    // The previous ring's signed copy, put back: signed, but made for another ring.
    let next = ring
        .rotated(
            SystemTime::now(),
            &policy(),
            &mut OsKeySource,
            &KeyHistory::new(),
        )
        .unwrap();
    let (mut newer, _) =
        StoredRing::seal("c1", &next, &policy(), "n1", &[("a".into(), *a.public())]);
    newer.sign("c1", &n1);
    let replayed = read_back(&newer).with_copies(vec![back.copy_for("a").unwrap().clone()]);
    replayed.verify_copy("c1", "a", &trust, now).unwrap();
    assert!(!replayed.usable_copy_for(&MemberRecord {
        public_key: Some(a.public().to_base64()),
        ..member_record("a")
    }));
    assert!(matches!(
        replayed.open("c1", "a", &a),
        Err(SealError::Replayed { .. })
    ));
    // The next ring's copy beside this ring: the leader is between its two writes.
    let ahead = back
        .clone()
        .with_copies(vec![newer.copy_for("a").unwrap().clone()]);
    assert!(matches!(
        ahead.open("c1", "a", &a),
        Err(SealError::Ahead { .. })
    ));
}

/// The writer seals one more copy of its stored ring for a member that joins, with the
/// data key it opened from its own copy: the member opens it to the same ring, and checks
/// it was signed by the ring's writer; the same copy signed by another member is refused,
/// and a data key is never taken from a copy that does not open.
#[test]
fn a_copy_sealed_later_by_the_writer_opens_and_one_signed_by_another_is_refused() {
    let (trust, creds_of) = test_ca();
    let (writer, joiner) = (Identity::generate(), Identity::generate());
    let (ring, mut stored) = sealed(&[("n1", &writer)]);
    let n1 = creds_of("n1");
    stored.sign("c1", &n1);
    let back = read_back(&stored);
    let (opened, key) = back.open_keeping_key("c1", "n1", &writer).unwrap();
    assert_eq!(opened, ring.to_millis());
    assert_eq!(key.write(), back.write_id());
    assert!(!format!("{key:?}").contains("key:"), "{key:?}");
    let now = SystemTime::now();

    let joined = [("n9".to_owned(), *joiner.public())];
    let (records, failed) = back.seal_more_copies("c1", &key, &joined, Some(&n1));
    assert!(failed.is_empty());
    assert_eq!(records.len(), 1);
    let (member, bytes) = &records[0];
    assert_eq!(member, "n9");
    let copies = decode_copies("n9", bytes).unwrap();
    assert_eq!(copies.len(), 1, "one copy: the stored ring's");
    let mut all = back.envelope.copies.clone();
    all.extend(copies);
    let now_stored = back.clone().with_copies(all);
    assert_eq!(
        now_stored.write_id(),
        back.write_id(),
        "the ring is unchanged"
    );
    now_stored.copy_is_for_this_ring("n9").unwrap();
    now_stored.verify_copy("c1", "n9", &trust, now).unwrap();
    assert_eq!(
        now_stored.open("c1", "n9", &joiner).unwrap(),
        ring.to_millis()
    );
    let joiner_record = MemberRecord {
        public_key: Some(joiner.public().to_base64()),
        ..member_record("n9")
    };
    assert!(now_stored.usable_copy_for(&joiner_record));
    // A copy of this write whose generation label was raised does not open (the label is
    // bound); the leader must see it as lacking, not wait for the member to say so.
    let mut relabelled = now_stored.copy_for("n9").unwrap().clone();
    relabelled.generation += 1;
    let relabelled = back.clone().with_copies(vec![relabelled]);
    assert!(relabelled.open("c1", "n9", &joiner).is_err());
    assert!(!relabelled.usable_copy_for(&joiner_record));

    // Signed by a member that did not write the ring: refused before it is opened.
    let (records, _) = back.seal_more_copies("c1", &key, &joined, Some(&creds_of("n2")));
    let other = back
        .clone()
        .with_copies(decode_copies("n9", &records[0].1).unwrap());
    assert!(matches!(
        other.verify_copy("c1", "n9", &trust, now),
        Err(SealError::Unsigned(_))
    ));
    // A copy that does not open (a flipped bit) yields no data key.
    let mut tampered = back.copy_for("n1").unwrap().clone();
    tampered.sealed_dek[0] ^= 1;
    assert_eq!(
        back.clone()
            .with_copies(vec![tampered])
            .open_keeping_key("c1", "n1", &writer)
            .unwrap_err(),
        SealError::DoesNotOpen
    );
}

/// A ring's copy records keep each member's copy of the ring they replace, so that if the
/// new ring never lands, the stored one still opens for everyone; once it lands, each
/// member opens the new ring's.
#[test]
fn copy_records_keep_the_stored_rings_copies_until_the_new_ring_lands() {
    let (a, b) = (Identity::generate(), Identity::generate());
    let (ring, current) = sealed(&[("a", &a), ("b", &b)]);
    let stored_now = read_back(&current);
    let next = ring
        .rotated(
            SystemTime::now(),
            &policy(),
            &mut OsKeySource,
            &KeyHistory::new(),
        )
        .unwrap();
    // b left: the next ring has a copy for a only.
    let (mut new, _) = StoredRing::seal("c1", &next, &policy(), "n1", &[("a".into(), *a.public())]);
    new.keep_copies_of(&stored_now);
    let records = new.copy_records();
    assert_eq!(
        records.len(),
        1,
        "no record for b, who has no copy of the new ring"
    );
    let copies = decode_copies("a", &records[0].1).unwrap();
    assert_eq!(copies.len(), 2);
    assert_eq!(copies[0].ring, new.write_id(), "the new ring's copy first");
    assert_eq!(copies[1].ring, current.write_id());
    // The new ring never landed: the stored ring still opens for a.
    let old_ring_now = decode_ring(&encode_ring(&current))
        .unwrap()
        .with_copies(copies.clone());
    old_ring_now.copy_is_for_this_ring("a").unwrap();
    assert_eq!(old_ring_now.open("c1", "a", &a).unwrap(), ring.to_millis());
    // It landed: the new ring opens for a.
    let landed = decode_ring(&encode_ring(&new)).unwrap().with_copies(copies);
    landed.copy_is_for_this_ring("a").unwrap();
    assert_eq!(landed.open("c1", "a", &a).unwrap(), next.to_millis());
}

/// A version 3 ring (written before the ratchet) reads and verifies as it was signed, so
/// that an upgrade keeps the ring; a version this build does not know is refused with a
/// message that says to upgrade every box together.
#[test]
fn a_version_3_ring_still_reads_and_verifies_and_an_unknown_version_says_upgrade_together() {
    let (trust, creds_of) = test_ca();
    let a = Identity::generate();
    let (_, mut stored) = sealed(&[("a", &a)]);
    assert_eq!(stored.version, RING_RECORD_VERSION);
    stored.version = 3;
    stored.sign("c1", &creds_of("n1"));
    let back = read_back(&stored);
    assert_eq!(back.version, 3);
    back.verify(&trust, SystemTime::now()).unwrap();
    back.open("c1", "a", &a).unwrap();
    for version in [2, RING_RECORD_VERSION + 1] {
        let mut v: serde_json::Value = serde_json::from_slice(&encode_ring(&stored)).unwrap();
        v["version"] = version.into();
        let err = decode_ring(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("version {version} is not supported")),
            "{err}"
        );
        assert!(err.contains("upgrade together"), "{err}");
    }
}

/// What a leader keeps of a ring it accepted, to put back later: copies of that write
/// sealed since are added, and a replayed copy of another write never replaces one.
#[test]
fn the_accepted_ring_takes_later_copies_of_its_write_and_never_a_replayed_one() {
    let (a, b, c) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let (_, older) = sealed(&[("a", &a), ("b", &b)]);
    let (ring, current) = sealed(&[("a", &a), ("b", &b)]);
    let mut accepted = read_back(&current);
    let mut joined = current.clone();
    // c joins: one more copy of this write.
    let key = current.open_keeping_key("c1", "a", &a).unwrap().1;
    let (records, _) = current.seal_more_copies("c1", &key, &[("c".into(), *c.public())], None);
    let mut copies = joined.envelope.copies.clone();
    copies.extend(decode_copies("c", &records[0].1).unwrap());
    joined = joined.with_copies(copies);
    accepted.keep_copies_of_this_write(&joined);
    assert!(accepted.copy_is_for_this_ring("c").is_ok());
    // b's copy replaced by a copy of another write (a replay): b's stays.
    let replayed: Vec<SealedCopy> = joined
        .envelope
        .copies
        .iter()
        .filter(|x| x.member != "b")
        .cloned()
        .chain(older.copy_for("b").cloned())
        .collect();
    accepted.keep_copies_of_this_write(&joined.clone().with_copies(replayed));
    assert!(accepted.copy_is_for_this_ring("b").is_ok());
    assert_eq!(accepted.open("c1", "b", &b).unwrap(), ring.to_millis());
    assert_eq!(accepted.copy_records().len(), 3);
}

/// A member signs the key it announces together with its floor: the same key with
/// another floor (a store writer's low floor, to get an old ring sealed to the key; or a
/// high one, to force new keys) does not verify, nor does another member's signature.
#[test]
fn an_announcement_binds_its_key_to_its_floor() {
    let (trust, creds_of) = test_ca();
    let (ring, _) = sealed(&[]);
    let mut rec = MemberRecord {
        public_key: Some(Identity::generate().public().to_base64()),
        floor_generation: Some(ring.generation()),
        floor_digest: Some(ring.digest().to_string()),
        ..member_record("n1")
    };
    rec.enroll("c1", &creds_of("n1"));
    let now = SystemTime::now();
    rec.verify_enrollment(&trust, now).unwrap();
    for forged in [
        MemberRecord {
            floor_generation: Some(1),
            ..rec.clone()
        },
        MemberRecord {
            floor_generation: Some(ring.generation() + 1),
            ..rec.clone()
        },
        MemberRecord {
            floor_digest: None,
            ..rec.clone()
        },
        MemberRecord {
            public_key: Some(Identity::generate().public().to_base64()),
            ..rec.clone()
        },
    ] {
        assert!(forged.verify_enrollment(&trust, now).is_err(), "{forged:?}");
    }
    let fresh = || {
        KeyRing::bootstrap(
            SystemTime::now(),
            &policy(),
            &mut OsKeySource,
            &stek_core::KeyHistory::new(),
        )
        .unwrap()
    };
    assert!(ring.generation() > 1);
    assert!(rec.floor_is_ahead_of(&fresh().meta()), "an older ring");
    assert!(!rec.floor_is_ahead_of(&ring.meta().to_millis()));
    let other = fresh().renumbered(ring.generation());
    assert!(
        rec.floor_is_ahead_of(&other.meta()),
        "another ring of its generation"
    );
}

fn member_record(id: &str) -> MemberRecord {
    MemberRecord {
        node_id: id.into(),
        version: "0.1.0".into(),
        targets: vec![],
        applied_generation: 0,
        last_error: None,
        updated_at_ms: 1,
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

#[test]
fn the_record_holds_no_key_bytes_in_any_encoding() {
    use base64::Engine as _;
    let a = Identity::generate();
    let (ring, stored) = sealed(&[("a", &a)]);
    let record = encode_ring(&stored);
    let text = String::from_utf8(record.clone()).unwrap();
    for k in ring.keys() {
        for part in [&k.key.name()[..], k.key.aes256(), k.key.hmac256()] {
            for w in part.windows(8) {
                assert!(!record.windows(8).any(|r| r == w), "raw key bytes");
            }
            let hex: String = part[..8].iter().map(|b| format!("{b:02x}")).collect();
            assert!(!text.contains(&hex), "hex key bytes");
            let b64 = base64::engine::general_purpose::STANDARD.encode(&part[..12]);
            assert!(!text.contains(&b64), "base64 key bytes");
        }
    }
}

#[test]
fn garbage_and_wrong_shapes_are_rejected_without_quoting_the_record() {
    let err = decode_ring(b"garbage").unwrap_err().to_string();
    assert!(err.contains("not a valid ring record"), "{err}");
    // A key string where a number belongs: serde would echo it; we must not.
    let secret = "c2VjcmV0LWtleS1ieXRlcy1zaG91bGQtbm90LWxlYWs=";
    let doc = format!("{{\"version\": \"{secret}\"}}");
    let err = decode_ring(doc.as_bytes()).unwrap_err().to_string();
    assert!(!err.contains(secret), "{err}");
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn a_record_that_breaks_an_invariant_or_a_length_is_rejected() {
    let a = Identity::generate();
    let (_, stored) = sealed(&[("a", &a)]);
    let bytes = encode_ring(&stored);
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        f(&mut v);
        match decode_ring(&serde_json::to_vec(&v).unwrap()) {
            Ok(_) => panic!("accepted: {v}"),
            Err(e) => e,
        }
    };
    let err = edit(&|v| v["keys"][2]["state"] = "active".into());
    assert!(matches!(err, RecordError::Ring(_)), "{err}");
    let err = edit(&|v| v["keys"][0]["fingerprint"] = "xyz".into()).to_string();
    assert!(err.contains("fingerprint is not 8 hex digits"), "{err}");
    let err = edit(&|v| v["sealed_keys"] = "AAAA".into()).to_string();
    assert!(err.contains("sealed_keys is not"), "{err}");
    let copy = &stored.copy_records()[0].1;
    let edit_copy = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_slice(copy).unwrap();
        f(&mut v[0]);
        match decode_copies("a", &serde_json::to_vec(&v).unwrap()) {
            Ok(_) => panic!("accepted: {v}"),
            Err(e) => e,
        }
    };
    let err = edit_copy(&|v| v["enc"] = "AAAA".into()).to_string();
    assert!(
        err.contains("sealed copy for \"a\": enc is not 32 bytes"),
        "{err}"
    );
    let err = edit_copy(&|v| v["recipient"] = "nope".into()).to_string();
    assert!(err.contains("no valid public key id"), "{err}");
    let err = edit_copy(&|v| v["member"] = "b".into());
    assert_eq!(
        err,
        RecordError::CopyMember("b".into()),
        "stored under a's key"
    );
    let err = edit_copy(&|v| v["ring"] = "zz".into());
    assert_eq!(err, RecordError::CopyRing);
    let err = edit_copy(&|v| v["signature"] = "%%".into());
    assert_eq!(err, RecordError::Base64("a copy's signature"));
    let one: serde_json::Value = serde_json::from_slice(copy).unwrap();
    let three = serde_json::json!([one[0], one[0], one[0]]);
    assert_eq!(
        decode_copies("a", &serde_json::to_vec(&three).unwrap()),
        Err(RecordError::CopyCount(3))
    );
    assert_eq!(decode_copies("a", b"[]"), Err(RecordError::CopyCount(0)));
    // An old record with the copies inside is refused by its version, never applied.
    let err = edit(&|v| {
        v["version"] = 2.into();
    })
    .to_string();
    assert!(err.contains("version 2"), "{err}");
    let err = edit(&|v| v["version"] = 1.into()).to_string();
    assert!(err.contains("version 1"), "{err}");
    let err = edit(&|v| v["policy"]["retain"] = 0.into());
    assert!(matches!(err, RecordError::Policy(_)), "{err}");
    // A v1 record (key bytes in the clear) is refused, never applied.
    let err = edit(&|v| {
        v["keys"][0]["aes"] = "AAAA".into();
    });
    assert!(matches!(err, RecordError::Shape { .. }), "{err}");
}

/// docs/architecture.md, "Record sizes": with 1000 members and every retain up to 6, the
/// ring record every member reads stays about a kilobyte, and so does each member's copy.
#[test]
fn a_ring_sealed_for_1000_members_fits_one_store_request() {
    let ids: Vec<Identity> = (0..1000).map(|_| Identity::generate()).collect();
    for retain in [1usize, 6] {
        let p = Policy {
            interval: Duration::from_secs(60),
            retain,
        };
        let mut r = KeyRing::bootstrap(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
            .unwrap();
        for _ in 0..retain + 1 {
            r = r
                .rotated(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
                .unwrap();
        }
        assert_eq!(r.keys().len(), p.max_keys());
        let recipients: Vec<(String, MemberKey)> = ids
            .iter()
            .enumerate()
            .map(|(i, who)| (format!("node-{i:04}.example.internal"), *who.public()))
            .collect();
        let (stored, _) = StoredRing::seal("production-edge", &r, &p, "node-0000", &recipients);
        let len = encode_ring(&stored).len();
        let copies = stored.copy_records();
        let largest = copies.iter().map(|(_, c)| c.len()).max().unwrap();
        eprintln!("retain {retain}: ring {len} bytes, largest copy {largest} bytes");
        assert_eq!(copies.len(), 1000);
        assert!(len < 2048, "the ring record is {len} bytes");
        assert!(largest < 512, "a copy record is {largest} bytes");
    }
}

#[test]
fn member_and_request_records_round_trip_and_reject_garbage() {
    let m = MemberRecord {
        node_id: "n1".into(),
        version: "0.1.0".into(),
        targets: vec!["nginx".into()],
        applied_generation: 3,
        last_error: Some("reload failed".into()),
        updated_at_ms: 1,
        public_key: Some(Identity::generate().public().to_base64()),
        unsealable_generation: Some(3),
        certificate: None,
        key_signature: None,
        applied_digest: None,
        floor_generation: None,
        instance: None,
        floor_digest: None,
    };
    assert_eq!(MemberRecord::decode(&m.encode()).unwrap(), m);
    assert!(m.sealing_key().is_some());
    assert!(MemberRecord::decode(b"{}").is_err());
    let wrong = MemberRecord {
        public_key: Some("AAAA".into()),
        ..m
    };
    assert_eq!(
        MemberRecord::decode(&wrong.encode()),
        Err(RecordError::PublicKey)
    );
    let r = RequestRecord {
        requested_by: "cli".into(),
        requested_at_ms: 2,
        certificate: None,
        signature: None,
    };
    assert_eq!(RequestRecord::decode(&r.encode()).unwrap(), r);
    assert!(RequestRecord::decode(b"[1]").is_err());
}

/// A record split in two (who it is, written once; its acknowledgement, at every ring)
/// reads back as the whole record; the acknowledgement is small, replaces the record's
/// own fields, and is checked like them.
#[test]
fn an_acknowledgement_alone_merges_into_the_record_and_is_checked_like_it() {
    let (ring, _) = sealed(&[]);
    let mut whole = MemberRecord {
        public_key: Some(Identity::generate().public().to_base64()),
        certificate: Some("A".repeat(1000)),
        // An ECDSA P-256 signature in DER is 70 to 72 bytes: 96 characters of base64.
        key_signature: Some("B".repeat(96)),
        instance: Some("0123456789abcdef".into()),
        ..member_record("n1")
    };
    whole.applied_generation = ring.generation();
    whole.applied_digest = Some(ring.digest().to_string());
    whole.last_error = Some("reload failed".into());
    whole.unsealable_generation = Some(2);
    whole.floor_generation = Some(ring.generation());
    whole.updated_at_ms = 1_765_000_000_000;
    let identity = MemberRecord::decode(&whole.identity().encode()).unwrap();
    assert_eq!(identity.applied_generation, 0);
    assert_eq!(identity.certificate, whole.certificate);
    assert_eq!(identity.instance, whole.instance);
    assert_eq!(
        (
            identity.public_key.as_ref(),
            identity.key_signature.as_ref()
        ),
        (None, None),
        "the announced key ratchets: it travels with the acknowledgement"
    );
    let ack = whole.encode_ack();
    let plain = MemberRecord {
        public_key: None,
        key_signature: None,
        ..whole.clone()
    }
    .encode_ack();
    eprintln!(
        "acknowledgement: {} bytes, of which the announced key and its signature {}",
        ack.len(),
        ack.len() - plain.len()
    );
    assert!(ack.len() < 400, "{} bytes", ack.len());
    assert!(
        ack.len() - plain.len() < 200,
        "{} bytes",
        ack.len() - plain.len()
    );
    assert_eq!(identity.with_ack(&ack).unwrap(), whole);
    // An acknowledgement replaces what the identity record says, and no more.
    let older = MemberRecord {
        applied_generation: 1,
        ..whole.clone()
    };
    assert_eq!(whole.with_ack(&older.encode_ack()).unwrap(), older);
    // A ratchet: the next acknowledgement announces another key.
    let ratcheted = MemberRecord {
        public_key: Some(Identity::generate().public().to_base64()),
        ..whole.clone()
    };
    assert_eq!(
        identity.with_ack(&ratcheted.encode_ack()).unwrap(),
        ratcheted
    );
    // Checked as a whole record is: absurd numbers, a bad digest, a bad key, unknown
    // fields, a huge error (cut).
    for absurd in [
        MemberRecord {
            applied_generation: u64::MAX,
            ..whole.clone()
        },
        MemberRecord {
            floor_generation: Some(u64::MAX),
            ..whole.clone()
        },
    ] {
        assert_eq!(
            identity.with_ack(&absurd.encode_ack()),
            Err(RecordError::AbsurdGeneration)
        );
    }
    let bad = MemberRecord {
        applied_digest: Some("nope".into()),
        ..whole.clone()
    };
    assert_eq!(
        identity.with_ack(&bad.encode_ack()),
        Err(RecordError::Digest)
    );
    let bad_key = MemberRecord {
        public_key: Some("AAAA".into()),
        ..whole.clone()
    };
    assert_eq!(
        identity.with_ack(&bad_key.encode_ack()),
        Err(RecordError::PublicKey)
    );
    assert!(identity
        .with_ack(
            br#"{"instance":"0123456789abcdef","applied_generation":1,"updated_at_ms":1,"certificate":"x"}"#
        )
        .is_err());
    // The acknowledgement of a stek before the ratchet (it named a sealing key) is refused.
    assert!(identity
        .with_ack(br#"{"sealing_key":"","applied_generation":1,"updated_at_ms":1}"#)
        .is_err());
    // Another box's (or registration's) acknowledgement is not counted, and what it shows
    // of its instance is cut to hex digits.
    let other_box = MemberRecord {
        instance: Some("fedcba9876543210".into()),
        ..whole.clone()
    };
    assert_eq!(
        identity.with_ack(&other_box.encode_ack()),
        Err(RecordError::AckOfAnotherInstance {
            ack: "fedcba9876543210".into(),
            record: "0123456789abcdef".into()
        })
    );
    let forged = identity
        .with_ack(
            br#"{"instance":"\u001b[31mforged\nline","applied_generation":1,"updated_at_ms":1}"#,
        )
        .unwrap_err()
        .to_string();
    assert!(!forged.chars().any(char::is_control), "{forged:?}");
    let long = MemberRecord {
        last_error: Some("x".repeat(100_000)),
        ..whole
    };
    let read = identity.with_ack(&long.encode_ack()).unwrap();
    assert!(read.last_error.unwrap().len() <= MAX_LAST_ERROR);
}

/// An instance is what a state directory makes (16 hex digits); anything else in a member
/// record is refused, so no reader prints or compares something else.
#[test]
fn a_member_record_with_a_malformed_instance_is_refused() {
    for bad in [
        "",
        "not hex",
        "0123456789abcdef0123456789abcdef0",
        "\u{1b}[0m",
    ] {
        let rec = MemberRecord {
            instance: Some(bad.into()),
            ..member_record("n1")
        };
        assert_eq!(
            MemberRecord::decode(&rec.encode()),
            Err(RecordError::Instance),
            "{bad:?}"
        );
    }
    let good = MemberRecord {
        instance: Some("0123456789abcdef".into()),
        ..member_record("n1")
    };
    assert_eq!(MemberRecord::decode(&good.encode()).unwrap(), good);
}

#[test]
fn a_member_record_with_an_absurd_generation_or_a_huge_error_is_bounded() {
    let rec = MemberRecord {
        node_id: "n1".into(),
        version: "v".into(),
        targets: vec![],
        applied_generation: 3,
        last_error: Some("é".repeat(100_000)),
        updated_at_ms: 0,
        public_key: None,
        unsealable_generation: None,
        certificate: None,
        key_signature: None,
        applied_digest: None,
        floor_generation: None,
        instance: None,
        floor_digest: None,
    };
    let read = MemberRecord::decode(&rec.encode()).unwrap();
    let e = read.last_error.unwrap();
    assert!(e.len() <= MAX_LAST_ERROR, "{}", e.len());
    assert!(e.ends_with("bytes cut)"), "{e}");
    assert_eq!(cut_error("short"), "short");
    let absurd = MemberRecord {
        applied_generation: u64::MAX - 1,
        ..rec.clone()
    };
    assert_eq!(
        MemberRecord::decode(&absurd.encode()),
        Err(RecordError::AbsurdGeneration)
    );
    let absurd = MemberRecord {
        unsealable_generation: Some(u64::MAX),
        ..rec.clone()
    };
    assert_eq!(
        MemberRecord::decode(&absurd.encode()),
        Err(RecordError::AbsurdGeneration)
    );
    let bad_digest = MemberRecord {
        applied_digest: Some("nope".into()),
        ..rec
    };
    assert_eq!(
        MemberRecord::decode(&bad_digest.encode()),
        Err(RecordError::Digest)
    );
}

/// A leader's write is sealed in one call and a member opens its copy in one call: the
/// write carries the term, the copies of the write it replaces and, with credentials, the
/// signatures; opening tells each failure apart in order (no copy, a copy of another write, an
/// unsigned copy where signatures are required, a key the member does not hold) and names
/// the key that opened it.
#[test]
fn a_write_is_sealed_in_one_call_and_a_copy_opened_in_one_call() {
    let (trust, creds_of) = test_ca();
    let (a, b) = (Identity::generate(), Identity::generate());
    let (ring, current) = sealed(&[("a", &a)]);
    let n1 = creds_of("n1");
    let p = policy();
    let writer = RingWriter {
        cluster: "c1",
        node_id: "n1",
        policy: &p,
        term: 7,
        creds: Some(&n1),
    };
    let next = ring
        .rotated(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
        .unwrap();
    let recipients = [("a".into(), *a.public()), ("b".into(), *b.public())];
    let (written, failed) = StoredRing::seal_write(&writer, &next, &recipients, Some(&current));
    assert!(failed.is_empty());
    assert_eq!(written.term, 7);
    let now = SystemTime::now();
    written.verify(&trust, now).unwrap();
    // a's copy of the write this one replaces is kept beside its new one.
    let of_a: Vec<_> = written
        .envelope
        .copies
        .iter()
        .filter(|c| c.member == "a")
        .map(|c| c.ring)
        .collect();
    assert_eq!(of_a, vec![written.write_id(), current.write_id()]);
    let back = read_back(&written);
    let moved = back
        .clone()
        .with_copies(vec![current.copy_for("a").unwrap().clone()]);
    assert!(matches!(
        moved.open_copy("c1", "a", Some((&trust, now)), |_| Ok(&a)),
        Err(SealError::OtherRing { .. })
    ));
    assert!(matches!(
        back.open_copy("c1", "c", Some((&trust, now)), |_| Ok(&a)),
        Err(SealError::NoCopy { .. })
    ));
    let refused = back.open_copy("c1", "b", Some((&trust, now)), |k| {
        Err(SealError::OtherRecipient { copy: k, mine: k })
    });
    assert!(matches!(refused, Err(SealError::OtherRecipient { .. })));
    let opened = back
        .open_copy("c1", "b", Some((&trust, now)), |_| Ok(&b))
        .unwrap();
    assert_eq!(opened.ring, next.to_millis());
    assert_eq!(opened.opened_with, b.public().id());
    assert_eq!(opened.data_key.write(), back.write_id());
    // Unsigned, the same write opens without trust, and is refused where signatures count.
    let unsigned = RingWriter {
        creds: None,
        ..writer
    };
    let (plain, _) = StoredRing::seal_write(&unsigned, &next, &[("b".into(), *b.public())], None);
    let plain = read_back(&plain);
    assert!(plain.open_copy("c1", "b", None, |_| Ok(&b)).is_ok());
    assert!(matches!(
        plain.open_copy("c1", "b", Some((&trust, now)), |_| Ok(&b)),
        Err(SealError::Unsigned(_))
    ));
}

/// A signed rotation request dated more than a minute ahead of a node's clock is refused: it
/// would pass the replay check forever and force a rotation every `min_request_interval`.
/// One within the slack, either way, counts.
#[test]
fn a_request_dated_in_the_future_is_refused_and_one_within_the_slack_counts() {
    let (trust, creds_of) = test_ca();
    let n1 = creds_of("n1");
    let now = SystemTime::now();
    let ms =
        |t: SystemTime| u64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let rows = [
        ("now", now, true),
        (
            "30 s ahead: a requester's clock",
            now + Duration::from_secs(30),
            true,
        ),
        ("30 s behind", now - Duration::from_secs(30), true),
        ("ten minutes ahead", now + Duration::from_secs(600), false),
        (
            "a year ahead",
            now + Duration::from_secs(365 * 86_400),
            false,
        ),
    ];
    for (what, at, counts) in rows {
        let key = "/stek/c1/requests/x".to_owned();
        let mut record = RequestRecord {
            requested_by: "n1".into(),
            requested_at_ms: ms(at),
            certificate: None,
            signature: None,
        };
        record.sign(&key, &n1);
        let mut snap = crate::RawSnapshot::default().check();
        snap.requests = vec![key.clone()];
        snap.requested_by = vec![(key.clone(), "n1".into())];
        snap.request_records = vec![(key.clone(), record)];
        snap.authenticate(&trust, now);
        assert_eq!(snap.requests.len() == 1, counts, "{what}");
        if !counts {
            assert!(
                snap.rejected
                    .iter()
                    .any(|(k, e)| *k == key && e.to_string().contains("ahead of this node's clock")),
                "{what}: {:?}",
                snap.rejected
            );
            assert_eq!(
                snap.unreadable_requests,
                vec![key],
                "{what}: deleted by the next write"
            );
        }
    }
}
