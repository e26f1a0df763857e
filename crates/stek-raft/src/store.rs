//! The embedded coordinator's replicated state and its durable Raft storage (vote, log,
//! committed index, snapshots) in a redb file under `[raft] data_dir`. The state holds no key
//! bytes: rings carry only copies sealed to members' keys, which live on their boxes' RAM disks.

// Storage calls return openraft's own `StorageError`, as its storage trait requires.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;

use std::path::{Path, PathBuf};

use openraft::storage::{LogState, RaftLogReader, RaftSnapshotBuilder, RaftStorage, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use super::TypeConfig;
pub use stek_store::keyspace::{Applied, Command, Keyspace, LeaderSlot, Outcome, MAX_LEASE_TTL_MS};

#[derive(Debug, Default)]
struct Inner {
    vote: Option<Vote<u64>>,
    vote_gate: Option<u64>,
    committed: Option<LogId<u64>>,
    log: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<u64>>,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, openraft::BasicNode>,
    data: Keyspace,
    snapshot: Option<(SnapshotMeta<u64, openraft::BasicNode>, Vec<u8>)>,
    snapshot_seq: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    data: Keyspace,
}

/// The Raft log, one entry per index.
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// The vote, the committed and purged log ids, and the last snapshot (meta and body).
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// The Raft storage: the vote, the log, the committed index and the last snapshot are written
/// to `raft.redb` in the data directory (each write committed, so fsynced, before openraft is
/// told it is saved); the state machine is rebuilt from the snapshot and the committed log at
/// start. Everything is also kept in memory for reads. Shared between openraft and the
/// coordinator (which reads the state machine and waits on its revision).
///
/// What is written holds no key bytes: ring records carry only sealed copies (I5).
#[derive(Clone)]
pub struct RaftStore {
    inner: Arc<Mutex<Inner>>,
    revision: watch::Sender<u64>,
    /// The log index of the last ring write applied here that dropped keys of the ring before
    /// it (a rotation past `retain`, a re-key): the peer then snapshots and purges its log up
    /// to it ([`RaftStore::key_drops`]). 0: none since this process started.
    key_drops: watch::Sender<u64>,
    db: Option<Arc<Database>>,
}

impl Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore")
            .field("durable", &self.db.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the Raft data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Creating, inspecting or opening failed.
    #[error("{path}: cannot {action}: {reason}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was attempted.
        action: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The directory is not private to this user.
    #[error("{path}: {reason}; the Raft data directory must be owned by the user stek runs as, mode 0700 (chmod 700 {path})")]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn fail(path: &Path, action: &'static str, e: impl std::fmt::Display) -> DataDirError {
    DataDirError::Io {
        path: path.to_owned(),
        action,
        reason: e.to_string(),
    }
}

/// The file the Raft state is kept in, inside the data directory.
pub const RAFT_FILE: &str = "raft.redb";

/// Creates `dir` (mode 0700) if missing and checks that only this user can enter it.
pub fn prepare_data_dir(dir: &Path) -> Result<(), DataDirError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(dir, "create the directory", e))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| fail(dir, "inspect", e))?;
    if !meta.is_dir() {
        return Err(fail(dir, "use as a directory", "not a directory"));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(DataDirError::NotPrivate {
            path: dir.to_owned(),
            reason: format!("owned by uid {}, not {euid}", meta.uid()),
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(DataDirError::NotPrivate {
            path: dir.to_owned(),
            reason: format!("mode {:o} lets others in", meta.mode() & 0o7777),
        });
    }
    Ok(())
}

/// The keys a ring record names, by epoch and fingerprint (`None`: no ring, or one that does
/// not decode).
fn ring_keys(record: Option<&[u8]>) -> Option<Vec<(u64, stek_core::Fingerprint)>> {
    let stored = stek_store::records::decode_ring(record?).ok()?;
    Some(
        stored
            .ring
            .keys()
            .iter()
            .map(|k| (k.epoch, k.fingerprint()))
            .collect(),
    )
}

/// Whether a ring write took out a key the ring before it held: its sealed copy then lives on
/// only in the log and in older snapshots. A re-key drops every key; a record that does not
/// decode counts as dropping them all.
fn drops_keys(
    before: &[(u64, stek_core::Fingerprint)],
    after: Option<&[(u64, stek_core::Fingerprint)]>,
) -> bool {
    let after = after.unwrap_or_default();
    before.iter().any(|k| !after.contains(k))
}

fn io_err<E: std::error::Error + 'static>(e: &E) -> StorageError<u64> {
    StorageIOError::read_state_machine(e).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write(&std::io::Error::other(e.to_string())).into()
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError<u64>> {
    serde_json::to_vec(v).map_err(write_err)
}

impl RaftStore {
    /// A store kept in memory only (tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn in_memory() -> Self {
        Self {
            inner: Arc::default(),
            revision: watch::channel(0).0,
            key_drops: watch::channel(0).0,
            db: None,
        }
    }

    /// Opens (or creates) the store in `dir`, loading the vote, log and last snapshot, and the
    /// state machine of that snapshot. A second process on the same directory is refused.
    pub fn open(dir: &Path) -> Result<Self, DataDirError> {
        prepare_data_dir(dir)?;
        let path = dir.join(RAFT_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => fail(
                &path,
                "open",
                "another stek process has it open (two nodes may not share a [raft] data_dir)",
            ),
            e => fail(&path, "open", e),
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        let mut inner = Inner::default();
        let mut load = || -> Result<(), Box<dyn std::error::Error>> {
            let tx = db.begin_write()?;
            {
                tx.open_table(LOG)?;
                tx.open_table(META)?;
            }
            tx.commit()?;
            let tx = db.begin_read()?;
            let meta = tx.open_table(META)?;
            let get = |k: &str| -> Result<Option<Vec<u8>>, redb::StorageError> {
                Ok(meta.get(k)?.map(|v| v.value().to_vec()))
            };
            if let Some(v) = get("vote")? {
                inner.vote = Some(serde_json::from_slice(&v)?);
            }
            if let Some(v) = get("vote_gate")? {
                inner.vote_gate = serde_json::from_slice(&v)?;
            }
            if let Some(v) = get("committed")? {
                inner.committed = serde_json::from_slice(&v)?;
            }
            if let Some(v) = get("purged")? {
                inner.last_purged = serde_json::from_slice(&v)?;
            }
            if let (Some(m), Some(body)) = (get("snapshot_meta")?, get("snapshot")?) {
                let m: SnapshotMeta<u64, openraft::BasicNode> = serde_json::from_slice(&m)?;
                let b: SnapshotBody = serde_json::from_slice(&body)?;
                inner.data = b.data;
                inner.last_applied = m.last_log_id;
                inner.membership = m.last_membership.clone();
                inner.snapshot = Some((m, body));
            }
            let log = tx.open_table(LOG)?;
            for row in log.iter()? {
                let (k, v) = row?;
                inner
                    .log
                    .insert(k.value(), serde_json::from_slice(v.value())?);
            }
            Ok(())
        };
        load().map_err(|e| fail(&path, "read the Raft state", e))?;
        let rev = inner.data.revision;
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            revision: watch::channel(rev).0,
            key_drops: watch::channel(0).0,
            db: Some(Arc::new(db)),
        })
    }

    /// Whether this store holds any Raft state (a vote or a log entry): such a peer belongs to
    /// a group already and never initialises one.
    pub async fn has_state(&self) -> bool {
        let inner = self.inner.lock().await;
        inner.vote.is_some() || !inner.log.is_empty() || inner.last_purged.is_some()
    }

    /// The log index this peer must have applied before it grants a vote, if any (a peer that
    /// joined a running group without state; see `Peer`).
    pub async fn vote_gate(&self) -> Option<u64> {
        self.inner.lock().await.vote_gate
    }

    /// Sets or clears the vote gate, durably.
    pub async fn set_vote_gate(&self, gate: Option<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        self.persist(&[("vote_gate", json(&gate)?)], &[], None)?;
        inner.vote_gate = gate;
        Ok(())
    }

    /// A copy of the applied state.
    pub async fn data(&self) -> Keyspace {
        self.inner.lock().await.data.clone()
    }

    /// What `f` reads of the applied state, without copying the rest (the state can hold
    /// thousands of member records; a lease renewal needs one TTL).
    pub async fn read<R>(&self, f: impl FnOnce(&Keyspace) -> R) -> R {
        f(&self.inner.lock().await.data)
    }

    /// Follows the applied revision.
    pub fn revisions(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Follows the log index of the last applied ring write that dropped keys (0: none yet).
    /// Every peer applies every entry, so each learns of a drop from its own state machine,
    /// whichever peer leads and whether or not a node asked for a purge.
    pub fn key_drops(&self) -> watch::Receiver<u64> {
        self.key_drops.subscribe()
    }

    /// Writes in one durable transaction: `put` rows of the meta table, log entries to insert,
    /// and a log range to remove.
    fn persist(
        &self,
        put: &[(&str, Vec<u8>)],
        entries: &[(u64, Vec<u8>)],
        remove: Option<(std::ops::Bound<u64>, std::ops::Bound<u64>)>,
    ) -> Result<(), StorageError<u64>> {
        let Some(db) = &self.db else { return Ok(()) };
        // A commit waits for the disk: on a multi-threaded runtime, let the other tasks (Raft
        // heartbeats among them) run on another thread meanwhile.
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(|| Self::commit(db, put, entries, remove))
        } else {
            Self::commit(db, put, entries, remove)
        }
    }

    fn commit(
        db: &Database,
        put: &[(&str, Vec<u8>)],
        entries: &[(u64, Vec<u8>)],
        remove: Option<(std::ops::Bound<u64>, std::ops::Bound<u64>)>,
    ) -> Result<(), StorageError<u64>> {
        let tx = db.begin_write().map_err(write_err)?;
        {
            let mut meta = tx.open_table(META).map_err(write_err)?;
            for (k, v) in put {
                meta.insert(*k, v.as_slice()).map_err(write_err)?;
            }
            let mut log = tx.open_table(LOG).map_err(write_err)?;
            if let Some(range) = remove {
                log.retain_in::<u64, _>(range, |_, _| false)
                    .map_err(write_err)?;
            }
            for (i, v) in entries {
                log.insert(*i, v.as_slice()).map_err(write_err)?;
            }
        }
        tx.commit().map_err(write_err)
    }
}

