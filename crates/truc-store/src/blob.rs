//! Content-addressed blobs: small ones in pack files (`<root>/packs/`, see
//! [`crate::pack`]), larger ones as files `<root>/sha256/<2 hex>/<64 hex>`.
//!
//! A blob file is written to `<root>/tmp/`, fsynced, renamed into place and its
//! directory fsynced, so a name in `sha256/` always means the whole content is on
//! disk. Identical content is stored once. Reads check the digest.

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::pack::{PACK_MAX, Packs};

use ring::digest::{SHA256, digest};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(data: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, data).as_ref());
        Self(out)
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Self(b.try_into().ok()?))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.hex()[..12])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob io on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("content does not match its sha-256: expected {expected}, got {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("blob {0} is missing")]
    Missing(Digest),
    #[error(
        "disk full: {free} bytes free under {path}, {needed} more needed and storage.min_free_bytes keeps {reserve} free"
    )]
    DiskFull {
        path: PathBuf,
        free: u64,
        needed: u64,
        reserve: u64,
    },
    #[error("partial {name}: data at offset {got} does not continue the {have} bytes received")]
    OutOfOrder { name: String, have: u64, got: u64 },
    #[error("partial {name}: {got} bytes exceed the announced size of {size}")]
    TooLong { name: String, size: u64, got: u64 },
}

impl BlobError {
    /// Whether the failure is a full disk (intake should be refused, not retried blindly).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, BlobError::DiskFull { .. })
            || matches!(self, BlobError::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A blob to store: its digest (checked by the caller) and its bytes.
type Item<'a> = (Digest, &'a [u8]);

/// Blobs under one root directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    packs: Arc<Packs>,
    disk: Arc<DiskWatch>,
}

/// The size and free bytes of the blobs' filesystem, sampled by a thread of
/// its own (started by the first read, ended with the store), so that what
/// reads them (the scrape, the alerts, the health check) never waits on a
/// filesystem that does not answer, a network mount gone away: a sample
/// older than [`DISK_STALE`] is an error saying so.
#[derive(Debug, Default)]
struct DiskWatch {
    /// When taken, and what `statvfs` said.
    sample: std::sync::Mutex<Option<DiskSample>>,
    ready: std::sync::Condvar,
    /// When the sampler was started (by the first read).
    started: std::sync::OnceLock<std::time::Instant>,
    /// Tests: the sampler takes no sample while set, as when `statvfs` hangs.
    #[cfg(test)]
    paused: std::sync::atomic::AtomicBool,
}

/// When a sample was taken, and (total, free) bytes or why not (the
/// error's kind and text).
type DiskSample = (
    std::time::Instant,
    Result<(u64, u64), (std::io::ErrorKind, String)>,
);

/// How often the filesystem's space is sampled.
const DISK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A sample this old means `statvfs` has not answered since.
const DISK_STALE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a first read waits for the first sample.
const DISK_FIRST: std::time::Duration = std::time::Duration::from_secs(2);

/// (total, free to unprivileged users) bytes of the filesystem holding `root`.
fn statvfs_usage(root: &Path) -> Result<(u64, u64), std::io::Error> {
    let st = rustix::fs::statvfs(root)?;
    Ok((
        st.f_blocks.saturating_mul(st.f_frsize),
        st.f_bavail.saturating_mul(st.f_frsize),
    ))
}

