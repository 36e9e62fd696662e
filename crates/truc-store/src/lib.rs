//! truc's durable state.
//!
//! - [`Store`]: an ordered key-value store with atomic multi-key batches and an
//!   explicit `flush` (fsync). Implementations: [`SledStore`] (the default),
//!   [`MemoryStore`] (unit tests) and [`FaultyStore`] (fails or freezes on the N-th
//!   write, for fault tests).
//! - [`GroupCommit`]: many writers share one flush; `durable(ticket)` resolves once
//!   the writer's batch is on disk. Nothing may be acknowledged before that.
//! - [`record`]: every value carries a format version and a CRC32; a corrupt record
//!   is an error naming its key, never a silent default.
//! - [`BlobStore`]: document bodies and attachments addressed by their SHA-256,
//!   never inside the key-value store: large ones as files of their own (temp
//!   file, fsync, rename, fsync dir), small ones (≤ 64 KiB) appended to pack files
//!   with one fdatasync per group of writers ([`pack`]).
//!
//! On-disk layout of the key-value store: one keyspace per [`Space`], the space's
//! byte first, then the key. Sequence numbers are big-endian so keys sort by them.

#![forbid(unsafe_code)]

mod blob;
mod busy;
mod commit;
pub mod embedded;
pub mod keys;
mod kv;
pub mod pack;
pub mod pg;
pub mod record;
mod redb_store;

pub use blob::{BlobError, BlobStore, Digest, Partial};
pub use commit::{GroupCommit, Ticket};
pub use kv::{
    Batch, Entry, FaultPlan, FaultyStore, MemoryStore, RemoteStats, SledStore, Space, Store,
    conformance,
};
pub use pg::PgStore;
pub use redb_store::RedbStore;

/// Makes a directory's entries (names created, renamed or removed in it) durable.
pub(crate) fn fsync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Errors of the key-value layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage io: {0}")]
    Io(String),
    #[error("corrupt record in {space:?} at key {key}: {reason}")]
    Corrupt {
        space: Space,
        key: String,
        reason: String,
    },
    #[error("store has failed and refuses writes until restart: {0}")]
    Failed(String),
    #[error("injected fault: {0}")]
    Injected(String),
    /// Not tried: the store hangs on an earlier request ([`Store::stalled`]).
    #[error("the store does not answer: {0}")]
    Stalled(String),
}
