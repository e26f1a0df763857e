//! What one box taken later yields (I12): every X25519 private key in its state directory,
//! tried against every sealed copy found anywhere an attacker may look (every file of a store's
//! data directory, raw: etcd's WAL and database with its freed pages, a Raft peer's
//! `raft.redb` with its log, snapshots and freed pages; every revision etcd still serves).
//!
//! Records are found by their JSON shape in raw bytes, and inside every long base64 run (the
//! Raft log and snapshots keep record values as base64 text), so the search needs no
//! knowledge of the store's file formats. A copy opens only with the ring record of its write
//! (its associated data binds the ring's description), so rings are collected the same way
//! and paired with copies by write id.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use base64::Engine as _;
use stek_store::records::{decode_copies, decode_ring};
use stek_store::seal::{Identity, SealedCopy};
use stek_store::StoredRing;

/// Sealed records found in a dump, deduplicated.
#[derive(Debug, Default)]
pub struct Found {
    /// Ring records by write id (hex).
    pub rings: BTreeMap<String, StoredRing>,
    /// Copies by (member, write id, encapsulated key).
    pub copies: BTreeMap<(String, String, [u8; 32]), SealedCopy>,
}

impl Found {
    /// Scans `bytes` (and the base64 runs inside, two levels deep) for ring and copy records.
    pub fn scan(&mut self, bytes: &[u8]) {
        self.scan_at(bytes, 0);
    }

    /// Scans every regular file under `dir`, recursively.
    pub fn scan_dir(&mut self, dir: &Path) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => self.scan_dir(&path),
                Ok(t) if t.is_file() => {
                    if let Ok(bytes) = std::fs::read(&path) {
                        // etcd preallocates its WAL files: most of each is zeros at the end.
                        let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                        self.scan(&bytes[..used]);
                    }
                }
                _ => {}
            }
        }
    }

    fn scan_at(&mut self, bytes: &[u8], depth: usize) {
        for at in find_all(bytes, br#"{"version":"#) {
            if let Some(value) = first_json(&bytes[at..]) {
                if let Ok(ring) = decode_ring(&value) {
                    self.rings.insert(ring.write_id().to_string(), ring);
                }
            }
        }
        // A copy record is written with its fields in declaration order, or sorted (as the
        // copy array of `ring/copies/<member>` is): `member` first, or `enc` first.
        let starts: BTreeSet<usize> = find_all(bytes, br#"{"member":""#)
            .chain(find_all(bytes, br#"{"enc":""#))
            .collect();
        for at in starts {
            let Some(value) = first_json(&bytes[at..]) else {
                continue;
            };
            let Some(member) = serde_json::from_slice::<serde_json::Value>(&value)
                .ok()
                .and_then(|v| v["member"].as_str().map(str::to_owned))
            else {
                continue;
            };
            let mut array = b"[".to_vec();
            array.extend_from_slice(&value);
            array.push(b']');
            for copy in decode_copies(&member, &array).unwrap_or_default() {
                self.copies
                    .insert((copy.member.clone(), copy.ring.to_string(), copy.enc), copy);
            }
        }
        if depth < 2 {
            for decoded in base64_runs(bytes) {
                self.scan_at(&decoded, depth + 1);
            }
        }
    }

    /// The generations of the ring records found (each write once).
    pub fn ring_generations(&self) -> BTreeSet<u64> {
        self.rings.values().map(|r| r.ring.generation()).collect()
    }

    /// The generations of the copies found whose ring record was found too (the ones a key
    /// could open).
    pub fn openable_generations(&self) -> BTreeSet<u64> {
        self.copies
            .values()
            .filter(|c| self.rings.contains_key(&c.ring.to_string()))
            .map(|c| c.generation)
            .collect()
    }

    /// Tries every key against every copy whose ring was found: what opened.
    pub fn open_with(&self, cluster: &str, keys: &[Identity]) -> Vec<Opened> {
        let mut out = Vec::new();
        for copy in self.copies.values() {
            let Some(ring) = self.rings.get(&copy.ring.to_string()) else {
                continue;
            };
            let with = ring.clone().with_copies(vec![copy.clone()]);
            for key in keys {
                if let Ok(opened) = with.open(cluster, &copy.member, key) {
                    out.push(Opened {
                        generation: opened.generation(),
                        member: copy.member.clone(),
                        names: opened.keys().iter().map(|k| *k.key.name()).collect(),
                    });
                }
            }
        }
        out
    }
}

/// A ring a key opened: its generation, whose copy it was, and its keys' names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The ring's generation.
    pub generation: u64,
    /// The member the copy was sealed for.
    pub member: String,
    /// The names of the ticket keys it holds (names only: the test compares them).
    pub names: Vec<[u8; 16]>,
}

/// Every X25519 private key a state directory holds: each 32-byte file that is one (the key
/// files, by whatever name).
pub fn private_keys(state_dir: &Path) -> Vec<Identity> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
        if let Ok(bytes) = std::fs::read(entry.path()) {
            if bytes.len() == 32 {
                out.extend(Identity::from_secret(&bytes));
            }
        }
    }
    out
}

