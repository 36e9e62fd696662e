//! Pack files for small blobs, as git packs its small objects: appended to
//! `<root>/packs/<id>.pack`, one fdatasync for every writer waiting at that
//! moment, instead of a new file, an fsync and a directory fsync per blob.
//!
//! Creating a file is the dearest thing a node did per document (ext4 inode
//! allocation, the file's fsync, the directory's fsync: a third of the sending
//! edge's CPU, BENCHMARKS.md). Blobs stay addressed by SHA-256, are checked
//! against it on every read, and are never sled values.
//!
//! A record is a 45-byte header — magic `TRP1`, kind (1 blob, 2 removal),
//! length, SHA-256, CRC-32 of the header — then the bytes. A blob is in the index
//! (and counts as stored) only once the fdatasync that covers it has returned, so
//! a crash can only lose records nobody was told about; at startup a torn tail is
//! cut off. A pack whose blobs are all removed is deleted. A removal record lost
//! with a deleted pack can bring a blob back after a restart: it is then named by
//! no document and the orphan sweep removes it.
//!
//! Where each blob is stays in memory (rebuilt from the headers at start-up),
//! keyed by a prefix of its digest and confirmed against the header on disk (a
//! read, against the bytes it reads anyway). Blobs of the pack being written are
//! in a hash map, about 21 bytes each with its slack; when a pack is sealed its
//! blobs are merged into one sorted array of 16 bytes each, with a directory of
//! the array's runs by the prefix's top bits (up to a byte per blob), so a
//! lookup is one hash probe, one directory entry and a short run of slots
//! however many packs there are. A queue of 100,000 documents (200,000 blobs
//! at the hub) costs about 3.3 MB instead of 5.5.

use std::{
    collections::{HashMap, hash_map::Entry},
    fs::{self, File, OpenOptions},
    io::{BufReader, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use crate::blob::{BlobError, Digest};

/// Blobs up to this size go into packs; larger ones are files of their own.
pub const PACK_MAX: usize = 64 << 10;
/// A pack is sealed and a new one started past this size.
const PACK_TARGET: u64 = 64 << 20;
const MAGIC: &[u8; 4] = b"TRP1";
/// Packs kept open for reading at most.
const OPEN_PACKS: usize = 64;
/// Blobs indexed at start-up before they are merged into the sealed array.
const OPEN_SEAL: usize = 1 << 20;
const HEADER: usize = 4 + 1 + 4 + 32 + 4;
const BLOB: u8 = 1;
const REMOVED: u8 = 2;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where a packed blob's bytes are. Twelve bytes: a pack never grows past
/// `PACK_TARGET` plus one record, so offsets fit in 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    pack: u32,
    offset: u32,
    len: u32,
}

/// The first 8 bytes of a digest: the index's key.
fn short(d: &Digest) -> [u8; 8] {
    let mut k = [0u8; 8];
    k.copy_from_slice(&d.0[..8]);
    k
}

/// A blob of a sealed pack: the first 4 bytes of its digest and where its
/// bytes are, 16 bytes. `offset` 0 marks a removed blob (a record's bytes come
/// after its header, never at 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Slot {
    prefix: u32,
    pack: u32,
    offset: u32,
    len: u32,
}

impl Slot {
    /// The order of the sealed array: by prefix, then oldest pack first.
    fn key(&self) -> (u32, u32) {
        (self.prefix, self.pack)
    }

    fn loc(&self) -> Loc {
        Loc {
            pack: self.pack,
            offset: self.offset,
            len: self.len,
        }
    }
}

