//! The etcd backend: one prefix per cluster, leases for liveness and leadership, transactions
//! that compare the leader key's create-revision for fencing.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};

use stek_store::records::{self, MemberRecord, RequestRecord, StoredRing};
use stek_store::{
    Change, ChangeStream, CoordError, Coordinator, KeepAlive, Leader, LeaseId, Snapshot, Term,
};

/// The largest ring record stek writes: etcd refuses requests above `--max-request-bytes`
/// (1.5 MiB by default), and the transaction also carries the served requests' deletions.
pub const MAX_RING_RECORD: usize = 1_400_000;

/// The most operations stek puts in one etcd transaction branch: etcd refuses more than
/// `--max-txn-ops` (128 by default). A ring write that serves more rotation requests than
/// fit deletes the rest in further transactions of at most this many, each fenced on the term.
pub const MAX_TXN_OPS: usize = 100;

/// Keys per page of a full read: a read of every member's record comes in pages at one
/// revision, so no response approaches gRPC's 4 MiB message limit however many members there
/// are.
pub const READ_PAGE: i64 = 500;

/// A cluster's view of etcd.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    endpoints: String,
    /// The last ring record read, by its mod revision: a member's read fetches the ring's bytes
    /// (hundreds of KB with many members) only when it changed.
    ring_cache: RingCache,
    /// The revision at which this handle last wrote each node's member record (registration,
    /// or an acknowledgement that wrote it back): an acknowledgement is put alone while the
    /// record is still that one, checked by its revision rather than by sending the record.
    registered: Registered,
}

/// Node id to (the revision its member record was written at by this handle, that record).
type Registered = std::sync::Arc<std::sync::Mutex<BTreeMap<String, (i64, Vec<u8>)>>>;

/// The last ring record read: (mod revision, bytes).
type RingCache = std::sync::Arc<std::sync::Mutex<Option<(i64, Vec<u8>)>>>;

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &self.prefix)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// How to reach a secured etcd: TLS trust, a client certificate, a user.
#[derive(Default)]
pub struct EtcdSecurity {
    /// PEM of the CA that signed etcd's certificate (https endpoints).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of the client certificate and of its key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// etcd user and password.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSecurity")
            .field("tls", &self.ca_pem.is_some())
            .field("client_cert", &self.identity.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl Etcd {
    /// Connects (lazily: a down etcd shows up at the first request) to `endpoints` for cluster
    /// `cluster`.
    pub async fn connect(endpoints: &[String], cluster: &str) -> Result<Self, CoordError> {
        Self::connect_secured(endpoints, cluster, EtcdSecurity::default()).await
    }

    /// Connects with TLS (server verification, optional client certificate) and/or an etcd
    /// user, as `security` says.
    pub async fn connect_secured(
        endpoints: &[String],
        cluster: &str,
        security: EtcdSecurity,
    ) -> Result<Self, CoordError> {
        let shown = format!("[{}]", endpoints.join(", "));
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(3));
        if let Some(ca) = security.ca_pem {
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(ca));
            if let Some((cert, key)) = security.identity {
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        if let Some((user, password)) = security.user {
            options = options.with_user(user, password);
        }
        // The client connects lazily: what fails here is the endpoints or the TLS material.
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| CoordError::Setup {
                what: format!("etcd client for {shown}"),
                reason: e.to_string(),
            })?;
        Ok(Self {
            client,
            prefix: format!("/stek/{cluster}/"),
            endpoints: shown,
            ring_cache: std::sync::Arc::default(),
            registered: std::sync::Arc::default(),
        })
    }

    /// The endpoints, for messages.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The cluster's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn unreachable(&self, e: etcd_client::Error) -> CoordError {
        CoordError::Unreachable {
            endpoints: self.endpoints.clone(),
            reason: e.to_string(),
        }
    }

    /// A write under a lease: etcd refuses one whose lease is gone with "requested lease
    /// not found" (the keyspace's [`stek_store::keyspace::Applied::NoLease`]).
    fn lease_write_failed(&self, e: etcd_client::Error) -> CoordError {
        if is_lease_gone(&e) {
            CoordError::LeaseExpired
        } else {
            self.unreachable(e)
        }
    }

    fn leader_is(&self, term: Term) -> Compare {
        Compare::create_revision(self.key("leader"), CompareOp::Equal, term.0)
    }
}

/// A change stream over an etcd watch.
pub struct EtcdWatch {
    stream: WatchStream,
    prefix: String,
    /// What the watched keys hold, kept current from the events (which carry the values), so
    /// that the node need not read again what an event told it. `None` when the keys could not
    /// be read at the watch's start revision (compacted): the node reads as before.
    mirror: Option<Box<Mirror>>,
    /// One watcher (in revision order), not several.
    ordered: bool,
}

