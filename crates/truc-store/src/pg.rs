//! The key-value store on PostgreSQL: one table `truc_kv (space, key, value)`,
//! batches as transactions, the same ordering and prefix semantics as sled.
//!
//! Durability follows the [`Store`] contract with PostgreSQL's own machinery:
//! `apply` commits with `synchronous_commit = off` (visible at once, not yet
//! flushed), `flush` commits one small write with `synchronous_commit = on`,
//! which returns once the WAL is flushed up to it — and so past every earlier
//! commit. One WAL flush covers a whole group, as [`GroupCommit`] expects.
//!
//! Schema changes are versioned SQL files in `migrations/`, applied in order by
//! [`migrate`] (`truc store migrate`) inside one transaction each, recorded in
//! `truc_migrations`.
//!
//! One writer at a time: [`PgStore::open`] takes a session-level advisory lock,
//! and a second process opening the same database (a standby hub) waits for it.
//! The lock lives as long as the connection: when the holder dies, PostgreSQL
//! drops its session and the lock with it, and the standby takes over with what
//! was committed. A holder whose connection breaks never reconnects: it reports
//! itself [fenced](Store::fenced) and its node stops, since the lock may be
//! another's by then. Read-only tools use [`PgStore::open_shared`].
//!
//! Being the only writer also lets the holder answer point reads from memory:
//! what it last wrote or read for a key — a value, or that there is none —
//! stays true while it holds the lock. [`ReadCache`] keeps those answers,
//! bounded by `storage.cache_bytes`; a read that misses, and every scan, still
//! goes to the server. Keys about to be read can be fetched together first
//! ([`Store::prefetch`]), one request for all. Read-only tools ([`PgStore::open_shared`]) keep none.
//!
//! The synchronous client runs a runtime of its own, which may not be started
//! from a thread driving async tasks: the connection lives on a thread of its
//! own and callers (async or not) send it their requests and wait.
//!
//! [`GroupCommit`]: crate::GroupCommit

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use postgres::{Client, NoTls};

use crate::{
    StoreError,
    kv::{Batch, Entry, RemoteStats, Space, Store, full_key},
};

/// (version, name, SQL), in order.
pub const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "0001_kv.sql", include_str!("../migrations/0001_kv.sql"))];

/// The server's own words (its message, SQLSTATE, detail and hint) where it gave
/// any, else the client's error with its causes.
fn pg(e: postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let mut m = format!(
            "postgresql: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        );
        for more in [db.detail(), db.hint()].into_iter().flatten() {
            m.push_str(": ");
            m.push_str(more);
        }
        return StoreError::Io(m);
    }
    let mut m = format!("postgresql: {e}");
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        m.push_str(": ");
        m.push_str(&c.to_string());
        cause = c.source();
    }
    StoreError::Io(m)
}

/// Applies the migrations not yet applied to the database at `url`; returns the
/// names of those it applied.
pub fn migrate(url: &str) -> Result<Vec<String>, StoreError> {
    let mut c = Client::connect(url, NoTls).map_err(pg)?;
    migrate_client(&mut c)
}

fn migrate_client(c: &mut Client) -> Result<Vec<String>, StoreError> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS truc_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .map_err(pg)?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let mut tx = c.transaction().map_err(pg)?;
        // One migrator at a time (several hubs may start together).
        tx.execute("LOCK TABLE truc_migrations IN EXCLUSIVE MODE", &[])
            .map_err(pg)?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM truc_migrations WHERE version = $1",
                &[version],
            )
            .map_err(pg)?
            .is_some();
        if !done {
            tx.batch_execute(sql).map_err(pg)?;
            tx.execute(
                "INSERT INTO truc_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .map_err(pg)?;
            applied.push((*name).to_owned());
        }
        tx.commit().map_err(pg)?;
    }
    Ok(applied)
}

/// The schema version the database is at (0: none).
pub fn schema_version(url: &str) -> Result<i32, StoreError> {
    let mut c = Client::connect(url, NoTls).map_err(pg)?;
    version_of(&mut c)
}

