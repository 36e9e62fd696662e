//! The key-value `Store` trait and its implementations.

use std::{
    collections::BTreeMap,
    ops::Bound,
    path::Path,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use crate::StoreError;

/// Keyspaces. The discriminant is the first byte of every stored key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Space {
    /// Counters and node facts.
    Meta = 0,
    /// (from, doc_id) → the stored envelope and where it came from.
    Docs = 1,
    /// (from, doc_id) → envelope digest. Permanent: dedup outlives documents.
    Dedup = 2,
    /// (queue, seq) → what to send next on a link.
    Queue = 3,
    /// (organ, seq) → a document delivered to a local agency.
    Inbox = 4,
    /// (doc_id, from, organ) → inbox seq, to find an inbox entry by document.
    InboxIndex = 5,
    /// (doc_id, from) → per-recipient state of a document sent from here.
    Sent = 6,
    /// (queue, seq) → a transfer the peer refused for good, with the reason.
    Dead = 7,
    /// seq of its last entry → hash-chained audit entries of one batch (≤ 64)
    /// (before blocks, an entry's own seq → that entry alone).
    Audit = 8,
    /// (doc_id, block seq) → (), to find the blocks with a document's entries.
    AuditIndex = 9,
    /// (queue, seq) → an entry parked after its deadline; an operator can requeue it.
    Parked = 10,
    /// (from, target, business type) → the change message's doc_id (dedups recalls).
    Changes = 11,
    /// (from, newest-first time, doc_id) → (), to list what an agency sent.
    SentIndex = 12,
    /// digest → number of stored documents that name it (absent: none).
    BlobRefs = 13,
    /// (due time, from, doc_id) → (): attachments to release when due.
    Release = 14,
    /// (organ, event id) → an agency event, for applications that resume a stream.
    Events = 15,
    /// (day, organ, direction) → documents and bytes: daily statistics.
    Stats = 16,
}

impl Space {
    /// Every space, in key order.
    pub const ALL: [Space; 17] = [
        Space::Meta,
        Space::Docs,
        Space::Dedup,
        Space::Queue,
        Space::Inbox,
        Space::InboxIndex,
        Space::Sent,
        Space::Dead,
        Space::Audit,
        Space::AuditIndex,
        Space::Parked,
        Space::Changes,
        Space::SentIndex,
        Space::BlobRefs,
        Space::Release,
        Space::Events,
        Space::Stats,
    ];
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An atomic group of writes, possibly across spaces.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub(crate) ops: Vec<(Space, Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((space, key, Some(value)));
    }
    pub fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.ops.push((space, key, None));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Drops every write after the first `len` (to undo a partly planned item).
    pub fn truncate(&mut self, len: usize) {
        self.ops.truncate(len);
    }
}