/// The watched keys' current key-values, as of `revision`: read once at the watch's start
/// revision, then changed by every event.
struct Mirror {
    etcd: Etcd,
    revision: i64,
    kvs: BTreeMap<Vec<u8>, etcd_client::KeyValue>,
    /// Only one member's keys (a follower's watch).
    partial: bool,
}

impl Mirror {
    fn apply(&mut self, events: &[etcd_client::Event]) {
        for e in events {
            let Some(kv) = e.kv() else { continue };
            self.revision = self.revision.max(kv.mod_revision());
            match e.event_type() {
                EventType::Put => {
                    self.kvs.insert(kv.key().to_vec(), kv.clone());
                }
                EventType::Delete => {
                    self.kvs.remove(kv.key());
                }
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut raw = stek_store::RawSnapshot {
            revision: self.revision,
            partial: self.partial,
            ..Default::default()
        };
        for kv in self.kvs.values() {
            self.etcd.add(&mut raw, kv);
        }
        raw.check()
    }
}

impl std::fmt::Debug for EtcdWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdWatch")
    }
}

impl ChangeStream for EtcdWatch {
    fn snapshot(&self) -> Option<Snapshot> {
        self.mirror.as_deref().map(Mirror::snapshot)
    }

    async fn queued(&mut self) -> Option<Result<Change, CoordError>> {
        // Polled once: a response already received is taken; none is waited for. The stream
        // keeps its state between polls (tonic's `Streaming`), so dropping the pending poll
        // loses nothing, as when `changed()` loses a `select!`.
        tokio::time::timeout(Duration::ZERO, self.changed())
            .await
            .ok()
    }

    async fn changed(&mut self) -> Result<Change, CoordError> {
        loop {
            match self.stream.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled() {
                        let why = if resp.compact_revision() > 0 {
                            format!("compacted at revision {}", resp.compact_revision())
                        } else {
                            format!("canceled: {}", resp.cancel_reason())
                        };
                        return Err(CoordError::WatchBroken(why));
                    }
                    if let Some(m) = self.mirror.as_mut() {
                        m.apply(resp.events());
                    }
                    if !resp.events().is_empty() {
                        let keys = resp
                            .events()
                            .iter()
                            .filter_map(|e| e.kv())
                            .map(|kv| {
                                let key = String::from_utf8_lossy(kv.key());
                                key.strip_prefix(self.prefix.as_str())
                                    .unwrap_or(&key)
                                    .to_owned()
                            })
                            .collect();
                        // The events' own revision: the header's is the store's revision when
                        // the response was sent, which may be later.
                        let revision = resp
                            .events()
                            .iter()
                            .filter_map(|e| e.kv())
                            .map(|kv| kv.mod_revision())
                            .max()
                            .unwrap_or_else(|| resp.header().map_or(0, |h| h.revision()));
                        // A member's watch is six watchers, each in order but not with each
                        // other: a later event may carry an earlier revision, so no revision
                        // is given (0: never skipped as already read).
                        let revision = if self.ordered { revision } else { 0 };
                        return Ok(Change {
                            revision,
                            keys: Some(keys),
                        });
                    }
                }
                Ok(None) => return Err(CoordError::WatchBroken("stream closed".into())),
                Err(e) => return Err(CoordError::WatchBroken(e.to_string())),
            }
        }
    }
}

impl Etcd {
    /// Files one key-value read under the prefix into `raw`.
    fn add(&self, raw: &mut stek_store::RawSnapshot, kv: &etcd_client::KeyValue) {
        let Some(rest) = kv.key().strip_prefix(self.prefix.as_bytes()) else {
            return;
        };
        let rest = String::from_utf8_lossy(rest).into_owned();
        let full = format!("{}{rest}", self.prefix);
        if rest == "leader" {
            raw.leader = Some(Leader {
                node_id: String::from_utf8_lossy(kv.value()).into_owned(),
                term: Term(kv.create_revision()),
                lease: LeaseId(kv.lease()),
            });
        } else if let Some(id) = rest.strip_prefix(stek_store::COPIES) {
            raw.copies.push((full, id.to_owned(), kv.value().to_vec()));
        } else if rest == "ring" {
            raw.ring = Some((full, kv.value().to_vec()));
            raw.ring_revision = kv.mod_revision();
            if let Ok(mut c) = self.ring_cache.lock() {
                *c = Some((kv.mod_revision(), kv.value().to_vec()));
            }
        } else if let Some(id) = rest.strip_prefix("alive/") {
            raw.alive.insert(id.to_owned());
        } else if let Some(id) = rest.strip_prefix(stek_store::ACKS) {
            raw.acks.push((full, id.to_owned(), kv.value().to_vec()));
        } else if let Some(id) = rest.strip_prefix("members/") {
            raw.members
                .push((full.clone(), id.to_owned(), kv.value().to_vec()));
        } else if rest.starts_with("requests/") {
            raw.requests.push((full, kv.value().to_vec()));
        } else {
            raw.unknown.push(full);
        }
    }
}