impl BlobStore {
    /// Opens the store, creating its directories and removing temp files left by a
    /// crash (they were never named, so nothing refers to them).
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        let objects = root.join("sha256");
        let tmp = root.join("tmp");
        fs::create_dir_all(&objects).map_err(io(&objects))?;
        fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        for entry in fs::read_dir(&tmp).map_err(io(&tmp))? {
            let entry = entry.map_err(io(&tmp))?;
            let _ = fs::remove_file(entry.path());
        }
        let partial = root.join("partial");
        fs::create_dir_all(&partial).map_err(io(&partial))?;
        for i in 0..=255u8 {
            let shard = objects.join(hex::encode([i]));
            if !shard.exists() {
                fs::create_dir(&shard).map_err(io(&shard))?;
            }
        }
        sync_dir(&objects)?;
        let packs = Arc::new(Packs::open(&root.join("packs"))?);
        sync_dir(root)?;
        Ok(Self {
            root: root.to_owned(),
            packs,
            disk: Arc::default(),
        })
    }

    /// Where the blob's own file is (blobs too small for one are in packs).
    pub fn path(&self, d: &Digest) -> PathBuf {
        let h = d.hex();
        self.root.join("sha256").join(&h[..2]).join(h)
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.packs.contains(d) || self.path(d).exists()
    }

    /// [`BlobStore::contains`] for a caller that answers "stored" on it (and
    /// skips its own write): a blob found as its own file has its directory
    /// synced first. Another writer may have just renamed it into place and
    /// not synced the name yet, or failed to; a power cut would then lose a
    /// blob that a durable record names. (A packed one is durable by the next
    /// flush, whose pack sync runs before any record it makes durable.)
    /// A directory that cannot be synced is an error, not "not stored": the
    /// caller would only fetch the bytes again to fail on the same sync.
    pub fn contains_durably(&self, d: &Digest) -> Result<bool, BlobError> {
        Ok(self.packs.contains(d) || self.file_named_durably(d)?)
    }

    fn file_named_durably(&self, d: &Digest) -> Result<bool, BlobError> {
        let p = self.path(d);
        if !p.exists() {
            return Ok(false);
        }
        sync_dir(p.parent().unwrap_or(&self.root))?;
        Ok(true)
    }

    /// Whether the blob lives in a pack (it has no file of its own).
    pub fn is_packed(&self, d: &Digest) -> bool {
        self.packs.contains(d)
    }

    /// Stores `data` durably and returns its digest.
    pub fn put(&self, data: &[u8]) -> Result<Digest, BlobError> {
        let d = Digest::of(data);
        self.write(&d, data)?;
        Ok(d)
    }

    /// Stores `data` durably if it hashes to `expected`; refuses it otherwise.
    pub fn put_expect(&self, expected: &Digest, data: &[u8]) -> Result<(), BlobError> {
        let actual = Digest::of(data);
        if &actual != expected {
            return Err(BlobError::Mismatch {
                expected: *expected,
                actual,
            });
        }
        self.write(expected, data)
    }

    /// Whether a blob of `len` bytes is already where it would be stored: a
    /// small one in the packs (one left as a file of its own from before packs
    /// is then packed as well, an extra copy `remove` deletes with it, instead
    /// of a stat per new blob), a large one as its file, its name synced.
    fn stored(&self, d: &Digest, len: usize) -> Result<bool, BlobError> {
        if len <= PACK_MAX {
            Ok(self.packs.contains(d))
        } else {
            self.file_named_durably(d)
        }
    }

    fn write(&self, d: &Digest, data: &[u8]) -> Result<(), BlobError> {
        if self.stored(d, data.len())? {
            // A packed blob found may have been stored unsynced.
            if data.len() <= PACK_MAX {
                self.packs.sync()?;
            }
            return Ok(());
        }
        if data.len() <= PACK_MAX {
            return self.packs.put_many(&[(*d, data)]);
        }
        self.write_files(&[(*d, data)])
    }

    /// Stores several blobs whose digests the caller has checked, durably: the
    /// small ones appended to a pack with one sync, the large ones written to
    /// temp files, each synced, renamed into place, and each directory that
    /// gained a name synced once. Nothing gets a name before its bytes are on
    /// disk.
    pub fn put_many(&self, items: &[(Digest, &[u8])]) -> Result<(), BlobError> {
        self.put_items(items, true)
    }

    /// [`BlobStore::put_many`], except that the small blobs (the packed ones)
    /// are durable only once [`BlobStore::pack_syncer`] has run after it: for
    /// blobs that records committed through a group commit started with that
    /// syncer name. Large ones are written and synced as by `put_many`.
    pub fn put_many_unsynced(&self, items: &[(Digest, &[u8])]) -> Result<(), BlobError> {
        self.put_items(items, false)
    }

    /// Makes every packed blob stored so far durable; a group commit runs it
    /// before each flush, so that a record never becomes durable before the
    /// bytes it names.
    pub fn pack_syncer(&self) -> impl Fn() -> Result<(), BlobError> + Send + Sync + 'static {
        let packs = self.packs.clone();
        move || packs.sync()
    }

    /// Bytes of packed blobs stored but not yet known durable.
    pub fn unsynced_bytes(&self) -> u64 {
        self.packs.unsynced_bytes()
    }

    fn put_items(&self, items: &[(Digest, &[u8])], durable: bool) -> Result<(), BlobError> {
        // Packed blobs already stored are skipped by the packs themselves.
        let (small, mut large): (Vec<Item<'_>>, Vec<Item<'_>>) =
            items.iter().partition(|(_, data)| data.len() <= PACK_MAX);
        if !small.is_empty() {
            if durable {
                self.packs.put_many(&small)?;
            } else {
                self.packs.put_many_unsynced(&small)?;
            }
        }
        large.sort_by_key(|(d, _)| *d);
        large.dedup_by_key(|(d, _)| *d);
        let mut todo = Vec::with_capacity(large.len());
        for item in large {
            if !self.stored(&item.0, item.1.len())? {
                todo.push(item);
            }
        }
        self.write_files(&todo)
    }

    /// Writes large blobs not stored yet, each to a file of its own: written
    /// to a temp file and synced through the descriptor it was written with
    /// (a failed write-back is reported to it; a `syncfs` through a descriptor
    /// opened afterwards would not report one that happened before), then
    /// renamed into place, and each directory that gained a name synced once.
    /// Nothing gets a name before its bytes are on disk.
    fn write_files(&self, items: &[Item<'_>]) -> Result<(), BlobError> {
        let mut written: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(items.len());
        let result = (|| {
            for (d, data) in items {
                let tmp = self.tmp_path(d);
                let mut f = File::create(&tmp).map_err(io(&tmp))?;
                written.push((tmp.clone(), self.path(d)));
                f.write_all(data).map_err(io(&tmp))?;
                // Closed once synced: a batch of many holds one descriptor.
                f.sync_data().map_err(io(&tmp))?;
            }
            let mut dirs = std::collections::BTreeSet::new();
            for (tmp, dest) in &written {
                fs::rename(tmp, dest).map_err(io(dest))?;
                dirs.insert(dest.parent().unwrap_or(&self.root));
            }
            dirs.into_iter().try_for_each(sync_dir)
        })();
        if result.is_err() {
            for (tmp, _) in &written {
                let _ = fs::remove_file(tmp);
            }
        }
        result
    }

    fn tmp_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}.{:016x}", d.hex(), fastrand::u64(..)))
    }

    /// The pack files: how many, the blobs in them, the memory of their index.
    pub fn pack_stats(&self) -> crate::pack::PackStats {
        self.packs.stats()
    }

    /// Bytes free for this store on its filesystem, read now (what intake
    /// checks before it writes; [`Self::disk_usage`] for what may not wait).
    pub fn free_bytes(&self) -> Result<u64, BlobError> {
        statvfs_usage(&self.root)
            .map(|(_, free)| free)
            .map_err(io(&self.root))
    }

    /// (total, free to unprivileged users) bytes of the filesystem holding
    /// the blobs, as last sampled (at most a second or so old). Never waits
    /// long on a filesystem that does not answer: an error once the last
    /// sample is older than [`DISK_STALE`], or when the first one has not
    /// come within [`DISK_FIRST`].
    pub fn disk_usage(&self) -> Result<(u64, u64), BlobError> {
        let w = &self.disk;
        let started = *w.started.get_or_init(|| {
            let watch = Arc::downgrade(w);
            let root = self.root.clone();
            let spawned = std::thread::Builder::new()
                .name("truc-disk".into())
                .spawn(move || {
                    // Ends once the store (every clone of it) is gone; holds
                    // it only to write a sample.
                    loop {
                        let usage = statvfs_usage(&root).map_err(|e| (e.kind(), e.to_string()));
                        let Some(w) = watch.upgrade() else { break };
                        let mut sample = w.sample.lock().unwrap_or_else(|p| p.into_inner());
                        #[cfg(test)]
                        let paused = w.paused.load(std::sync::atomic::Ordering::SeqCst);
                        #[cfg(not(test))]
                        let paused = false;
                        if !paused {
                            *sample = Some((std::time::Instant::now(), usage));
                        }
                        drop(sample);
                        w.ready.notify_all();
                        drop(w);
                        std::thread::sleep(DISK_EVERY);
                    }
                });
            if let Err(e) = spawned {
                *w.sample.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                    std::time::Instant::now(),
                    Err((e.kind(), format!("cannot start the disk sampler: {e}"))),
                ));
            }
            std::time::Instant::now()
        });
        let failed = |kind, why: String| io(&self.root)(std::io::Error::new(kind, why));
        let unanswered = |secs: u64| {
            failed(
                std::io::ErrorKind::TimedOut,
                format!("its filesystem has had no answer to statvfs in {secs} s"),
            )
        };
        let guard = w.sample.lock().unwrap_or_else(|p| p.into_inner());
        // Only the first reads wait, and for the first sample only.
        let wait = DISK_FIRST.saturating_sub(started.elapsed());
        let (guard, _) = w
            .ready
            .wait_timeout_while(guard, wait, |s| s.is_none())
            .unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            None => Err(unanswered(started.elapsed().as_secs())),
            Some((at, _)) if at.elapsed() > DISK_STALE => Err(unanswered(at.elapsed().as_secs())),
            Some((_, Ok(usage))) => Ok(*usage),
            Some((_, Err((kind, e)))) => Err(failed(*kind, e.clone())),
        }
    }

    /// Refuses intake of `needed` bytes that would leave less than `reserve` free.
    pub fn check_space(&self, needed: u64, reserve: u64) -> Result<(), BlobError> {
        let free = self.free_bytes()?;
        if free < needed.saturating_add(reserve) {
            return Err(BlobError::DiskFull {
                path: self.root.clone(),
                free,
                needed,
                reserve,
            });
        }
        Ok(())
    }

    /// Size of a stored blob.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        self.packs
            .size(d)
            .or_else(|| fs::metadata(self.path(d)).ok().map(|m| m.len()))
    }

    /// Opens a stored blob file for streaming reads (callers check the digest as
    /// they read). A packed blob has none: read it whole with [`BlobStore::read`].
    pub fn open_blob(&self, d: &Digest) -> Result<File, BlobError> {
        let path = self.path(d);
        File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BlobError::Missing(*d),
            _ => io(&path)(e),
        })
    }

    /// Deletes a blob no document refers to any more.
    pub fn remove(&self, d: &Digest) -> Result<(), BlobError> {
        self.packs.remove(d)?;
        let path = self.path(d);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every stored blob with its age in seconds (for the orphan sweep).
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, BlobError> {
        let objects = self.root.join("sha256");
        let mut out = self.packs.list();
        for shard in fs::read_dir(&objects).map_err(io(&objects))? {
            let shard = shard.map_err(io(&objects))?.path();
            for entry in fs::read_dir(&shard).map_err(io(&shard))? {
                let entry = entry.map_err(io(&shard))?;
                let Some(d) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| hex::decode(n).ok())
                    .and_then(|b| Digest::from_slice(&b))
                else {
                    continue;
                };
                out.push((d, age_secs(&entry)));
            }
        }
        Ok(out)
    }

    /// A resumable partial file named `name` (a digest or an upload id), for bytes
    /// that arrive in order and may be interrupted.
    pub fn partial(&self, name: &str, size: u64, resume_at: u64) -> Result<Partial, BlobError> {
        let path = self.root.join("partial").join(name);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        // Only what was recorded as durable counts; anything after it is redone.
        let offset = resume_at.min(len).min(size);
        file.set_len(offset).map_err(io(&path))?;
        file.seek(SeekFrom::Start(offset)).map_err(io(&path))?;
        let hasher = (offset == 0).then(|| ring::digest::Context::new(&SHA256));
        Ok(Partial {
            name: name.to_owned(),
            path,
            file,
            size,
            offset,
            synced: offset,
            hasher,
        })
    }

    /// Every partial file with its age in seconds since it was last written
    /// (for the sweep of abandoned transfers and uploads).
    pub fn list_partials(&self) -> Result<Vec<(String, u64)>, BlobError> {
        let dir = self.root.join("partial");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            out.push((name, age_secs(&entry)));
        }
        Ok(out)
    }

    /// Removes a partial file (refused or abandoned).
    pub fn drop_partial(&self, name: &str) {
        let _ = fs::remove_file(self.root.join("partial").join(name));
    }

    /// Durable length of a partial file, if one exists.
    pub fn partial_len(&self, name: &str) -> Option<u64> {
        fs::metadata(self.root.join("partial").join(name))
            .ok()
            .map(|m| m.len())
    }

    /// Reads a blob and checks it against its name.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, BlobError> {
        if let Some(data) = self.packs.read(d)? {
            return Ok(data);
        }
        let path = self.path(d);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::Missing(*d));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let mut data = Vec::new();
        f.read_to_end(&mut data).map_err(io(&path))?;
        let actual = Digest::of(&data);
        if &actual != d {
            return Err(BlobError::Mismatch {
                expected: *d,
                actual,
            });
        }
        Ok(data)
    }
}

