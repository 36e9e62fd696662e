//! The peer: NATS JetStream, one R1 file-backed stream on this machine, driven by
//! the same load tool through async-nats.
//!
//! With `sync_interval: always` the server fsyncs every message before it
//! acknowledges it: the durable setting, the one truc is compared with. Its
//! default (a sync every two minutes) is reported as a non-durable upper bound.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, consumer, stream};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tokio_stream::StreamExt;

use super::load::{self, Clock, Load, Window};

const STREAM: &str = "BENCH";
const SUBJECT: &str = "bench.docs";

/// nats-server 2.10 or newer: `$NATS_SERVER`, then what `bench/setup` installs
/// (under `target/bench-tools`, found from here or from this executable), then
/// `PATH`.
pub fn find_server() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        candidates.push(p.into());
    }
    let tail = Path::new("bench-tools").join("bin").join("nats-server");
    candidates.push(Path::new("target").join(&tail));
    if let Ok(exe) = std::env::current_exe() {
        // target/release/truc -> target/bench-tools/bin/nats-server
        for dir in exe.ancestors().skip(1).take(3) {
            candidates.push(dir.join(&tail));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    candidates
        .into_iter()
        .find(|c| c.is_file() && version(c).is_some_and(|(ma, mi)| (ma, mi) >= (2, 10)))
}

/// The (major, minor) version a nats-server binary reports.
pub fn version(bin: &Path) -> Option<(u32, u32)> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "nats-server: v2.15.1"
    let v = text.split_whitespace().find_map(|w| {
        w.strip_prefix('v')
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    })?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A running nats-server with JetStream, on a free loopback port.
pub struct Server {
    child: Child,
    pub url: String,
    pub pid: u32,
    pub version: String,
}

impl Server {
    pub async fn start(bin: &Path, dir: &Path, sync_always: bool) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = dir.join("jetstream");
        let sync = if sync_always {
            "  sync_interval: always\n"
        } else {
            ""
        };
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "host: 127.0.0.1\nport: -1\nhttp_port: -1\njetstream {{\n  store_dir: {:?}\n{sync}}}\n",
                store.display().to_string()
            ),
        )?;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("nats-server exited at once"))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let mut lines = BufReader::new(stderr).lines();
        let mut url = None;
        let mut version = String::new();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(v) = l.split("Version:").nth(1) {
                    version = v.trim().to_owned();
                }
                if let Some(addr) = l.split("Listening for client connections on ").nth(1) {
                    url = Some(format!("nats://{}", addr.trim()));
                }
                if l.contains("Server is ready") {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(true) {
            bail!("nats-server did not start ({})", conf.display());
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            url: url.ok_or_else(|| anyhow!("nats-server did not say its port"))?,
            pid,
            version,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    async fn context(&self) -> Result<jetstream::Context> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(10))
            .connect(&self.url)
            .await?;
        Ok(jetstream::new(client))
    }

    /// The bench stream: one replica, on disk.
    async fn stream(&self, js: &jetstream::Context) -> Result<stream::Stream> {
        js.get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("create stream: {e}"))
    }
}

/// What a run of the peer measured.
pub struct Measured {
    pub elapsed: Duration,
    /// Each document's send time and latency.
    pub latencies: Vec<load::Timed>,
    pub extra: Vec<(&'static str, f64)>,
    /// CPU and memory over the timed part only, when a scenario has an untimed
    /// part (queued-drain's warm-up and fill); otherwise the caller's sampler,
    /// which covers the whole run, is used.
    pub usage: Option<Vec<super::procstat::Usage>>,
}

impl Measured {
    /// A run timed as a whole, with figures of its own and no document
    /// latencies (drains, connections), its usage the caller's sampler's.
    pub fn timed(elapsed: Duration, extra: Vec<(&'static str, f64)>) -> Self {
        Self {
            elapsed,
            latencies: Vec::new(),
            extra,
            usage: None,
        }
    }
}

/// Consumers that report every message's index as an arrival.
async fn consumers(
    stream: &stream::Stream,
    n: usize,
    tx: &tokio::sync::mpsc::UnboundedSender<load::Arrival>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut out = Vec::new();
    for k in 0..n {
        let c = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("recipient{k}")),
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("create consumer: {e}"))?;
        let mut msgs = c.messages().await.map_err(|e| anyhow!("consume: {e}"))?;
        let tx = tx.clone();
        out.push(tokio::spawn(async move {
            while let Some(Ok(m)) = msgs.next().await {
                if let Some(i) = load::index_of(&m.payload) {
                    let _ = tx.send((i, Instant::now()));
                }
            }
        }));
    }
    Ok(out)
}

/// Publishes every document, awaiting each one's ack; with a `window`, a
/// document's slot is held until it reached every consumer as well (see
/// [`Window`]).
async fn publish_all(
    js: jetstream::Context,
    load: Load,
    clock: Arc<Clock>,
    window: Option<Arc<Window>>,
    acks: Option<tokio::sync::mpsc::UnboundedSender<load::Arrival>>,
) -> Result<Duration> {
    let body = load.body;
    load::drive(load, clock, window, move |i| {
        let js = js.clone();
        let acks = acks.clone();
        async move {
            js.publish(SUBJECT, load::body(i, body).into())
                .await
                .map_err(|e| anyhow!("publish: {e}"))?
                .await
                .map_err(|e| anyhow!("publish ack: {e}"))?;
            if let Some(a) = acks {
                let _ = a.send((i, Instant::now()));
            }
            Ok(())
        }
    })
    .await
}