impl Etcd {
    /// A leader's transaction: `ops` if `term` still leads and the ring is still the one
    /// written at `ring_revision`; otherwise it reads the leader key, for [`refusal`]. These
    /// are the keyspace's fencing and compare-and-swap rules ([`stek_store::keyspace`]) as etcd
    /// compares; the conformance suite checks both against the same properties.
    fn fenced(&self, term: Term, ring_revision: i64, ops: Vec<TxnOp>) -> Txn {
        Txn::new()
            .when([
                self.leader_is(term),
                Compare::mod_revision(self.key("ring"), CompareOp::Equal, ring_revision),
            ])
            .and_then(ops)
            .or_else([TxnOp::get(
                self.key("leader"),
                Some(GetOptions::new().with_keys_only()),
            )])
    }

    /// Puts copy records (member, record) in batches within etcd's transaction limit, sent
    /// side by side, each fenced like the ring ([`Etcd::fenced`]). Returns the highest
    /// revision a batch was written at.
    async fn put_copies(
        &self,
        term: Term,
        ring_revision: i64,
        copies: &[(String, Vec<u8>)],
    ) -> Result<i64, CoordError> {
        let mut batches = tokio::task::JoinSet::new();
        for batch in copies.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|(member, value)| {
                    TxnOp::put(self.key(&stek_store::copy_key(member)), value.clone(), None)
                })
                .collect();
            let txn = self.fenced(term, ring_revision, ops);
            let mut client = self.client.clone();
            batches.spawn(async move { client.txn(txn).await });
        }
        let mut revision = 0;
        while let Some(done) = batches.join_next().await {
            let resp = done
                .map_err(|e| CoordError::Unreachable {
                    endpoints: self.endpoints.clone(),
                    reason: e.to_string(),
                })?
                .map_err(|e| self.unreachable(e))?;
            if !resp.succeeded() {
                return Err(refusal(term, &resp));
            }
            revision = revision.max(resp.header().map_or(0, |h| h.revision()));
        }
        Ok(revision)
    }

    /// The revision the stored ring was written at if `term` still leads and the ring is,
    /// byte for byte, `value`, a record written in `term` (the keyspace's rule for a replayed
    /// ring write); `None` if not. Asked only after a write conflicted, so the ring's bytes
    /// travel again only then.
    async fn landed(&self, term: Term, value: &[u8]) -> Result<Option<i64>, CoordError> {
        if records::decode_ring(value).map(|r| r.term).ok() != Some(term.0) {
            return Ok(None);
        }
        let mut client = self.client.clone();
        let ring = self.key("ring");
        let txn = Txn::new()
            .when([
                self.leader_is(term),
                Compare::value(ring.clone(), CompareOp::Equal, value),
            ])
            .and_then([TxnOp::get(ring, Some(GetOptions::new().with_keys_only()))]);
        let resp = client.txn(txn).await.map_err(|e| self.unreachable(e))?;
        if !resp.succeeded() {
            return Ok(None);
        }
        Ok(resp.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        }))
    }

    /// Remembers that `resp` wrote `member`'s record (its identity) at its revision.
    fn remember_record(&self, member: &MemberRecord, resp: &etcd_client::TxnResponse) {
        let revision = resp.header().map_or(0, |h| h.revision());
        if let Ok(mut r) = self.registered.lock() {
            r.insert(
                member.node_id.clone(),
                (revision, member.identity().encode()),
            );
        }
    }

    /// The key of `node_id`'s acknowledgement ([`stek_store::ACKS`]).
    fn ack_key(&self, node_id: &str) -> String {
        self.key(&format!("{}{node_id}", stek_store::ACKS))
    }

    /// Deletes the copies of members the ring just written has none for (members forgotten,
    /// or refused): a copy the ring does not name opens nothing, but it has no reason to stay.
    /// A failure leaves them for the next write.
    async fn delete_other_copies(&self, term: Term, kept: &[(String, Vec<u8>)]) {
        let mut client = self.client.clone();
        let prefix = self.key(stek_store::COPIES);
        let Ok(resp) = client
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
        else {
            return;
        };
        let other: Vec<Vec<u8>> = resp
            .kvs()
            .iter()
            .map(|kv| kv.key().to_vec())
            .filter(|k| {
                let member = k.strip_prefix(prefix.as_bytes()).unwrap_or_default();
                !kept.iter().any(|(m, _)| m.as_bytes() == member)
            })
            .collect();
        for batch in other.chunks(MAX_TXN_OPS) {
            let txn = Txn::new().when([self.leader_is(term)]).and_then(
                batch
                    .iter()
                    .map(|k| TxnOp::delete(k.clone(), None))
                    .collect::<Vec<_>>(),
            );
            if client.txn(txn).await.is_err() {
                return;
            }
        }
    }
}

