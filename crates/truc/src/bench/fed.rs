//! truc's side of the bench: a federation of real `truc node` processes on
//! loopback (real mTLS, fsync, signatures made and verified at every hop), the
//! application's documents sent through the sender edge's agency API, arrivals
//! seen on the recipients' live event streams.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::mpsc;
use truc_node::{Config, RunningNode};
use truc_proto::v1::{self as pb};

use super::{
    EmulatedLink,
    load::{self, Clock, Load, Window},
    peer::Measured,
    procstat::{self, MIB, Sampler, Usage},
};
use crate::{
    certs::{TopoAgency, TopoNode, Topology},
    chaos::{
        cluster::{self, Cluster, Links, Options},
        proxy::Faults,
    },
    client,
};

pub const SENDER: (&str, &str) = ("vpcp", "000.00.00.G22");
pub const RECIPIENT: (&str, &str) = ("nghean", "000.00.00.H41");
pub const DISTRICT: (&str, &str) = ("duyxuyen", "001.00.10.H47");
/// Agencies per edge in the fan-out topology.
const PER_EDGE: usize = 10;
/// The warm-up document's index (outside every run's range).
const WARM: usize = usize::MAX;
/// Signatures made and checked per document delivered (per delivery in
/// fan-out), all nodes together (run extras).
pub const SIGNED_PER_DOC: &str = "signatures_made_per_doc";
pub const VERIFIED_PER_DOC: &str = "signatures_verified_per_doc";
/// The bench's own process in a run's usage, where its proxies emulate
/// links: not a node (not counted in the nodes' CPU per document).
pub const LINKS_PROC: &str = "bench (links)";
/// How long nothing may arrive before a run counts as stalled.
const STALL: Duration = Duration::from_secs(120);
/// Every node's document quotas in a bench run: far above any load it drives.
const BENCH_QUOTA: i64 = 100_000_000;

/// The topologies the scenarios run on.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// hub, the ministry edge and one province edge.
    Core,
    /// hub, the ministry edge, the Quảng Nam relay and one of its districts.
    Relay,
    /// hub, the ministry edge and edges serving `n` agencies, ten per edge.
    FanOut(usize),
    /// hub and `n` edges serving no agency (started inside the bench).
    Idle(usize),
}

fn edge(id: String, parent: &str, agencies: Vec<TopoAgency>) -> TopoNode {
    let api = (!agencies.is_empty()).then(|| "127.0.0.1:0".to_owned());
    TopoNode {
        id,
        parent: Some(parent.into()),
        listen: None,
        advertise: None,
        agency_api: api,
        health: None,
        // The bench reads each node's counters there (none for idle edges).
        admin_api: Some("127.0.0.1:0".into()),
        rest_api: None,
        grant: None,
        hostnames: Vec::new(),
        agencies,
    }
}

/// The fan-out recipients: (node, organ).
pub fn fan_out_agencies(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|k| {
            (
                format!("fan{:02}", k / PER_EDGE + 1),
                format!("{:03}.{:02}.00.H99", k % PER_EDGE + 1, k / PER_EDGE + 1),
            )
        })
        .collect()
}

pub fn topology(shape: Shape) -> Result<Topology> {
    let mut t = Topology::default_topology()?;
    let keep: &[&str] = match shape {
        Shape::Core => &["hub", "vpcp", "nghean"],
        Shape::Relay => &["hub", "vpcp", "quangnam", "duyxuyen"],
        Shape::FanOut(_) => &["hub", "vpcp"],
        Shape::Idle(_) => &["hub"],
    };
    t.nodes.retain(|n| keep.contains(&n.id.as_str()));
    match shape {
        Shape::FanOut(n) => {
            let mut by_node: Vec<(String, Vec<TopoAgency>)> = Vec::new();
            for (node, organ) in fan_out_agencies(n) {
                if by_node.last().is_none_or(|(id, _)| *id != node) {
                    by_node.push((node.clone(), Vec::new()));
                }
                if let Some((_, a)) = by_node.last_mut() {
                    a.push(TopoAgency {
                        name: format!("Sở {organ}"),
                        organ,
                        parent: String::new(),
                    });
                }
            }
            for (id, agencies) in by_node {
                t.nodes.push(edge(id, "hub", agencies));
            }
        }
        Shape::Idle(n) => {
            for k in 0..n {
                t.nodes.push(edge(format!("idle{k:04}"), "hub", Vec::new()));
            }
        }
        _ => {}
    }
    for n in &mut t.nodes {
        n.rest_api = None;
        // Every node that runs as a process of its own keeps its admin API: the
        // bench reads its signature counters there. The idle edges run inside
        // the bench, a thousand of them.
        if matches!(shape, Shape::Idle(_)) && n.id != "hub" {
            n.admin_api = None;
        }
    }
    Ok(t)
}

/// Where the hub keeps its key-value store.
#[derive(Debug, Clone)]
pub enum HubStore {
    /// The embedded store (`storage.engine`: redb unless TRUC_BENCH_ENGINE says).
    Embedded,
    /// A migrated PostgreSQL database; the server's main process, whose CPU
    /// (with its backends') the run reports.
    Postgres {
        url: String,
        server_pid: Option<u32>,
    },
}