/// Bytes of one blob arriving in order, resumable after a cut.
pub struct Partial {
    name: String,
    path: PathBuf,
    file: File,
    size: u64,
    offset: u64,
    synced: u64,
    /// Present when every byte went through it (the transfer started at 0).
    hasher: Option<ring::digest::Context>,
}

impl fmt::Debug for Partial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partial")
            .field("name", &self.name)
            .field("offset", &self.offset)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Partial {
    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes known to be on disk.
    pub fn synced(&self) -> u64 {
        self.synced
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_complete(&self) -> bool {
        self.offset == self.size
    }

    /// Appends `data`, which must start where the file ends.
    pub fn write(&mut self, at: u64, data: &[u8]) -> Result<(), BlobError> {
        if at != self.offset {
            return Err(BlobError::OutOfOrder {
                name: self.name.clone(),
                have: self.offset,
                got: at,
            });
        }
        let end = self.offset + data.len() as u64;
        if end > self.size {
            return Err(BlobError::TooLong {
                name: self.name.clone(),
                size: self.size,
                got: end,
            });
        }
        self.file.write_all(data).map_err(io(&self.path))?;
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        self.offset = end;
        Ok(())
    }

    /// Makes what was written durable; returns the durable offset.
    pub fn sync(&mut self) -> Result<u64, BlobError> {
        self.file.sync_data().map_err(io(&self.path))?;
        self.synced = self.offset;
        Ok(self.synced)
    }

    /// Completes the blob: checks its digest (against `expected` if given) and
    /// moves it into the content-addressed store. A mismatch deletes the partial.
    pub fn finish(
        mut self,
        store: &BlobStore,
        expected: Option<&Digest>,
    ) -> Result<Digest, BlobError> {
        self.sync()?;
        let actual = match self.hasher.take() {
            Some(h) => {
                let mut d = [0u8; 32];
                d.copy_from_slice(h.finish().as_ref());
                Digest(d)
            }
            None => {
                // Resumed: hash what is on disk.
                let mut f = File::open(&self.path).map_err(io(&self.path))?;
                let mut h = ring::digest::Context::new(&SHA256);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).map_err(io(&self.path))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                let mut d = [0u8; 32];
                d.copy_from_slice(h.finish().as_ref());
                Digest(d)
            }
        };
        if let Some(e) = expected
            && e != &actual
        {
            let _ = fs::remove_file(&self.path);
            return Err(BlobError::Mismatch {
                expected: *e,
                actual,
            });
        }
        let dest = store.path(&actual);
        if store.contains_durably(&actual)? {
            let _ = fs::remove_file(&self.path);
            // Stored again now: the orphan sweep must not take it for an
            // old one before the document that names it is sent.
            if let Ok(f) = File::options().write(true).open(&dest) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
        } else {
            fs::rename(&self.path, &dest).map_err(io(&dest))?;
            sync_dir(dest.parent().unwrap_or(&store.root))?;
        }
        Ok(actual)
    }
}