/// What `raft.redb` holds of the history, read from its tables: the log's indexes, and the
/// generations of every ring in the log and in the snapshot (tests and measurements).
#[cfg(test)]
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Kept {
    /// The log table's indexes, in order.
    pub log: Vec<u64>,
    /// The last log index the stored snapshot covers.
    pub snapshot_at: Option<u64>,
    /// Every ring generation in the log table and the snapshot.
    pub generations: std::collections::BTreeSet<u64>,
}

#[cfg(test)]
impl RaftStore {
    /// Reads [`Kept`] from the file (a durable store only).
    pub(crate) fn kept(&self) -> Kept {
        let generation = |v: &[u8]| {
            stek_store::records::decode_ring(v)
                .map(|r| r.ring.generation())
                .ok()
        };
        let db = self.db.as_ref().expect("a durable store");
        let tx = db.begin_read().expect("a read transaction");
        let mut kept = Kept::default();
        let log = tx.open_table(LOG).expect("the log table");
        for row in log.iter().expect("the log rows") {
            let (k, v) = row.expect("a log row");
            kept.log.push(k.value());
            let entry: Entry<TypeConfig> = serde_json::from_slice(v.value()).expect("an entry");
            if let EntryPayload::Normal(Command::WriteRing { value, .. }) = entry.payload {
                kept.generations.extend(generation(&value));
            }
        }
        let meta = tx.open_table(META).expect("the meta table");
        if let Some(m) = meta.get("snapshot_meta").expect("the snapshot meta") {
            let m: SnapshotMeta<u64, openraft::BasicNode> =
                serde_json::from_slice(m.value()).expect("snapshot meta");
            kept.snapshot_at = m.last_log_id.map(|l| l.index);
        }
        if let Some(b) = meta.get("snapshot").expect("the snapshot") {
            let body: SnapshotBody = serde_json::from_slice(b.value()).expect("a snapshot");
            kept.generations
                .extend(body.data.ring.as_deref().and_then(generation));
        }
        kept
    }
}