/// The first 4 bytes of a digest, or of its 8-byte `short` key: a slot's key.
fn prefix(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Where every packed blob is. At most one live entry per digest, anywhere in
/// it. A hit on a prefix is confirmed against the digest in the record's header
/// on disk, so two digests sharing one — chance, or made on purpose — never
/// stand for each other.
#[derive(Debug, Default)]
struct Index {
    /// Blobs indexed since the last seal (the pack being written, and a few of
    /// the one sealed just before; at start-up, up to `OPEN_SEAL` blobs of the
    /// packs read so far), keyed by the digest's first 8 bytes: about
    /// 21 bytes each with the table's slack, instead of the 49 a map from whole
    /// digests takes. A second digest with a prefix already here goes to `spill`,
    /// keyed by its whole digest.
    short: HashMap<[u8; 8], Loc>,
    spill: HashMap<Digest, Loc>,
    /// Blobs of sealed packs, all packs in one array sorted by `Slot::key`: 16
    /// bytes each, one short run per lookup (`dir`) however many packs there are.
    /// Removed blobs stay (offset 0) until the next seal, also when their pack
    /// is deleted (a pack is deleted only once all its blobs are removed).
    sealed: Vec<Slot>,
    /// Where the slots whose prefix starts with `b` (its top bits, as many
    /// as `dir` has runs: 2^bits + 1 bounds) are in `sealed`: `dir[b]..dir[b + 1]`, four to eight of them (half a
    /// byte to a byte per blob). A lookup reads one entry here and one short
    /// run there, where a binary search over a large array missed the cache
    /// at each of its steps (4% of a draining hub's CPU). Rebuilt at each
    /// seal; empty before the first.
    dir: Vec<u32>,
}

/// Where an index entry is, to take it out once it is confirmed.
#[derive(Debug, Clone, Copy)]
enum At {
    Spill,
    Short,
    Sealed(usize),
}

impl Index {
    /// Where blob `d` may be: each place with whether it is certain (`spill`,
    /// keyed by whole digests) or still to be confirmed from the record.
    fn candidates(&self, d: &Digest) -> Vec<(Loc, bool, At)> {
        if let Some(l) = self.spill.get(d) {
            return vec![(*l, true, At::Spill)];
        }
        let mut out = Vec::new();
        if let Some(l) = self.short.get(&short(d)) {
            out.push((*l, false, At::Short));
        }
        // Newest pack first: at most one is live, and it is most often the newest.
        let p = prefix(&d.0);
        let (lo, hi) = match self.dir.get(self.bucket(p)..) {
            Some([lo, hi, ..]) => (*lo as usize, *hi as usize),
            _ => (0, self.sealed.len()),
        };
        let from = lo + self.sealed[lo..hi].partition_point(|s| s.prefix < p);
        let to = from
            + self.sealed[from..hi]
                .iter()
                .take_while(|s| s.prefix == p)
                .count();
        for i in (from..to).rev() {
            let s = self.sealed[i];
            if s.offset != 0 {
                out.push((s.loc(), false, At::Sealed(i)));
            }
        }
        out
    }

    /// Indexes blob `d`, known not to be indexed, at `loc`.
    fn add(&mut self, d: Digest, loc: Loc) {
        match self.short.entry(short(&d)) {
            // Another blob has this prefix.
            Entry::Occupied(_) => {
                self.spill.insert(d, loc);
            }
            Entry::Vacant(v) => {
                v.insert(loc);
            }
        }
    }

    /// Blobs indexed since the last seal.
    fn unsealed(&self) -> usize {
        self.short.len() + self.spill.len()
    }

    /// Merges every entry of `short` and `spill` into the sealed array, and
    /// drops the removed ones from it. In place: the array grows by the new
    /// entries (a large one by `mremap`, no copy) and is merged from its end.
    /// The short map keeps its table for the next pack.
    fn seal(&mut self) {
        let mut new: Vec<Slot> = Vec::with_capacity(self.unsealed());
        let slot = |p: u32, l: Loc| Slot {
            prefix: p,
            pack: l.pack,
            offset: l.offset,
            len: l.len,
        };
        new.extend(self.short.drain().map(|(k, l)| slot(prefix(&k), l)));
        new.extend(self.spill.drain().map(|(d, l)| slot(prefix(&d.0), l)));
        new.sort_unstable_by_key(Slot::key);
        self.sealed.retain(|s| s.offset != 0);
        let old = self.sealed.len();
        self.sealed.reserve_exact(new.len());
        self.sealed.resize(old + new.len(), Slot::default());
        let (mut i, mut j) = (old, new.len());
        while j > 0 {
            let k = i + j - 1;
            if i > 0 && self.sealed[i - 1].key() > new[j - 1].key() {
                self.sealed[k] = self.sealed[i - 1];
                i -= 1;
            } else {
                self.sealed[k] = new[j - 1];
                j -= 1;
            }
        }
        if self.sealed.capacity() > 2 * self.sealed.len() {
            self.sealed.shrink_to_fit();
        }
        self.index_runs();
    }

    /// The `dir` entry of prefix `p` (0 before the first seal).
    fn bucket(&self, p: u32) -> usize {
        let bits = (self.dir.len().max(2) - 1).ilog2();
        (u64::from(p) >> (32 - bits)) as usize
    }

    /// Rebuilds `dir` for the sealed array as it is: 2^bits + 1 bounds, with
    /// bits such that a run holds four to eight slots on average.
    fn index_runs(&mut self) {
        let bits = (self.sealed.len() / 8)
            .checked_ilog2()
            .map_or(0, |b| b + 1)
            .min(24);
        self.dir = vec![0; (1 << bits) + 1];
        for s in &self.sealed {
            let b = self.bucket(s.prefix);
            self.dir[b + 1] += 1;
        }
        for b in 1..self.dir.len() {
            self.dir[b] += self.dir[b - 1];
        }
    }

    /// Blobs indexed, and how many of them are in the sealed array.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let sealed = self.sealed.iter().filter(|s| s.offset != 0).count();
        (self.unsealed() + sealed, sealed)
    }
}

#[derive(Debug)]
struct Active {
    id: u32,
    file: Arc<File>,
    len: u64,
    /// Bytes of it known durable.
    synced: u64,
}

impl Active {
    /// Writes `rec` at the pack's end. A write that fails partway (a full disk)
    /// is cut off again: bytes left past the end, under a shorter record
    /// written over their start, would be read at the next start as records
    /// (and an attachment's bytes are the sender's to choose).
    fn write_at_end(&mut self, dir: &Path, rec: &[u8]) -> Result<(), BlobError> {
        let path = pack_path(dir, self.id);
        if let Err(e) = self.file.write_all_at(rec, self.len) {
            if let Err(cut) = self.file.set_len(self.len) {
                return Err(io(&path)(std::io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; cutting the pack back to its {} bytes failed too: {cut}",
                        self.len
                    ),
                )));
            }
            return Err(io(&path)(e));
        }
        self.len += rec.len() as u64;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct State {
    index: Index,
    /// Live blobs per pack.
    live: HashMap<u32, usize>,
    /// Open packs for reading.
    files: HashMap<u32, Arc<File>>,
    active: Option<Active>,
    next_id: u32,
    /// A failed fdatasync: the pages it covered may be lost, and a later sync
    /// could succeed without them. Every put and sync is refused until restart.
    failed: Option<String>,
}

/// What the packs hold (operators' metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Pack files with a live blob (and the one being written).
    pub packs: usize,
    /// Blobs stored in them.
    pub blobs: usize,
    /// Memory of their index: the sealed array and the hash maps' tables.
    pub index_bytes: usize,
}

#[derive(Debug)]
pub struct Packs {
    dir: PathBuf,
    state: Mutex<State>,
    /// Held while one writer fdatasyncs for everyone.
    syncing: Mutex<()>,
    /// `PACK_TARGET`, smaller in tests.
    target: u64,
}

fn header(kind: u8, len: u32, d: &Digest) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(MAGIC);
    h[4] = kind;
    h[5..9].copy_from_slice(&len.to_be_bytes());
    h[9..41].copy_from_slice(&d.0);
    let crc = crc32fast::hash(&h[..41]);
    h[41..].copy_from_slice(&crc.to_be_bytes());
    h
}

/// (kind, len, digest) of a header, if it is one.
fn parse(h: &[u8; HEADER]) -> Option<(u8, u32, Digest)> {
    if &h[..4] != MAGIC || crc32fast::hash(&h[..41]).to_be_bytes() != h[41..] {
        return None;
    }
    let len = u32::from_be_bytes(h[5..9].try_into().ok()?);
    Some((h[4], len, Digest::from_slice(&h[9..41])?))
}

