//! The load tool shared by truc and the peer: the same senders, the same window,
//! the same clock, the same latency arithmetic for both systems.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

/// Documents delivered through a server before its queue is measured
/// (queued-drain), so that the growth measured is the queue's, not the warm-up
/// of caches and allocator that any traffic brings (reported apart as the
/// growth from cold).
pub const QUEUED_WARM: usize = 10_000;

/// What one run sends.
#[derive(Debug, Clone)]
pub struct Load {
    pub docs: usize,
    /// Documents in flight at most (the same for truc and the peer).
    pub window: usize,
    /// Bytes of each document's body.
    pub body: usize,
    /// Documents per second for an open-loop run; None sends as fast as the
    /// window allows.
    pub rate: Option<f64>,
}

impl Load {
    /// The warm-up before a queue is measured: `QUEUED_WARM` documents (at
    /// most as many as the run's), as fast as the window allows.
    pub fn warm_up(&self) -> Load {
        Load {
            docs: self.docs.min(QUEUED_WARM),
            rate: None,
            ..self.clone()
        }
    }
}

/// When each document was sent (or, at a steady rate, was due), in nanoseconds
/// after `base` plus one (0: not yet).
pub struct Clock {
    base: Instant,
    starts: Vec<AtomicU64>,
}

impl Clock {
    pub fn new(docs: usize) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            starts: (0..docs).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    pub fn mark_at(&self, i: usize, at: Instant) {
        if let Some(s) = self.starts.get(i) {
            s.store(
                at.saturating_duration_since(self.base).as_nanos() as u64 + 1,
                Ordering::SeqCst,
            );
        }
    }

    pub fn start(&self, i: usize) -> Option<Instant> {
        match self.starts.get(i)?.load(Ordering::SeqCst) {
            0 => None,
            n => Some(self.base + Duration::from_nanos(n - 1)),
        }
    }
}

/// Runs `send(i)` for every document: `window` at a time back to back, or at a
/// steady rate with at most `window` in flight. At a steady rate latency counts
/// from when a document was due, not when a free slot let it go, so a system that
/// stalls is not flattered (no coordinated omission). Returns when every send
/// has returned.
pub async fn drive<F, Fut>(load: Load, clock: Arc<Clock>, send: F) -> Result<Duration>
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    match load.rate {
        None => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..load.window.max(1) {
                let (next, clock, send, docs) =
                    (next.clone(), clock.clone(), send.clone(), load.docs);
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= docs {
                            return Ok::<_, anyhow::Error>(());
                        }
                        clock.mark_at(i, Instant::now());
                        send(i).await?;
                    }
                });
            }
        }
        Some(rate) => {
            let slots = Arc::new(Semaphore::new(load.window.max(1)));
            let every = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let start = tokio::time::Instant::now();
            for i in 0..load.docs {
                let due = start + every * i as u32;
                tokio::time::sleep_until(due).await;
                clock.mark_at(i, due.into_std());
                let permit = slots.clone().acquire_owned().await?;
                let send = send.clone();
                tasks.spawn(async move {
                    let r = send(i).await;
                    drop(permit);
                    r
                });
                // Reap finished sends as we go: an error stops the run early.
                while let Some(done) = tasks.try_join_next() {
                    done??;
                }
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(t0.elapsed())
}

/// Arrival of document `i` at one of its recipients.
pub type Arrival = (usize, Instant);

pub fn arrivals() -> (
    mpsc::UnboundedSender<Arrival>,
    mpsc::UnboundedReceiver<Arrival>,
) {
    mpsc::unbounded_channel()
}

/// Waits until every document reached `per_doc` recipients; returns each
/// document's latency (send to its last recipient) and when the last arrived.
/// Fails if nothing arrives for `stall`.
pub async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
    clock: &Clock,
    docs: usize,
    per_doc: usize,
    stall: Duration,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<Duration>, Instant)> {
    let mut seen = vec![0u32; docs];
    let mut lat = Vec::with_capacity(docs);
    let mut last = Instant::now();
    while lat.len() < docs {
        let (i, at) = match tokio::time::timeout(stall, rx.recv()).await {
            Ok(Some(a)) => a,
            Ok(None) => bail!(
                "the watchers stopped after {} of {docs} documents",
                lat.len()
            ),
            Err(_) => bail!(
                "nothing arrived for {stall:?}: {} of {docs} documents complete",
                lat.len()
            ),
        };
        let Some(n) = seen.get_mut(i) else { continue };
        *n += 1;
        if *n as usize == per_doc {
            let t0 = clock
                .start(i)
                .ok_or_else(|| anyhow!("document {i} arrived before it was sent"))?;
            lat.push(at.saturating_duration_since(t0));
            last = last.max(at);
            bar.inc(1);
        }
    }
    Ok((lat, last))
}

/// p50 / p99 / p99.9 / max in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut v: Vec<Duration>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort();
        let at = |p: f64| {
            let i = ((v.len() as f64 - 1.0) * p).round() as usize;
            v[i.min(v.len() - 1)].as_secs_f64() * 1000.0
        };
        Some(Self {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        })
    }
}

/// The body of document `i`: its index first (the peer finds it there), then
/// filler.
pub fn body(i: usize, len: usize) -> Vec<u8> {
    let mut data = vec![b'x'; len.max(8)];
    data[..8].copy_from_slice(&(i as u64).to_be_bytes());
    data
}

pub fn index_of(body: &[u8]) -> Option<usize> {
    Some(u64::from_be_bytes(body.get(..8)?.try_into().ok()?) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_from_the_sorted_latencies() {
        let v: Vec<Duration> = (1..=1000).rev().map(Duration::from_millis).collect();
        let l = Latency::of(v).unwrap();
        assert_eq!(l.p50_ms.round(), 501.0);
        assert_eq!(l.p99_ms.round(), 990.0);
        assert_eq!(l.p999_ms.round(), 999.0);
        assert_eq!(l.max_ms.round(), 1000.0);
        assert!(Latency::of(Vec::new()).is_none());
    }

    #[test]
    fn a_body_carries_its_index() {
        assert_eq!(index_of(&body(42, 10_240)), Some(42));
        assert_eq!(body(7, 10_240).len(), 10_240);
    }

    #[tokio::test]
    async fn a_steady_rate_counts_latency_from_when_a_document_was_due() {
        // One slot, sends that take 20 ms, due every 1 ms: the later documents
        // wait for the slot, and their latency includes that wait.
        let load = Load {
            docs: 5,
            window: 1,
            body: 8,
            rate: Some(1000.0),
        };
        let clock = Clock::new(5);
        let (tx, mut rx) = arrivals();
        drive(load, clock.clone(), move |i| {
            let tx = tx.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                tx.send((i, Instant::now()))?;
                Ok(())
            }
        })
        .await
        .unwrap();
        let bar = indicatif::ProgressBar::hidden();
        let (lat, _) = collect(&mut rx, &clock, 5, 1, Duration::from_secs(5), &bar)
            .await
            .unwrap();
        let l = Latency::of(lat).unwrap();
        assert!(l.max_ms >= 90.0, "{l:?}");
    }
}