impl RaftLogReader<TypeConfig> for RaftStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let inner = self.inner.lock().await;
        Ok(inner.log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for RaftStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        let body = serde_json::to_vec(&SnapshotBody {
            data: inner.data.clone(),
        })
        .map_err(|e| io_err(&e))?;
        inner.snapshot_seq += 1;
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                inner.last_applied.map_or(0, |l| l.index),
                inner.snapshot_seq
            ),
        };
        self.persist(
            &[("snapshot_meta", json(&meta)?), ("snapshot", body.clone())],
            &[],
            None,
        )?;
        inner.snapshot = Some((meta.clone(), body.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(body)),
        })
    }
}

impl RaftStorage<TypeConfig> for RaftStore {
    type LogReader = Self;
    type SnapshotBuilder = Self;

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        self.persist(&[("vote", json(vote)?)], &[], None)?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.inner.lock().await.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        self.persist(&[("committed", json(&committed)?)], &[], None)?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.inner.lock().await.committed)
    }

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let inner = self.inner.lock().await;
        let last = inner.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn append_to_log<I>(&mut self, entries: I) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let rows = entries
            .iter()
            .map(|e| Ok((e.log_id.index, json(e)?)))
            .collect::<Result<Vec<_>, StorageError<u64>>>()?;
        self.persist(&[], &rows, None)?;
        for e in entries {
            inner.log.insert(e.log_id.index, e);
        }
        Ok(())
    }

    async fn delete_conflict_logs_since(
        &mut self,
        log_id: LogId<u64>,
    ) -> Result<(), StorageError<u64>> {
        use std::ops::Bound;
        let mut inner = self.inner.lock().await;
        self.persist(
            &[],
            &[],
            Some((Bound::Included(log_id.index), Bound::Unbounded)),
        )?;
        inner.log.retain(|i, _| *i < log_id.index);
        Ok(())
    }

    async fn purge_logs_upto(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        use std::ops::Bound;
        let mut inner = self.inner.lock().await;
        self.persist(
            &[("purged", json(&Some(log_id))?)],
            &[],
            Some((Bound::Unbounded, Bound::Included(log_id.index))),
        )?;
        inner.log.retain(|i, _| *i > log_id.index);
        inner.last_purged = Some(log_id);
        Ok(())
    }

    async fn last_applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<u64>>,
            StoredMembership<u64, openraft::BasicNode>,
        ),
        StorageError<u64>,
    > {
        let inner = self.inner.lock().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply_to_state_machine(
        &mut self,
        entries: &[Entry<TypeConfig>],
    ) -> Result<Vec<Outcome>, StorageError<u64>> {
        let mut inner = self.inner.lock().await;
        let mut out = Vec::with_capacity(entries.len());
        let mut dropped_at = None;
        for e in entries {
            inner.last_applied = Some(e.log_id);
            let unchanged = Outcome {
                applied: Applied::Ok,
                revision: inner.data.revision,
            };
            match &e.payload {
                EntryPayload::Blank => out.push(unchanged),
                EntryPayload::Normal(cmd) => {
                    let before = match cmd {
                        Command::WriteRing { .. } => ring_keys(inner.data.ring.as_deref()),
                        _ => None,
                    };
                    let applied = inner.data.apply(cmd);
                    if let (Command::WriteRing { value, .. }, Some(before), Applied::Ok) =
                        (cmd, before, &applied.applied)
                    {
                        if drops_keys(&before, ring_keys(Some(value)).as_deref()) {
                            dropped_at = Some(e.log_id.index);
                        }
                    }
                    out.push(applied);
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m.clone());
                    out.push(unchanged);
                }
            }
        }
        let rev = inner.data.revision;
        drop(inner);
        self.revision.send_replace(rev);
        // Only a signal: this runs inside openraft's state machine worker, which must not wait
        // on the snapshot it is about to be asked for (see `peer::purge_after_key_drops`).
        if let Some(index) = dropped_at {
            self.key_drops.send_replace(index);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&bytes).map_err(|e| io_err(&e))?;
        let mut inner = self.inner.lock().await;
        self.persist(
            &[("snapshot_meta", json(meta)?), ("snapshot", bytes.clone())],
            &[],
            None,
        )?;
        inner.data = body.data;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), bytes));
        let rev = inner.data.revision;
        drop(inner);
        self.revision.send_replace(rev);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let inner = self.inner.lock().await;
        Ok(inner.snapshot.as_ref().map(|(meta, body)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(body.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openraft_storage_suite_passes() {
        openraft::testing::Suite::test_all(|| async { RaftStore::in_memory() })
            .expect("openraft's storage suite, in memory");
        let dirs = std::sync::Mutex::new(Vec::new());
        openraft::testing::Suite::test_all(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = RaftStore::open(&dir.path().join("raft")).expect("open");
            dirs.lock().unwrap().push(dir);
            async move { store }
        })
        .expect("openraft's storage suite, on redb");
    }

    /// What openraft is told is saved survives the process: the vote, the log, the committed
    /// id and the snapshot (with the state machine in it) are there after a reopen; a second
    /// opener of the same directory is refused; a directory others can enter is refused.
    #[test]
    fn a_reopened_store_has_what_was_saved_and_one_directory_has_one_opener() {
        use openraft::{CommittedLeaderId, EntryPayload};
        use std::os::unix::fs::PermissionsExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("raft");
        let log_id = |i| LogId::new(CommittedLeaderId::new(3, 1), i);
        let entry = |i, lease| Entry::<TypeConfig> {
            log_id: log_id(i),
            payload: EntryPayload::Normal(Command::Grant {
                lease,
                ttl_ms: 3000,
            }),
        };
        rt.block_on(async {
            let mut s = RaftStore::open(&dir).unwrap();
            assert!(!s.has_state().await);
            let e = RaftStore::open(&dir).expect_err("a second opener");
            assert!(e.to_string().contains("another stek process"), "{e}");
            s.save_vote(&Vote::new(3, 1)).await.unwrap();
            s.append_to_log((1..=4).map(|i| entry(i, i as i64)))
                .await
                .unwrap();
            s.apply_to_state_machine(&[entry(1, 1), entry(2, 2)])
                .await
                .unwrap();
            s.build_snapshot().await.unwrap();
            s.purge_logs_upto(log_id(2)).await.unwrap();
            s.save_committed(Some(log_id(3))).await.unwrap();
            s.delete_conflict_logs_since(log_id(4)).await.unwrap();
        });
        rt.block_on(async {
            let mut s = RaftStore::open(&dir).unwrap();
            assert!(s.has_state().await);
            assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
            assert_eq!(s.read_committed().await.unwrap(), Some(log_id(3)));
            let state = s.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(log_id(2)));
            assert_eq!(state.last_log_id, Some(log_id(3)), "entry 4 was deleted");
            let entries = s.try_get_log_entries(0..10).await.unwrap();
            assert_eq!(
                entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
                [3]
            );
            let (applied, _) = s.last_applied_state().await.unwrap();
            assert_eq!(applied, Some(log_id(2)), "the snapshot's state machine");
            assert_eq!(s.data().await.leases.len(), 2);
            assert!(s.get_current_snapshot().await.unwrap().is_some());
        });
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = RaftStore::open(&dir).expect_err("open to others");
        assert!(e.to_string().contains("lets others in"), "{e}");
    }

    /// The store signals (`key_drops`) the index of each applied ring write that took out a
    /// key of the ring before it (a rotation past `retain`, a re-key), and of no other entry.
    #[test]
    fn a_ring_write_that_drops_a_key_is_signalled_with_its_index() {
        use openraft::CommittedLeaderId;
        use stek_core::{KeyHistory, KeyRing, OsKeySource, Policy};
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let p = Policy {
            interval: std::time::Duration::from_secs(60),
            retain: 1,
        };
        let now = std::time::SystemTime::now;
        let seen = KeyHistory::new();
        let r1 = KeyRing::bootstrap(now(), &p, &mut OsKeySource, &seen).unwrap();
        let r2 = r1.rotated(now(), &p, &mut OsKeySource, &seen).unwrap();
        let r3 = r2.rotated(now(), &p, &mut OsKeySource, &seen).unwrap();
        let r4 = KeyRing::rekeyed(&r3, now(), &p, &mut OsKeySource, &seen).unwrap();
        let mut s = RaftStore::in_memory();
        let drops = s.key_drops();
        let mut index = 0;
        let mut apply = |cmd: Command| {
            index += 1;
            let entry = Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(cmd),
            };
            rt.block_on(s.apply_to_state_machine(&[entry])).unwrap();
            (index, *drops.borrow())
        };
        apply(Command::Grant {
            lease: 1,
            ttl_ms: 3000,
        });
        apply(Command::Campaign {
            lease: 1,
            node_id: "a".into(),
        });
        let term = 2;
        let ring = |r: &KeyRing| {
            let mut stored = stek_store::StoredRing::seal("c", r, &p, "a", &[]).0;
            stored.term = term;
            Command::WriteRing {
                term: 2,
                value: stek_store::records::encode_ring(&stored),
                served: vec![],
                expected: None,
                copies: BTreeMap::new(),
            }
        };
        assert_eq!(apply(ring(&r1)).1, 0, "the first ring drops nothing");
        assert_eq!(
            apply(ring(&r2)).1,
            0,
            "a rotation within retain drops nothing"
        );
        let (at, signalled) = apply(ring(&r3));
        assert_eq!(signalled, at, "a rotation past retain drops the oldest key");
        apply(Command::PutRequest {
            key: "r".into(),
            value: b"x".to_vec(),
            by: None,
        });
        assert_eq!(apply(ring(&r3)).1, at, "a stale write signals nothing");
        let (at, signalled) = apply(ring(&r4));
        assert_eq!(signalled, at, "a re-key drops every key");
    }
}