fn version_of(c: &mut Client) -> Result<i32, StoreError> {
    let row = c
        .query_opt("SELECT to_regclass('truc_migrations') IS NOT NULL", &[])
        .map_err(pg)?;
    if !row.is_some_and(|r| r.get::<_, bool>(0)) {
        return Ok(0);
    }
    let v: Option<i32> = c
        .query_one("SELECT max(version) FROM truc_migrations", &[])
        .map_err(pg)?
        .get(0);
    Ok(v.unwrap_or(0))
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// The connection and its prepared statements (each SQL text parsed once per
/// connection, not once per call). Every statement's conditions are plain
/// index bounds, so that PostgreSQL's generic plan for it is as good as a
/// custom one.
struct Conn {
    client: Client,
    statements: std::collections::HashMap<String, postgres::Statement>,
}

impl Conn {
    fn prepared(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).map_err(pg)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

/// How long data sent to PostgreSQL may stay unacknowledged before the
/// connection is given up (`tcp_user_timeout`, unless the URL sets one).
const PG_TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Connects, checks the schema version and, unless `lock` is None, takes the
/// writer lock (calling the standby callback first if it must wait).
fn connect_checked(url: &str, lock: Standby) -> Result<Client, StoreError> {
    let mut config: postgres::Config = url.parse().map_err(pg)?;
    // A connection cut silently (no RST) must fail a commit within seconds,
    // not after TCP's retransmissions (many minutes, every writer queued
    // behind it, health still SERVING). Unless the URL says otherwise.
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(PG_TCP_USER_TIMEOUT);
    }
    if !url.contains("keepalives") {
        config
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(10))
            .keepalives_interval(std::time::Duration::from_secs(5))
            .keepalives_retries(3);
    }
    let mut client = config.connect(NoTls).map_err(pg)?;
    // Statements are prepared once (parsed once) but planned with their values:
    // a generic plan cannot size the `unnest` arrays of a batch and was seen
    // to join the whole table (bench pg-hub: 0.24× instead of 0.29×).
    client
        .batch_execute("SET plan_cache_mode = force_custom_plan")
        .map_err(pg)?;
    let want = MIGRATIONS.last().map_or(0, |m| m.0);
    let have = version_of(&mut client)?;
    if have != want {
        return Err(StoreError::Io(format!(
            "postgresql schema is at version {have}, this build needs {want}: run `truc store migrate`"
        )));
    }
    if let Some(standby) = lock {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK])
            .map_err(pg)?
            .get(0);
        if !got {
            standby();
            // Returns when the holder's session ends.
            client
                .execute("SELECT pg_advisory_lock($1)", &[&WRITER_LOCK])
                .map_err(pg)?;
        }
    }
    Ok(client)
}

/// How long the connection may stay idle before its session is checked.
const PING_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long that check may take before the session counts as lost.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The advisory lock key of the store's single writer ("truc" in ASCII).
pub const WRITER_LOCK: i64 = 0x7472_7563;

/// Whether to take the writer lock, and what to do while waiting for it.
type Standby = Option<Box<dyn FnOnce() + Send>>;

pub struct PgStore {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// Set once the connection is gone (why): nothing more is written.
    fenced: Arc<Mutex<Option<String>>>,
    /// The writer's point reads (None for a shared, read-only handle). An
    /// answer changes only on the connection's thread, in the job that read or
    /// wrote its key, so the answers follow the server's own order of reads and
    /// writes (a hit only moves its answer to the young generation).
    cache: Option<Arc<Mutex<ReadCache>>>,
    /// Requests sent to the server: one per read, scan, batch or flush (a
    /// batch's transaction is a few statements on the wire).
    requests: AtomicU64,
    /// Requests sent to the connection's thread and not yet taken by it.
    waiting: Arc<AtomicU64>,
    /// When the request the connection is running started.
    busy: Arc<crate::busy::Busy>,
}