/// One hop: publish until the server's (synced) acknowledgement.
pub async fn one_hop(
    server: &Server,
    load: &Load,
    bar: &indicatif::ProgressBar,
) -> Result<Measured> {
    let js = server.context().await?;
    server.stream(&js).await?;
    let clock = Clock::new(load.docs);
    let (tx, mut rx) = load::arrivals();
    // Back to back, the slot is held until the ack is back, as truc's is
    // until the hub's acceptance is back at the sender.
    let window = load.rate.is_none().then(|| Window::new(load));
    let t0 = Instant::now();
    let send = tokio::spawn(publish_all(
        js,
        load.clone(),
        clock.clone(),
        window.clone(),
        Some(tx),
    ));
    let (latencies, _) = load::collect(
        &mut rx,
        &clock,
        window.as_deref(),
        load.docs,
        1,
        Duration::from_secs(60),
        bar,
    )
    .await?;
    send.await??;
    Ok(Measured {
        usage: None,
        elapsed: t0.elapsed(),
        latencies,
        extra: Vec::new(),
    })
}

/// Publisher to `recipients` consumers: each document counts once all of them
/// have it.
pub async fn deliver(
    server: &Server,
    load: &Load,
    recipients: usize,
    bar: &indicatif::ProgressBar,
) -> Result<Measured> {
    let js = server.context().await?;
    let stream = server.stream(&js).await?;
    let (tx, mut rx) = load::arrivals();
    let readers = consumers(&stream, recipients, &tx).await?;
    drop(tx);
    let clock = Clock::new(load.docs);
    // Back to back, a document holds its slot until every consumer has it
    // (and its ack is back), as truc's is held until every recipient has it.
    let window = load.rate.is_none().then(|| Window::new(load));
    let t0 = Instant::now();
    let send = tokio::spawn(publish_all(
        js,
        load.clone(),
        clock.clone(),
        window.clone(),
        None,
    ));
    let collected = load::collect(
        &mut rx,
        &clock,
        window.as_deref(),
        load.docs,
        recipients,
        Duration::from_secs(60),
        bar,
    )
    .await;
    for r in readers {
        r.abort();
    }
    let (latencies, last) = collected?;
    send.await??;
    Ok(Measured {
        usage: None,
        elapsed: last.saturating_duration_since(t0),
        latencies,
        extra: Vec::new(),
    })
}

/// Documents stored with no consumer, the server's memory growth, then one
/// consumer drains them.
pub async fn queued_drain(
    server: &Server,
    load: &Load,
    bar: &indicatif::ProgressBar,
) -> Result<Measured> {
    let js = server.context().await?;
    let stream = server.stream(&js).await?;
    let rss_cold = super::procstat::rss_bytes(server.pid).unwrap_or(0);
    // Warm, as truc's hub is: `QUEUED_WARM` messages published and consumed,
    // then the stream emptied and its consumer deleted.
    let warm_load = load.warm_up();
    let warm = warm_load.docs;
    let (wtx, mut wrx) = load::arrivals();
    let readers = consumers(&stream, 1, &wtx).await?;
    drop(wtx);
    let wclock = Clock::new(warm);
    publish_all(js.clone(), warm_load, wclock.clone(), None, None).await?;
    let consumed = load::collect(
        &mut wrx,
        &wclock,
        None,
        warm,
        1,
        Duration::from_secs(60),
        bar,
    )
    .await;
    for r in readers {
        r.abort();
    }
    consumed?;
    stream
        .delete_consumer("recipient0")
        .await
        .map_err(|e| anyhow!("delete the warm-up consumer: {e}"))?;
    stream
        .purge()
        .await
        .map_err(|e| anyhow!("purge the warm-up messages: {e}"))?;
    bar.set_position(0);
    let rss0 = super::procstat::rss_bytes(server.pid).unwrap_or(0);
    // The server's memory all through the queueing, as the hub's: its peak.
    let queueing = super::procstat::Sampler::start(&[("nats-server".into(), server.pid)]);
    let clock = Clock::new(load.docs);
    let published = publish_all(js, load.clone(), clock, None, None).await;
    let rss1 = super::procstat::rss_bytes(server.pid).unwrap_or(0);
    let peak = queueing.finish_peak_bytes().await;
    published?;
    let (tx, mut rx) = load::arrivals();
    let drain_clock = Clock::new(load.docs);
    let t0 = Instant::now();
    for i in 0..load.docs {
        drain_clock.mark_at(i, t0);
    }
    // As for truc: the server's CPU and peak memory over the drain alone.
    let sampler = super::procstat::Sampler::start(&[("nats-server".into(), server.pid)]);
    let readers = consumers(&stream, 1, &tx).await?;
    drop(tx);
    let collected = load::collect(
        &mut rx,
        &drain_clock,
        None,
        load.docs,
        1,
        Duration::from_secs(60),
        bar,
    )
    .await;
    let usage = sampler.finish().await;
    for r in readers {
        r.abort();
    }
    let (_, last) = collected?;
    Ok(Measured {
        elapsed: last.saturating_duration_since(t0),
        latencies: Vec::new(),
        usage: Some(usage),
        extra: super::fed::queued_growth(rss_cold, rss0, rss1, peak),
    })
}

/// `n` idle client connections: the server's memory per connection.
pub async fn idle(server: &Server, n: usize) -> Result<Measured> {
    let rss0 = super::procstat::rss_bytes(server.pid).unwrap_or(0);
    let t0 = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(async_nats::connect(&server.url).await?);
    }
    for c in &clients {
        c.flush().await?;
    }
    let elapsed = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = super::procstat::rss_bytes(server.pid).unwrap_or(0);
    drop(clients);
    Ok(Measured::timed(
        elapsed,
        vec![(
            "rss_per_connection_kib",
            rss1.saturating_sub(rss0) as f64 / 1024.0 / n.max(1) as f64,
        )],
    ))
}