/// A federation made and started for one run, deleted with its directory.
pub struct Fed {
    pub cluster: Cluster,
}

impl Fed {
    /// Makes the PKI and configs in `dir`; starts the nodes (all of them, or only
    /// the hub for the idle shapes, whose edges run in the bench).
    pub async fn start(dir: &Path, shape: Shape, hub: &HubStore) -> Result<Self> {
        Self::start_with(dir, shape, hub, Links::Direct).await
    }

    /// Like [`Fed::start`], the edges reaching the hub as `links` says.
    pub async fn start_with(
        dir: &Path,
        shape: Shape,
        hub: &HubStore,
        links: Links,
    ) -> Result<Self> {
        let topo = topology(shape)?;
        let mut cluster =
            Cluster::create_with(Some(dir.to_owned()), topo, Options { links }).await?;
        // TRUC_BENCH_ENGINE: every node's embedded store engine (storage.engine),
        // to compare redb with sled on the same machine.
        let engine = match std::env::var("TRUC_BENCH_ENGINE") {
            Ok(e) => match e.parse::<truc_store::embedded::Engine>() {
                Ok(_) => Some(e),
                Err(why) => bail!("TRUC_BENCH_ENGINE={why}"),
            },
            Err(_) => None,
        };
        // TRUC_BENCH_CACHE_BYTES: every node's page cache (storage.cache_bytes),
        // to see what memory the cache accounts for.
        let cache: Option<i64> = match std::env::var("TRUC_BENCH_CACHE_BYTES") {
            Ok(c) => Some(
                c.parse()
                    .with_context(|| format!("TRUC_BENCH_CACHE_BYTES={c}"))?,
            ),
            Err(_) => None,
        };
        let idle = matches!(shape, Shape::Idle(_));
        // One edit per node's config file (a thousand of them for idle-edges).
        for n in cluster.nodes() {
            let hub_node = n == "hub";
            cluster.edit(&n, |t| {
                let storage = cluster::table(t, "storage");
                if let Some(e) = &engine {
                    storage.insert("engine".into(), e.clone().into());
                }
                if idle && !hub_node {
                    // An idle edge needs little page cache: many run in one process.
                    storage.insert("cache_bytes".into(), (1i64 << 20).into());
                } else if let Some(c) = cache {
                    storage.insert("cache_bytes".into(), c.into());
                }
                if let (true, HubStore::Postgres { url, .. }) = (hub_node, hub) {
                    storage.insert("postgres_url".into(), url.clone().into());
                }
                // The quotas are not what is measured: 100,000 queued documents
                // sit exactly at the default per-recipient quota, and the warm-up
                // document, still queued when the recipient stopped before its
                // receipt reached the hub, made it 100,001 — the last one was
                // deferred for as long as the recipient stayed away, and the run
                // stalled at 99,999.
                let q = cluster::table(t, "quotas");
                for k in [
                    "max_queued_per_recipient",
                    "max_queued_per_sender",
                    "max_outbox",
                ] {
                    q.insert(k.into(), BENCH_QUOTA.into());
                }
            })?;
        }
        if idle {
            cluster.start("hub").await?;
        } else {
            cluster.start_all().await?;
        }
        Ok(Self { cluster })
    }

    pub async fn agency(&self, node: &str) -> Result<crate::client::AgencyApi> {
        client::connect_tcp(&self.cluster.config(node)).await
    }

    /// [`Fed::procs`], and the bench's own process where it emulates links:
    /// its proxies take their share of the same cores (so do the event
    /// streams it follows and its sampler, counted with them).
    pub fn procs_and_links(&self) -> Vec<(String, u32)> {
        let mut procs = self.procs();
        if !self.cluster.proxies.is_empty() {
            procs.push((LINKS_PROC.into(), std::process::id()));
        }
        procs
    }

    /// (node, pid) of every running node.
    pub fn procs(&self) -> Vec<(String, u32)> {
        self.cluster
            .nodes()
            .into_iter()
            .filter_map(|n| self.cluster.pid(&n).map(|p| (n, p)))
            .collect()
    }

    pub async fn stop(mut self) {
        self.cluster.stop_all().await;
    }

    /// `counts` once they stop moving (a tenth of a second apart, ten seconds
    /// at most): when the last document arrives, receipts about the last ones
    /// are still on their way back and checked at the sender; counted early, a
    /// run showed 5.7 checks per document where every one has 6.
    async fn settled_counts(&self) -> Result<Counts> {
        let mut last = self.counts().await?;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.counts().await?;
            if now == last {
                break;
            }
            last = now;
        }
        Ok(last)
    }

    /// What all the running nodes counted since they started.
    async fn counts(&self) -> Result<Counts> {
        let mut sum = Counts::default();
        for (node, _) in self.procs() {
            let counters = client::admin(&self.cluster.config(&node))
                .await?
                .stats(pb::StatsRequest {})
                .await
                .map_err(client::status_error)?
                .into_inner()
                .counters;
            let count = |name: &str| counters.get(name).copied().unwrap_or(0);
            sum.signatures_made += count("signatures_made");
            sum.signatures_verified += count("signatures_verified");
            sum.store_requests += count("store_requests");
        }
        Ok(sum)
    }
}

