//! Group commit: writers apply batches, then wait for a flush that covers them.
//! One flusher thread runs `Store::flush` back to back while anyone is waiting, so a
//! thousand concurrent writers share a handful of fsyncs instead of a thousand.

use std::{
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{Batch, Store, StoreError};

/// Proof that a batch was applied; redeem it with [`GroupCommit::durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Debug, Clone)]
enum Flushed {
    Upto(u64),
    /// A flush failed: what was applied may not be on disk. Sticky until restart,
    /// because a failed fsync may have dropped dirty pages (fail closed).
    Failed(String),
}

#[derive(Debug, Default)]
struct Requests {
    wanted: u64,
    stop: bool,
}

/// Upper bounds (seconds) of the flush-duration histogram buckets.
pub const FLUSH_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub flushes: AtomicU64,
    pub flush_micros_total: AtomicU64,
    pub batches: AtomicU64,
    /// Flushes per bucket of [`FLUSH_BUCKETS`] (not cumulative; the last slot
    /// counts the slower ones).
    pub flush_buckets: [AtomicU64; FLUSH_BUCKETS.len() + 1],
    /// The flush in progress, to tell one that hangs.
    flushing: crate::busy::Busy,
}

impl CommitStats {
    fn observe(&self, secs: f64) {
        let i = FLUSH_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(FLUSH_BUCKETS.len());
        self.flush_buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (sum of seconds, count, per-bucket counts) as prometheus-client's
    /// `encode_histogram` takes them: each bucket's own count (the encoder
    /// adds them up), the last one's bound `f64::MAX` (written `+Inf`).
    pub fn flush_histogram(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(FLUSH_BUCKETS.len() + 1);
        let bounds = FLUSH_BUCKETS.iter().copied().chain([f64::MAX]);
        for (bound, n) in bounds.zip(&self.flush_buckets) {
            let n = n.load(Ordering::Relaxed);
            count += n;
            buckets.push((bound, n));
        }
        let sum = self.flush_micros_total.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

/// Shares fsyncs between concurrent writers.
pub struct GroupCommit {
    store: Arc<dyn Store>,
    applied: AtomicU64,
    requests: Arc<(Mutex<Requests>, Condvar)>,
    flushed: watch::Receiver<Flushed>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<CommitStats>,
    /// What a flush runs: the hook given at start, then the store's flush.
    flush: FlushFn,
    /// Set by `close`, held shared by every `apply`: nothing is applied after
    /// the last flush, where no hook would make its blobs durable before the
    /// store, dropped, makes its records durable.
    closed: std::sync::RwLock<bool>,
}

type FlushFn = Arc<dyn Fn() -> Result<(), StoreError> + Send + Sync>;

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the flusher thread for `store`.
    pub fn start(store: Arc<dyn Store>) -> Arc<Self> {
        Self::start_after(store, || Ok::<(), StoreError>(()))
    }

    /// Starts the flusher thread for `store`, running `before` ahead of every
    /// flush, the last time under the store's write lock ([`Store::flush_after`]):
    /// what it makes durable (the blobs the records name) is then on disk before
    /// any record that flush makes durable. An error from it fails the flush,
    /// and with it every write after (fail closed).
    pub fn start_after<E: std::fmt::Display>(
        store: Arc<dyn Store>,
        before: impl Fn() -> Result<(), E> + Send + Sync + 'static,
    ) -> Arc<Self> {
        let flush: FlushFn = {
            let store = store.clone();
            let before = move || before().map_err(|e| StoreError::Io(e.to_string()));
            Arc::new(move || {
                // Once without the store's write lock, for most of the work,
                // then again under it (`flush_after`) for what came meanwhile.
                before()?;
                store.flush_after(&before)
            })
        };
        let requests = Arc::new((Mutex::new(Requests::default()), Condvar::new()));
        let (tx, rx) = watch::channel(Flushed::Upto(0));
        let stats = Arc::new(CommitStats::default());
        let this = Arc::new(Self {
            store: store.clone(),
            applied: AtomicU64::new(0),
            requests: requests.clone(),
            flushed: rx,
            thread: Mutex::new(None),
            closed: std::sync::RwLock::new(false),
            stats: stats.clone(),
            flush: flush.clone(),
        });
        let applied_probe = Arc::downgrade(&this);
        let handle = std::thread::Builder::new()
            .name("truc-fsync".into())
            .spawn({
                let flush = flush.clone();
                move || flusher(flush, requests, tx, applied_probe, stats)
            })
            .ok();
        if let Ok(mut t) = this.thread.lock() {
            *t = handle;
        }
        this
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// How long the flush in progress has run, once that is longer than
    /// `limit`: a disk or server that hangs. Nothing is acknowledged meanwhile.
    pub fn flush_stalled(&self, limit: Duration) -> Option<Duration> {
        self.stats.flushing.longer_than(limit)
    }

    /// Applies `batch` (visible at once, durable later).
    pub fn apply(&self, batch: Batch) -> Result<Ticket, StoreError> {
        if let Flushed::Failed(e) = &*self.flushed.borrow() {
            return Err(StoreError::Failed(e.clone()));
        }
        let closed = self.closed.read().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(StoreError::Failed("the store is closed".into()));
        }
        self.store.apply(batch)?;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket(self.applied.fetch_add(1, Ordering::SeqCst) + 1))
    }

    /// The ticket of everything applied so far.
    pub fn current(&self) -> Ticket {
        Ticket(self.applied.load(Ordering::SeqCst))
    }

    /// Resolves once a flush that started after `ticket`'s batch was applied has
    /// finished, or fails if flushing failed.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        let mut rx = self.flushed.clone();
        loop {
            match &*rx.borrow_and_update() {
                Flushed::Upto(n) if *n >= ticket.0 => return Ok(()),
                Flushed::Failed(e) => return Err(StoreError::Failed(e.clone())),
                Flushed::Upto(_) => {}
            }
            self.request(ticket.0);
            if rx.changed().await.is_err() {
                return Err(StoreError::Failed("flusher stopped".into()));
            }
        }
    }

