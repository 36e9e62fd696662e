//! The load tool shared by truc and the peer: the same senders, the same window,
//! the same clock, the same latency arithmetic for both systems.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
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
    /// `base` on the system's monotonic clock (`CLOCK_MONOTONIC`, which
    /// `perf record -k CLOCK_MONOTONIC` and `journalctl -o short-monotonic`
    /// use too).
    base_monotonic: Duration,
    starts: Vec<AtomicU64>,
}

impl Clock {
    pub fn new(docs: usize) -> Arc<Self> {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        Arc::new(Self {
            base: Instant::now(),
            base_monotonic: Duration::new(
                u64::try_from(t.tv_sec).unwrap_or(0),
                u32::try_from(t.tv_nsec).unwrap_or(0),
            ),
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

/// What "in flight" means in a closed-loop run, for both systems alike.
pub const IN_FLIGHT: &str = "a document is in flight from its send until it has reached every recipient (one-hop: until the hub's signed acceptance is back at the sender, or the peer's fsynced ack); at a steady rate, and while filling a queue, until the send returns (truc: the sender edge stored it; the peer: the stream's fsynced ack)";

/// The slots of a closed-loop run: a document takes one when it is sent and
/// gives it back only once its send has returned *and* it has reached every
/// recipient (`collect` sees that), so that `window` documents are in flight
/// end to end whatever the system acknowledges on the way. Without it a truc
/// slot would free when the sender edge stored the document (its `Send`
/// returns) and a peer slot at the stream's ack: not the same window.
pub struct Window {
    slots: Semaphore,
    /// Per document, how many of its two ends (send returned, arrived
    /// everywhere) have happened.
    ends: Vec<AtomicU8>,
}

impl Window {
    pub fn new(load: &Load) -> Arc<Self> {
        Arc::new(Self {
            slots: Semaphore::new(load.window.max(1)),
            ends: (0..load.docs).map(|_| AtomicU8::new(0)).collect(),
        })
    }

    /// Waits for a free slot; fails once the window is closed.
    async fn take(&self) -> Result<()> {
        self.slots
            .acquire()
            .await
            .map_err(|_| anyhow!("the run stopped"))?
            .forget();
        Ok(())
    }

    /// One end of document `i`: its slot frees at the second.
    fn end(&self, i: usize) {
        if let Some(e) = self.ends.get(i)
            && e.fetch_add(1, Ordering::SeqCst) == 1
        {
            self.slots.add_permits(1);
        }
    }

    /// Stops the run: the sender waiting for a slot fails instead of waiting
    /// for arrivals that will not come.
    pub fn close(&self) {
        self.slots.close();
    }
}

/// Runs `send(i)` for every document: `window` at a time back to back, or at a
/// steady rate with at most `window` in flight. At a steady rate latency counts
/// from when a document was due, not when a free slot let it go, so a system that
/// stalls is not flattered (no coordinated omission). Returns when every send
/// has returned.
///
/// Back to back with a [`Window`] (the closed-loop scenarios), a slot is held
/// until the document has reached every recipient (the `Window` given to
/// [`collect`] too); without one (warm-ups, filling a queue) and at a steady
/// rate, a slot frees when the send returns.
pub async fn drive<F, Fut>(
    load: Load,
    clock: Arc<Clock>,
    window: Option<Arc<Window>>,
    send: F,
) -> Result<Duration>
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    match (load.rate, window) {
        (None, Some(window)) => {
            for i in 0..load.docs {
                window.take().await?;
                clock.mark_at(i, Instant::now());
                let (send, window) = (send.clone(), window.clone());
                tasks.spawn(async move {
                    let r = send(i).await;
                    window.end(i);
                    r
                });
                // Reap finished sends as we go: an error stops the run early.
                while let Some(done) = tasks.try_join_next() {
                    done??;
                }
            }
        }
        (None, None) => {
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
        (Some(rate), _) => {
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

/// One document of a run: when it was sent (due, at a steady rate), on the
/// system's monotonic clock, and its latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timed {
    pub sent: Duration,
    pub latency: Duration,
}

impl Timed {
    /// The latencies alone, for [`Latency::of`].
    pub fn latencies(v: &[Timed]) -> Vec<Duration> {
        v.iter().map(|t| t.latency).collect()
    }
}

pub fn arrivals() -> (
    mpsc::UnboundedSender<Arrival>,
    mpsc::UnboundedReceiver<Arrival>,
) {
    mpsc::unbounded_channel()
}

/// Waits until every document reached `per_doc` recipients; returns each
/// document's send time and latency (send to its last recipient), and when
/// the last arrived.
/// Fails if nothing arrives for `stall`. With a `window`, each document's slot
/// is given back once it reached every recipient; the window is closed if this
/// fails, so that the sender stops too.
pub async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
    clock: &Clock,
    window: Option<&Window>,
    docs: usize,
    per_doc: usize,
    stall: Duration,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<Timed>, Instant)> {
    let r = collect_arrivals(rx, clock, window, docs, per_doc, stall, bar).await;
    if let (Err(_), Some(w)) = (&r, window) {
        w.close();
    }
    r
}

async fn collect_arrivals(
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
    clock: &Clock,
    window: Option<&Window>,
    docs: usize,
    per_doc: usize,
    stall: Duration,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<Timed>, Instant)> {
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
            lat.push(Timed {
                sent: clock.base_monotonic + t0.saturating_duration_since(clock.base),
                latency: at.saturating_duration_since(t0),
            });
            last = last.max(at);
            if let Some(w) = window {
                w.end(i);
            }
            bar.inc(1);
        }
    }
    Ok((lat, last))
}

/// Latencies a run needs for its p99.9: with fewer, the 99.9th percentile is
/// only the largest one or two.
pub const MIN_P999_SAMPLES: usize = 1000;

/// p50 / p99 / p99.9 / max in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// None with fewer than [`MIN_P999_SAMPLES`] latencies.
    #[serde(default)]
    pub p999_ms: Option<f64>,
    pub max_ms: f64,
    /// How many latencies these are of.
    #[serde(default)]
    pub samples: usize,
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
            p999_ms: (v.len() >= MIN_P999_SAMPLES).then(|| at(0.999)),
            max_ms: at(1.0),
            samples: v.len(),
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
        assert_eq!(l.p999_ms.map(f64::round), Some(999.0));
        assert_eq!(l.max_ms.round(), 1000.0);
        assert_eq!(l.samples, 1000);
        assert!(Latency::of(Vec::new()).is_none());
    }

    /// 999 latencies are too few for a p99.9 (it would be their largest).
    #[test]
    fn no_p999_from_fewer_than_a_thousand_latencies() {
        let v: Vec<Duration> = (1..=999).map(Duration::from_millis).collect();
        let l = Latency::of(v).unwrap();
        assert_eq!(l.p999_ms, None);
        assert_eq!(l.max_ms.round(), 999.0);
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
        drive(load, clock.clone(), None, move |i| {
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
        let (lat, _) = collect(&mut rx, &clock, None, 5, 1, Duration::from_secs(5), &bar)
            .await
            .unwrap();
        let l = Latency::of(Timed::latencies(&lat)).unwrap();
        assert!(l.max_ms >= 90.0, "{l:?}");
    }

    /// Sends that return at once and documents that arrive later: with a
    /// window, no more than `window` are ever sent and not yet arrived.
    #[tokio::test]
    async fn a_closed_loop_slot_is_held_until_the_document_arrives() {
        let load = Load {
            docs: 30,
            window: 3,
            body: 8,
            rate: None,
        };
        let clock = Clock::new(30);
        let window = Window::new(&load);
        let (tx, mut rx) = arrivals();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (f, p) = (in_flight.clone(), peak.clone());
        let send = tokio::spawn(drive(load, clock.clone(), Some(window.clone()), move |i| {
            let (tx, f, p) = (tx.clone(), f.clone(), p.clone());
            async move {
                p.fetch_max(f.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    f.fetch_sub(1, Ordering::SeqCst);
                    let _ = tx.send((i, Instant::now()));
                });
                Ok(())
            }
        }));
        let bar = indicatif::ProgressBar::hidden();
        let (lat, _) = collect(
            &mut rx,
            &clock,
            Some(&window),
            30,
            1,
            Duration::from_secs(5),
            &bar,
        )
        .await
        .unwrap();
        send.await.unwrap().unwrap();
        assert_eq!(lat.len(), 30);
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    /// Documents that never arrive: the collector gives up and the sender,
    /// waiting for a slot, stops with it instead of waiting for ever.
    #[tokio::test]
    async fn a_stalled_closed_loop_run_stops_its_sender() {
        let load = Load {
            docs: 10,
            window: 2,
            body: 8,
            rate: None,
        };
        let clock = Clock::new(10);
        let window = Window::new(&load);
        let (_tx, mut rx) = arrivals();
        let send = tokio::spawn(drive(
            load,
            clock.clone(),
            Some(window.clone()),
            |_| async { Ok(()) },
        ));
        let bar = indicatif::ProgressBar::hidden();
        let r = collect(
            &mut rx,
            &clock,
            Some(&window),
            10,
            1,
            Duration::from_millis(50),
            &bar,
        )
        .await;
        assert!(r.is_err());
        let sent = tokio::time::timeout(Duration::from_secs(5), send).await;
        assert!(sent.unwrap().unwrap().is_err());
    }
}
