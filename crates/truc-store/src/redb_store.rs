//! The key-value store on redb: a copy-on-write B-tree in one file, with a page
//! cache of fixed size and nothing else in memory per stored key.
//!
//! `apply` commits a write transaction that is visible at once but not durable
//! (`Durability::None`); `flush` commits an empty durable one, which makes every
//! commit before it durable with one fsync (redb's one-phase commit with
//! checksums).

use std::{ops::Bound, path::Path};

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use crate::{
    Batch, Entry, Space, Store, StoreError,
    kv::{full_key, prefixed},
    pg::prefix_end,
};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The store in one redb file.
pub struct RedbStore {
    db: Database,
    path: std::path::PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `file`; `cache_bytes` bounds redb's page cache.
    pub fn open(file: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let shown = std::sync::atomic::AtomicU64::new(u64::MAX);
        let db = Database::builder()
            .set_cache_size(cache_bytes as usize)
            // After an unclean stop (a crash, SIGKILL, power loss) redb walks the
            // tree to rebuild its allocator state before it opens: say so, with
            // progress, rather than look hung.
            .set_repair_callback(move |r| {
                let pct = (r.progress() * 100.0) as u64 / 10 * 10;
                if shown.swap(pct, std::sync::atomic::Ordering::Relaxed) != pct {
                    tracing::warn!(progress_pct = pct, "store not closed cleanly: repairing");
                }
            })
            .create(file)
            .map_err(|e| {
                let hint = if matches!(e, redb::DatabaseError::DatabaseAlreadyOpen) {
                    " (is another truc node using this directory?)"
                } else {
                    ""
                };
                StoreError::Io(format!("open {}: {e}{hint}", file.display()))
            })?;
        let w = db.begin_write().map_err(io)?;
        w.open_table(KV).map_err(io)?;
        w.commit().map_err(io)?;
        Ok(Self {
            db,
            path: file.to_path_buf(),
        })
    }
}

impl Store for RedbStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.db.begin_read().map_err(io)?;
        let t = r.open_table(KV).map_err(io)?;
        Ok(t.get(full_key(space, key).as_slice())
            .map_err(io)?
            .map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let p = full_key(space, prefix);
        let from = after.map(|a| full_key(space, a));
        let r = self.db.begin_read().map_err(io)?;
        let t = r.open_table(KV).map_err(io)?;
        let range = match &from {
            Some(a) => t.range::<&[u8]>((Bound::Excluded(a.as_slice()), Bound::Unbounded)),
            None => t.range::<&[u8]>((Bound::Included(p.as_slice()), Bound::Unbounded)),
        }
        .map_err(io)?;
        prefixed(
            range.map(|r| {
                r.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                    .map_err(io)
            }),
            &p,
            limit,
        )
    }

    fn last(&self, space: Space, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        let p = full_key(space, prefix);
        let r = self.db.begin_read().map_err(io)?;
        let t = r.open_table(KV).map_err(io)?;
        // The prefix's last key is the last key below the prefix's successor.
        let upper = prefix_end(&p);
        let mut range = match &upper {
            Some(u) => {
                t.range::<&[u8]>((Bound::Included(p.as_slice()), Bound::Excluded(u.as_slice())))
            }
            None => t.range::<&[u8]>((Bound::Included(p.as_slice()), Bound::Unbounded)),
        }
        .map_err(io)?;
        match range.next_back() {
            Some(item) => {
                let (k, v) = item.map_err(io)?;
                Ok(Some((k.value()[1..].to_vec(), v.value().to_vec())))
            }
            None => Ok(None),
        }
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut w = self.db.begin_write().map_err(io)?;
        w.set_durability(Durability::None).map_err(io)?;
        {
            let mut t = w.open_table(KV).map_err(io)?;
            for (space, key, value) in batch.ops {
                let k = full_key(space, &key);
                match value {
                    Some(v) => {
                        t.insert(k.as_slice(), v.as_slice()).map_err(io)?;
                    }
                    None => {
                        t.remove(k.as_slice()).map_err(io)?;
                    }
                }
            }
        }
        w.commit().map_err(io)
    }

    /// A durable commit of nothing: redb writes every page applied before it.
    fn flush(&self) -> Result<(), StoreError> {
        self.flush_after(&|| Ok(()))
    }

    /// `apply` commits with `Durability::None`: nothing applied is durable
    /// before a flush's durable commit.
    fn durable_only_at_flush(&self) -> bool {
        true
    }

    /// `before` runs inside the flush's write transaction: redb has one writer
    /// at a time, so no record can be applied between `before` and the commit
    /// that makes every record applied so far durable.
    fn flush_after(&self, before: &dyn Fn() -> Result<(), StoreError>) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(io)?;
        before()?;
        w.commit().map_err(io)
    }

    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Batch;
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    /// What `flush_after`'s hook syncs covers every record the flush makes
    /// durable: a writer arriving while the hook runs waits for the commit.
    #[test]
    fn no_write_is_applied_between_the_hook_and_its_flush() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(RedbStore::open(&dir.path().join("store.redb"), 1 << 20).unwrap());
        let writer = std::sync::Mutex::new(None);
        s.flush_after(&|| {
            let s2 = s.clone();
            *writer.lock().unwrap() = Some(std::thread::spawn(move || {
                let mut b = Batch::new();
                b.put(Space::Meta, b"late".to_vec(), vec![1]);
                s2.apply(b).unwrap();
            }));
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until {
                assert_eq!(
                    s.get(Space::Meta, b"late").unwrap(),
                    None,
                    "a record was applied between the hook and the flush"
                );
                std::thread::yield_now();
            }
            Ok(())
        })
        .unwrap();
        writer.lock().unwrap().take().unwrap().join().unwrap();
        assert_eq!(s.get(Space::Meta, b"late").unwrap(), Some(vec![1]));
    }

    #[test]
    fn redb_store_conforms_and_keeps_flushed_writes_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.redb");
        {
            let s = RedbStore::open(&file, 1 << 20).unwrap();
            crate::conformance(&s);
        }
        let s = RedbStore::open(&file, 1 << 20).unwrap();
        assert_eq!(s.scan(Space::Queue, b"q/a/", None, 100).unwrap().len(), 4);
    }
}