    /// Whether the store can still be written (no flush has failed).
    pub fn healthy(&self) -> bool {
        matches!(&*self.flushed.borrow(), Flushed::Upto(_))
    }

    fn request(&self, upto: u64) {
        let (lock, cv) = &*self.requests;
        if let Ok(mut r) = lock.lock()
            && r.wanted < upto
        {
            r.wanted = upto;
            cv.notify_one();
        }
    }

    /// Flushes what is pending and stops the flusher thread.
    pub fn close(&self) -> Result<(), StoreError> {
        let (lock, cv) = &*self.requests;
        if let Ok(mut r) = lock.lock() {
            r.stop = true;
            cv.notify_one();
        }
        if let Some(h) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = h.join();
        }
        // Waits for applies under way; none after.
        let mut closed = self.closed.write().unwrap_or_else(|p| p.into_inner());
        *closed = true;
        // After a failed flush nothing more is made durable: a second fsync can
        // succeed where the first lost pages.
        if let Flushed::Failed(e) = &*self.flushed.borrow() {
            return Err(StoreError::Failed(e.clone()));
        }
        (self.flush)()
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        let (lock, cv) = &*self.requests;
        if let Ok(mut r) = lock.lock() {
            r.stop = true;
            cv.notify_one();
        }
    }
}