impl Packs {
    /// Opens the packs under `dir`: rebuilds the index, cuts a torn tail off the
    /// newest pack, deletes packs with nothing live.
    pub fn open(dir: &Path) -> Result<Self, BlobError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let ids = pack_ids(dir)?;
        let mut st = State {
            next_id: ids.last().map_or(1, |l| l + 1),
            ..State::default()
        };
        let newest = ids.last().copied();
        for id in &ids {
            let path = pack_path(dir, *id);
            let file = File::open(&path).map_err(io(&path))?;
            let size = file.metadata().map_err(io(&path))?.len();
            let mut r = BufReader::with_capacity(1 << 20, file);
            let mut at = 0u64;
            let mut h = [0u8; HEADER];
            let mut buf = Vec::new();
            // Only the newest pack can have a torn or unsynced tail: its blobs'
            // bytes are checked here; every read checks them again.
            let check_data = Some(*id) == newest;
            loop {
                if r.read_exact(&mut h).is_err() {
                    break;
                }
                let Some((kind, len, d)) = parse(&h) else {
                    break;
                };
                match kind {
                    BLOB => {
                        if check_data {
                            buf.resize(len as usize, 0);
                            if r.read_exact(&mut buf).is_err() || Digest::of(&buf) != d {
                                break;
                            }
                        } else {
                            // A sealed pack: its records are whole; skip the bytes
                            // (start-up reads headers, not every stored body).
                            if at + (HEADER + len as usize) as u64 > size {
                                break;
                            }
                            if r.seek_relative(i64::from(len)).is_err() {
                                break;
                            }
                        }
                        let loc = Loc {
                            pack: *id,
                            offset: (at + HEADER as u64) as u32,
                            len,
                        };
                        // Stored twice: the later copy counts.
                        if let Some(old) = st.insert(dir, d, loc)? {
                            dec(&mut st.live, old.pack);
                        }
                        *st.live.entry(*id).or_default() += 1;
                    }
                    REMOVED => {
                        if let Some(old) = st.take(dir, &d)? {
                            dec(&mut st.live, old.pack);
                        }
                    }
                    _ => break,
                }
                at += HEADER as u64 + if kind == BLOB { u64::from(len) } else { 0 };
            }
            // Every pack there at start-up is sealed (new blobs go to a new
            // one), in merges of a million blobs at most: one sort at the end
            // for a hub's store, a bounded map for an archive's.
            if st.index.unsealed() >= OPEN_SEAL {
                st.index.seal();
            }
            if Some(*id) == newest && at >= size {
                // Its tail may have been written by a process killed before
                // its flush: the page cache kept it, the disk may not have.
                // Synced before it is taken as sealed, hence durable.
                r.get_ref().sync_data().map_err(io(&path))?;
            }
            if at < size {
                if Some(*id) == newest {
                    tracing::warn!(pack = %path.display(), kept = at, size, "cutting a torn tail off the newest pack");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io(&path))?;
                    f.set_len(at).map_err(io(&path))?;
                    f.sync_all().map_err(io(&path))?;
                } else {
                    tracing::error!(pack = %path.display(), readable = at, size, "a sealed pack is damaged after this offset");
                }
            }
        }
        // Slots of packs with nothing live are all marked removed: this
        // merge drops them with the others.
        st.index.seal();
        for id in ids {
            if st.live.get(&id).copied().unwrap_or(0) == 0 {
                // Checking a header may have opened it: no handle keeps it alive.
                st.files.remove(&id);
                let path = pack_path(dir, id);
                let _ = fs::remove_file(&path);
            }
        }
        // Start-up may have filled the short map with every blob read: its
        // table would stay that large for good.
        st.index.short.shrink_to_fit();
        st.index.spill.shrink_to_fit();
        Ok(Self {
            dir: dir.to_owned(),
            state: Mutex::new(st),
            syncing: Mutex::new(()),
            target: PACK_TARGET,
        })
    }

    pub fn stats(&self) -> PackStats {
        let st = self.lock();
        let active = st.active.as_ref().map(|a| a.id);
        let i = &st.index;
        // A table has 8 buckets for every 7 entries it can hold, each bucket
        // its key, its value and a control byte.
        let table = |cap: usize, key: usize| cap * 8 / 7 * (key + size_of::<Loc>() + 1);
        PackStats {
            packs: st
                .live
                .iter()
                .filter(|(id, n)| **n > 0 && Some(**id) != active)
                .count()
                + usize::from(active.is_some()),
            blobs: st.live.values().sum(),
            index_bytes: i.sealed.capacity() * size_of::<Slot>()
                + i.dir.capacity() * size_of::<u32>()
                + table(i.short.capacity(), 8)
                + table(i.spill.capacity(), 32),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `d` is packed. A header that cannot be read counts as not
    /// packed: the caller then stores the blob again or refuses to count on it.
    pub fn contains(&self, d: &Digest) -> bool {
        self.size(d).is_some()
    }

    pub fn size(&self, d: &Digest) -> Option<u64> {
        match self.lock().find(&self.dir, d) {
            Ok(loc) => loc.map(|l| u64::from(l.len)),
            Err(e) => {
                tracing::warn!(blob = %d, error = %e, "cannot read a pack record's header");
                None
            }
        }
    }

    /// A new active pack (the old one is synced and sealed first; one left with
    /// nothing live goes at the next open).
    fn rotate(&self, st: &mut State) -> Result<(), BlobError> {
        // Synced before it stops being the active pack: `sync` takes a pack
        // that is no longer active as durable.
        if let Some(old) = st.active.as_ref()
            && old.synced < old.len
        {
            let path = pack_path(&self.dir, old.id);
            if let Err(e) = old.file.sync_data() {
                st.failed.get_or_insert_with(|| e.to_string());
                return Err(io(&path)(e));
            }
        }
        st.active = None;
        st.index.seal();
        let id = st.next_id;
        st.next_id += 1;
        let path = pack_path(&self.dir, id);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        crate::fsync_dir(&self.dir).map_err(io(&self.dir))?;
        let file = Arc::new(file);
        st.files.insert(id, file.clone());
        st.active = Some(Active {
            id,
            file,
            len: 0,
            synced: 0,
        });
        Ok(())
    }

    /// Appends `items` (digests checked by the caller, each at most `PACK_MAX`
    /// bytes) and returns once they are durable and readable.
    pub fn put_many(&self, items: &[(Digest, &[u8])]) -> Result<(), BlobError> {
        self.put(items, true)
    }

    /// Appends `items` and makes them readable at once, without waiting for the
    /// disk: they are durable once a later [`Packs::sync`] has returned. For blobs
    /// named only by records whose commit runs that sync before it flushes (the
    /// node's group commit does), so that one fdatasync serves the blobs and
    /// records of every writer of a flush, off the writers' threads.
    pub fn put_many_unsynced(&self, items: &[(Digest, &[u8])]) -> Result<(), BlobError> {
        self.put(items, false)
    }

    /// Makes every append made before the call durable: one fdatasync of the
    /// active pack if it has bytes not yet synced, nothing otherwise (a pack is
    /// synced before another becomes active).
    pub fn sync(&self) -> Result<(), BlobError> {
        // Nothing to do (the flusher's second call, mostly): no wait for a
        // sync in progress.
        if self.pending()?.is_none() {
            return Ok(());
        }
        // One writer syncs for everyone; those waiting here find it done.
        let _g = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let Some((id, file, len)) = self.pending()? else {
            return Ok(());
        };
        if let Err(e) = file.sync_data() {
            self.lock().failed.get_or_insert_with(|| e.to_string());
            return Err(io(&pack_path(&self.dir, id))(e));
        }
        // Still the active pack: only rotation replaces it, after syncing it.
        if let Some(a) = self.lock().active.as_mut().filter(|a| a.id == id) {
            a.synced = a.synced.max(len);
        }
        Ok(())
    }

    /// The active pack and its length, if it has bytes not yet synced.
    fn pending(&self) -> Result<Option<(u32, Arc<File>, u64)>, BlobError> {
        let st = self.lock();
        self.healthy(&st)?;
        Ok(st
            .active
            .as_ref()
            .filter(|a| a.synced < a.len)
            .map(|a| (a.id, a.file.clone(), a.len)))
    }

    fn healthy(&self, st: &State) -> Result<(), BlobError> {
        match &st.failed {
            None => Ok(()),
            Some(e) => Err(BlobError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(format!(
                    "an earlier pack sync failed ({e}); refusing blob writes until restart"
                )),
            }),
        }
    }

    /// Bytes appended but not yet known durable.
    pub fn unsynced_bytes(&self) -> u64 {
        self.lock()
            .active
            .as_ref()
            .map_or(0, |a| a.len.saturating_sub(a.synced))
    }

    fn put(&self, items: &[(Digest, &[u8])], durable: bool) -> Result<(), BlobError> {
        // 1. Append, under the lock: offsets in order.
        let mut placed: Vec<(Digest, Loc)> = Vec::with_capacity(items.len());
        {
            let mut st = self.lock();
            self.healthy(&st)?;
            if let Err(e) = self.append(&mut st, items, &mut placed) {
                // Never made visible: what was appended before the failure is
                // not counted live (the put's own error is the one to report).
                for (_, loc) in &placed {
                    self.release_quietly(&mut st, loc.pack);
                }
                return Err(e);
            }
        }
        // 2. Durable: one fdatasync covers every append made before it started,
        // ours and those of unsynced writers whose blobs we found already there
        // (packs before the active one were synced when they stopped being it).
        let synced = if durable { self.sync() } else { Ok(()) };
        // 3. Visible (or, if the sync failed, forgotten).
        let mut st = self.lock();
        let mut result = synced;
        for (d, loc) in placed {
            let indexed = match &result {
                // Another writer may have made it visible meanwhile.
                Ok(()) => match st.find(&self.dir, &d) {
                    Ok(Some(_)) => Ok(false),
                    Ok(None) => {
                        st.index.add(d, loc);
                        Ok(true)
                    }
                    Err(e) => Err(e),
                },
                Err(_) => Ok(false),
            };
            match indexed {
                Ok(true) => {}
                Ok(false) => self.release_quietly(&mut st, loc.pack),
                Err(e) => {
                    self.release_quietly(&mut st, loc.pack);
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Appends what `items` holds that is not stored yet to the active pack
    /// (rotating it when full), each counted live and pushed to `placed`.
    fn append(
        &self,
        st: &mut State,
        items: &[(Digest, &[u8])],
        placed: &mut Vec<(Digest, Loc)>,
    ) -> Result<(), BlobError> {
        for (d, data) in items {
            if st.find(&self.dir, d)?.is_some() || placed.iter().any(|(p, _)| p == d) {
                continue;
            }
            if st.active.as_ref().is_none_or(|a| a.len >= self.target) {
                self.rotate(st)?;
            }
            let a = st.active.as_mut().ok_or_else(|| BlobError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("no active pack"),
            })?;
            let len = data.len() as u32;
            let mut rec = Vec::with_capacity(HEADER + data.len());
            rec.extend_from_slice(&header(BLOB, len, d));
            rec.extend_from_slice(data);
            let at = a.len;
            a.write_at_end(&self.dir, &rec)?;
            placed.push((
                *d,
                Loc {
                    pack: a.id,
                    offset: (at + HEADER as u64) as u32,
                    len,
                },
            ));
            // Counted live from now on, so that its pack is not deleted
            // before the blob becomes visible.
            let id = a.id;
            *st.live.entry(id).or_default() += 1;
        }
        Ok(())
    }

    /// The blob's bytes, checked against its digest; None if it is not packed.
    /// One read: the bytes' own digest confirms the index, the header is read
    /// only when they do not match (another blob sharing the prefix, or this
    /// one changed on disk).
    pub fn read(&self, d: &Digest) -> Result<Option<Vec<u8>>, BlobError> {
        // The handles are taken with the candidates, under one lock: a pack
        // deleted after that is still read through its open handle.
        let candidates = {
            let mut st = self.lock();
            let found = st.index.candidates(d);
            found
                .into_iter()
                .map(|(loc, confirmed, _)| Ok((loc, confirmed, st.file(&self.dir, loc.pack)?)))
                .collect::<Result<Vec<_>, BlobError>>()?
        };
        for (loc, confirmed, file) in candidates {
            let err = |e| io(&pack_path(&self.dir, loc.pack))(e);
            let mut data = vec![0u8; loc.len as usize];
            file.read_exact_at(&mut data, u64::from(loc.offset))
                .map_err(err)?;
            let actual = Digest::of(&data);
            if &actual == d {
                return Ok(Some(data));
            }
            if confirmed || digest_at(&file, loc).map_err(err)? == *d {
                return Err(BlobError::Mismatch {
                    expected: *d,
                    actual,
                });
            }
        }
        Ok(None)
    }

    /// Removes a packed blob; deletes its pack once nothing in it is live.
    /// Returns whether it was packed.
    pub fn remove(&self, d: &Digest) -> Result<bool, BlobError> {
        let mut st = self.lock();
        let Some(loc) = st.take(&self.dir, d)? else {
            return Ok(false);
        };
        if self.release(&mut st, loc.pack)? {
            return Ok(true);
        }
        // The removal is recorded (unsynced: losing it only delays the space's
        // return to the orphan sweep).
        if st.active.is_none() {
            self.rotate(&mut st)?;
        }
        if let Some(a) = st.active.as_mut() {
            a.write_at_end(&self.dir, &header(REMOVED, 0, d))?;
        }
        Ok(true)
    }

    /// Counts one blob of `pack` no longer live, and deletes the pack if nothing
    /// in it is live any more and it is not the active pack; returns whether it
    /// did. Its slots are all marked removed (or were never added): the next
    /// seal drops them, without a pass over the array here.
    fn release(&self, st: &mut State, pack: u32) -> Result<bool, BlobError> {
        dec(&mut st.live, pack);
        let active = st.active.as_ref().map(|a| a.id);
        if st.live.get(&pack).copied().unwrap_or(0) != 0 || Some(pack) == active {
            return Ok(false);
        }
        st.files.remove(&pack);
        let path = pack_path(&self.dir, pack);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io(&path)(e));
        }
        Ok(true)
    }

    /// [`Packs::release`] for a put whose own outcome is the one to report: a
    /// dead pack that cannot be deleted is logged, and swept at the next open.
    fn release_quietly(&self, st: &mut State, pack: u32) {
        if let Err(e) = self.release(st, pack) {
            tracing::warn!(error = %e, "cannot delete a pack with nothing live in it");
        }
    }

    /// Every packed blob with the age in seconds of its pack's last write. The
    /// digests of the short-keyed entries are read from their headers, outside
    /// the lock (the hourly orphan sweep: one small read per blob); a blob
    /// removed meanwhile is left out.
    pub fn list(&self) -> Vec<(Digest, u64)> {
        let (spilled, short) = {
            let st = self.lock();
            let spilled: Vec<(Digest, Loc)> =
                st.index.spill.iter().map(|(d, l)| (*d, *l)).collect();
            let sealed = st
                .index
                .sealed
                .iter()
                .filter(|s| s.offset != 0)
                .map(Slot::loc);
            let short: Vec<Loc> = st.index.short.values().copied().chain(sealed).collect();
            (spilled, short)
        };
        let mut ages: HashMap<u32, Option<(u64, File)>> = HashMap::new();
        let mut out = Vec::with_capacity(spilled.len() + short.len());
        for (d, loc) in short
            .into_iter()
            .map(|l| (None, l))
            .chain(spilled.into_iter().map(|(d, l)| (Some(d), l)))
        {
            let pack = ages.entry(loc.pack).or_insert_with(|| {
                let path = pack_path(&self.dir, loc.pack);
                let file = File::open(&path).ok()?;
                let age = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .map_or(0, |e| e.as_secs());
                Some((age, file))
            });
            let Some((age, file)) = pack else {
                continue;
            };
            let d = match d {
                Some(d) => d,
                None => match digest_at(file, loc) {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            out.push((d, *age));
        }
        out
    }
}

/// The digest in the header of the record whose bytes are at `loc`.
fn digest_at(file: &File, loc: Loc) -> std::io::Result<Digest> {
    let mut h = [0u8; HEADER];
    let at = u64::from(loc.offset)
        .checked_sub(HEADER as u64)
        .ok_or_else(|| std::io::Error::other("a record before the start of its pack"))?;
    file.read_exact_at(&mut h, at)?;
    match parse(&h) {
        Some((BLOB, len, d)) if len == loc.len => Ok(d),
        _ => Err(std::io::Error::other("no blob record header there")),
    }
}

impl State {
    /// An open handle on pack `id` (a bounded number stay open).
    fn file(&mut self, dir: &Path, id: u32) -> Result<Arc<File>, BlobError> {
        if let Some(f) = self.files.get(&id) {
            return Ok(f.clone());
        }
        let path = pack_path(dir, id);
        let f = Arc::new(File::open(&path).map_err(io(&path))?);
        if self.files.len() >= OPEN_PACKS {
            let active = self.active.as_ref().map(|a| a.id);
            if let Some(k) = self.files.keys().copied().find(|k| Some(*k) != active) {
                self.files.remove(&k);
            }
        }
        self.files.insert(id, f.clone());
        Ok(f)
    }

    /// Whether the record at `loc` is blob `d` (its header says so).
    fn holds(&mut self, dir: &Path, loc: Loc, d: &Digest) -> Result<bool, BlobError> {
        let file = self.file(dir, loc.pack)?;
        Ok(digest_at(&file, loc).map_err(|e| io(&pack_path(dir, loc.pack))(e))? == *d)
    }

    /// Where blob `d` is, if it is packed, and where its index entry is.
    fn locate(&mut self, dir: &Path, d: &Digest) -> Result<Option<(Loc, At)>, BlobError> {
        for (loc, confirmed, at) in self.index.candidates(d) {
            if confirmed || self.holds(dir, loc, d)? {
                return Ok(Some((loc, at)));
            }
        }
        Ok(None)
    }

    /// Where blob `d` is, if it is packed.
    fn find(&mut self, dir: &Path, d: &Digest) -> Result<Option<Loc>, BlobError> {
        Ok(self.locate(dir, d)?.map(|(l, _)| l))
    }

    /// Indexes blob `d` at `loc`; returns where it was before, if it was.
    fn insert(&mut self, dir: &Path, d: Digest, loc: Loc) -> Result<Option<Loc>, BlobError> {
        let old = self.take(dir, &d)?;
        self.index.add(d, loc);
        Ok(old)
    }

    /// Takes blob `d` out of the index; returns where it was.
    fn take(&mut self, dir: &Path, d: &Digest) -> Result<Option<Loc>, BlobError> {
        let Some((loc, at)) = self.locate(dir, d)? else {
            return Ok(None);
        };
        match at {
            At::Spill => {
                self.index.spill.remove(d);
            }
            At::Short => {
                self.index.short.remove(&short(d));
            }
            At::Sealed(i) => {
                if let Some(s) = self.index.sealed.get_mut(i) {
                    s.offset = 0;
                }
            }
        }
        Ok(Some(loc))
    }
}

fn dec(live: &mut HashMap<u32, usize>, pack: u32) {
    if let Some(n) = live.get_mut(&pack) {
        *n = n.saturating_sub(1);
    }
}

fn pack_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08x}.pack"))
}

/// The ids of the packs in `dir`, oldest first.
fn pack_ids(dir: &Path) -> Result<Vec<u32>, BlobError> {
    let mut ids: Vec<u32> = Vec::new();
    for e in fs::read_dir(dir).map_err(io(dir))? {
        let name = e.map_err(io(dir))?.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".pack"))
            .and_then(|n| u32::from_str_radix(n, 16).ok())
        {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(p: &Packs, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        p.put_many(&[(d, data)]).unwrap();
        d
    }

    /// A write the disk cuts short leaves nothing past the pack's end: bytes
    /// left there, under a shorter record written later over their start, would
    /// be read at the next start as records. A file size limit (`ulimit -f`,
    /// with SIGXFSZ ignored so the write fails with EFBIG) plays the full disk,
    /// in a child process: the limit is the process's.
    #[test]
    fn a_write_cut_short_leaves_nothing_past_the_pack_end() {
        const CHILD: &str = "TRUC_TEST_PACK_FSIZE_DIR";
        const NAME: &str = "pack::tests::a_write_cut_short_leaves_nothing_past_the_pack_end";
        if let Some(dir) = std::env::var_os(CHILD) {
            let dir = Path::new(&dir);
            let p = Packs::open(dir).unwrap();
            let big = vec![7u8; 40 << 10];
            let e = p.put_many(&[(Digest::of(&big), &big)]).unwrap_err();
            let a = p.lock().active.as_ref().map(|a| (a.id, a.len)).unwrap();
            assert_eq!(
                fs::metadata(pack_path(dir, a.0)).unwrap().len(),
                a.1,
                "the pack is cut back to its length after: {e}"
            );
            eprintln!("refused as it should be: {e}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = Packs::open(dir.path()).unwrap();
        put(&p, b"the first document");
        drop(p);
        // 2 KiB: far below the 40 KiB record, above any pack's header.
        let out = std::process::Command::new("sh")
            .args(["-c", "trap '' XFSZ; ulimit -f 4; exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, dir.path())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{said}");
        assert!(said.contains("refused as it should be"), "{said}");
        // And the node starts on what is there: the first blob, whole.
        let p = Packs::open(dir.path()).unwrap();
        assert_eq!(p.list().len(), 1);
        put(&p, b"after the disk was freed");
        drop(p);
        assert_eq!(Packs::open(dir.path()).unwrap().list().len(), 2);
    }

    #[test]
    fn packed_blobs_survive_a_reopen_and_read_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = Packs::open(dir.path()).unwrap();
        let a = put(&p, b"body of the first document");
        let b = put(&p, b"body of the second document");
        put(&p, b"body of the first document");
        drop(p);
        let p = Packs::open(dir.path()).unwrap();
        assert_eq!(p.read(&a).unwrap().unwrap(), b"body of the first document");
        assert_eq!(p.read(&b).unwrap().unwrap(), b"body of the second document");
        assert_eq!(p.size(&a), Some(26));
        assert_eq!(p.list().len(), 2);
        // One pack file for both: no file per blob.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// An unsynced append is readable at once and counted as not durable until
    /// a sync; a durable put of the same blob does not take it as durable just
    /// because it finds it stored.
    #[test]
    fn unsynced_appends_are_readable_at_once_and_durable_after_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let p = Packs::open(dir.path()).unwrap();
        let data: &[u8] = b"attachment named by a record not yet flushed";
        let d = Digest::of(data);
        p.put_many_unsynced(&[(d, data)]).unwrap();
        assert_eq!(p.read(&d).unwrap().unwrap(), data);
        assert_eq!(p.unsynced_bytes(), (HEADER + data.len()) as u64);
        p.sync().unwrap();
        assert_eq!(p.unsynced_bytes(), 0);

        let other: &[u8] = b"a second one, then stored again by a durable put";
        let o = Digest::of(other);
        p.put_many_unsynced(&[(o, other)]).unwrap();
        assert!(p.unsynced_bytes() > 0);
        p.put_many(&[(o, other)]).unwrap();
        assert_eq!(
            p.unsynced_bytes(),
            0,
            "found, but not synced by the durable put"
        );
        drop(p);
        let p = Packs::open(dir.path()).unwrap();
        assert_eq!(p.read(&o).unwrap().unwrap(), other);
    }

    #[test]
    fn a_torn_tail_is_cut_and_what_was_durable_stays() {
        let dir = tempfile::tempdir().unwrap();
        let p = Packs::open(dir.path()).unwrap();
        let a = put(&p, b"stored and acknowledged");
        drop(p);
        // A crash in the middle of the next append.
        let pack = fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = fs::read(&pack).unwrap();
        let torn = header(BLOB, 100, &Digest::of(b"never finished"));
        bytes.extend_from_slice(&torn);
        bytes.extend_from_slice(b"only a little");
        fs::write(&pack, &bytes).unwrap();
        let p = Packs::open(dir.path()).unwrap();
        assert!(p.contains(&a));
        assert!(!p.contains(&Digest::of(b"never finished")));
        assert_eq!(
            fs::metadata(&pack).unwrap().len() as usize,
            HEADER + b"stored and acknowledged".len()
        );
        // Appends continue after the cut.
        let c = put(&p, b"after the crash");
        drop(p);
        let p = Packs::open(dir.path()).unwrap();
        assert_eq!(p.read(&c).unwrap().unwrap(), b"after the crash");
    }

    /// A put that fails half-way (here the rotation after its first blob: the
    /// next pack's name is taken) leaves nothing counted live that was not made
    /// visible, so that the pack it wrote into can still be deleted.
    #[test]
    fn a_put_that_fails_half_way_does_not_keep_its_pack_alive() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Packs::open(dir.path()).unwrap();
        p.target = 200;
        let a = put(&p, b"the only blob a record names");
        let first = p.lock().active.as_ref().unwrap().id;
        let blocker = pack_path(dir.path(), p.lock().next_id);
        fs::write(&blocker, b"").unwrap();
        let (b, c) = (vec![0x62u8; 200], b"rotates".to_vec());
        let items = [
            (Digest::of(&b), b.as_slice()),
            (Digest::of(&c), c.as_slice()),
        ];
        assert!(
            p.put_many(&items).is_err(),
            "the rotation cannot create its pack"
        );
        assert!(!p.contains(&items[0].0), "half a put is not visible");
        assert!(p.remove(&a).unwrap());
        assert!(
            !pack_path(dir.path(), first).exists(),
            "nothing visible is left in the pack, so it goes"
        );
        // The failed rotation used up the taken name: the next put goes on.
        p.put_many(&items).unwrap();
        assert_eq!(p.read(&items[1].0).unwrap().unwrap(), c);
        assert!(blocker.exists());
    }

    /// When the pack a failed put wrote into holds nothing else live and is no
    /// longer the active one, it goes at once, not at some later removal.
    #[test]
    fn a_pack_holding_only_a_failed_put_goes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Packs::open(dir.path()).unwrap();
        p.target = 200;
        let first = p.lock().next_id;
        let blocker = pack_path(dir.path(), first + 1);
        fs::write(&blocker, b"").unwrap();
        let (b, c) = (vec![0x62u8; 200], b"rotates".to_vec());
        let items = [
            (Digest::of(&b), b.as_slice()),
            (Digest::of(&c), c.as_slice()),
        ];
        assert!(p.put_many(&items).is_err());
        assert!(
            !pack_path(dir.path(), first).exists(),
            "the pack the failed put wrote into is deleted"
        );
        assert!(p.lock().files.is_empty(), "a handle on a deleted pack");
        assert!(p.list().is_empty());
    }

    #[test]
    fn flipped_bytes_in_a_pack_are_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = Packs::open(dir.path()).unwrap();
        let a = put(&p, b"attachment");
        let pack = fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = fs::read(&pack).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        fs::write(&pack, &bytes).unwrap();
        assert!(matches!(p.read(&a), Err(BlobError::Mismatch { .. })));
    }

    #[test]
    fn removed_blobs_stay_removed_and_empty_packs_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let p = Packs::open(dir.path()).unwrap();
        let a = put(&p, b"released after retention");
        let b = put(&p, b"still named");
        assert!(p.remove(&a).unwrap());
        assert!(!p.remove(&a).unwrap());
        drop(p);
        let p = Packs::open(dir.path()).unwrap();
        assert!(!p.contains(&a));
        assert!(p.contains(&b));
        assert!(p.remove(&b).unwrap());
        drop(p);
        // Nothing live: the pack goes at the next open.
        let p = Packs::open(dir.path()).unwrap();
        assert!(p.list().is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        // And a blob stored again after its removal is there.
        let a2 = put(&p, b"released after retention");
        assert_eq!(a, a2);
        drop(p);
        assert!(Packs::open(dir.path()).unwrap().contains(&a));
    }

    /// The active pack's blobs all removed: its removal records are read at the
    /// next open (each checked against the header it removes), and the pack is
    /// deleted with no handle left open on it to keep its space.
    #[test]
    fn a_pack_emptied_while_active_goes_at_the_next_open_with_no_handle_left() {
        let dir = tempfile::tempdir().unwrap();
        let p = Packs::open(dir.path()).unwrap();
        let a = put(&p, b"first");
        let b = put(&p, b"second");
        assert!(p.remove(&a).unwrap());
        assert!(p.remove(&b).unwrap());
        drop(p);
        let p = Packs::open(dir.path()).unwrap();
        assert!(!p.contains(&a) && !p.contains(&b));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(p.lock().files.is_empty(), "a handle on a deleted pack");
    }

    #[test]
    fn concurrent_writers_all_end_durable_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Packs::open(dir.path()).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| put(&p, format!("writer {t} blob {i}").as_bytes()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Digest> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        drop(p);
        let p = Packs::open(dir.path()).unwrap();
        for d in &all {
            assert!(p.read(d).unwrap().is_some());
        }
        assert_eq!(p.list().len(), 400);
    }

    /// Packs sealed while the node runs: their blobs leave the hash map for the
    /// sorted array (16 bytes each), and stay found, removable and listed,
    /// before and after a restart.
    #[test]
    fn blobs_move_to_the_compact_index_when_their_pack_is_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Packs::open(dir.path()).unwrap();
        p.target = 2_000;
        let blobs: Vec<(Digest, Vec<u8>)> = (0..300)
            .map(|i| {
                let data = format!("document {i} ").repeat(10).into_bytes();
                (put(&p, &data), data)
            })
            .collect();
        assert!(pack_ids(dir.path()).unwrap().len() > 20);
        let (all, sealed) = p.lock().index.counts();
        assert_eq!(all, 300);
        assert!(sealed >= 280, "only {sealed} of 300 in the sealed array");
        for (d, data) in &blobs {
            assert_eq!(p.read(d).unwrap().as_ref(), Some(data));
            assert_eq!(p.size(d), Some(data.len() as u64));
        }
        // Removing from sealed packs: gone, and a pack with nothing left is deleted.
        for (d, _) in blobs.iter().step_by(2) {
            assert!(p.remove(d).unwrap());
            assert!(!p.contains(d) && p.read(d).unwrap().is_none());
        }
        assert_eq!(p.list().len(), 150);
        // Stored again after its removal: found, in the pack being written.
        let (again, data) = &blobs[0];
        assert_eq!(put(&p, data), *again);
        assert!(p.contains(again));
        drop(p);
        let p = Packs::open(dir.path()).unwrap();
        for (i, (d, data)) in blobs.iter().enumerate() {
            let want = (i % 2 == 1 || i == 0).then_some(data);
            assert_eq!(p.read(d).unwrap().as_ref(), want, "blob {i}");
        }
        assert_eq!(p.lock().index.counts(), (151, 151));
        // What start-up put in the short map has moved: no table kept for it.
        assert_eq!(p.lock().index.short.capacity(), 0);
        assert_eq!(p.list().len(), 151);
    }

    /// The sealed array through many merges, removals and a pack's deletion:
    /// sorted after each, every live blob a candidate of its digest, no removed
    /// one (the index alone, no records: candidates are confirmed elsewhere).
    #[test]
    fn the_sealed_array_stays_sorted_and_complete_through_merges() {
        let mut idx = Index::default();
        let mut live: HashMap<Digest, Loc> = HashMap::new();
        for pack in 1..=40u32 {
            for i in 0..200u32 {
                let d = Digest::of(format!("{pack} {i}").as_bytes());
                let loc = Loc {
                    pack,
                    offset: 100 + i,
                    len: i,
                };
                idx.short.insert(short(&d), loc);
                live.insert(d, loc);
            }
            // Remove every seventh live blob, wherever it is.
            let gone: Vec<Digest> = live
                .keys()
                .copied()
                .filter(|d| d.0[0] % 7 == 0)
                .take(20)
                .collect();
            for d in gone {
                let (loc, _, at) = idx
                    .candidates(&d)
                    .into_iter()
                    .find(|c| c.0 == live[&d])
                    .unwrap();
                match at {
                    At::Short => {
                        idx.short.remove(&short(&d));
                    }
                    At::Sealed(i) => idx.sealed[i].offset = 0,
                    At::Spill => unreachable!(),
                }
                assert_eq!(live.remove(&d), Some(loc));
            }
            idx.seal();
            assert!(idx.short.is_empty());
            assert!(
                idx.sealed.is_sorted_by_key(Slot::key),
                "unsorted after pack {pack}"
            );
            assert!(
                idx.sealed.iter().all(|s| s.offset != 0),
                "a removed slot kept"
            );
        }
        // Packs 3 and 17 emptied and deleted: their slots marked removed
        // (what `take` does), gone at the next merge.
        for s in idx
            .sealed
            .iter_mut()
            .filter(|s| s.pack == 3 || s.pack == 17)
        {
            s.offset = 0;
        }
        idx.seal();
        assert!(idx.sealed.iter().all(|s| s.pack != 3 && s.pack != 17));
        live.retain(|_, l| l.pack != 3 && l.pack != 17);
        assert_eq!(idx.counts(), (live.len(), live.len()));
        for (d, loc) in &live {
            let c = idx.candidates(d);
            assert!(c.iter().any(|(l, _, _)| l == loc), "{d} lost");
            // Newest pack first among those sharing the prefix.
            assert!(c.windows(2).all(|w| w[0].0.pack >= w[1].0.pack));
        }
    }

    /// The run directory of the sealed array: blobs at both ends of the
    /// prefix space, and one prefix in every pack, are all found.
    #[test]
    fn blobs_at_the_ends_of_the_prefix_space_or_sharing_one_are_found() {
        let mut idx = Index::default();
        let mut all = Vec::new();
        for pack in 1..=3u32 {
            for i in 0..100u32 {
                let mut d = Digest::of(format!("{pack} {i}").as_bytes());
                match i {
                    0 => d.0[..4].fill(0),
                    1 => d.0[..4].fill(0xff),
                    2 => d.0[..4].copy_from_slice(&[0x80, 0, 0, 0]),
                    _ => {}
                }
                let loc = Loc {
                    pack,
                    offset: 100 + i,
                    len: i,
                };
                idx.short.insert(short(&d), loc);
                all.push((d, loc));
            }
            idx.seal();
        }
        assert!(idx.dir.len() > 4, "runs: {}", idx.dir.len() - 1);
        for (d, loc) in &all {
            let c = idx.candidates(d);
            assert!(c.iter().any(|(l, _, _)| l == loc), "{d} lost: {c:?}");
        }
        let shared = Digest([0x80; 32]);
        assert_eq!(idx.candidates(&shared).len(), 0, "0x80808080 is no one's");
        let mut shared = all[2].0;
        shared.0[31] ^= 1;
        assert_eq!(idx.candidates(&shared).len(), 3, "one per pack");
    }

    #[test]
    fn blobs_of_sealed_packs_are_found_again_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = Packs::open(dir.path()).unwrap();
        let a = put(&p, b"in the first pack");
        let a2 = put(&p, b"also in the first pack");
        drop(p);
        // A new process starts a new pack; the first one is sealed.
        let p = Packs::open(dir.path()).unwrap();
        let b = put(&p, b"in the second pack");
        drop(p);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        let p = Packs::open(dir.path()).unwrap();
        assert_eq!(p.read(&a).unwrap().unwrap(), b"in the first pack");
        assert_eq!(p.read(&a2).unwrap().unwrap(), b"also in the first pack");
        assert_eq!(p.read(&b).unwrap().unwrap(), b"in the second pack");
    }

    /// The index is keyed by 8 bytes of the digest; two blobs sharing them (found
    /// with 2^32 hashes by someone who wants one to hide the other) stay two
    /// blobs, before and after a restart. The second digest here is made up (its
    /// bytes do not hash to it), so its read reports the bytes it found, and its
    /// pack must be opened as a sealed one (the newest pack's bytes are checked
    /// at start-up, which would cut it off as torn).
    #[test]
    fn blobs_whose_digests_share_the_index_prefix_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = Packs::open(dir.path()).unwrap();
        let a = put(&p, b"the real document");
        let mut twin = a;
        twin.0[31] ^= 1;
        let other = b"a document made to share its first 8 digest bytes";
        p.put_many(&[(twin, other.as_slice())]).unwrap();
        // Never stored, its prefix that of both.
        let mut ghost = a;
        ghost.0[30] ^= 1;
        let check = |p: &Packs, a_there: bool| {
            assert!(!p.contains(&ghost) && p.read(&ghost).unwrap().is_none());
            assert_eq!(p.contains(&a), a_there);
            assert!(p.contains(&twin));
            assert_eq!(p.size(&twin), Some(other.len() as u64));
            match p.read(&twin) {
                Err(BlobError::Mismatch { actual, .. }) => assert_eq!(actual, Digest::of(other)),
                r => panic!("the twin's own bytes, refused: {r:?}"),
            }
            let mut listed: Vec<Digest> = p.list().into_iter().map(|(d, _)| d).collect();
            listed.sort();
            let mut want = if a_there { vec![a, twin] } else { vec![twin] };
            want.sort();
            assert_eq!(listed, want);
        };
        assert_eq!(p.read(&a).unwrap().unwrap(), b"the real document");
        check(&p, true);
        let reopen = |p: Packs| {
            drop(p);
            // An empty newer pack makes the others sealed ones.
            let newest = pack_ids(dir.path()).unwrap().last().copied().unwrap() + 1;
            File::create(pack_path(dir.path(), newest)).unwrap();
            Packs::open(dir.path()).unwrap()
        };
        let p = reopen(p);
        check(&p, true);
        // Removing one leaves the other, also across a restart.
        assert!(p.remove(&a).unwrap());
        check(&p, false);
        let p = reopen(p);
        check(&p, false);
        assert!(p.read(&a).unwrap().is_none());
    }
}