impl Etcd {
    /// Every key-value under the prefix as of `revision`, in pages.
    async fn read_prefix_at(
        &self,
        revision: i64,
    ) -> Result<BTreeMap<Vec<u8>, etcd_client::KeyValue>, CoordError> {
        let mut client = self.client.clone();
        let end = prefix_end(&self.prefix);
        let mut from = self.prefix.as_bytes().to_vec();
        let mut kvs = BTreeMap::new();
        loop {
            let resp = client
                .get(
                    from.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_limit(READ_PAGE)
                            .with_revision(revision),
                    ),
                )
                .await
                .map_err(|e| self.unreachable(e))?;
            for kv in resp.kvs() {
                kvs.insert(kv.key().to_vec(), kv.clone());
            }
            let Some(last) = resp.kvs().last().filter(|_| resp.more()) else {
                return Ok(kvs);
            };
            from = last.key().to_vec();
            from.push(0);
        }
    }

    /// The key-values of `keys` (relative to the prefix) as of `revision`.
    async fn read_keys_at(
        &self,
        keys: &[String],
        revision: i64,
    ) -> Result<BTreeMap<Vec<u8>, etcd_client::KeyValue>, CoordError> {
        // One transaction: one request, every key at `revision`.
        let mut client = self.client.clone();
        let txn = Txn::new().and_then(
            keys.iter()
                .map(|k| TxnOp::get(self.key(k), Some(GetOptions::new().with_revision(revision))))
                .collect::<Vec<_>>(),
        );
        let resp = client.txn(txn).await.map_err(|e| self.unreachable(e))?;
        let mut kvs = BTreeMap::new();
        for op in resp.op_responses() {
            if let etcd_client::TxnOpResponse::Get(get) = op {
                for kv in get.kvs() {
                    kvs.insert(kv.key().to_vec(), kv.clone());
                }
            }
        }
        Ok(kvs)
    }
}

/// Whether a client may compact etcd's history ([`Etcd::compaction_right`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompactionRight {
    /// The store took a compaction request from this client. etcd itself (3.2 to 3.6)
    /// checks no permission for compaction: any client it answers may compact, a user whose
    /// role covers only the cluster's prefix included.
    Granted,
    /// The store answered "permission denied" (a proxy or an etcd-compatible server that
    /// treats compaction as an administrator's operation). Holds its answer.
    Denied(String),
}

/// The etcd role that may do everything, cluster-wide operations included: what to grant a
/// node's user where the store refuses it compaction.
pub const COMPACTION_ROLE: &str = "root";

/// What a compaction request's outcome says about the right to compact: `Err` with the
/// message when it says nothing (the store did not answer).
fn compaction_answer(outcome: Result<(), String>) -> Result<CompactionRight, String> {
    match outcome {
        Ok(()) => Ok(CompactionRight::Granted),
        // Refused for the revision, after the request was let through: only a store that
        // checks permissions first and the revision second would say this to a client that
        // may not compact, and etcd checks the revision when it applies the request.
        Err(e) if e.contains("required revision has been compacted") => {
            Ok(CompactionRight::Granted)
        }
        Err(e) if e.contains("permission denied") => Ok(CompactionRight::Denied(e)),
        Err(e) => Err(e),
    }
}