fn flusher(
    flush: FlushFn,
    requests: Arc<(Mutex<Requests>, Condvar)>,
    tx: watch::Sender<Flushed>,
    owner: std::sync::Weak<GroupCommit>,
    stats: Arc<CommitStats>,
) {
    let (lock, cv) = &*requests;
    let mut done = 0u64;
    loop {
        {
            let Ok(mut r) = lock.lock() else { return };
            while r.wanted <= done && !r.stop {
                r = match cv.wait_timeout(r, Duration::from_secs(1)) {
                    Ok((r, _)) => r,
                    Err(_) => return,
                };
                if owner.strong_count() == 0 {
                    return;
                }
            }
            if r.stop && r.wanted <= done {
                return;
            }
        }
        // Everything applied before this load is covered by the flush below.
        let Some(target) = owner.upgrade().map(|o| o.applied.load(Ordering::SeqCst)) else {
            return;
        };
        let started = Instant::now();
        stats.flushing.start();
        let result = flush();
        stats.flushing.end();
        match result {
            Ok(()) => {
                done = target;
                let took = started.elapsed();
                stats.flushes.fetch_add(1, Ordering::Relaxed);
                stats
                    .flush_micros_total
                    .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                stats.observe(took.as_secs_f64());
                tx.send_replace(Flushed::Upto(target));
            }
            Err(e) => {
                tracing::error!(error = %e, "store flush failed; refusing writes until restart");
                tx.send_replace(Flushed::Failed(e.to_string()));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FaultyStore, MemoryStore, Space};

    fn batch(k: &[u8]) -> Batch {
        let mut b = Batch::new();
        b.put(Space::Meta, k.to_vec(), vec![1]);
        b
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes() {
        let gc = GroupCommit::start(Arc::new(MemoryStore::new()));
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let gc = gc.clone();
            tasks.push(tokio::spawn(async move {
                let t = gc.apply(batch(&i.to_be_bytes())).unwrap();
                gc.durable(t).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let flushes = gc.stats().flushes.load(Ordering::Relaxed);
        assert!((1..=200).contains(&flushes), "{flushes}");
        gc.close().unwrap();
    }

    /// A flush that hangs (a disk, a server) is reported once it has run
    /// longer than the limit, and no longer once it has finished.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_that_hangs_is_reported_until_it_finishes() {
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let hold_rx = Mutex::new(hold_rx);
        let gc = GroupCommit::start_after(Arc::new(MemoryStore::new()), move || {
            let _ = entered_tx.send(());
            let _ = hold_rx.lock().unwrap().recv();
            Ok::<(), StoreError>(())
        });
        let t = gc.apply(batch(b"a")).unwrap();
        let durable = tokio::spawn({
            let gc = gc.clone();
            async move { gc.durable(t).await }
        });
        entered_rx.recv().unwrap();
        assert!(gc.flush_stalled(Duration::from_secs(3600)).is_none());
        // Counted in milliseconds: reported once one has passed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while gc.flush_stalled(Duration::ZERO).is_none() {
            assert!(Instant::now() < deadline, "a hanging flush is reported");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The hook runs twice per flush (before, then under the write lock).
        hold_tx.send(()).unwrap();
        entered_rx.recv().unwrap();
        hold_tx.send(()).unwrap();
        durable.await.unwrap().unwrap();
        assert!(gc.flush_stalled(Duration::ZERO).is_none(), "finished");
        drop(hold_tx);
        gc.close().unwrap();
    }

    /// Nothing is applied after `close`'s last flush: a write then would be
    /// made durable by the store's own close, without the hook that makes its
    /// blobs durable first.
    #[test]
    fn nothing_is_applied_after_close() {
        let store = Arc::new(MemoryStore::new());
        let gc = GroupCommit::start(store.clone());
        gc.apply(batch(b"before")).unwrap();
        gc.close().unwrap();
        let e = gc.apply(batch(b"after")).unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
        assert!(store.get(Space::Meta, b"after").unwrap().is_none());
    }

    /// The hook runs before every flush, including the one `close` makes, and
    /// a failing hook fails the flush like the store's own error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hook_runs_before_each_flush_and_its_failure_fails_it() {
        let runs = Arc::new(AtomicU64::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gc = GroupCommit::start_after(Arc::new(MemoryStore::new()), {
            let (runs, fail) = (runs.clone(), fail.clone());
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
                if fail.load(Ordering::SeqCst) {
                    Err("pack sync: no space left on device")
                } else {
                    Ok(())
                }
            }
        });
        let t = gc.apply(batch(b"a")).unwrap();
        gc.durable(t).await.unwrap();
        let before = runs.load(Ordering::SeqCst);
        assert!(before >= 1);
        gc.close().unwrap();
        assert!(
            runs.load(Ordering::SeqCst) > before,
            "close flushes through the hook"
        );

        let gc = GroupCommit::start_after(Arc::new(MemoryStore::new()), {
            let fail = fail.clone();
            move || {
                if fail.load(Ordering::SeqCst) {
                    Err("pack sync: no space left on device")
                } else {
                    Ok(())
                }
            }
        });
        fail.store(true, Ordering::SeqCst);
        let t = gc.apply(batch(b"b")).unwrap();
        let e = gc.durable(t).await.unwrap_err().to_string();
        assert!(e.contains("no space left"), "{e}");
        assert!(!gc.healthy());
        // Closing does not try again: a second sync may succeed where the
        // first lost pages.
        fail.store(false, Ordering::SeqCst);
        assert!(matches!(gc.close(), Err(StoreError::Failed(_))));
    }

    #[tokio::test]
    async fn a_failed_flush_fails_every_waiter_and_refuses_later_writes() {
        let (store, plan) = FaultyStore::new(MemoryStore::new());
        let gc = GroupCommit::start(Arc::new(store));
        plan.fail_flush.store(true, Ordering::SeqCst);
        let t = gc.apply(batch(b"a")).unwrap();
        assert!(gc.durable(t).await.is_err());
        assert!(!gc.healthy());
        assert!(matches!(gc.apply(batch(b"b")), Err(StoreError::Failed(_))));
    }
}
