//! A TCP fault proxy between a child node and its parent: it forwards bytes and,
//! on command, holds them (a partition, both ways or one way: TCP keeps the bytes
//! as a real network would until it heals or a heartbeat gives up), delays them,
//! caps the bandwidth, or resets every connection it carries. A delay and a cap
//! together emulate a WAN link (`truc bench queued-drain --link-mbit`, and
//! outbox-drain, whose outage is made here too): the delay lengthens the
//! round trip without lowering the rate.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
};

/// What the proxy does to the bytes it carries now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Hold bytes from the child to the parent.
    pub hold_up: bool,
    /// Hold bytes from the parent to the child.
    pub hold_down: bool,
    /// Each way: how long a byte takes to cross, once sent.
    pub latency: Duration,
    /// Bytes per second each way; 0: no cap.
    pub rate_bps: u64,
}

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    faults: watch::Sender<Faults>,
    /// Bumped to reset every connection open now.
    generation: watch::Sender<u64>,
    /// Bytes delivered to the parent, and to the children, over every connection.
    carried: [Arc<AtomicU64>; 2],
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (faults, faults_rx) = watch::channel(Faults::default());
        let (generation, gen_rx) = watch::channel(0u64);
        let carried: [Arc<AtomicU64>; 2] = Default::default();
        let counts = carried.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let faults = faults_rx.clone();
                let generation = gen_rx.clone();
                let counts = counts.clone();
                tokio::spawn(async move {
                    let _ = carry(client, upstream, faults, generation, counts).await;
                });
            }
        });
        Ok(Self {
            addr,
            faults,
            generation,
            carried,
            task,
        })
    }

    /// Bytes carried so far towards the parent (child to parent).
    pub fn carried_up(&self) -> u64 {
        self.carried[0].load(Ordering::Relaxed)
    }

    /// Bytes carried so far towards the child (parent to child).
    pub fn carried_down(&self) -> u64 {
        self.carried[1].load(Ordering::Relaxed)
    }

    pub fn set(&self, f: Faults) {
        self.faults.send_replace(f);
    }

    pub fn heal(&self) {
        self.set(Faults::default());
    }

    /// Resets (RST) every connection carried now; new ones go through.
    pub fn reset_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn carry(
    client: TcpStream,
    upstream: SocketAddr,
    faults: watch::Receiver<Faults>,
    mut generation: watch::Receiver<u64>,
    [up_count, down_count]: [Arc<AtomicU64>; 2],
) -> Result<()> {
    let born = *generation.borrow_and_update();
    // A connection opened during a partition waits for it to heal, as a SYN
    // retransmitted by the kernel would.
    let mut f = faults.clone();
    f.wait_for(|x| !x.hold_up && !x.hold_down).await?;
    let server = TcpStream::connect(upstream).await?;
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        // Closing sends RST: a reset is a reset, not a polite FIN.
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
    }
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, faults.clone(), true, up_count);
    let down = pump(sr, cw, faults, false, down_count);
    // A reset comes first: bytes held back (a partition) when it came are
    // dropped with the connection, never let through by a heal right after.
    tokio::select! {
        biased;
        _ = generation.wait_for(|g| *g != born) => {}
        _ = up => {}
        _ = down => {}
    }
    Ok(())
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: watch::Receiver<Faults>,
    upward: bool,
    carried: Arc<AtomicU64>,
) -> Result<()> {
    let held = move |f: &Faults| if upward { f.hold_up } else { f.hold_down };
    // What is on the wire: each chunk with the time it reaches the far end,
    // at most `ON_THE_WIRE` bytes of them (a permit per byte, given back
    // once written).
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let room = Arc::new(Semaphore::new(ON_THE_WIRE));
    let freed = room.clone();
    let mut read_faults = faults.clone();
    let read = async move {
        let mut link = Link::default();
        loop {
            // While held, nothing is read: the sender's window fills up as it
            // would behind a partition.
            read_faults.wait_for(|f| !held(f)).await?;
            let mut buf = vec![0u8; CHUNK];
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, anyhow::Error>(());
            }
            buf.truncate(n);
            room.acquire_many(n as u32).await?.forget();
            let f = *read_faults.borrow();
            let now = Instant::now();
            let arrives = link.send(now, n, f.rate_bps, f.latency);
            tx.send((arrives, buf))?;
            // The link's buffer holds at most `QUEUED` of sending time: past
            // it, reading stops and TCP pushes back on the sender.
            if let Some(wait) = link.backlog(now).checked_sub(QUEUED) {
                tokio::time::sleep(wait).await;
            }
        }
    };
    let mut write_faults = faults;
    let write = async move {
        while let Some((arrives, buf)) = rx.recv().await {
            tokio::time::sleep_until(arrives.into()).await;
            write_faults.wait_for(|f| !held(f)).await?;
            to.write_all(&buf).await?;
            carried.fetch_add(buf.len() as u64, Ordering::Relaxed);
            freed.add_permits(buf.len());
        }
        let _ = to.shutdown().await;
        Ok(())
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

/// Bytes read from a socket at a time.
const CHUNK: usize = 16 << 10;
/// Bytes on their way at most, each way: a link passes at most this much per
/// one-way delay (1 Gbit/s up to a round trip of a second; the bench refuses
/// a link that needs more).
pub const ON_THE_WIRE: usize = 64 << 20;
/// Sending time a capped link queues at most before it stops reading (a
/// router's buffer).
const QUEUED: Duration = Duration::from_millis(20);

/// One direction of an emulated link: a rate cap (serialization, one chunk
/// after the other) and a propagation delay, pipelined as on a real link, so a
/// delay lengthens the round trip without lowering the rate.
#[derive(Debug, Default)]
struct Link {
    /// When the link finishes sending what it was given so far.
    free: Option<Instant>,
}

impl Link {
    /// A chunk of `n` bytes given at `now`: when its last byte reaches the
    /// far end.
    fn send(&mut self, now: Instant, n: usize, rate_bps: u64, delay: Duration) -> Instant {
        let start = self.free.map_or(now, |f| f.max(now));
        let on_wire = if rate_bps == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(n as f64 / rate_bps as f64)
        };
        self.free = Some(start + on_wire);
        start + on_wire + delay
    }

    /// Sending time queued at `now`.
    fn backlog(&self, now: Instant) -> Duration {
        self.free
            .map_or(Duration::ZERO, |f| f.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_lengthens_the_trip_not_the_time_between_chunks() {
        let mut link = Link::default();
        let t0 = Instant::now();
        // 1 MB/s: 10,000 bytes take 10 ms on the wire, then 50 ms to cross.
        let rate = 1_000_000;
        let delay = Duration::from_millis(50);
        let a = link.send(t0, 10_000, rate, delay);
        let b = link.send(t0, 10_000, rate, delay);
        assert_eq!(a - t0, Duration::from_millis(60));
        // The second waits for the first to be sent, not to arrive.
        assert_eq!(b - a, Duration::from_millis(10));
        assert_eq!(link.backlog(t0), Duration::from_millis(20));
        // Given after the link went idle, a chunk starts at once.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(
            link.send(later, 10_000, rate, delay) - later,
            Duration::from_millis(60)
        );
        assert_eq!(
            link.backlog(later + Duration::from_millis(30)),
            Duration::ZERO
        );
    }

    /// Bytes read while a partition holds are not delivered, and a reset
    /// drops them: a heal right after never lets them through.
    #[tokio::test]
    async fn held_bytes_stay_held_and_a_reset_drops_them() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy::start(upstream.local_addr().unwrap()).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut parent, _) = upstream.accept().await.unwrap();
        // A first byte through: the proxy is back reading when the hold
        // starts, so the held bytes are read, and must be kept.
        let mut buf = [0u8; 16];
        parent.write_all(b"a").await.unwrap();
        client.read_exact(&mut buf[..1]).await.unwrap();
        proxy.set(Faults {
            hold_down: true,
            ..Faults::default()
        });
        parent.write_all(b"held").await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), client.read(&mut buf)).await;
        assert!(early.is_err(), "nothing crosses a held link: {early:?}");
        assert_eq!(proxy.carried_down(), 1);
        proxy.reset_all();
        proxy.heal();
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("{:?} went through after the reset", &buf[..n]),
        }
        assert_eq!(proxy.carried_down(), 1);
        // Unheld, bytes go through and are counted.
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut parent, _) = upstream.accept().await.unwrap();
        parent.write_all(b"free").await.unwrap();
        client.read_exact(&mut buf[..4]).await.unwrap();
        assert_eq!(&buf[..4], b"free");
        assert_eq!(proxy.carried_down(), 5);
    }

    #[test]
    fn without_a_cap_a_chunk_only_takes_the_delay() {
        let mut link = Link::default();
        let t0 = Instant::now();
        let delay = Duration::from_millis(5);
        for _ in 0..3 {
            assert_eq!(link.send(t0, CHUNK, 0, delay), t0 + delay);
        }
        assert_eq!(link.backlog(t0), Duration::ZERO);
    }
}
