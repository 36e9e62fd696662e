//! A TCP fault proxy between a child node and its parent: it forwards bytes and,
//! on command, holds them (a partition, both ways or one way: TCP keeps the bytes
//! as a real network would until it heals or a heartbeat gives up), delays them,
//! caps the bandwidth, or resets every connection it carries.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What the proxy does to the bytes it carries now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Hold bytes from the child to the parent.
    pub hold_up: bool,
    /// Hold bytes from the parent to the child.
    pub hold_down: bool,
    /// Added to every chunk, each way.
    pub latency_ms: u64,
    /// Bytes per second each way; 0: no cap.
    pub rate_bps: u64,
}

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    faults: watch::Sender<Faults>,
    /// Bumped to reset every connection open now.
    generation: watch::Sender<u64>,
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
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let faults = faults_rx.clone();
                let generation = gen_rx.clone();
                tokio::spawn(async move {
                    let _ = carry(client, upstream, faults, generation).await;
                });
            }
        });
        Ok(Self {
            addr,
            faults,
            generation,
            task,
        })
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
    let up = pump(cr, sw, faults.clone(), true);
    let down = pump(sr, cw, faults, false);
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
    mut faults: watch::Receiver<Faults>,
    upward: bool,
) -> Result<()> {
    let held = move |f: &Faults| if upward { f.hold_up } else { f.hold_down };
    let mut buf = vec![0u8; 16 << 10];
    loop {
        // While held, nothing is read: the sender's window fills up as it would
        // behind a partition.
        faults.wait_for(|f| !held(f)).await?;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let f = *faults.borrow();
        let mut delay = Duration::from_millis(f.latency_ms);
        if f.rate_bps > 0 {
            delay += Duration::from_secs_f64(n as f64 / f.rate_bps as f64);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        faults.wait_for(|f| !held(f)).await?;
        to.write_all(&buf[..n]).await?;
    }
}