/// Seconds since a file was last written (0 when that cannot be read).
fn age_secs(entry: &fs::DirEntry) -> u64 {
    entry
        .metadata()
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok())
        .map(|e| e.as_secs())
        .unwrap_or(0)
}

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    #[cfg(test)]
    {
        tests::DIR_SYNCS.with(|n| n.set(n.get() + 1));
        if tests::FAIL_DIR_SYNC.with(std::cell::Cell::get) {
            return Err(io(dir)(std::io::Error::other(
                "injected: directory sync failed",
            )));
        }
    }
    crate::fsync_dir(dir).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Directory syncs made by this thread.
        pub(super) static DIR_SYNCS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        /// Makes this thread's directory syncs fail.
        pub(super) static FAIL_DIR_SYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A store holding one blob too large for the packs, of bytes `b`.
    fn one_large_blob(b: u8) -> (tempfile::TempDir, BlobStore, Vec<u8>, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let data = vec![b; PACK_MAX + 1];
        let d = s.put(&data).unwrap();
        (dir, s, data, d)
    }

    /// A large blob whose directory cannot be synced is an error with the
    /// reason, not "not stored" (which would have its bytes fetched again,
    /// only to fail on the same sync).
    #[test]
    fn a_directory_that_cannot_be_synced_is_an_error_not_a_missing_blob() {
        let (_dir, s, _, d) = one_large_blob(9);
        /// The switch on until dropped, however the test ends.
        struct Failing;
        impl Drop for Failing {
            fn drop(&mut self) {
                FAIL_DIR_SYNC.with(|f| f.set(false));
            }
        }
        let failing = Failing;
        FAIL_DIR_SYNC.with(|f| f.set(true));
        let e = s.contains_durably(&d).unwrap_err().to_string();
        drop(failing);
        assert!(e.contains("directory sync failed"), "{e}");
        assert!(s.contains_durably(&d).unwrap(), "the blob itself is there");
    }

    /// A large blob found already named (by another writer that may not have
    /// synced its directory yet, or failed to) is not taken as stored before
    /// its name is synced.
    #[test]
    fn a_large_blob_found_already_named_has_its_name_synced_before_it_counts() {
        let (_dir, s, data, d) = one_large_blob(7);
        let before = DIR_SYNCS.with(|n| n.get());
        s.put(&data).unwrap();
        // Twice in one batch: one sync for the blob, not one per copy.
        s.put_many(&[(d, data.as_slice()), (d, data.as_slice())])
            .unwrap();
        assert!(s.contains_durably(&d).unwrap());
        assert_eq!(
            DIR_SYNCS.with(|n| n.get()) - before,
            3,
            "one sync per answer"
        );
    }

    #[test]
    fn identical_content_is_stored_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let a = s.put(b"quyet dinh").unwrap();
        let b = s.put(b"quyet dinh").unwrap();
        assert_eq!(a, b);
        assert_eq!(s.read(&a).unwrap(), b"quyet dinh");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn content_that_does_not_match_its_digest_is_refused_and_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let expected = Digest::of(b"original");
        let err = s.put_expect(&expected, b"tampered").unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }));
        assert!(!s.contains(&expected));
    }

    #[test]
    fn many_blobs_are_stored_together_and_each_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let data: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000]).collect();
        let items: Vec<(Digest, &[u8])> =
            data.iter().map(|d| (Digest::of(d), d.as_slice())).collect();
        s.put_many(&items).unwrap();
        s.put_many(&items).unwrap();
        for (d, bytes) in &items {
            assert_eq!(s.read(d).unwrap(), *bytes);
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn several_large_blobs_are_each_stored_as_a_file_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let data: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; PACK_MAX + 1]).collect();
        let mut items: Vec<(Digest, &[u8])> =
            data.iter().map(|d| (Digest::of(d), d.as_slice())).collect();
        items.push(items[0]); // the same attachment twice in one batch
        s.put_many(&items).unwrap();
        for (d, bytes) in &items {
            assert_eq!(fs::read(s.path(d)).unwrap(), *bytes);
            assert_eq!(s.read(d).unwrap(), *bytes);
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_partial_resumes_from_its_durable_offset_and_checks_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&data);
        let mut p = s.partial(&d.hex(), data.len() as u64, 0).unwrap();
        p.write(0, &data[..100_000]).unwrap();
        let durable = p.sync().unwrap();
        p.write(100_000, &data[100_000..150_000]).unwrap(); // not synced: redone
        drop(p);
        let mut p = s.partial(&d.hex(), data.len() as u64, durable).unwrap();
        assert_eq!(p.offset(), 100_000);
        assert!(matches!(
            p.write(0, b"x"),
            Err(BlobError::OutOfOrder { .. })
        ));
        p.write(100_000, &data[100_000..]).unwrap();
        assert!(p.is_complete());
        assert_eq!(p.finish(&s, Some(&d)).unwrap(), d);
        assert_eq!(s.read(&d).unwrap(), data);
        assert_eq!(s.partial_len(&d.hex()), None);
    }

    #[test]
    fn a_partial_with_other_bytes_is_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let expected = Digest::of(b"signed bytes");
        let mut p = s.partial("x", 12, 0).unwrap();
        p.write(0, b"forged bytes").unwrap();
        assert!(matches!(
            p.finish(&s, Some(&expected)),
            Err(BlobError::Mismatch { .. })
        ));
        assert!(!s.contains(&expected));
        assert_eq!(s.partial_len("x"), None);
    }

    /// The disk's space is read from a sample a thread of its own takes:
    /// when `statvfs` stops answering (a network mount gone away), readers
    /// get an error saying so, at once, rather than wait with it.
    #[test]
    fn a_filesystem_that_does_not_answer_holds_no_reader() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let (total, free) = s.disk_usage().unwrap();
        assert!(total >= free && free > 0);
        s.disk
            .paused
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let ago = std::time::Instant::now() - DISK_STALE - std::time::Duration::from_secs(1);
        *s.disk.sample.lock().unwrap() = Some((ago, Ok((total, free))));
        let e = s.disk_usage().unwrap_err().to_string();
        let secs: u64 = e
            .split("has had no answer to statvfs in ")
            .nth(1)
            .and_then(|t| t.strip_suffix(" s"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{e}"));
        assert!(secs > DISK_STALE.as_secs(), "{e}");
        // Answering again: read as before.
        *s.disk.sample.lock().unwrap() = Some((std::time::Instant::now(), Ok((total, free))));
        assert_eq!(s.disk_usage().unwrap(), (total, free));
    }

    #[test]
    fn intake_that_would_fill_the_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        assert!(s.free_bytes().unwrap() > 0);
        assert!(s.check_space(1, 0).is_ok());
        // A reserve no disk has (free space moves under other tests' feet).
        let err = s.check_space(1, u64::MAX / 2).unwrap_err();
        assert!(
            err.is_disk_full() && err.to_string().contains("disk full"),
            "{err}"
        );
    }

    #[test]
    fn a_corrupted_blob_file_is_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        // Large enough for a file of its own (packed ones: `pack` tests).
        let mut data = vec![b'a'; PACK_MAX + 1];
        let d = s.put(&data).unwrap();
        assert!(!s.is_packed(&d));
        data[7] = b'A';
        fs::write(s.path(&d), &data).unwrap();
        assert!(matches!(s.read(&d), Err(BlobError::Mismatch { .. })));
    }

    /// A small blob stored as a file of its own, as before packs, is not looked
    /// for on each new blob: stored again it is packed too, and removing it
    /// removes both copies.
    #[test]
    fn a_small_blob_kept_as_a_file_is_packed_when_stored_again_and_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"cong van");
        fs::write(s.path(&d), b"cong van").unwrap();
        assert!(s.contains(&d) && !s.is_packed(&d));
        s.put_many(&[(d, b"cong van".as_slice())]).unwrap();
        assert!(s.is_packed(&d));
        assert_eq!(s.read(&d).unwrap(), b"cong van");
        s.remove(&d).unwrap();
        assert!(!s.contains(&d), "a copy was left behind");
        assert!(!s.path(&d).exists());
    }
}