/// Counters of the nodes that a run reports per document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    signatures_made: u64,
    signatures_verified: u64,
    /// Requests to a store on a server (the PostgreSQL hub's).
    store_requests: u64,
}

impl Counts {
    /// Signatures made and checked per document between `before` and `self`,
    /// as the scenario's extra columns.
    fn signatures_per_doc(&self, before: &Counts, docs: f64) -> [(&'static str, f64); 2] {
        [
            (
                SIGNED_PER_DOC,
                self.per_doc(before, docs, |c| c.signatures_made),
            ),
            (
                VERIFIED_PER_DOC,
                self.per_doc(before, docs, |c| c.signatures_verified),
            ),
        ]
    }

    /// One count's growth since `before`, per document.
    fn per_doc(&self, before: &Counts, docs: f64, f: fn(&Counts) -> u64) -> f64 {
        f(self).saturating_sub(f(before)) as f64 / docs.max(1.0)
    }
}

/// Which event of an agency's live stream counts as the arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A document arrived at the recipient (it is durable there).
    Arrived,
    /// The hub's signed acceptance reached the sender.
    AtHub,
}

/// doc_id → index of the documents of a run.
type Ids = Arc<Mutex<HashMap<String, usize>>>;

/// Follows one agency's live events and reports the arrivals of this run's
/// documents.
async fn watch(
    mut client: crate::client::AgencyApi,
    organ: &str,
    want: Want,
    ids: Ids,
    tx: mpsc::UnboundedSender<load::Arrival>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut events = client
        .events(pb::EventsRequest {
            organ: organ.to_owned(),
            after: 0,
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    Ok(tokio::spawn(async move {
        loop {
            let e = match events.message().await {
                Ok(Some(e)) => e,
                Ok(None) => return,
                Err(s) => {
                    eprintln!("the events stream ended: {}", s.message());
                    return;
                }
            };
            let hit = match want {
                Want::Arrived => e.kind == "arrived" && e.detail == "document",
                // A delivered receipt can overtake the hub's acceptance: the
                // state then jumps past "at hub", which it implies.
                Want::AtHub => {
                    e.kind == "state"
                        && matches!(e.detail.as_str(), "at hub" | "delivered" | "acked")
                }
            };
            if !hit {
                continue;
            }
            let i = ids.lock().ok().and_then(|m| m.get(&e.doc_id).copied());
            if let Some(i) = i
                && tx.send((i, Instant::now())).is_err()
            {
                return;
            }
        }
    }))
}

/// Sends document `i` (or the warm-up) through the sender edge.
#[derive(Clone)]
struct Sender {
    client: crate::client::AgencyApi,
    to: Vec<String>,
    body: usize,
    ids: Ids,
}

impl Sender {
    async fn send(mut self, i: usize, attachments: Option<Vec<pb::Attachment>>) -> Result<()> {
        let doc_id = truc_core::DocId::new_v7().to_string();
        if let Ok(mut m) = self.ids.lock() {
            m.insert(doc_id.clone(), i);
        }
        let attachments = attachments.unwrap_or_else(|| vec![self.body(i)]);
        self.client
            .send(pb::SendRequest {
                from: SENDER.1.into(),
                to: self.to.clone(),
                subject: if i == WARM {
                    "Khởi động".into()
                } else {
                    format!("Công văn số {i}")
                },
                attachments,
                doc_id,
                ..Default::default()
            })
            .await
            .map_err(client::status_error)?;
        Ok(())
    }

    /// The 10 KB body of document `i`, as an attachment.
    fn body(&self, i: usize) -> pb::Attachment {
        pb::Attachment {
            name: "body.bin".into(),
            content_type: "application/octet-stream".into(),
            data: load::body(i, self.body),
            ..Default::default()
        }
    }
}

/// Waits until the hub's queue for child `node` is empty: everything passed
/// on to it acknowledged.
async fn hub_queue_empty(fed: &Fed, node: &str) -> Result<()> {
    let queue = format!("child:{node}");
    let mut admin = client::admin(&fed.cluster.config("hub")).await?;
    let t0 = Instant::now();
    loop {
        let r = admin
            .queues(pb::QueuesRequest {})
            .await
            .map_err(client::status_error)?
            .into_inner();
        if r.queues.iter().all(|q| q.queue != queue || q.depth == 0) {
            return Ok(());
        }
        if t0.elapsed() > STALL {
            bail!("the hub's queue for {node} did not empty in {STALL:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node`'s link to its parent and its queue for it (as its
/// operator API shows them) satisfy `ok(up, depth)`.
async fn parent_link(fed: &Fed, node: &str, ok: impl Fn(bool, u64) -> bool) -> Result<()> {
    let mut admin = client::admin(&fed.cluster.config(node)).await?;
    let t0 = Instant::now();
    loop {
        let r = admin
            .nodes(pb::NodesRequest {})
            .await
            .map_err(client::status_error)?
            .into_inner();
        // The node itself comes first: its link "up to …" or "down to …"
        // its parent, and its queue for it.
        let view = r.nodes.first();
        if view.is_some_and(|v| ok(v.link.starts_with("up "), v.queue_depth)) {
            return Ok(());
        }
        if t0.elapsed() > STALL {
            bail!(
                "{node}'s link to its parent did not reach the state the run waits for in {STALL:?}: {view:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `n` arrivals of the warm-up document.
async fn warmed(rx: &mut mpsc::UnboundedReceiver<load::Arrival>, n: usize) -> Result<()> {
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout(STALL, rx.recv()).await {
            Ok(Some((WARM, _))) => seen += 1,
            Ok(Some(_)) => {}
            _ => bail!("the warm-up document did not arrive ({seen} of {n})"),
        }
    }
    Ok(())
}

/// A flow run: the sender edge sends `load` to `to`; a document counts when every
/// watched agency saw it.
#[allow(clippy::too_many_arguments)]
pub async fn flow(
    dir: &Path,
    shape: Shape,
    hub: &HubStore,
    to: Vec<String>,
    watched: Vec<(String, String)>,
    want: Want,
    load: &Load,
    bar: &indicatif::ProgressBar,
) -> Result<(Measured, Vec<Usage>)> {
    let fed = Fed::start(dir, shape, hub).await?;
    let pg_pid = match hub {
        HubStore::Postgres { server_pid, .. } => *server_pid,
        HubStore::Embedded => None,
    };
    let result = async {
        let ids: Ids = Arc::default();
        let (tx, mut rx) = load::arrivals();
        let mut watchers = Vec::new();
        for (node, organ) in &watched {
            watchers.push(
                watch(
                    fed.agency(node).await?,
                    organ,
                    want,
                    ids.clone(),
                    tx.clone(),
                )
                .await?,
            );
        }
        drop(tx);
        let sender = Sender {
            client: fed.agency(SENDER.0).await?,
            to,
            body: load.body,
            ids,
        };
        sender.clone().send(WARM, None).await?;
        warmed(&mut rx, watched.len()).await?;
        let counts0 = fed.settled_counts().await?;
        let sampler = Sampler::start(&fed.procs());
        let pg_cpu0 = pg_pid.map(crate::bench::procstat::tree_cpu_seconds);
        let clock = Clock::new(load.docs);
        // Back to back, a document holds its slot until every watched agency
        // has it (one-hop: until the hub's acceptance is back at the sender),
        // not only until the sender edge stored it: the peer's window is the
        // same.
        let window = load.rate.is_none().then(|| Window::new(load));
        let t0 = Instant::now();
        let s = sender.clone();
        let send = tokio::spawn(load::drive(
            load.clone(),
            clock.clone(),
            window.clone(),
            move |i| s.clone().send(i, None),
        ));
        let collected = load::collect(
            &mut rx,
            &clock,
            window.as_deref(),
            load.docs,
            watched.len(),
            STALL,
            bar,
        )
        .await;
        let usage = sampler.finish().await;
        let counts1 = fed.settled_counts().await?;
        // Per arrival counted, the unit of the run's rate (a delivery in fan-out).
        let docs = (load.docs * watched.len()) as f64;
        let mut extra = counts1.signatures_per_doc(&counts0, docs).to_vec();
        if let (Some(pid), Some(c0)) = (pg_pid, pg_cpu0) {
            extra.push((
                "postgresql_cpu_s",
                crate::bench::procstat::tree_cpu_seconds(pid) - c0,
            ));
            extra.push((
                "store_requests_per_doc",
                counts1.per_doc(&counts0, docs, |c| c.store_requests),
            ));
        }
        for w in watchers {
            w.abort();
        }
        let (latencies, last) = collected?;
        send.await??;
        Ok::<_, anyhow::Error>((
            Measured {
                usage: None,
                elapsed: last.saturating_duration_since(t0),
                latencies,
                extra,
            },
            usage,
        ))
    };
    let r = result.await;
    fed.stop().await;
    r
}

/// edge-hub-edge with the hub's store in a throwaway PostgreSQL server, started
/// for the run (initdb, pg_ctl: Debian's `postgresql` package) and migrated.
pub async fn pg_hub(
    dir: &Path,
    load: &Load,
    bar: &indicatif::ProgressBar,
) -> Result<(Measured, Vec<Usage>)> {
    let server = tokio::task::spawn_blocking(|| -> Result<_> {
        let s = crate::pgserver::Server::start()
            .context("scenario pg-hub starts a PostgreSQL server of its own")?;
        truc_store::pg::migrate(&s.url("postgres"))?;
        Ok(s)
    })
    .await??;
    let hub = HubStore::Postgres {
        url: server.url("postgres"),
        server_pid: server.pid(),
    };
    let r = flow(
        dir,
        Shape::Core,
        &hub,
        vec![RECIPIENT.1.into()],
        vec![(RECIPIENT.0.to_owned(), RECIPIENT.1.to_owned())],
        Want::Arrived,
        load,
        bar,
    )
    .await;
    tokio::task::spawn_blocking(move || drop(server)).await?;
    r
}

/// One attachment of `size` bytes from the ministry to the province: upload to
/// the sender edge, then every hop, until the recipient has it durably.
pub async fn attachment(
    dir: &Path,
    size: u64,
    bar: &indicatif::ProgressBar,
) -> Result<(Measured, Vec<Usage>)> {
    use std::io::Write;
    let file = dir.join("annex.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut block = vec![0u8; 1 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut left = size;
        while left > 0 {
            for b in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n])?;
            left -= n as u64;
        }
        f.flush()?;
    }
    let fed_dir = dir.join("fed");
    let fed = Fed::start(&fed_dir, Shape::Core, &HubStore::Embedded).await?;
    let result = async {
        let Pair {
            mut rx,
            watcher: w,
            mut sender,
            ..
        } = Pair::start(&fed, 1024).await?;
        let sampler = Sampler::start(&fed.procs());
        let clock = Clock::new(1);
        let t0 = Instant::now();
        clock.mark_at(0, t0);
        bar.set_length(size);
        let att = client::upload_file(&mut sender.client, &file, "annex.bin").await?;
        sender.send(0, Some(vec![att])).await?;
        let collected = load::collect(&mut rx, &clock, None, 1, 1, STALL, bar).await;
        let usage = sampler.finish().await;
        w.abort();
        let (latencies, last) = collected?;
        Ok::<_, anyhow::Error>((
            Measured {
                usage: None,
                elapsed: last.saturating_duration_since(t0),
                latencies,
                extra: Vec::new(),
            },
            usage,
        ))
    };
    let r = result.await;
    fed.stop().await;
    let _ = std::fs::remove_file(&file);
    r
}

/// `load.docs` documents queued at the hub for an offline province edge (the
/// hub's memory growth), then the edge comes back and they drain; over an
/// emulated WAN link each, if `link` says so (what the drain puts on the
/// recipient's link is then measured against its rate).
pub async fn queued_drain(
    dir: &Path,
    load: &Load,
    link: Option<EmulatedLink>,
    bar: &indicatif::ProgressBar,
) -> Result<(Measured, Vec<Usage>)> {
    let links = link.map_or(Links::Direct, |l| Links::Emulated(l.faults()));
    let mut fed = Fed::start_with(dir, Shape::Core, &HubStore::Embedded, links).await?;
    let result = async {
        let Pair {
            ids,
            tx,
            mut rx,
            watcher: w,
            sender,
        } = Pair::start(&fed, load.body).await?;
        let hub = fed
            .cluster
            .pid("hub")
            .ok_or_else(|| anyhow!("hub not running"))?;
        let rss_cold = procstat::rss_bytes(hub).unwrap_or(0);
        warm_up(&sender, load, &mut rx).await?;
        // Stopped only once the hub has every warm-up document acknowledged:
        // one still queued would be delivered again inside the timed drain.
        hub_queue_empty(&fed, RECIPIENT.0).await?;
        w.abort();
        fed.cluster.stop(RECIPIENT.0).await?;
        // Queue everything at the hub: done when the sender has every signed
        // acceptance back.
        let (acc_tx, mut acc_rx) = load::arrivals();
        let acc = watch(
            fed.agency(SENDER.0).await?,
            SENDER.1,
            Want::AtHub,
            ids.clone(),
            acc_tx,
        )
        .await?;
        let rss0 = procstat::rss_bytes(hub).unwrap_or(0);
        // The hub's memory all through the queueing (its high-water mark): its peak,
        // not only where it ends once every document is queued.
        let queueing = Sampler::start(&[("hub".into(), hub)]);
        let clock = Clock::new(load.docs);
        let s = sender.clone();
        // Filling the queue: a slot frees when the sender edge stored the
        // document (the peer's at its stream's ack), as at a steady rate.
        let send = tokio::spawn(load::drive(load.clone(), clock.clone(), None, move |i| {
            s.clone().send(i, None)
        }));
        load::collect(&mut acc_rx, &clock, None, load.docs, 1, STALL, bar).await?;
        send.await??;
        acc.abort();
        let rss1 = procstat::rss_bytes(hub).unwrap_or(0);
        let peak = queueing.finish_peak_bytes().await;
        // The edge comes back; everything drains to it. The public-key work of
        // the drain is counted from here: the hub's and the sender's counters,
        // and the recipient's from its start.
        let counts0 = fed.settled_counts().await?;
        let wire = |fed: &Fed| {
            fed.cluster
                .proxies
                .get(RECIPIENT.0)
                .map(|p| p.carried_down())
        };
        let wire0 = wire(&fed);
        bar.set_position(0);
        let drain = Clock::new(load.docs);
        let t0 = Instant::now();
        for i in 0..load.docs {
            drain.mark_at(i, t0);
        }
        fed.cluster.start(RECIPIENT.0).await?;
        let sampler = Sampler::start(&fed.procs_and_links());
        let w = watch(
            fed.agency(RECIPIENT.0).await?,
            RECIPIENT.1,
            Want::Arrived,
            ids,
            tx,
        )
        .await?;
        let collected = load::collect(&mut rx, &drain, None, load.docs, 1, STALL, bar).await;
        let wire1 = wire(&fed);
        let usage = sampler.finish().await;
        w.abort();
        let (_, last) = collected?;
        let elapsed = last.saturating_duration_since(t0);
        let counts1 = fed.settled_counts().await?;
        let mut extra = queued_growth(rss_cold, rss0, rss1, peak);
        if let (Some(l), Some(w0), Some(w1)) = (link, wire0, wire1) {
            extra.extend(link_use(l, w1.saturating_sub(w0), elapsed));
        }
        extra.push(("hub_rss_before_mib", rss0 as f64 / MIB));
        extra.extend(counts1.signatures_per_doc(&counts0, load.docs as f64));
        Ok::<_, anyhow::Error>((Measured::timed(elapsed, extra), usage))
    };
    let r = result.await;
    fed.stop().await;
    r
}

/// The ministry's agency sending to the province's: the recipient's
/// arrivals followed (reported on `rx`), the sender ready, and the warm-up
/// document sent and arrived (every connection made, every path taken once).
struct Pair {
    ids: Ids,
    /// For another watch of the recipient (after a restart); dropped with the
    /// pair otherwise, so that `rx` ends if the watch does.
    tx: mpsc::UnboundedSender<load::Arrival>,
    rx: mpsc::UnboundedReceiver<load::Arrival>,
    watcher: tokio::task::JoinHandle<()>,
    sender: Sender,
}

impl Pair {
    async fn start(fed: &Fed, body: usize) -> Result<Self> {
        let ids: Ids = Arc::default();
        let (tx, mut rx) = load::arrivals();
        let watcher = watch(
            fed.agency(RECIPIENT.0).await?,
            RECIPIENT.1,
            Want::Arrived,
            ids.clone(),
            tx.clone(),
        )
        .await?;
        let sender = Sender {
            client: fed.agency(SENDER.0).await?,
            to: vec![RECIPIENT.1.into()],
            body,
            ids: ids.clone(),
        };
        sender.clone().send(WARM, None).await?;
        warmed(&mut rx, 1).await?;
        Ok(Self {
            ids,
            tx,
            rx,
            watcher,
            sender,
        })
    }
}

/// A node in service is warm: its cache filled and its allocator grown by
/// the traffic it carries. What a queue costs is measured on top of that,
/// after `QUEUED_WARM` documents delivered (their bodies apart from the
/// measured ones, which would otherwise be stored already).
async fn warm_up(
    sender: &Sender,
    load: &Load,
    rx: &mut mpsc::UnboundedReceiver<load::Arrival>,
) -> Result<()> {
    let warm_load = load.warm_up();
    let warm = warm_load.docs;
    let s = sender.clone();
    let from = load.docs;
    load::drive(warm_load, Clock::new(warm), None, move |k| {
        let s = s.clone();
        let body = s.body(from + k);
        s.send(WARM, Some(vec![body]))
    })
    .await?;
    warmed(rx, warm).await
}

/// `load.docs` documents sent while the sending edge is cut off from the hub
/// (an agency goes on sending through a WAN outage: its edge keeps them),
/// then the link comes back and the backlog drains up through the hub to the
/// recipient; over an emulated WAN link each, if `link` says so (what the
/// drain puts on the sender's link is then measured against its rate).
/// Only the sender's link is emulated: the recipient's proxy carries its
/// bytes as they come, so the line judged is the only one on the way.
/// The drain is timed from the first document's arrival to the last: before
/// it, the sender waits out its reconnect backoff, grown through the outage
/// (up to `link.reconnect_max_ms`), makes its handshakes and sends the first
/// document through; that wait is reported apart (`first_arrival_s`).
pub async fn outbox_drain(
    dir: &Path,
    load: &Load,
    link: Option<EmulatedLink>,
    bar: &indicatif::ProgressBar,
) -> Result<(Measured, Vec<Usage>)> {
    if load.docs < 2 {
        bail!(
            "outbox-drain times its drain between the first and the last arrival: --queued 2 or more"
        );
    }
    // Every edge through a proxy, even on loopback: the outage is made at
    // the sender's, which alone emulates the link.
    let faults = link.map(EmulatedLink::faults).unwrap_or_default();
    let fed = Fed::start_with(
        dir,
        Shape::Core,
        &HubStore::Embedded,
        Links::Emulated(Faults::default()),
    )
    .await?;
    let result = async {
        let proxy = fed
            .cluster
            .proxies
            .get(SENDER.0)
            .ok_or_else(|| anyhow!("no proxy on {}'s link", SENDER.0))?;
        proxy.set(faults);
        let Pair {
            mut rx,
            watcher: w,
            sender,
            ..
        } = Pair::start(&fed, load.body).await?;
        warm_up(&sender, load, &mut rx).await?;
        // Nothing of the warm-up left to cross the link during the drain:
        // the sender's outbox, and what the hub holds for it (receipts).
        parent_link(&fed, SENDER.0, |up, depth| up && depth == 0).await?;
        hub_queue_empty(&fed, SENDER.0).await?;
        let pid = fed
            .cluster
            .pid(SENDER.0)
            .ok_or_else(|| anyhow!("{} not running", SENDER.0))?;
        // The outage: the sender's connection reset, new ones held until it
        // ends (as SYNs retransmitted by the kernel would be).
        proxy.set(Faults {
            hold_up: true,
            hold_down: true,
            ..faults
        });
        proxy.reset_all();
        // The edge's memory from once it has let go of its connection.
        parent_link(&fed, SENDER.0, |up, _| !up).await?;
        let rss =
            || procstat::rss_bytes(pid).ok_or_else(|| anyhow!("cannot read {}'s memory", SENDER.0));
        let rss0 = rss()?;
        let queueing = Sampler::start(&[(SENDER.0.into(), pid)]);
        let clock = Clock::new(load.docs);
        let s = sender.clone();
        // Every document is kept by the sending edge (its Send answered once
        // it is durable there) before the link comes back.
        load::drive(load.clone(), clock, None, move |i| s.clone().send(i, None)).await?;
        let rss1 = rss()?;
        let peak = queueing.finish_peak_bytes().await;
        let counts0 = fed.settled_counts().await?;
        let up0 = proxy.carried_up();
        bar.set_position(0);
        let drain = Clock::new(load.docs);
        let t0 = Instant::now();
        for i in 0..load.docs {
            drain.mark_at(i, t0);
        }
        let sampler = Sampler::start(&fed.procs_and_links());
        proxy.set(faults);
        let collected = load::collect(&mut rx, &drain, None, load.docs, 1, STALL, bar).await;
        let up1 = proxy.carried_up();
        let usage = sampler.finish().await;
        w.abort();
        let (timed, last) = collected?;
        // The first arrival ends the wait for the link; the drain is timed
        // from there.
        let first = timed.iter().map(|t| t.latency).min().unwrap_or_default();
        let elapsed = last.saturating_duration_since(t0 + first);
        let counts1 = fed.settled_counts().await?;
        let (growth, peak_growth) = growth_mib(rss0, rss1, peak);
        let mut extra = vec![
            ("first_arrival_s", first.as_secs_f64()),
            ("sender_queued_rss_growth_mib", growth),
            ("sender_queued_rss_growth_peak_mib", peak_growth),
        ];
        if let Some(l) = link {
            extra.extend(link_use(l, up1.saturating_sub(up0), elapsed));
        }
        extra.extend(counts1.signatures_per_doc(&counts0, load.docs as f64));
        Ok::<_, anyhow::Error>((Measured::timed(elapsed, extra), usage))
    };
    let r = result.await;
    fed.stop().await;
    r
}

/// What a drain of `elapsed` put on an emulated link (`bytes` the way the
/// documents went, towards the recipient or from the sender: TLS records of
/// the documents, their attachments and the protocol's own frames): its rate
/// and round trip, the wire's Mbit/s, and the share of the link's capacity
/// it used.
fn link_use(link: EmulatedLink, bytes: u64, elapsed: Duration) -> Vec<(&'static str, f64)> {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let mbit = bytes as f64 * 8.0 / secs / 1e6;
    vec![
        ("link_mbit", link.mbit),
        ("link_rtt_ms", link.rtt_ms),
        ("link_wire_mbit", mbit),
        ("link_busy", mbit / link.mbit),
    ]
}

/// What queueing cost a node's memory, in MiB, from two baselines: `warm`
/// (just before the queueing, after the warm-up traffic) and `cold` (after
/// one document); at `end` (once every document was queued) and at the
/// `peak` sampled all through the queueing (bytes; at least `end`).
pub fn queued_growth(cold: u64, warm: u64, end: u64, peak: f64) -> Vec<(&'static str, f64)> {
    let (from_warm, peak_from_warm) = growth_mib(warm, end, peak);
    let (from_cold, peak_from_cold) = growth_mib(cold, end, peak);
    vec![
        ("queued_rss_growth_mib", from_warm),
        ("queued_rss_growth_cold_mib", from_cold),
        ("queued_rss_growth_peak_mib", peak_from_warm),
        ("queued_rss_growth_peak_cold_mib", peak_from_cold),
    ]
}

/// A process's growth in MiB from `from` bytes: to `end`, and to the `peak`
/// sampled on the way (at least `end`).
fn growth_mib(from: u64, end: u64, peak: f64) -> (f64, f64) {
    let peak = peak.max(end as f64);
    (
        end.saturating_sub(from) as f64 / MIB,
        (peak - from as f64).max(0.0) / MIB,
    )
}

/// Starts the idle edges of `fed` inside this process and waits until each has
/// its link to the hub up.
async fn start_edges(fed: &Fed, bar: &indicatif::ProgressBar) -> Result<Vec<RunningNode>> {
    let mut nodes = Vec::new();
    for n in fed.cluster.nodes().into_iter().filter(|n| n != "hub") {
        let cfg = Config::load(&fed.cluster.config(&n)).with_context(|| n.clone())?;
        nodes.push(RunningNode::start(cfg).await.with_context(|| n.clone())?);
    }
    for n in &nodes {
        let mut up = n.parent_up();
        tokio::time::timeout(STALL, up.wait_for(|u| *u))
            .await
            .map_err(|_| anyhow!("{} did not connect", n.state.node_id))??;
        bar.inc(1);
    }
    Ok(nodes)
}

async fn shutdown(nodes: Vec<RunningNode>) {
    let stops: Vec<_> = nodes
        .into_iter()
        .map(|n| tokio::spawn(n.shutdown()))
        .collect();
    for s in stops {
        let _ = s.await;
    }
}

/// `n` idle edges connected to one hub: the hub's memory per edge.
pub async fn idle(
    dir: &Path,
    n: usize,
    bar: &indicatif::ProgressBar,
) -> Result<(Measured, Vec<Usage>)> {
    let fed = Fed::start(dir, Shape::Idle(n), &HubStore::Embedded).await?;
    let result = async {
        let hub = fed
            .cluster
            .pid("hub")
            .ok_or_else(|| anyhow!("hub not running"))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sampler = Sampler::start(&fed.procs());
        let rss0 = procstat::rss_bytes(hub).unwrap_or(0);
        let t0 = Instant::now();
        let nodes = start_edges(&fed, bar).await?;
        let elapsed = t0.elapsed();
        // Let the links settle (directory sync, first heartbeats) before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss1 = procstat::rss_bytes(hub).unwrap_or(0);
        let usage = sampler.finish().await;
        shutdown(nodes).await;
        let per_edge = rss1.saturating_sub(rss0) as f64 / 1024.0 / n.max(1) as f64;
        Ok::<_, anyhow::Error>((
            Measured::timed(elapsed, vec![("rss_per_connection_kib", per_edge)]),
            usage,
        ))
    };
    let r = result.await;
    fed.stop().await;
    r
}

/// `n` edges connected; the hub is stopped and started again; how long until
/// every edge is back, counted from the hub's start command (the target: back
/// within 1 s of a restart), with the hub's own start (to its ready line) and
/// the rest after it reported apart.
pub async fn reconnect(
    dir: &Path,
    n: usize,
    bar: &indicatif::ProgressBar,
) -> Result<(Measured, Vec<Usage>)> {
    let mut fed = Fed::start(dir, Shape::Idle(n), &HubStore::Embedded).await?;
    let result = async {
        let nodes = start_edges(&fed, &indicatif::ProgressBar::hidden()).await?;
        fed.cluster.stop("hub").await?;
        for e in &nodes {
            let mut up = e.parent_up();
            tokio::time::timeout(STALL, up.wait_for(|u| !*u)).await??;
        }
        // Every edge is down; each is watched before the hub starts, so that
        // one back before the ready line is read is seen when it is back.
        let (tx, mut rx) = load::arrivals();
        for (i, e) in nodes.iter().enumerate() {
            let mut up = e.parent_up();
            let tx = tx.clone();
            tokio::spawn(async move {
                if up.wait_for(|u| *u).await.is_ok() {
                    let _ = tx.send((i, Instant::now()));
                }
            });
        }
        drop(tx);
        let clock = Clock::new(n);
        let starting = Instant::now();
        for i in 0..n {
            clock.mark_at(i, starting);
        }
        fed.cluster.start("hub").await?;
        let ready = Instant::now();
        let sampler = Sampler::start(&fed.procs());
        let collected = load::collect(&mut rx, &clock, None, n, 1, STALL, bar).await;
        let usage = sampler.finish().await;
        shutdown(nodes).await;
        let (latencies, last) = collected?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Ok::<_, anyhow::Error>((
            Measured {
                usage: None,
                // From the hub's start command to the last edge back.
                elapsed: last.saturating_duration_since(starting),
                latencies,
                extra: vec![
                    // From the start command to the hub's ready line (process
                    // start, store open, listeners): the edges cannot come
                    // back much before it.
                    ("hub_start_ms", ms(ready.duration_since(starting))),
                    // From the ready line to the last edge back.
                    ("after_ready_ms", ms(last.saturating_duration_since(ready))),
                ],
            },
            usage,
        ))
    };
    let r = result.await;
    fed.stop().await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queues_growth_is_given_at_its_end_and_at_its_peak_from_both_baselines() {
        let m = |mib: u64| mib << 20;
        let g: HashMap<&str, f64> = queued_growth(m(10), m(20), m(25), m(32) as f64)
            .into_iter()
            .collect();
        assert_eq!(g["queued_rss_growth_mib"], 5.0);
        assert_eq!(g["queued_rss_growth_cold_mib"], 15.0);
        assert_eq!(g["queued_rss_growth_peak_mib"], 12.0);
        assert_eq!(g["queued_rss_growth_peak_cold_mib"], 22.0);
        // A peak read below the end (a sampler that saw nothing) is the end.
        let g: HashMap<&str, f64> = queued_growth(m(10), m(20), m(25), 0.0)
            .into_iter()
            .collect();
        assert_eq!(g["queued_rss_growth_peak_mib"], 5.0);
        // Memory given back during the queueing reads as no growth.
        let g: HashMap<&str, f64> = queued_growth(m(10), m(20), m(15), m(18) as f64)
            .into_iter()
            .collect();
        assert_eq!(g["queued_rss_growth_mib"], 0.0);
        assert_eq!(g["queued_rss_growth_peak_mib"], 0.0);
        assert_eq!(g["queued_rss_growth_peak_cold_mib"], 8.0);
    }
}