impl Etcd {
    /// Asks the store whether this client may compact its history, changing nothing: a
    /// compaction at revision 1 removes no version of any key (revision 1 is an empty
    /// store's, before its first write), and where the history was compacted past it
    /// already the store answers "required revision has been compacted". Logical, not
    /// physical: nothing waits for the database.
    pub async fn compaction_right(&self) -> Result<CompactionRight, CoordError> {
        let mut client = self.client.clone();
        let outcome = client
            .compact(1, None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        compaction_answer(outcome).map_err(|reason| CoordError::Unreachable {
            endpoints: self.endpoints.clone(),
            reason,
        })
    }

    fn compaction_refused(&self, e: &etcd_client::Error) -> CoordError {
        CoordError::Refused {
            by: format!("etcd at {}", self.endpoints),
            reason: format!(
                "{e}: this store does not let this node's etcd user compact its history; grant the user the `{COMPACTION_ROLE}` role, or set [etcd] compact_history = false with compact_history_off_reason and let etcd compact on its own (--auto-compaction-mode=revision --auto-compaction-retention=1000)"
            ),
        }
    }
}

/// Whether etcd refused a request because its lease does not exist (expired or revoked).
fn is_lease_gone(e: &etcd_client::Error) -> bool {
    e.to_string().contains("requested lease not found")
}

/// Whether the store refused a request for lack of a permission (and not, say, for a wrong
/// password, which etcd answers "authentication failed").
fn is_permission_denied(e: &etcd_client::Error) -> bool {
    e.to_string().contains("permission denied")
}

/// Why a fenced leader transaction ([`Etcd::fenced`]) was refused: the term is gone, or
/// the ring changed since the decision.
fn refusal(term: Term, resp: &etcd_client::TxnResponse) -> CoordError {
    let leader_term = resp.op_responses().into_iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(g) => {
            Some(g.kvs().first().map_or(0, |kv| kv.create_revision()))
        }
        _ => None,
    });
    if leader_term == Some(term.0) {
        CoordError::Conflict
    } else {
        CoordError::Fenced(term)
    }
}

impl Coordinator for Etcd {
    type Watch = EtcdWatch;

