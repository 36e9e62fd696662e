//! Content-addressed blob files: `<root>/sha256/<2 hex>/<64 hex>`.
//!
//! A blob is written to `<root>/tmp/`, fsynced, renamed into place and its directory
//! fsynced, so a name in `sha256/` always means the whole content is on disk.
//! Identical content is stored once. Reads check the digest.

use std::{
    fmt,
    fs::{self, File},
    io::{Read, Write},
    path::{Path, PathBuf},
};

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
}

impl BlobError {
    /// Whether the failure is a full disk (intake should be refused, not retried blindly).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, BlobError::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Blob files under one root directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
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
        for i in 0..=255u8 {
            let shard = objects.join(hex::encode([i]));
            if !shard.exists() {
                fs::create_dir(&shard).map_err(io(&shard))?;
            }
        }
        sync_dir(&objects)?;
        sync_dir(root)?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        let h = d.hex();
        self.root.join("sha256").join(&h[..2]).join(h)
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).exists()
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

    fn write(&self, d: &Digest, data: &[u8]) -> Result<(), BlobError> {
        let dest = self.path(d);
        if dest.exists() {
            return Ok(());
        }
        let tmp = self.tmp_path(d);
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(data).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            fs::rename(&tmp, &dest).map_err(io(&dest))?;
            sync_dir(dest.parent().unwrap_or(&self.root))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Stores several blobs whose digests the caller has checked, durably, with two
    /// filesystem syncs in all instead of two per file: temp files written, synced,
    /// renamed into place, names synced. Nothing gets a name before its bytes are
    /// on disk.
    pub fn put_many(&self, items: &[(Digest, &[u8])]) -> Result<(), BlobError> {
        let mut todo: Vec<&(Digest, &[u8])> =
            items.iter().filter(|(d, _)| !self.contains(d)).collect();
        todo.sort_by_key(|(d, _)| *d);
        todo.dedup_by_key(|(d, _)| *d);
        match todo.as_slice() {
            [] => return Ok(()),
            [(d, data)] => return self.write(d, data),
            _ => {}
        }
        let mut written: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(todo.len());
        let result = (|| {
            for (d, data) in &todo {
                let tmp = self.tmp_path(d);
                let mut f = File::create(&tmp).map_err(io(&tmp))?;
                written.push((tmp.clone(), self.path(d)));
                f.write_all(data).map_err(io(&tmp))?;
            }
            self.sync_all_files()?;
            for (tmp, dest) in &written {
                fs::rename(tmp, dest).map_err(io(dest))?;
            }
            self.sync_all_files()
        })();
        if result.is_err() {
            for (tmp, _) in &written {
                let _ = fs::remove_file(tmp);
            }
        }
        result
    }

    /// Makes every write under the root durable: one `syncfs` on Linux.
    fn sync_all_files(&self) -> Result<(), BlobError> {
        let root = File::open(&self.root).map_err(io(&self.root))?;
        rustix::fs::syncfs(&root).map_err(|e| BlobError::Io {
            path: self.root.clone(),
            source: e.into(),
        })
    }

    fn tmp_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}.{:016x}", d.hex(), fastrand::u64(..)))
    }

    /// Reads a blob and checks it against its name.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, BlobError> {
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

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_corrupted_blob_file_is_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let d = s.put(b"attachment").unwrap();
        fs::write(s.path(&d), b"attachmenT").unwrap();
        assert!(matches!(s.read(&d), Err(BlobError::Mismatch { .. })));
    }
}