/// Counts a request out of `waiting` when the connection's thread takes it,
/// or when it is dropped untaken (a send that failed, a thread that ended).
struct Queued(Arc<AtomicU64>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes counted for an entry besides its key and value (the map's slot, the
/// two vectors' headers).
const ENTRY_OVERHEAD: usize = 64;

/// Answers to point reads, by full key (space byte, then key): `Some(value)`,
/// or `None` for a key known absent. Bounded without a list, in two
/// generations: answers go to `young`; one found in `old` moves back to it;
/// when `young` holds half the budget it becomes `old` and the previous `old`
/// is dropped — least recently used first, within a factor of two.
#[derive(Debug, Default)]
pub(crate) struct ReadCache {
    young: HashMap<Vec<u8>, Option<Vec<u8>>>,
    old: HashMap<Vec<u8>, Option<Vec<u8>>>,
    young_bytes: usize,
    old_bytes: usize,
    budget: usize,
}

fn entry_bytes(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
}

impl ReadCache {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            ..Self::default()
        }
    }

    /// The known answer for `key`: None if it must be asked of the server.
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.young.get(key) {
            return Some(v.clone());
        }
        let (k, v) = self.old.remove_entry(key)?;
        self.old_bytes -= entry_bytes(&k, &v);
        self.put(k, v.clone());
        Some(v)
    }

    /// What the server now holds for `key` (`None`: nothing).
    pub(crate) fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        if let Some(before) = self.old.remove(&key) {
            self.old_bytes -= entry_bytes(&key, &before);
        }
        if let Some(before) = self.young.remove(&key) {
            self.young_bytes -= entry_bytes(&key, &before);
        }
        let n = entry_bytes(&key, &value);
        // One too large for a generation is not kept (its older answer is gone).
        if n > self.budget / 2 {
            return;
        }
        if self.young_bytes + n > self.budget / 2 {
            self.old = std::mem::take(&mut self.young);
            self.old_bytes = std::mem::take(&mut self.young_bytes);
        }
        self.young.insert(key, value);
        self.young_bytes += n;
    }

    /// After a write whose outcome is not known.
    pub(crate) fn clear(&mut self) {
        *self = Self::new(self.budget);
    }

    /// Bytes held, both generations: at most the budget.
    pub(crate) fn bytes(&self) -> usize {
        self.young_bytes + self.old_bytes
    }
}

/// Fences the store when the connection's thread ends, unless it already is.
struct FenceOnExit(Arc<Mutex<Option<String>>>);

impl Drop for FenceOnExit {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| "the postgresql connection thread ended".to_owned());
    }
}