    async fn snapshot(&self) -> Result<Snapshot, CoordError> {
        let mut client = self.client.clone();
        let mut resp = client
            .get(
                self.prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_limit(READ_PAGE)),
            )
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut raw = stek_store::RawSnapshot {
            revision: resp.header().map_or(0, |h| h.revision()),
            ..Default::default()
        };
        // Later pages are read at the first page's revision: one consistent snapshot.
        let end = prefix_end(&self.prefix);
        loop {
            for kv in resp.kvs() {
                self.add(&mut raw, kv);
            }
            let Some(last) = resp.kvs().last().filter(|_| resp.more()) else {
                break;
            };
            let mut from = last.key().to_vec();
            from.push(0);
            resp = client
                .get(
                    from,
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_limit(READ_PAGE)
                            .with_revision(raw.revision),
                    ),
                )
                .await
                .map_err(|e| self.unreachable(e))?;
        }
        Ok(raw.check())
    }

    async fn snapshot_of_member(&self, node_id: &str) -> Result<Snapshot, CoordError> {
        let mut client = self.client.clone();
        let cached = self.ring_cache.lock().ok().and_then(|c| c.clone());
        // One transaction, so every read is at one revision: if the ring is still the cached
        // one, read the rest; otherwise read the ring too.
        let others = || {
            vec![
                TxnOp::get(self.key("leader"), None),
                TxnOp::get(self.key(&format!("members/{node_id}")), None),
                TxnOp::get(self.key(&format!("{}{node_id}", stek_store::ACKS)), None),
                TxnOp::get(self.key(&format!("alive/{node_id}")), None),
                TxnOp::get(self.key(&stek_store::copy_key(node_id)), None),
            ]
        };
        let mut with_ring = others();
        with_ring.push(TxnOp::get(self.key("ring"), None));
        let cached_rev = cached.as_ref().map_or(-1, |(rev, _)| *rev);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.key("ring"),
                CompareOp::Equal,
                cached_rev,
            )])
            .and_then(others())
            .or_else(with_ring);
        let resp = client.txn(txn).await.map_err(|e| self.unreachable(e))?;
        let mut raw = stek_store::RawSnapshot {
            revision: resp.header().map_or(0, |h| h.revision()),
            partial: true,
            ..Default::default()
        };
        if resp.succeeded() {
            if let Some((rev, value)) = cached {
                raw.ring = Some((self.key("ring"), value));
                raw.ring_revision = rev;
            }
        }
        for op in resp.op_responses() {
            if let etcd_client::TxnOpResponse::Get(get) = op {
                for kv in get.kvs() {
                    self.add(&mut raw, kv);
                }
            }
        }
        Ok(raw.check())
    }

    async fn member_counts(&self) -> Result<Option<stek_store::MemberCounts>, CoordError> {
        let mut client = self.client.clone();
        // One transaction: both counts at one revision, and not one record's value.
        let count = |prefix: &str| {
            TxnOp::get(
                self.key(prefix),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
        };
        let txn = Txn::new().and_then([count("members/"), count("alive/")]);
        let resp = client.txn(txn).await.map_err(|e| self.unreachable(e))?;
        let counts: Vec<usize> = resp
            .op_responses()
            .into_iter()
            .filter_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => {
                    Some(usize::try_from(get.count()).unwrap_or(usize::MAX))
                }
                _ => None,
            })
            .collect();
        match counts[..] {
            [members, live] => Ok(Some(stek_store::MemberCounts { members, live })),
            _ => Err(CoordError::Protocol {
                endpoints: self.endpoints.clone(),
                reason: format!(
                    "a transaction of two counts answered {} of them",
                    counts.len()
                ),
            }),
        }
    }

    async fn member_count(&self) -> Result<Option<usize>, CoordError> {
        let mut client = self.client.clone();
        let resp = client
            .get(
                self.key("members/"),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(Some(usize::try_from(resp.count()).unwrap_or(usize::MAX)))
    }

    async fn watch(&self, revision: i64) -> Result<EtcdWatch, CoordError> {
        let mut client = self.client.clone();
        let mirror = self.read_prefix_at(revision).await.ok().map(|kvs| {
            Box::new(Mirror {
                etcd: self.clone(),
                revision,
                kvs,
                partial: false,
            })
        });
        let stream = client
            .watch(
                self.prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(EtcdWatch {
            stream,
            prefix: self.prefix.clone(),
            mirror,
            ordered: true,
        })
    }

    async fn watch_member(&self, revision: i64, node_id: &str) -> Result<EtcdWatch, CoordError> {
        let mut client = self.client.clone();
        let from = || Some(WatchOptions::new().with_start_revision(revision + 1));
        // Six exact keys on one stream: no other member's acknowledgement or copy reaches
        // this node.
        let keys = [
            "ring".to_owned(),
            "leader".to_owned(),
            format!("members/{node_id}"),
            format!("{}{node_id}", stek_store::ACKS),
            format!("alive/{node_id}"),
            stek_store::copy_key(node_id),
        ];
        let mirror = self.read_keys_at(&keys, revision).await.ok().map(|kvs| {
            Box::new(Mirror {
                etcd: self.clone(),
                revision,
                kvs,
                partial: true,
            })
        });
        let mut stream = client
            .watch(self.key(&keys[0]), from())
            .await
            .map_err(|e| self.unreachable(e))?;
        for key in &keys[1..] {
            stream
                .watch(self.key(key), from())
                .await
                .map_err(|e| self.unreachable(e))?;
        }
        Ok(EtcdWatch {
            stream,
            prefix: self.prefix.clone(),
            mirror,
            ordered: false,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let mut client = self.client.clone();
        let secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
        let resp = client
            .lease_grant(secs, None)
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId, ttl: Duration) -> Result<KeepAlive, CoordError> {
        Ok(KeepAlive::run(
            Renewer {
                client: self.client.clone(),
                lease,
                period: (ttl / 3).max(Duration::from_millis(100)),
                channel: None,
            },
            ttl,
        ))
    }

    async fn register(&self, lease: LeaseId, member: &MemberRecord) -> Result<(), CoordError> {
        let mut client = self.client.clone();
        let alive = self.key(&format!("alive/{}", member.node_id));
        // Who it is, and its acknowledgement apart: an acknowledgement left by an earlier
        // process of this node id is replaced here, never taken for this one's.
        let puts = || {
            [
                TxnOp::put(
                    alive.clone(),
                    stek_store::holder_of(member),
                    Some(PutOptions::new().with_lease(lease.0)),
                ),
                TxnOp::put(
                    self.key(&format!("members/{}", member.node_id)),
                    member.identity().encode(),
                    None,
                ),
                TxnOp::put(self.ack_key(&member.node_id), member.encode_ack(), None),
            ]
        };
        // Free: register. Held: by this process or an earlier one of this box (the same
        // sealing key), take it over unless it changed meanwhile; by anyone else, refuse.
        for _ in 0..3 {
            let txn = Txn::new()
                .when([Compare::create_revision(alive.clone(), CompareOp::Equal, 0)])
                .and_then(puts())
                .or_else([TxnOp::get(alive.clone(), None)]);
            let resp = client
                .txn(txn)
                .await
                .map_err(|e| self.lease_write_failed(e))?;
            if resp.succeeded() {
                self.remember_record(member, &resp);
                return Ok(());
            }
            let held = resp.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            });
            // None: it expired between the two steps; try again from the start.
            let Some(held) = held else { continue };
            let holder = stek_store::shown_holder(held.value());
            if held.lease() != lease.0 && !stek_store::same_holder(&holder, member) {
                return Err(CoordError::Held {
                    node_id: member.node_id.clone(),
                    holder,
                });
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    alive.clone(),
                    CompareOp::Equal,
                    held.mod_revision(),
                )])
                .and_then(puts());
            let resp = client
                .txn(txn)
                .await
                .map_err(|e| self.lease_write_failed(e))?;
            if resp.succeeded() {
                self.remember_record(member, &resp);
                return Ok(());
            }
        }
        Err(CoordError::Conflict)
    }

    async fn ack(&self, member: &MemberRecord) -> Result<(), CoordError> {
        let mut client = self.client.clone();
        // The acknowledgement alone while the member record says who this node is; the
        // record too when it does not (gone, forged, or written by another version).
        // Which record is "the one this process wrote" is told by its revision, so the
        // transaction does not carry the record (about 1.5 KB with a certificate).
        let record = self.key(&format!("members/{}", member.node_id));
        let identity = member.identity().encode();
        let written = self
            .registered
            .lock()
            .ok()
            .and_then(|r| r.get(&member.node_id).cloned())
            .filter(|(_, bytes)| *bytes == identity)
            .map(|(revision, _)| revision);
        let ack = TxnOp::put(self.ack_key(&member.node_id), member.encode_ack(), None);
        let both = [TxnOp::put(record.clone(), identity, None), ack.clone()];
        let txn = match written {
            Some(revision) => Txn::new()
                .when([Compare::mod_revision(record, CompareOp::Equal, revision)])
                .and_then([ack])
                .or_else(both),
            None => Txn::new().and_then(both),
        };
        let resp = client.txn(txn).await.map_err(|e| self.unreachable(e))?;
        if written.is_none() || !resp.succeeded() {
            self.remember_record(member, &resp);
        }
        Ok(())
    }

    async fn campaign(&self, lease: LeaseId, node_id: &str) -> Result<Option<Term>, CoordError> {
        let mut client = self.client.clone();
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                node_id.as_bytes(),
                Some(PutOptions::new().with_lease(lease.0)),
            )]);
        let resp = client
            .txn(txn)
            .await
            .map_err(|e| self.lease_write_failed(e))?;
        if resp.succeeded() {
            Ok(resp.header().map(|h| Term(h.revision())))
        } else {
            Ok(None)
        }
    }

    async fn write_ring(
        &self,
        term: Term,
        ring_revision: i64,
        ring: &StoredRing,
        served_requests: &[String],
    ) -> Result<i64, CoordError> {
        let mut client = self.client.clone();
        let value = records::encode_ring(ring);
        if value.len() > MAX_RING_RECORD {
            return Err(CoordError::TooLarge {
                bytes: value.len(),
                limit: MAX_RING_RECORD,
            });
        }
        // Every copy first, so that a member never sees a ring whose copy is missing: in
        // batches within etcd's transaction limit, sent side by side, each fenced like the
        // ring. A copy replaces that member's copy of the ring stored now, which it applied
        // already (or opens once this ring lands).
        let copies = ring.copy_records();
        match self.put_copies(term, ring_revision, &copies).await {
            // A replay of a write that landed (its reply was lost): done, at its revision.
            Err(CoordError::Conflict) => {
                return match self.landed(term, &value).await? {
                    Some(revision) => Ok(revision),
                    None => Err(CoordError::Conflict),
                }
            }
            other => other?,
        };
        // The ring and the first served requests in one transaction, fenced on the term and on
        // the ring being the one the decision read (a compare-and-swap: a write that lands
        // late can never put a second ring of one generation beside another).
        let (first, rest) = served_requests.split_at(served_requests.len().min(MAX_TXN_OPS - 1));
        let mut ops = vec![TxnOp::put(self.key("ring"), value.clone(), None)];
        ops.extend(first.iter().map(|k| TxnOp::delete(k.as_str(), None)));
        let resp = client
            .txn(self.fenced(term, ring_revision, ops))
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.succeeded() {
            return match refusal(term, &resp) {
                CoordError::Conflict => match self.landed(term, &value).await? {
                    Some(revision) => Ok(revision),
                    None => Err(CoordError::Conflict),
                },
                fenced => Err(fenced),
            };
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        // The rest of the served requests, in batches. The ring is written: a batch that fails
        // leaves requests the next rotation serves (requests rotate at most once per
        // min_request_interval).
        for batch in rest.chunks(MAX_TXN_OPS) {
            let txn = Txn::new().when([self.leader_is(term)]).and_then(
                batch
                    .iter()
                    .map(|k| TxnOp::delete(k.as_str(), None))
                    .collect::<Vec<_>>(),
            );
            match client.txn(txn).await {
                Ok(r) if r.succeeded() => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!("served rotation requests not all deleted: {e}; the next rotation deletes them");
                    break;
                }
            }
        }
        self.delete_other_copies(term, &copies).await;
        Ok(revision)
    }

    async fn write_copies(
        &self,
        term: Term,
        ring_revision: i64,
        copies: &[(String, Vec<u8>)],
    ) -> Result<i64, CoordError> {
        self.put_copies(term, ring_revision, copies).await
    }

    async fn forget_member(&self, term: Term, node_id: &str) -> Result<bool, CoordError> {
        let mut client = self.client.clone();
        let record = self.key(&format!("members/{node_id}"));
        let txn = Txn::new()
            .when([
                self.leader_is(term),
                Compare::create_revision(
                    self.key(&format!("alive/{node_id}")),
                    CompareOp::Equal,
                    0,
                ),
                Compare::create_revision(record.clone(), CompareOp::Greater, 0),
            ])
            .and_then([
                TxnOp::delete(record, None),
                TxnOp::delete(self.ack_key(node_id), None),
                TxnOp::delete(self.key(&stek_store::copy_key(node_id)), None),
            ])
            .or_else([TxnOp::get(
                self.key("leader"),
                Some(GetOptions::new().with_keys_only()),
            )]);
        let resp = client.txn(txn).await.map_err(|e| self.unreachable(e))?;
        if resp.succeeded() {
            return Ok(true);
        }
        match refusal(term, &resp) {
            CoordError::Conflict => Ok(false),
            other => Err(other),
        }
    }

    async fn purge_history(&self, revision: i64) -> Result<bool, CoordError> {
        let mut client = self.client.clone();
        match client
            .compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
        {
            Ok(_) => Ok(true),
            // Someone (etcd's auto-compaction, another leader) compacted past it already.
            Err(e)
                if e.to_string()
                    .contains("required revision has been compacted") =>
            {
                Ok(true)
            }
            Err(e) if is_permission_denied(&e) => Err(self.compaction_refused(&e)),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    async fn resign(&self, term: Term) -> Result<(), CoordError> {
        let mut client = self.client.clone();
        let txn = Txn::new()
            .when([self.leader_is(term)])
            .and_then([TxnOp::delete(self.key("leader"), None)]);
        client.txn(txn).await.map_err(|e| self.unreachable(e))?;
        Ok(())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        let mut client = self.client.clone();
        match client.lease_revoke(lease.0).await {
            Ok(_) => Ok(()),
            // Gone already (expired, or a replay of a revocation that landed): done.
            Err(e) if is_lease_gone(&e) => Ok(()),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    async fn request_rotation(
        &self,
        by: &str,
        signer: Option<&stek_trust::identity::Credentials>,
    ) -> Result<String, CoordError> {
        let mut client = self.client.clone();
        let (key, record) = RequestRecord::new_signed(&self.prefix, by, signer);
        client
            .put(key.as_str(), record.encode(), None)
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(key)
    }
}

/// Renews one lease over etcd's keep-alive stream, opened again after it broke.
struct Renewer {
    client: Client,
    lease: LeaseId,
    /// How long one renewal may wait for its answer.
    period: Duration,
    channel: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
}

impl stek_store::Renew for Renewer {
    async fn renew(&mut self) -> stek_store::Renewal {
        if self.channel.is_none() {
            self.channel = self.client.lease_keep_alive(self.lease.0).await.ok();
        }
        let Some((keeper, stream)) = self.channel.as_mut() else {
            return stek_store::Renewal::Failed;
        };
        let renewed = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match tokio::time::timeout(self.period, renewed).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                stek_store::Renewal::Renewed(tokio::time::Instant::now())
            }
            Ok(Ok(Some(_))) => stek_store::Renewal::Gone,
            _ => {
                self.channel = None;
                stek_store::Renewal::Failed
            }
        }
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the probe makes of each answer etcd gives a compaction at revision 1 (the texts
    /// are etcd-client's, around etcd's own messages).
    #[test]
    fn a_compaction_answer_says_whether_the_client_may_compact() {
        let status = |code: &str, message: &str| {
            Err(format!(
                "grpc request error: status: {code}, message: \"etcdserver: {message}\", details: [], metadata: MetadataMap {{ headers: {{}} }}"
            ))
        };
        assert_eq!(compaction_answer(Ok(())), Ok(CompactionRight::Granted));
        assert_eq!(
            compaction_answer(status(
                "OutOfRange",
                "mvcc: required revision has been compacted"
            )),
            Ok(CompactionRight::Granted),
            "compacted past 1 already: the request got through"
        );
        assert!(matches!(
            compaction_answer(status("PermissionDenied", "permission denied")),
            Ok(CompactionRight::Denied(e)) if e.contains("permission denied")
        ));
        assert!(
            compaction_answer(status("Unavailable", "no leader")).is_err(),
            "no answer says nothing about the right"
        );
        assert!(
            compaction_answer(status(
                "InvalidArgument",
                "authentication failed, invalid user ID or password"
            ))
            .is_err(),
            "a wrong password is not a missing right"
        );
    }
}