/// Where `needle` starts in `hay` (the first byte first: etcd's WAL files are tens of MB).
fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let first = needle[0];
    hay.iter()
        .enumerate()
        .filter(move |(i, b)| **b == first && hay[*i..].starts_with(needle))
        .map(|(i, _)| i)
}

/// The first JSON value at the start of `bytes`, re-encoded, if one parses there.
fn first_json(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<serde_json::Value>();
    let value = stream.next()?.ok()?;
    serde_json::to_vec(&value).ok()
}

/// Every run of standard base64 of 100 characters or more, decoded (record values in a Raft
/// log entry or snapshot, a copy record inside a ring write).
fn base64_runs(bytes: &[u8]) -> Vec<Vec<u8>> {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !b64(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && b64(bytes[i]) {
            i += 1;
        }
        let mut end = i;
        while end < bytes.len() && bytes[end] == b'=' && end - i < 2 {
            end += 1;
        }
        let run = &bytes[start..end];
        if run.len() >= 100 {
            let whole = &run[..run.len() - run.len() % 4];
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(whole) {
                out.push(decoded);
            }
        }
        i = end.max(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};
    use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};
    use stek_store::records::encode_ring;

    /// The scanner finds a ring and its copies in raw JSON, inside base64 (as a Raft log
    /// entry keeps them) and inside base64 inside JSON inside base64; the right key opens its
    /// copy, another does not.
    #[test]
    fn records_are_found_raw_and_in_base64_and_open_only_with_their_key() {
        let p = Policy {
            interval: Duration::from_secs(60),
            retain: 1,
        };
        let ring = KeyRing::bootstrap(SystemTime::now(), &p, &mut OsKeySource, &KeyHistory::new())
            .unwrap();
        let (a, b) = (Identity::generate(), Identity::generate());
        let (stored, _) = StoredRing::seal(
            "c",
            &ring,
            &p,
            "n1",
            &[("a".into(), *a.public()), ("b".into(), *b.public())],
        );
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let ring_bytes = encode_ring(&stored);
        let copies: Vec<(String, Vec<u8>)> = stored.copy_records();
        // raw ring, one copy as base64 in a JSON command, the other two levels deep
        let mut dump = b"junk".to_vec();
        dump.extend_from_slice(&ring_bytes);
        let command = serde_json::json!({"WriteCopies": {"copies": {"a": b64(&copies[0].1)}}});
        dump.extend_from_slice(b"\x00\x01");
        dump.extend_from_slice(&serde_json::to_vec(&command).unwrap());
        let inner = serde_json::to_vec(&serde_json::json!({"v": b64(&copies[1].1)})).unwrap();
        dump.extend_from_slice(b" ");
        dump.extend_from_slice(b64(&inner).as_bytes());
        let mut found = Found::default();
        found.scan(&dump);
        assert_eq!(found.rings.len(), 1);
        assert_eq!(found.copies.len(), 2);
        let opened = found.open_with("c", &[a]);
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].member, "a");
        assert_eq!(opened[0].names.len(), 2);
        assert!(found.open_with("c", &[Identity::generate()]).is_empty());
    }
}
