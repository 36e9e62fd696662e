//! The embedded key-value store of a node's data directory: which engine holds
//! it, opening it, and converting it from one engine to the other.
//!
//! - redb (the default): `data_dir/store.redb`, one file.
//! - sled (the default before 2026-11-30): `data_dir/store/`, a directory.
//!
//! A data directory holds one of them. A node configured for one engine that
//! finds only the other's store refuses to start and names the way out
//! (`truc store convert`), rather than starting empty beside the real data.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{Batch, Entry, RedbStore, SledStore, Space, Store, StoreError};

/// The engine of the embedded store (`storage.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// redb: a copy-on-write B-tree in one file, memory bounded by its cache.
    #[default]
    Redb,
    /// sled 0.34: a log-structured tree; keeps memory for every page it wrote.
    Sled,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Engine::Redb, Engine::Sled]
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("{s}: the engines are redb and sled"))
    }
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Redb => "redb",
            Engine::Sled => "sled",
        }
    }

    fn other(self) -> Engine {
        match self {
            Engine::Redb => Engine::Sled,
            Engine::Sled => Engine::Redb,
        }
    }

    /// Where this engine keeps its store in `data_dir`.
    pub fn path(self, data_dir: &Path) -> PathBuf {
        match self {
            Engine::Redb => data_dir.join("store.redb"),
            Engine::Sled => data_dir.join("store"),
        }
    }

    /// Which engine's store `data_dir` holds, if any.
    pub fn found_in(data_dir: &Path) -> Option<Engine> {
        [Engine::Redb, Engine::Sled]
            .into_iter()
            .find(|e| e.path(data_dir).exists())
    }
}

/// Opens (or creates) the `engine` store of `data_dir`. Refuses, with the way
/// out, a directory that holds only the other engine's store.
pub fn open(
    data_dir: &Path,
    engine: Engine,
    cache_bytes: u64,
) -> Result<Arc<dyn Store>, StoreError> {
    let path = engine.path(data_dir);
    let other = engine.other();
    if !path.exists() && other.path(data_dir).exists() {
        return Err(StoreError::Io(format!(
            "{} holds a {} store ({}) and storage.engine is {}: set storage.engine = \"{}\", \
             or convert it with `truc store convert --config FILE` while the node is stopped",
            data_dir.display(),
            other.name(),
            other.path(data_dir).display(),
            engine.name(),
            other.name(),
        )));
    }
    open_at(engine, &path, cache_bytes)
}

fn open_at(engine: Engine, path: &Path, cache_bytes: u64) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match engine {
        Engine::Redb => Arc::new(RedbStore::open(path, cache_bytes)?),
        Engine::Sled => Arc::new(SledStore::open(path, cache_bytes)?),
    })
}

/// What a conversion copied, per space: entries and a SHA-256 over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub space: Space,
    pub entries: u64,
    pub digest: [u8; 32],
}

/// What [`convert`] did.
#[derive(Debug, Clone)]
pub struct Converted {
    pub from: Engine,
    pub to: Engine,
    pub spaces: Vec<Copied>,
    /// Where the old store was moved (kept until the operator deletes it).
    pub old_kept_at: PathBuf,
}

impl Converted {
    pub fn entries(&self) -> u64 {
        self.spaces.iter().map(|c| c.entries).sum()
    }
}

const PAGE: usize = 4096;

/// Copies the store of `data_dir` into a new store of engine `to`, then checks
/// the copy entry by entry (count and SHA-256 per space, read back from the new
/// store after it was flushed), and only then puts it in place: the old store
/// is moved to `store.<engine>-old`, never deleted. The new store is built
/// under a temporary name, so an interrupted conversion leaves the old store
/// where it was and in use; running it again starts over.
///
/// The node must be stopped: both engines lock their files, so a running node
/// makes this fail with the reason. `progress` is called after every page with
/// the space and the entries copied so far.
pub fn convert(
    data_dir: &Path,
    to: Engine,
    cache_bytes: u64,
    mut progress: impl FnMut(Space, u64),
) -> Result<Converted, StoreError> {
    let from = to.other();
    let src_path = from.path(data_dir);
    let dst_path = to.path(data_dir);
    if dst_path.exists() {
        return Err(StoreError::Io(format!(
            "{} already holds a {} store ({}): nothing to convert",
            data_dir.display(),
            to.name(),
            dst_path.display()
        )));
    }
    if !src_path.exists() {
        return Err(StoreError::Io(format!(
            "{} holds no {} store to convert ({} does not exist)",
            data_dir.display(),
            from.name(),
            src_path.display()
        )));
    }
    let tmp = data_dir.join(format!("store.converting.{}", to.name()));
    remove_path(&tmp)?;
    let src = open_at(from, &src_path, cache_bytes)?;
    let mut spaces = Vec::new();
    {
        let dst = open_at(to, &tmp, cache_bytes)?;
        for space in Space::ALL {
            let copied = copy_space(src.as_ref(), dst.as_ref(), space, &mut progress)?;
            spaces.push(copied);
        }
        dst.flush()?;
        for want in &spaces {
            let got = digest_space(dst.as_ref(), want.space)?;
            if &got != want {
                return Err(StoreError::Io(format!(
                    "the converted store differs in {:?}: {} entries copied, {} read back \
                     (the old store is untouched; {} is left for inspection)",
                    want.space,
                    want.entries,
                    got.entries,
                    tmp.display()
                )));
            }
        }
    }
    drop(src);
    // The new store in place first, durably, then the old one aside: a crash
    // or an error in between leaves a complete store under the engine's name
    // (the new one, or still only the old one), never neither, which would
    // start the node on an empty store.
    let sync = || {
        crate::fsync_dir(data_dir)
            .map_err(|e| StoreError::Io(format!("sync {}: {e}", data_dir.display())))
    };
    std::fs::rename(&tmp, &dst_path)
        .map_err(|e| StoreError::Io(format!("put {} in place: {e}", dst_path.display())))?;
    sync()?;
    let old_kept_at = data_dir.join(format!("store.{}-old", from.name()));
    remove_path(&old_kept_at)?;
    std::fs::rename(&src_path, &old_kept_at)
        .map_err(|e| StoreError::Io(format!("move {} aside: {e}", src_path.display())))?;
    sync()?;
    Ok(Converted {
        from,
        to,
        spaces,
        old_kept_at,
    })
}