fn lock_cache(c: &Mutex<ReadCache>) -> std::sync::MutexGuard<'_, ReadCache> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// The smallest key greater than every key starting with `prefix` (None: no
/// bound, the prefix is empty or all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl PgStore {
    /// Connects as the store's single writer, refusing a database whose schema
    /// is not the one this build knows (run `truc store migrate` first). While
    /// another process holds the writer lock, calls `standby` once and waits.
    /// Answers point reads from a cache of at most `cache_bytes`.
    pub fn open(
        url: &str,
        cache_bytes: u64,
        standby: impl FnOnce() + Send + 'static,
    ) -> Result<Self, StoreError> {
        let budget = usize::try_from(cache_bytes).unwrap_or(usize::MAX);
        let cache = Arc::new(Mutex::new(ReadCache::new(budget)));
        Self::connect(url, Some(Box::new(standby)), Some(cache))
    }

    /// Connects without the writer lock, for tools that only read (`truc audit
    /// verify` beside a running hub).
    /// It caches nothing: the writer changes what it reads.
    pub fn open_shared(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, None, None)
    }

    fn connect(
        url: &str,
        lock: Standby,
        cache: Option<Arc<Mutex<ReadCache>>>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let fenced = Arc::new(Mutex::new(None));
        let lost = fenced.clone();
        let url = url.to_owned();
        let busy = Arc::new(crate::busy::Busy::default());
        let waiting = Arc::new(AtomicU64::new(0));
        let thread_busy = busy.clone();
        std::thread::Builder::new()
            .name("truc-postgres".into())
            .spawn(move || {
                let mut conn = match connect_checked(&url, lock) {
                    Ok(client) => {
                        let _ = ready_tx.send(Ok(()));
                        Conn {
                            client,
                            statements: Default::default(),
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // However the thread ends (a panic in a job too), the session
                // and its lock go with it: what is cached is no longer known
                // true.
                let _ended = FenceOnExit(lost.clone());
                let fence = |why: String| {
                    *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                };
                loop {
                    match rx.recv_timeout(PING_IDLE) {
                        Ok(job) => {
                            thread_busy.start();
                            job(&mut conn);
                            thread_busy.end();
                        }
                        // An idle writer checks its session now and then: a lost
                        // one means the lock may be another's.
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Err(e) = conn.client.is_valid(PING_TIMEOUT) {
                                fence(format!("the postgresql session did not answer: {e}"));
                                break;
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    if conn.client.is_closed() {
                        fence("the connection to postgresql was lost".to_owned());
                        break;
                    }
                }
            })
            .map_err(|e| StoreError::Io(format!("postgresql thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| StoreError::Io("postgresql thread ended".into()))??;
        Ok(Self {
            jobs: Mutex::new(tx),
            fenced,
            cache,
            requests: AtomicU64::new(0),
            waiting,
            busy,
        })
    }

    /// A request has run longer than an idle session's check may take: it may
    /// hang on a network cut the writer has not noticed, while the server ended
    /// the session and a standby writes. Until it ends, nothing is answered
    /// from memory (reads wait their turn on the connection).
    fn stalled_for(&self) -> Option<std::time::Duration> {
        self.busy.longer_than(PING_TIMEOUT)
    }

    /// The cache, while what it knows may be relied on: the writer is not
    /// fenced and no request hangs.
    fn trusted_cache(&self) -> Option<&Arc<Mutex<ReadCache>>> {
        self.cache
            .as_ref()
            .filter(|_| self.fenced().is_none() && self.stalled_for().is_none())
    }

    /// Runs `f` on the connection's thread and waits for its result.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let queued = Queued(self.waiting.clone());
        let job: Job = Box::new(move |c| {
            drop(queued);
            let _ = tx.send(f(c));
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| ended())?;
        rx.recv().map_err(|_| ended())?
    }

    fn range(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let space = space as i16;
        let lower: Vec<u8> = match after {
            Some(a) if a >= prefix => a.to_vec(),
            _ => prefix.to_vec(),
        };
        let strict = after.is_some_and(|a| a >= prefix);
        let upper = prefix_end(prefix);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let order = if descending { "DESC" } else { "ASC" };
        let lower_op = if strict { ">" } else { ">=" };
        // With and without an upper bound: `($3 IS NULL OR key < $3)` would
        // leave a generic plan scanning past the prefix to the end of the space.
        let sql = if upper.is_some() {
            format!(
                "SELECT key, value FROM truc_kv WHERE space = $1 AND key {lower_op} $2 \
                 AND key < $3 ORDER BY key {order} LIMIT $4"
            )
        } else {
            format!(
                "SELECT key, value FROM truc_kv WHERE space = $1 AND key {lower_op} $2 \
                 ORDER BY key {order} LIMIT $3"
            )
        };
        self.with(move |c| {
            let stmt = c.prepared(&sql)?;
            let rows = match &upper {
                Some(u) => c.client.query(&stmt, &[&space, &lower, u, &limit]),
                None => c.client.query(&stmt, &[&space, &lower, &limit]),
            }
            .map_err(pg)?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                .collect())
        })
    }
}

impl Store for PgStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let full = full_key(space, key);
        if let Some(cache) = self.trusted_cache()
            && let Some(known) = lock_cache(cache).get(&full)
        {
            return Ok(known);
        }
        let cache = self.cache.clone();
        self.with(move |c| {
            let stmt = c.prepared("SELECT value FROM truc_kv WHERE space = $1 AND key = $2")?;
            let row = c
                .client
                .query_opt(&stmt, &[&(space as i16), &&full[1..]])
                .map_err(pg)?;
            let value: Option<Vec<u8>> = row.map(|r| r.get(0));
            if let Some(cache) = cache {
                lock_cache(&cache).put(full, value.clone());
            }
            Ok(value)
        })
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.range(space, prefix, after, limit, false)
    }

    fn last(&self, space: Space, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        Ok(self.range(space, prefix, None, 1, true)?.pop())
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let cache = self.cache.clone();
        self.with(move |c| {
            let applied = apply(c, &batch);
            if let Some(cache) = cache {
                let mut cache = lock_cache(&cache);
                match &applied {
                    // Committed: the batch's last write to each key is what
                    // the server holds.
                    Ok(()) => {
                        for (space, key, value) in batch.ops {
                            cache.put(full_key(space, &key), value);
                        }
                    }
                    // Rolled back, or not known (a broken connection also
                    // fences the store): no answer kept is trusted.
                    Err(_) => cache.clear(),
                }
            }
            applied
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        // A synchronous commit of a real write waits for the WAL up to it, and so
        // for every asynchronous commit before it.
        self.with(|c| {
            let bump = c.prepared("UPDATE truc_flush SET n = n + 1 WHERE id = 1")?;
            let mut tx = c.client.transaction().map_err(pg)?;
            tx.batch_execute("SET LOCAL synchronous_commit = on")
                .map_err(pg)?;
            // No row bumped, no commit record: the commit would not wait for
            // the WAL, and acks would follow what is not durable.
            let bumped = tx.execute(&bump, &[]).map_err(pg)?;
            if bumped != 1 {
                return Err(StoreError::Io(format!(
                    "postgresql table truc_flush has {bumped} rows with id 1, not 1: a flush would make nothing durable (restore it: INSERT INTO truc_flush (id, n) VALUES (1, 0))"
                )));
            }
            tx.commit().map_err(pg)
        })
    }

    fn size_on_disk(&self) -> u64 {
        self.with(|c| {
            Ok(c.client
                .query_one("SELECT pg_total_relation_size('truc_kv')", &[])
                .ok()
                .and_then(|r| r.get::<_, Option<i64>>(0))
                .map_or(0, |n| n.max(0) as u64))
        })
        .unwrap_or(0)
    }

    fn remote_stats(&self) -> Option<RemoteStats> {
        Some(RemoteStats {
            requests: self.requests.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            cached_bytes: self
                .cache
                .as_deref()
                .map_or(0, |c| lock_cache(c).bytes() as u64),
        })
    }

    /// One request for every key not known yet; each answer (a value, or
    /// that there is none) goes to the cache on the connection's thread, as a
    /// read's would.
    fn prefetch(&self, keys: &mut dyn Iterator<Item = (Space, Vec<u8>)>) -> Result<(), StoreError> {
        let Some(cache) = self.trusted_cache().cloned() else {
            return Ok(());
        };
        let mut wanted: Vec<Vec<u8>> = keys.map(|(space, key)| full_key(space, &key)).collect();
        wanted.sort();
        wanted.dedup();
        {
            let mut known = lock_cache(&cache);
            wanted.retain(|full| known.get(full).is_none());
            // No more than a quarter of the cache, so that the answers are
            // still there when they are read.
            let mut room = known.budget / 4;
            let fits = wanted
                .iter()
                .take_while(|full| {
                    let n = full.len() + ENTRY_OVERHEAD;
                    room = room.saturating_sub(n);
                    room > 0
                })
                .count();
            wanted.truncate(fits);
        }
        if wanted.is_empty() {
            return Ok(());
        }
        self.with(move |c| {
            let stmt = c.prepared(
                "SELECT t.space, t.key, t.value FROM truc_kv t \
                 JOIN unnest($1::smallint[], $2::bytea[]) AS k(space, key) \
                 ON t.space = k.space AND t.key = k.key",
            )?;
            let spaces: Vec<i16> = wanted.iter().map(|f| i16::from(f[0])).collect();
            let bare: Vec<&[u8]> = wanted.iter().map(|f| &f[1..]).collect();
            let rows = c.client.query(&stmt, &[&spaces, &bare]).map_err(pg)?;
            let mut found: HashMap<Vec<u8>, Vec<u8>> = HashMap::with_capacity(rows.len());
            for r in rows {
                let mut full = vec![r.get::<_, i16>(0) as u8];
                full.extend_from_slice(r.get::<_, &[u8]>(1));
                found.insert(full, r.get(2));
            }
            let mut known = lock_cache(&cache);
            for full in wanted {
                let value = found.remove(&full);
                known.put(full, value);
            }
            Ok(())
        })
    }

    fn fenced(&self) -> Option<String> {
        self.fenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stalled(&self) -> Option<String> {
        self.stalled_for().map(|d| {
            format!(
                "a postgresql request has not answered for {} s",
                d.as_secs()
            )
        })
    }
}

fn ended() -> StoreError {
    StoreError::Io("postgresql connection thread ended".into())
}

/// The batch as its net effect: the last write to each key wins (the batch is
/// atomic, so nothing in between is ever visible), puts and deletes apart.
type Net = (Vec<i16>, Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<i16>, Vec<Vec<u8>>);

fn net(batch: &Batch) -> Net {
    let mut last: std::collections::HashMap<(i16, &[u8]), Option<&[u8]>> =
        std::collections::HashMap::new();
    let mut order: Vec<(i16, &[u8])> = Vec::new();
    for (space, key, value) in &batch.ops {
        let k = (*space as i16, key.as_slice());
        if last.insert(k, value.as_deref()).is_none() {
            order.push(k);
        }
    }
    let mut out: Net = Default::default();
    for k in order {
        match last[&k] {
            Some(v) => {
                out.0.push(k.0);
                out.1.push(k.1.to_vec());
                out.2.push(v.to_vec());
            }
            None => {
                out.3.push(k.0);
                out.4.push(k.1.to_vec());
            }
        }
    }
    out
}

/// One transaction, two statements whatever the batch size (round trips are
/// what a remote store pays for).
fn apply(c: &mut Conn, batch: &Batch) -> Result<(), StoreError> {
    let (ps, pk, pv, ds, dk) = net(batch);
    let upsert = c.prepared(
        "INSERT INTO truc_kv (space, key, value) \
         SELECT * FROM unnest($1::smallint[], $2::bytea[], $3::bytea[]) \
         ON CONFLICT (space, key) DO UPDATE SET value = EXCLUDED.value",
    )?;
    let delete = c.prepared(
        "DELETE FROM truc_kv USING unnest($1::smallint[], $2::bytea[]) AS d(space, key) \
         WHERE truc_kv.space = d.space AND truc_kv.key = d.key",
    )?;
    let mut tx = c.client.transaction().map_err(pg)?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .map_err(pg)?;
    if !ps.is_empty() {
        tx.execute(&upsert, &[&ps, &pk, &pv]).map_err(pg)?;
    }
    if !ds.is_empty() {
        tx.execute(&delete, &[&ds, &dk]).map_err(pg)?;
    }
    tx.commit().map_err(pg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"q/a/"), Some(b"q/a0".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    fn full(k: &str) -> Vec<u8> {
        full_key(Space::Meta, k.as_bytes())
    }

    /// An entry of an 8-byte key (space byte and `k000000`) and a 7-byte value
    /// counts 79 bytes: five fit in a generation of 400.
    #[test]
    fn the_read_cache_keeps_recent_answers_within_its_budget() {
        let mut c = ReadCache::new(800);
        assert_eq!(c.get(&full("a")), None, "nothing known yet");
        c.put(full("a"), Some(b"1234567".to_vec()));
        c.put(full("absent"), None);
        assert_eq!(c.get(&full("a")), Some(Some(b"1234567".to_vec())));
        assert_eq!(c.get(&full("absent")), Some(None), "absence is an answer");
        c.put(full("a"), Some(b"7654321".to_vec()));
        assert_eq!(c.get(&full("a")), Some(Some(b"7654321".to_vec())));
        // "a" (2 + 7 + 64) and "absent" (7 + 0 + 64), each counted once.
        assert_eq!(c.bytes(), 73 + 71);
        for i in 0..100 {
            c.put(full(&format!("k{i:06}")), Some(vec![0; 7]));
            assert!(c.bytes() <= 800, "{} bytes after {i}", c.bytes());
        }
        // The oldest went two generations ago; the last ones stay.
        assert_eq!(c.get(&full("a")), None);
        assert!(c.get(&full("k000099")).is_some());
        // k000093..97 in the old generation, 98 and 99 in the young one.
        assert_eq!(c.bytes(), 7 * 79);
        // Read again, an answer of the older generation outlives the next turn.
        assert!(c.get(&full("k000095")).is_some());
        assert_eq!(c.bytes(), 7 * 79, "moved, not counted twice");
        for i in 100..106 {
            c.put(full(&format!("k{i:06}")), Some(vec![0; 7]));
        }
        assert!(c.get(&full("k000095")).is_some());
        assert_eq!(c.get(&full("k000094")), None);
        // One larger than a generation is not kept, and its older answer goes.
        c.put(full("big"), Some(vec![1; 7]));
        c.put(full("big"), Some(vec![1; 500]));
        assert_eq!(c.get(&full("big")), None);
        c.clear();
        assert_eq!((c.get(&full("k000099")), c.bytes()), (None, 0));
    }

    #[test]
    fn a_batch_is_applied_as_its_net_effect_per_key() {
        let mut b = Batch::new();
        b.put(Space::Meta, b"a".to_vec(), b"1".to_vec());
        b.put(Space::Meta, b"a".to_vec(), b"2".to_vec());
        b.put(Space::Meta, b"gone".to_vec(), b"x".to_vec());
        b.delete(Space::Meta, b"gone".to_vec());
        b.put(Space::Docs, b"a".to_vec(), b"3".to_vec());
        let (ps, pk, pv, ds, dk) = net(&b);
        assert_eq!(ps.len(), 2);
        assert_eq!(pk, vec![b"a".to_vec(), b"a".to_vec()]);
        assert_eq!(pv, vec![b"2".to_vec(), b"3".to_vec()]);
        assert_eq!((ds, dk), (vec![Space::Meta as i16], vec![b"gone".to_vec()]));
    }
}