/// An ordered key-value store with atomic batches and an explicit durability point.
///
/// Writes are visible to readers as soon as `apply` returns, but they are durable
/// only after a later `flush` returns. Callers acknowledge nothing before that; use
/// [`GroupCommit`](crate::GroupCommit) rather than calling `flush` per write.
pub trait Store: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries whose key starts with `prefix` and is strictly greater than `after`
    /// (when given), in key order, at most `limit`.
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;
    /// The greatest entry whose key starts with `prefix`.
    fn last(&self, space: Space, prefix: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// Applies every write of `batch` or none.
    fn apply(&self, batch: Batch) -> Result<(), StoreError>;
    /// Makes every applied write durable (fsync).
    fn flush(&self) -> Result<(), StoreError>;
    /// Whether an applied write stays non-durable until a `flush` (redb; memory,
    /// where nothing is durable). Then the bytes a record names may be synced by
    /// the flush that makes the record durable ([`Store::flush_after`]). A store
    /// that may persist applied writes on its own (sled's log, PostgreSQL's
    /// asynchronous commit) says no: blobs are synced before the records naming
    /// them are applied.
    fn durable_only_at_flush(&self) -> bool {
        false
    }
    /// `before`, then a flush, with no write applied in between: what `before`
    /// makes durable (the blobs records name) is on disk before any record this
    /// flush makes durable. The default runs the two in turn, enough for a store
    /// whose `durable_only_at_flush` is false.
    fn flush_after(&self, before: &dyn Fn() -> Result<(), StoreError>) -> Result<(), StoreError> {
        before()?;
        self.flush()
    }
    /// Bytes the store occupies on disk (0 for memory).
    fn size_on_disk(&self) -> u64;
    /// Why this process may no longer write the store, once it may not: a shared
    /// store whose exclusive lock went with a lost connection, so that another
    /// process may hold it now. The node stops serving at once (fail-stop).
    fn fenced(&self) -> Option<String> {
        None
    }
    /// A request the store has not answered for longer than it should (a
    /// server that hangs, or a lock held on it): why. Nothing is lost
    /// meanwhile, but nothing is acknowledged either; the node reports
    /// NOT_SERVING until it answers.
    fn stalled(&self) -> Option<String> {
        None
    }
    /// For a store on a server: what its reads and writes cost in requests,
    /// and the memory that spares some. None for an embedded store.
    fn remote_stats(&self) -> Option<RemoteStats> {
        None
    }
    /// A hint that `keys` are about to be read one by one: a store on a server
    /// may fetch them in one request, so that those reads need none. Changes
    /// nothing a read returns. Embedded stores read in-process and ignore it
    /// without drawing a key (the iterator builds them only when asked).
    fn prefetch(
        &self,
        _keys: &mut dyn Iterator<Item = (Space, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What a store on a server reports (operators' metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Requests sent to the server since the store was opened: one per read,
    /// scan, batch or flush.
    pub requests: u64,
    /// Requests waiting for the connection now.
    pub waiting: u64,
    /// Bytes of point-read answers kept in memory.
    pub cached_bytes: u64,
}

pub(crate) fn full_key(space: Space, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(space as u8);
    k.extend_from_slice(key);
    k
}

/// The entries of an ordered iteration of full keys, from its start while the
/// keys start with `p`, at most `limit`, with the space byte taken off.
pub(crate) fn prefixed<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    iter: impl Iterator<Item = Result<(K, V), StoreError>>,
    p: &[u8],
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    for item in iter {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item?;
        let k = k.as_ref();
        if !k.starts_with(p) {
            break;
        }
        out.push((k[1..].to_vec(), v.as_ref().to_vec()));
    }
    Ok(out)
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The embedded default: sled, one tree, keys prefixed by their space.
pub struct SledStore {
    db: sled::Db,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. `cache_bytes` bounds sled's page cache,
    /// so memory does not grow with the queue.
    ///
    /// sled's threads let go of a dropped handle's file lock a moment after the
    /// drop, so a store reopened in the same process (a node restarted in place)
    /// can find the lock still held: that is retried for up to two seconds. A
    /// lock another process holds still fails, with the reason.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .mode(sled::Mode::HighThroughput)
                // Durability points are ours (GroupCommit), not a background timer's.
                .flush_every_ms(None)
                .open();
            let e = match opened {
                Ok(db) => return Ok(Self { db }),
                Err(e) => e,
            };
            let locked = e.to_string().contains("could not acquire lock");
            if locked && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            let hint = if locked {
                " (is another truc node using this directory?)"
            } else {
                ""
            };
            return Err(StoreError::Io(format!("open {}: {e}{hint}", dir.display())));
        }
    }
}

impl Store for SledStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get(full_key(space, key))
            .map_err(io)?
            .map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let p = full_key(space, prefix);
        let iter = match after {
            Some(a) => self
                .db
                .range((Bound::Excluded(full_key(space, a)), Bound::Unbounded)),
            None => self
                .db
                .range((Bound::Included(p.clone()), Bound::Unbounded)),
        };
        prefixed(iter.map(|r| r.map_err(io)), &p, limit)
    }

    fn last(&self, space: Space, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        let p = full_key(space, prefix);
        match self.db.scan_prefix(&p).next_back() {
            Some(item) => {
                let (k, v) = item.map_err(io)?;
                Ok(Some((k[1..].to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (space, key, value) in batch.ops {
            match value {
                Some(v) => b.insert(full_key(space, &key), v),
                None => b.remove(full_key(space, &key)),
            }
        }
        self.db.apply_batch(b).map_err(io)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// An in-memory store for unit tests: same semantics, nothing durable.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Failed("memory store lock poisoned".into())
}

impl Store for MemoryStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .map
            .read()
            .map_err(poisoned)?
            .get(&full_key(space, key))
            .cloned())
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let p = full_key(space, prefix);
        let map = self.map.read().map_err(poisoned)?;
        let range = match after {
            Some(a) => map.range((Bound::Excluded(full_key(space, a)), Bound::Unbounded)),
            None => map.range((Bound::Included(p.clone()), Bound::Unbounded)),
        };
        Ok(range
            .take_while(|(k, _)| k.starts_with(&p))
            .take(limit)
            .map(|(k, v)| (k[1..].to_vec(), v.clone()))
            .collect())
    }

    fn last(&self, space: Space, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        let p = full_key(space, prefix);
        let map = self.map.read().map_err(poisoned)?;
        Ok(map
            .range((Bound::Included(p.clone()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&p))
            .last()
            .map(|(k, v)| (k[1..].to_vec(), v.clone())))
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut map = self.map.write().map_err(poisoned)?;
        for (space, key, value) in batch.ops {
            match value {
                Some(v) => map.insert(full_key(space, &key), v),
                None => map.remove(&full_key(space, &key)),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Nothing is ever durable here; unit tests then take the paths a node on
    /// redb takes.
    fn durable_only_at_flush(&self) -> bool {
        true
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

/// When a [`FaultyStore`] misbehaves.
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// Fail every `apply` from the N-th one on (1-based); 0 = never.
    pub fail_apply_from: AtomicU64,
    /// Fail every `flush` while set.
    pub fail_flush: AtomicBool,
    /// Freeze the N-th `apply` (1-based) for `stall_ms` before it goes through,
    /// as a disk that hangs on a write; 0 = never.
    pub stall_apply_at: AtomicU64,
    pub stall_ms: AtomicU64,
    /// Set while that write is frozen.
    pub stalling: AtomicBool,
    /// Ends the freeze in progress before `stall_ms` (cleared when one starts).
    pub release: AtomicBool,
    /// Writes tried so far (the N above counts them).
    pub applies: AtomicU64,
    /// Hold every read while set (a minute at most), as a server whose one
    /// connection waits on a lock: not reported by `stalled` (not known yet).
    pub hold_reads: AtomicBool,
    /// Reads let through while still held, after their minute.
    pub reads_held_out: AtomicU64,
}

/// Wraps a store and fails writes or flushes on command, for fault tests.
pub struct FaultyStore<S> {
    inner: S,
    plan: Arc<FaultPlan>,
}

impl<S> std::fmt::Debug for FaultyStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl<S: Store> FaultyStore<S> {
    pub fn new(inner: S) -> (Self, Arc<FaultPlan>) {
        let plan = Arc::new(FaultPlan::default());
        (
            Self {
                inner,
                plan: plan.clone(),
            },
            plan,
        )
    }
}

impl<S> FaultyStore<S> {
    /// While `hold_reads` is set, for a minute at most (counted in
    /// `reads_held_out`): a test that waits for a held read fails rather than
    /// hangs.
    fn hold_read(&self) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.plan.hold_reads.load(Ordering::SeqCst) {
            if std::time::Instant::now() >= until {
                self.plan.reads_held_out.fetch_add(1, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn flush_fault(&self) -> Result<(), StoreError> {
        if self.plan.fail_flush.load(Ordering::SeqCst) {
            return Err(StoreError::Injected("fsync failed".into()));
        }
        Ok(())
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.hold_read();
        self.inner.get(space, key)
    }
    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.hold_read();
        self.inner.scan(space, prefix, after, limit)
    }
    fn last(&self, space: Space, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        self.hold_read();
        self.inner.last(space, prefix)
    }
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let n = self.plan.applies.fetch_add(1, Ordering::SeqCst) + 1;
        let from = self.plan.fail_apply_from.load(Ordering::SeqCst);
        if from != 0 && n >= from {
            return Err(StoreError::Injected(format!(
                "write {n} refused (no space left on device)"
            )));
        }
        if self.plan.stall_apply_at.load(Ordering::SeqCst) == n {
            self.plan.release.store(false, Ordering::SeqCst);
            self.plan.stalling.store(true, Ordering::SeqCst);
            let until = std::time::Instant::now()
                + std::time::Duration::from_millis(self.plan.stall_ms.load(Ordering::SeqCst));
            while std::time::Instant::now() < until && !self.plan.release.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.plan.stalling.store(false, Ordering::SeqCst);
        }
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.flush_fault()?;
        self.inner.flush()
    }
    fn durable_only_at_flush(&self) -> bool {
        self.inner.durable_only_at_flush()
    }
    fn flush_after(&self, before: &dyn Fn() -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.flush_fault()?;
        self.inner.flush_after(before)
    }
    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
    fn remote_stats(&self) -> Option<RemoteStats> {
        self.inner.remote_stats()
    }
    fn prefetch(&self, keys: &mut dyn Iterator<Item = (Space, Vec<u8>)>) -> Result<(), StoreError> {
        self.inner.prefetch(keys)
    }
    fn stalled(&self) -> Option<String> {
        if self.plan.stalling.load(Ordering::SeqCst) {
            return Some(format!(
                "write {} hangs (injected)",
                self.plan.stall_apply_at.load(Ordering::SeqCst)
            ));
        }
        self.inner.stalled()
    }
}

/// The behaviour every [`Store`] implementation must have: ordered prefix scans
/// with an exclusive `after`, `last`, atomic batches with puts and deletes, keys
/// of different spaces kept apart. Panics on the first difference. Run on sled,
/// memory and PostgreSQL.
#[allow(clippy::expect_used)]
pub fn conformance(store: &dyn Store) {
    let mut b = Batch::new();
    for i in 1u64..=5 {
        let mut k = b"q/a/".to_vec();
        k.extend_from_slice(&i.to_be_bytes());
        b.put(Space::Queue, k, vec![i as u8]);
    }
    b.put(Space::Queue, b"q/b/x".to_vec(), vec![9]);
    b.put(Space::Queue, vec![0xff, 0xff], vec![10]);
    b.put(Space::Inbox, b"q/a/zzz".to_vec(), vec![7]);
    store.apply(b).expect("apply");
    store.flush().expect("flush");
    let all = store.scan(Space::Queue, b"q/a/", None, 100).expect("scan");
    assert_eq!(
        all.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "a prefix scan returns that prefix only, in key order"
    );
    let after = store
        .scan(Space::Queue, b"q/a/", Some(&all[1].0), 2)
        .expect("scan after");
    assert_eq!(
        after.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(),
        vec![3, 4],
        "`after` is exclusive and `limit` holds"
    );
    assert_eq!(
        store
            .scan(Space::Queue, b"", None, 100)
            .expect("scan all")
            .len(),
        7,
        "an empty prefix is the whole space"
    );
    assert_eq!(
        store
            .scan(Space::Queue, &[0xff], None, 10)
            .expect("scan 0xff")
            .len(),
        1
    );
    assert_eq!(
        store
            .last(Space::Queue, b"q/a/")
            .expect("last")
            .map(|e| e.1),
        Some(vec![5])
    );
    assert_eq!(store.last(Space::Queue, b"q/c/").expect("last none"), None);
    // Overwrite and delete in one atomic batch.
    let mut b = Batch::new();
    b.delete(Space::Queue, all[0].0.clone());
    b.put(Space::Queue, all[1].0.clone(), vec![22]);
    store.apply(b).expect("apply 2");
    assert_eq!(store.get(Space::Queue, &all[0].0).expect("get"), None);
    assert_eq!(
        store.get(Space::Queue, &all[1].0).expect("get"),
        Some(vec![22])
    );
    assert_eq!(
        store
            .get(Space::Inbox, b"q/a/zzz")
            .expect("get other space"),
        Some(vec![7])
    );
    assert_eq!(store.get(Space::Meta, b"q/a/zzz").expect("get"), None);
    // Within one batch the last write to a key wins.
    let mut b = Batch::new();
    b.put(Space::Meta, b"twice".to_vec(), vec![1]);
    b.put(Space::Meta, b"twice".to_vec(), vec![2]);
    b.put(Space::Meta, b"short-lived".to_vec(), vec![3]);
    b.delete(Space::Meta, b"short-lived".to_vec());
    store.apply(b).expect("apply 3");
    assert_eq!(
        store.get(Space::Meta, b"twice").expect("get"),
        Some(vec![2])
    );
    assert_eq!(store.get(Space::Meta, b"short-lived").expect("get"), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn Store) {
        conformance(store);
    }

    /// `Space::ALL` names every space once, in order: a space added later and
    /// left out would be skipped by `truc store convert`.
    #[test]
    fn every_space_is_listed_once_in_order() {
        for (i, s) in Space::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
        // Fails to compile when a space is added without a place here.
        let last = |s: Space| match s {
            Space::Meta
            | Space::Docs
            | Space::Dedup
            | Space::Queue
            | Space::Inbox
            | Space::InboxIndex
            | Space::Sent
            | Space::Dead
            | Space::Audit
            | Space::AuditIndex
            | Space::Parked
            | Space::Changes
            | Space::SentIndex
            | Space::BlobRefs
            | Space::Release
            | Space::Events => false,
            Space::Stats => true,
        };
        assert!(last(Space::ALL[Space::ALL.len() - 1]));
    }

    #[test]
    fn memory_store_conforms() {
        exercise(&MemoryStore::new());
    }

    #[test]
    fn sled_store_conforms_and_keeps_flushed_writes_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path(), 1 << 20).unwrap();
            exercise(&s);
        }
        let s = SledStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.scan(Space::Queue, b"q/a/", None, 100).unwrap().len(), 4);
    }

    /// A directory a live store holds is refused with the reason, after the short
    /// wait that covers a handle still being let go of.
    #[test]
    fn a_store_in_use_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let _held = SledStore::open(dir.path(), 1 << 20).unwrap();
        let e = SledStore::open(dir.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another truc node"), "{e}");
    }

    #[test]
    fn faulty_store_fails_from_the_nth_write_and_changes_nothing() {
        let (s, plan) = FaultyStore::new(MemoryStore::new());
        plan.fail_apply_from.store(2, Ordering::SeqCst);
        let mut b = Batch::new();
        b.put(Space::Meta, b"a".to_vec(), vec![1]);
        s.apply(b.clone()).unwrap();
        let mut b2 = Batch::new();
        b2.put(Space::Meta, b"b".to_vec(), vec![1]);
        assert!(matches!(s.apply(b2), Err(StoreError::Injected(_))));
        assert_eq!(s.get(Space::Meta, b"b").unwrap(), None);
    }
}