fn copy_space(
    src: &dyn Store,
    dst: &dyn Store,
    space: Space,
    progress: &mut impl FnMut(Space, u64),
) -> Result<Copied, StoreError> {
    walk_space(src, space, |page, entries| {
        let mut b = Batch::new();
        for (k, v) in page {
            b.put(space, k, v);
        }
        dst.apply(b)?;
        progress(space, entries);
        Ok(())
    })
}

fn digest_space(store: &dyn Store, space: Space) -> Result<Copied, StoreError> {
    walk_space(store, space, |_, _| Ok(()))
}

/// Reads every entry of `space` in key order, a page at a time, counting and
/// hashing them; `page` gets each page and the entries read so far.
fn walk_space(
    store: &dyn Store,
    space: Space,
    mut page: impl FnMut(Vec<Entry>, u64) -> Result<(), StoreError>,
) -> Result<Copied, StoreError> {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut entries = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let rows = store.scan(space, &[], after.as_deref(), PAGE)?;
        let Some(last) = rows.last() else { break };
        after = Some(last.0.clone());
        for (k, v) in &rows {
            hash_entry(&mut hash, k, v);
            entries += 1;
        }
        page(rows, entries)?;
    }
    Ok(Copied {
        space,
        entries,
        digest: finish(hash),
    })
}

fn hash_entry(h: &mut ring::digest::Context, k: &[u8], v: &[u8]) {
    h.update(&(k.len() as u64).to_be_bytes());
    h.update(k);
    h.update(&(v.len() as u64).to_be_bytes());
    h.update(v);
}

fn finish(h: ring::digest::Context) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

fn remove_path(p: &Path) -> Result<(), StoreError> {
    let r = if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io(format!("remove {}: {e}", p.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(store: &dyn Store, n: u32) {
        let mut b = Batch::new();
        for i in 0..n {
            b.put(Space::Docs, i.to_be_bytes().to_vec(), vec![i as u8; 100]);
            b.put(Space::Audit, i.to_be_bytes().to_vec(), vec![1; 10]);
        }
        b.put(Space::Stats, b"s".to_vec(), vec![]);
        store.apply(b).unwrap();
        store.flush().unwrap();
    }

    #[test]
    fn a_store_of_the_other_engine_is_refused_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), Engine::Sled, 1 << 20).unwrap());
        let e = open(dir.path(), Engine::Redb, 1 << 20)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("holds a sled store"), "{e}");
        assert!(e.contains("truc store convert"), "{e}");
        assert!(
            !Engine::Redb.path(dir.path()).exists(),
            "no empty store beside it"
        );
    }

    #[test]
    fn convert_copies_every_entry_checks_them_and_keeps_the_old_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), Engine::Sled, 1 << 20).unwrap();
            fill(s.as_ref(), 5000);
        }
        let mut pages = 0;
        let c = convert(dir.path(), Engine::Redb, 1 << 20, |_, _| pages += 1).unwrap();
        assert_eq!(c.entries(), 10_001);
        assert!(pages >= 3, "progress after every page: {pages}");
        assert!(c.old_kept_at.exists());
        assert!(!Engine::Sled.path(dir.path()).exists());
        let s = open(dir.path(), Engine::Redb, 1 << 20).unwrap();
        assert_eq!(
            s.get(Space::Docs, &4999u32.to_be_bytes()).unwrap(),
            Some(vec![135; 100])
        );
        assert_eq!(s.scan(Space::Audit, &[], None, 10_000).unwrap().len(), 5000);
        assert_eq!(s.get(Space::Stats, b"s").unwrap(), Some(vec![]));
        // And back: the same digests.
        drop(s);
        let back = convert(dir.path(), Engine::Sled, 1 << 20, |_, _| {}).unwrap();
        assert_eq!(back.spaces, c.spaces);
    }

    #[test]
    fn convert_refuses_when_the_target_exists_or_the_source_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let e = convert(dir.path(), Engine::Redb, 1 << 20, |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("holds no sled store"), "{e}");
        drop(open(dir.path(), Engine::Redb, 1 << 20).unwrap());
        let e = convert(dir.path(), Engine::Redb, 1 << 20, |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("already holds a redb store"), "{e}");
    }

    /// A store a running node holds is not converted under it: the engine's
    /// lock refuses, and both stores stay as they were.
    #[test]
    fn convert_refuses_a_store_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let held = open(dir.path(), Engine::Redb, 1 << 20).unwrap();
        fill(held.as_ref(), 10);
        let e = convert(dir.path(), Engine::Sled, 1 << 20, |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("another truc node"), "{e}");
        assert!(!Engine::Sled.path(dir.path()).exists());
        assert_eq!(held.scan(Space::Docs, &[], None, 100).unwrap().len(), 10);
    }
}
