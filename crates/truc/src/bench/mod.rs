//! `truc bench`: truc side by side with NATS JetStream on the same machine, in the
//! same run, driven by the same load tool (BENCHMARKS.md).
//!
//! Each scenario runs interleaved, at least three rounds, the peer first in odd
//! rounds and truc first in even ones; every run is bracketed by an fsync probe
//! of the disk, before and after. The disks here swing between a fast and a
//! slow fsync state from one minute to the next, so truc is compared with the
//! peer run next to it in time: the ratio is the median over those pairs.

mod fed;
mod load;
mod peer;
mod procstat;
mod targets;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use self::{
    fed::{Shape, Want},
    load::{Latency, Load},
    peer::Measured,
    procstat::Usage,
};
use crate::{
    chaos::proxy::{Faults, ON_THE_WIRE},
    client,
};

/// The scenarios, in the order they run; the first five are the default.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "one-hop",
        "ministry edge → hub: send until the hub's signed acceptance is back at the sender",
    ),
    (
        "edge-hub-edge",
        "ministry edge → hub → province edge, as fast as the window allows",
    ),
    (
        "steady",
        "edge → hub → edge at a steady rate (--rate): latency under a constant load",
    ),
    (
        "relay",
        "ministry edge → hub → province relay → district edge",
    ),
    (
        "fan-out",
        "1,000 documents (fewer if --docs is smaller), each to --fanout agencies on edges of ten agencies each",
    ),
    (
        "attachment",
        "one --attachment-mib attachment edge → hub → edge: MB/s and memory per node",
    ),
    (
        "queued-drain",
        "--queued documents queued at the hub for an offline edge, then drained",
    ),
    (
        "idle-edges",
        "--idle-edges idle edges connected to one hub: the hub's memory per edge",
    ),
    (
        "reconnect",
        "--reconnect-edges edges back after a hub restart, counted from its start command",
    ),
    (
        "pg-hub",
        "edge → hub → edge with the hub's store in PostgreSQL (a throwaway local server) against the hub on its embedded store",
    ),
    (
        "outbox-drain",
        "--queued documents sent while the sending edge's link is down, then drained up through the hub (no peer: NATS has no sender-side durable queue)",
    ),
];
const DEFAULT_SET: usize = 5;

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub scenarios: Vec<String>,
    pub docs: usize,
    pub window: usize,
    pub body_bytes: usize,
    pub runs: usize,
    pub rate: f64,
    pub fanout: usize,
    pub queued: usize,
    pub idle_edges: usize,
    pub reconnect_edges: usize,
    pub attachment_mib: u64,
    pub no_peer: bool,
    pub json: bool,
    pub dir: Option<PathBuf>,
    /// One CSV per run of each document's send time and latency.
    pub latency_log: Option<PathBuf>,
    /// queued-drain's and outbox-drain's edges reach the hub over this link.
    pub link: Option<EmulatedLink>,
}

/// A WAN link the bench puts between each edge and the hub (`--link-mbit`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmulatedLink {
    /// Each way.
    pub mbit: f64,
    pub rtt_ms: f64,
}

impl EmulatedLink {
    fn faults(self) -> Faults {
        Faults {
            rate_bps: (self.mbit * 1e6 / 8.0) as u64,
            latency: Duration::from_secs_f64(self.rtt_ms / 2000.0),
            ..Faults::default()
        }
    }
}

impl std::fmt::Display for EmulatedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} Mbit/s each way, round trip {} ms",
            self.mbit, self.rtt_ms
        )
    }
}

/// The systems a scenario compares.
const TRUC: &str = "truc";
/// truc with the hub's store in PostgreSQL (scenario pg-hub).
const TRUC_PG: &str = "truc-pg";
const NATS_SYNC: &str = "nats-sync";
const NATS_DEFAULT: &str = "nats-default";

/// One run of one system in one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub scenario: String,
    pub system: String,
    pub round: usize,
    /// 4 KiB write + fdatasync per second just before the run.
    pub fsync_per_s: f64,
    /// The same just after the run.
    #[serde(default)]
    pub fsync_after_per_s: f64,
    pub docs: u64,
    pub bytes: u64,
    pub secs: f64,
    pub docs_per_s: f64,
    pub mb_per_s: f64,
    pub latency: Option<Latency>,
    pub nodes: Vec<Usage>,
    pub extra: BTreeMap<String, f64>,
}

/// Medians over the runs of one system in one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub system: String,
    /// The lowest and highest fsync probe of these runs, before and after each.
    #[serde(default)]
    pub fsync_lo_per_s: f64,
    #[serde(default)]
    pub fsync_hi_per_s: f64,
    pub runs: usize,
    pub docs_per_s: f64,
    pub mb_per_s: f64,
    pub secs: f64,
    /// Documents (or edges) per run, median.
    #[serde(default)]
    pub docs: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// None unless the runs had 1,000 latencies or more each.
    pub p999_ms: Option<f64>,
    /// truc's throughput over the durable peer's: the median of
    /// [`pair_ratios`](Self::pair_ratios).
    pub vs_nats_sync: Option<f64>,
    /// The PostgreSQL hub's throughput over the embedded-store hub's (scenario
    /// pg-hub), the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_embedded_hub: Option<f64>,
    /// The ratio of each pair of runs behind `vs_nats_sync` (or
    /// `vs_embedded_hub`): this system's run over the compared one's next to
    /// it in time, in the order the pairs ran.
    #[serde(default)]
    pub pair_ratios: Vec<f64>,
    pub extra: BTreeMap<String, f64>,
    /// Median CPU seconds and peak RSS per node.
    pub nodes: Vec<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub nats_server: Option<String>,
    pub runs: Vec<Run>,
    pub summary: Vec<Summary>,
    /// The targets this run measured, met or missed.
    #[serde(default)]
    pub targets: Vec<targets::TargetCheck>,
    /// The window (`--window`) and what "in flight" means for it.
    #[serde(default)]
    pub in_flight: String,
    /// What the summary's figures do not say on their face (printed under it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub data_dir: String,
    /// The filesystem the data directory is on (statfs), e.g. "ext4" or
    /// "tmpfs"; on tmpfs or ramfs fsync costs nothing.
    #[serde(default)]
    pub data_fs: String,
    /// One ECDSA P-256 signature and one check through truc's own signer and
    /// verifier (chain cached, as on the hot path), in microseconds of one core.
    #[serde(default)]
    pub ecdsa_sign_us: f64,
    #[serde(default)]
    pub ecdsa_verify_us: f64,
}

fn machine(dir: &std::path::Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_owned(),
        memory_gib: meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<f64>().ok())
            .map_or(0.0, |k| k / 1024.0 / 1024.0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        data_dir: dir.display().to_string(),
        data_fs: filesystem(dir).unwrap_or_else(|| "unknown".into()),
        ecdsa_sign_us: 0.0,
        ecdsa_verify_us: 0.0,
    }
}

/// The filesystem `dir` is on, by its statfs type.
fn filesystem(dir: &std::path::Path) -> Option<String> {
    let st = rustix::fs::statfs(dir).ok()?;
    Some(fs_name(i128::from(st.f_type)))
}

/// A statfs type's name (linux/magic.h), or its number.
fn fs_name(magic: i128) -> String {
    match magic {
        0x0102_1994 => "tmpfs".into(),
        0x8584_58f6 => "ramfs".into(),
        0xef53 => "ext2/3/4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0x794c_7630 => "overlayfs".into(),
        0x2fc1_2fc1 => "zfs".into(),
        0xf2f5_2010 => "f2fs".into(),
        0x6969 => "nfs".into(),
        m => format!("{m:#x}"),
    }
}

/// On a filesystem in memory fsync is free: nothing a run measures there is a
/// durable-disk result.
fn in_memory(fs: &str) -> bool {
    matches!(fs, "tmpfs" | "ramfs")
}

/// What one signature and one check cost on this machine, in microseconds:
/// truc's [`Signer`](truc_pki::sign::Signer) and
/// [`SignatureVerifier`](truc_pki::sign::SignatureVerifier) over a header-sized
/// message with a dev agency certificate, `rounds` of each, on one thread.
pub fn crypto_probe(rounds: u32) -> Result<(f64, f64)> {
    let ca = truc_pki::dev::DevCa::generate("bench signing")?;
    let signer = ca.agency_signer(&"000.00.00.G22".parse()?, "bench")?;
    let verifier = ca.signature_verifier()?;
    let now = rustls::pki_types::UnixTime::now();
    let msg = vec![0x42u8; 600];
    let rounds = rounds.max(1);
    let t = Instant::now();
    let mut sig = signer.sign(&msg)?;
    for _ in 1..rounds {
        sig = signer.sign(&msg)?;
    }
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let t = Instant::now();
    for _ in 0..rounds {
        verifier.verify(&msg, &sig.bytes, sig.algorithm, &sig.chain, now)?;
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    Ok((sign_us, verify_us))
}

/// The least CPU a document costs in public-key work alone, in milliseconds,
/// for a truc summary whose runs counted signatures.
fn crypto_floor_ms(s: &Summary, m: &Machine) -> Option<(f64, f64, f64)> {
    let made = *s.extra.get(fed::SIGNED_PER_DOC)?;
    let verified = *s.extra.get(fed::VERIFIED_PER_DOC)?;
    let ms = (made * m.ecdsa_sign_us + verified * m.ecdsa_verify_us) / 1000.0;
    (ms > 0.0).then_some((made, verified, ms))
}

/// The usage of a summary's nodes: not the bench's own process, sampled
/// beside them where it emulates links.
fn node_usage(s: &Summary) -> impl Iterator<Item = &procstat::Usage> {
    s.nodes.iter().filter(|u| u.node != fed::LINKS_PROC)
}

/// CPU milliseconds the nodes of a summary spent per document delivered.
fn cpu_ms_per_doc(s: &Summary) -> Option<f64> {
    (s.docs > 0.0).then(|| node_usage(s).map(|u| u.cpu_s).sum::<f64>() * 1000.0 / s.docs)
}

/// The durable peer's summary for the scenario of `s` (in the state compared).
fn peer_of<'a>(s: &Summary, all: &'a [Summary]) -> Option<&'a Summary> {
    all.iter()
        .find(|p| p.scenario == s.scenario && p.system == NATS_SYNC)
}

/// How many durable copies truc makes of one document in a scenario whose
/// throughput is compared with the peer's (the peer makes one). One-hop counts
/// the hub's acceptance, but the recipient still stores every document (and
/// its signatures are counted), so both scenarios make three.
fn durable_copies(scenario: &str) -> Option<f64> {
    match scenario {
        "one-hop" | "edge-hub-edge" => Some(3.0),
        _ => None,
    }
}

/// The most truc could do if each of its durable copies cost no more CPU than
/// the peer spends storing one message, and signatures cost what was measured:
/// a bound from the peer's own figures, in this run.
#[derive(Debug, Clone, Copy)]
struct PeerCostBound {
    copies: f64,
    /// The peer's CPU milliseconds per message stored and delivered.
    per_copy: f64,
    /// CPU milliseconds per document: the copies and the signatures.
    floor: f64,
    /// Documents per second on all the cores at that cost.
    ceiling: f64,
    /// That rate against the peer's.
    ratio: f64,
}

/// The bound for `s` at `crypto_ms` of signatures per document, if the run
/// measured its peer's CPU and truc makes a known number of copies.
fn peer_cost_bound(
    s: &Summary,
    all: &[Summary],
    crypto_ms: f64,
    cpus: usize,
) -> Option<PeerCostBound> {
    let copies = durable_copies(&s.scenario)?;
    let peer = peer_of(s, all).filter(|p| p.docs_per_s > 0.0)?;
    let per_copy = cpu_ms_per_doc(peer).filter(|ms| *ms > 0.0)?;
    let floor = copies * per_copy + crypto_ms;
    let ceiling = cpus as f64 * 1000.0 / floor;
    Some(PeerCostBound {
        copies,
        per_copy,
        floor,
        ceiling,
        ratio: ceiling / peer.docs_per_s,
    })
}

/// The bound as the public-key section prints it.
fn peer_cost_ceiling(s: &Summary, all: &[Summary], crypto_ms: f64, cpus: usize) -> Option<String> {
    let PeerCostBound {
        copies,
        per_copy,
        floor,
        ceiling,
        ratio,
    } = peer_cost_bound(s, all, crypto_ms, cpus)?;
    Some(format!(
        "at nats-sync's own {per_copy:.2} ms of CPU per message stored and delivered for each of truc's {copies:.0} durable copies, plus the signatures: {floor:.2} ms, at most {ceiling:.0}/s on {cpus} cores = {ratio:.2}× nats-sync"
    ))
}

/// How many 4 KiB write + fdatasync rounds the disk under `dir` takes per second
/// over `for_`. The disks here swing between a fast and a slow fsync state; every
/// figure of a run only means something next to this one.
pub fn fsync_probe(dir: &std::path::Path, for_: Duration) -> Result<f64> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < for_ {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

async fn probe(dir: &std::path::Path) -> Result<f64> {
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || fsync_probe(&d, Duration::from_millis(300))).await?
}

/// The order of a scenario's systems in a round: as [`systems`] gives them in
/// odd rounds (the compared one first), the first two swapped in even ones, so
/// that neither of the two compared always runs first (on a disk warmed or
/// cooled by the other).
fn in_round(mut systems: Vec<&'static str>, round: usize) -> Vec<&'static str> {
    if round.is_multiple_of(2) && systems.len() >= 2 {
        systems.swap(0, 1);
    }
    systems
}

/// The ratios of `other`'s throughput over `base`'s in pairs of runs next to
/// each other in time: `runs` are one scenario's, in the order they ran; a
/// pair is a run of each system, one right after the other among the two
/// systems' runs, in the same round. Each run is in one pair at most. Runs
/// made side by side share the disk's fsync state, which swings from one
/// minute to the next.
pub fn pair_ratios(runs: &[&Run], base: &str, other: &str) -> Vec<f64> {
    let two: Vec<&Run> = runs
        .iter()
        .copied()
        .filter(|r| r.system == base || r.system == other)
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < two.len() {
        let (a, b) = (two[i], two[i + 1]);
        if a.system != b.system && a.round == b.round {
            let (base_run, other_run) = if a.system == base { (a, b) } else { (b, a) };
            if base_run.docs_per_s > 0.0 {
                out.push(other_run.docs_per_s / base_run.docs_per_s);
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

/// Fewer pairs than this and a ratio is printed but no target judged by it.
pub const MIN_PAIRS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Scenarios whose truc figure is a throughput compared with the durable
/// peer's. Not queued-drain: the peer's drain is a read of its own stream by a
/// consumer that keeps nothing (it counts a message on receipt, in memory),
/// where truc's ends in a durable copy at the recipient edge, counted after
/// its fsync.
fn compared_with_peer(scenario: &str) -> bool {
    matches!(scenario, "one-hop" | "edge-hub-edge" | "fan-out")
}

/// Medians per scenario and system over all its runs; truc's ratio against
/// the durable peer (and the PostgreSQL hub's against the embedded one) as the
/// median of the ratios of pairs of runs made next to each other in time.
pub fn summarize(runs: &[Run]) -> Vec<Summary> {
    let mut out = Vec::new();
    let mut scenarios: Vec<&str> = Vec::new();
    for r in runs {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    for sc in scenarios {
        let of: Vec<&Run> = runs.iter().filter(|r| r.scenario == sc).collect();
        let mut systems: Vec<&str> = Vec::new();
        for r in &of {
            if !systems.contains(&r.system.as_str()) {
                systems.push(&r.system);
            }
        }
        for sys in systems {
            let these: Vec<&Run> = of.iter().copied().filter(|r| r.system == sys).collect();
            let lat = |f: fn(&Latency) -> Option<f64>| {
                let v: Vec<f64> = these
                    .iter()
                    .filter_map(|r| r.latency.as_ref().and_then(f))
                    .collect();
                (!v.is_empty()).then(|| median(v))
            };
            let mut extra = BTreeMap::new();
            for k in these.iter().flat_map(|r| r.extra.keys()) {
                if !extra.contains_key(k) {
                    let v = these
                        .iter()
                        .filter_map(|r| r.extra.get(k).copied())
                        .collect();
                    extra.insert(k.clone(), median(v));
                }
            }
            let mut nodes: Vec<Usage> = Vec::new();
            for u in these.iter().flat_map(|r| &r.nodes) {
                if nodes.iter().any(|n| n.node == u.node) {
                    continue;
                }
                let of_node: Vec<&Usage> = these
                    .iter()
                    .flat_map(|r| &r.nodes)
                    .filter(|n| n.node == u.node)
                    .collect();
                nodes.push(Usage {
                    node: u.node.clone(),
                    cpu_s: median(of_node.iter().map(|n| n.cpu_s).collect()),
                    rss_start_mib: median(of_node.iter().map(|n| n.rss_start_mib).collect()),
                    rss_peak_mib: median(of_node.iter().map(|n| n.rss_peak_mib).collect()),
                });
            }
            let probes: Vec<f64> = these
                .iter()
                .flat_map(|r| [r.fsync_per_s, r.fsync_after_per_s])
                .filter(|p| *p > 0.0)
                .collect();
            // truc against the durable peer where throughput is what the
            // scenario compares; the PostgreSQL hub against the embedded one.
            let pairs = match sys {
                TRUC if compared_with_peer(sc) => pair_ratios(&of, NATS_SYNC, TRUC),
                TRUC_PG => pair_ratios(&of, TRUC, TRUC_PG),
                _ => Vec::new(),
            };
            let ratio = (!pairs.is_empty()).then(|| median(pairs.clone()));
            out.push(Summary {
                scenario: sc.to_owned(),
                system: sys.to_owned(),
                fsync_lo_per_s: probes.iter().copied().reduce(f64::min).unwrap_or(0.0),
                fsync_hi_per_s: probes.iter().copied().reduce(f64::max).unwrap_or(0.0),
                runs: these.len(),
                docs_per_s: median(these.iter().map(|r| r.docs_per_s).collect()),
                mb_per_s: median(these.iter().map(|r| r.mb_per_s).collect()),
                secs: median(these.iter().map(|r| r.secs).collect()),
                docs: median(these.iter().map(|r| r.docs as f64).collect()),
                p50_ms: lat(|l| Some(l.p50_ms)),
                p99_ms: lat(|l| Some(l.p99_ms)),
                // Only from runs with enough latencies for one.
                p999_ms: lat(|l| l.p999_ms),
                vs_nats_sync: ratio.filter(|_| sys == TRUC),
                vs_embedded_hub: ratio.filter(|_| sys == TRUC_PG),
                pair_ratios: pairs,
                extra,
                nodes,
            });
        }
    }
    out
}

fn bar(len: u64, what: &str, hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:34!} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
    ) {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what.to_owned());
    b
}

/// Which systems run a scenario: the peer where it has an equivalent.
fn systems(scenario: &str, peer: bool) -> Vec<&'static str> {
    if scenario == "pg-hub" {
        return vec![TRUC, TRUC_PG];
    }
    let with_peer = matches!(
        scenario,
        "one-hop" | "edge-hub-edge" | "steady" | "fan-out" | "queued-drain" | "idle-edges"
    );
    let mut v = Vec::new();
    if peer && with_peer {
        v.push(NATS_SYNC);
    }
    v.push(TRUC);
    if peer && with_peer && !matches!(scenario, "idle-edges") {
        v.push(NATS_DEFAULT);
    }
    v
}

/// Documents a fan-out run sends (fewer if `--docs` is smaller), each to
/// every one of `--fanout` agencies: 60,000 deliveries at the default 60, a
/// p99.9 of 1,000 latencies, and a run of seconds on two cores.
const FAN_OUT_DOCS: usize = 1000;

fn load_of(scenario: &str, a: &BenchArgs) -> Load {
    let (docs, rate) = match scenario {
        "steady" => (a.docs, Some(a.rate)),
        "fan-out" => (a.docs.min(FAN_OUT_DOCS), None),
        "queued-drain" | "outbox-drain" => (a.queued, None),
        _ => (a.docs, None),
    };
    Load {
        docs,
        window: a.window,
        body: a.body_bytes,
        rate,
    }
}

async fn run_truc(
    scenario: &str,
    system: &str,
    a: &BenchArgs,
    dir: &std::path::Path,
    bar: &indicatif::ProgressBar,
) -> Result<(Measured, Vec<Usage>)> {
    let l = load_of(scenario, a);
    let one = |(n, o): (&str, &str)| vec![(n.to_owned(), o.to_owned())];
    match scenario {
        "one-hop" => {
            fed::flow(
                dir,
                Shape::Core,
                &fed::HubStore::Embedded,
                vec![fed::RECIPIENT.1.into()],
                one(fed::SENDER),
                Want::AtHub,
                &l,
                bar,
            )
            .await
        }
        "pg-hub" if system == TRUC_PG => fed::pg_hub(dir, &l, bar).await,
        // pg-hub's embedded side is edge-hub-edge under the same load.
        "edge-hub-edge" | "steady" | "pg-hub" => {
            fed::flow(
                dir,
                Shape::Core,
                &fed::HubStore::Embedded,
                vec![fed::RECIPIENT.1.into()],
                one(fed::RECIPIENT),
                Want::Arrived,
                &l,
                bar,
            )
            .await
        }

        "relay" => {
            fed::flow(
                dir,
                Shape::Relay,
                &fed::HubStore::Embedded,
                vec![fed::DISTRICT.1.into()],
                one(fed::DISTRICT),
                Want::Arrived,
                &l,
                bar,
            )
            .await
        }
        "fan-out" => {
            let watched = fed::fan_out_agencies(a.fanout);
            let to = watched.iter().map(|(_, o)| o.clone()).collect();
            fed::flow(
                dir,
                Shape::FanOut(a.fanout),
                &fed::HubStore::Embedded,
                to,
                watched,
                Want::Arrived,
                &l,
                bar,
            )
            .await
        }
        "attachment" => fed::attachment(dir, a.attachment_mib << 20, bar).await,
        "queued-drain" => fed::queued_drain(dir, &l, a.link, bar).await,
        "outbox-drain" => fed::outbox_drain(dir, &l, a.link, bar).await,
        "idle-edges" => fed::idle(dir, a.idle_edges, bar).await,
        "reconnect" => fed::reconnect(dir, a.reconnect_edges, bar).await,
        other => bail!("unknown scenario {other}"),
    }
}

async fn run_peer(
    scenario: &str,
    a: &BenchArgs,
    server: &peer::Server,
    bar: &indicatif::ProgressBar,
) -> Result<Measured> {
    let l = load_of(scenario, a);
    match scenario {
        "one-hop" => peer::one_hop(server, &l, bar).await,
        "edge-hub-edge" | "steady" => peer::deliver(server, &l, 1, bar).await,
        "fan-out" => peer::deliver(server, &l, a.fanout, bar).await,
        "queued-drain" => peer::queued_drain(server, &l, bar).await,
        "idle-edges" => peer::idle(server, a.idle_edges).await,
        other => bail!("the peer has no {other} scenario"),
    }
}

/// Documents (or edges) a run counts, and their bytes.
fn volume(scenario: &str, a: &BenchArgs) -> (u64, u64) {
    let l = load_of(scenario, a);
    match scenario {
        "attachment" => (1, a.attachment_mib << 20),
        "idle-edges" => (a.idle_edges as u64, 0),
        "reconnect" => (a.reconnect_edges as u64, 0),
        "fan-out" => {
            let n = (l.docs * a.fanout) as u64;
            (n, n * l.body as u64)
        }
        _ => (l.docs as u64, (l.docs * l.body) as u64),
    }
}

pub async fn run(a: BenchArgs) -> Result<()> {
    let mut selected: Vec<&str> = Vec::new();
    let wanted: Vec<String> = if a.scenarios.is_empty() {
        SCENARIOS[..DEFAULT_SET]
            .iter()
            .map(|s| s.0.to_owned())
            .collect()
    } else if a.scenarios.iter().any(|s| s == "all") {
        SCENARIOS.iter().map(|s| s.0.to_owned()).collect()
    } else {
        a.scenarios.clone()
    };
    for w in &wanted {
        match SCENARIOS.iter().find(|s| s.0 == w) {
            // Named twice: run once (its runs' files would share names).
            Some(s) if selected.contains(&s.0) => {}
            Some(s) => selected.push(s.0),
            None => bail!(
                "unknown scenario {w}; known: all, {}",
                SCENARIOS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    if a.runs == 0 || a.docs == 0 || a.window == 0 || a.body_bytes < 8 {
        bail!("--runs, --docs and --window must be > 0 and --body-bytes >= 8");
    }
    if let Some(link) = a.link {
        // A link must come up under the nodes' default handshake timeout (5
        // s, a few round trips), and the proxy must hold what it carries per
        // one-way delay.
        if !(link.mbit >= 0.01 && link.mbit.is_finite() && (0.0..=1000.0).contains(&link.rtt_ms)) {
            bail!("--link-mbit must be at least 0.01 and --link-rtt-ms between 0 and 1000");
        }
        if link.faults().rate_bps as f64 * link.rtt_ms / 2000.0 > ON_THE_WIRE as f64 {
            bail!(
                "an emulated link of {link} holds more than {} MiB each way, more than the bench's proxy carries",
                ON_THE_WIRE >> 20
            );
        }
        if let Some(other) = selected
            .iter()
            .find(|s| !matches!(**s, "queued-drain" | "outbox-drain"))
        {
            bail!(
                "--link-mbit applies to queued-drain and outbox-drain only (the drains at link speed), not {other}: the other scenarios compare truc with a peer on loopback"
            );
        }
    }
    let mut tmp = None;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            let t = tempfile::Builder::new().prefix("truc-bench-").tempdir()?;
            let p = t.path().to_owned();
            tmp = Some(t);
            p
        }
    };
    let say = |s: String| {
        if !a.json {
            println!("{s}");
        }
    };
    let nats = if a.no_peer { None } else { peer::find_server() };
    match (&nats, a.no_peer) {
        (_, true) => say("peer: off (--no-peer); truc runs alone".into()),
        (None, false) => say(
            "peer: no nats-server >= 2.10 found (run bench/setup, or set NATS_SERVER); truc runs alone".into(),
        ),
        (Some(p), false) => say(format!("peer: {} (NATS JetStream, R1 file stream)", p.display())),
    }
    let mut m = machine(&dir);
    (m.ecdsa_sign_us, m.ecdsa_verify_us) =
        tokio::task::spawn_blocking(|| crypto_probe(2000)).await??;
    say(format!(
        "machine: {} × {}, {:.1} GiB, Linux {}; data in {} ({}); ECDSA P-256 sign {:.1} µs, verify {:.1} µs",
        m.cpus,
        m.cpu_model,
        m.memory_gib,
        m.kernel,
        m.data_dir,
        m.data_fs,
        m.ecdsa_sign_us,
        m.ecdsa_verify_us
    ));
    if in_memory(&m.data_fs) {
        let warning = format!(
            "WARNING: the data directory {} is on {}, in memory: fsync costs nothing there, so these are not durable-disk results (truc's and the peer's fsyncs alike); give --dir on a disk, or set TMPDIR to one",
            m.data_dir, m.data_fs
        );
        if a.json {
            eprintln!("{warning}");
        } else {
            say(warning);
        }
    }
    let in_flight = format!(
        "window: at most {} documents in flight for either system; {}",
        a.window,
        load::IN_FLIGHT
    );
    say(in_flight.clone());
    if let Some(link) = a.link {
        say(format!(
            "link: each edge reaches the hub over an emulated link of {link} (a proxy in this process; in outbox-drain the sender's alone); the peer runs on loopback"
        ));
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut nats_version = None;
    for round in 1..=a.runs {
        for sc in &selected {
            for sys in in_round(systems(sc, nats.is_some()), round) {
                let run_dir = dir.join(format!("{sc}-{sys}-{round}"));
                std::fs::create_dir_all(&run_dir)?;
                let fsync = probe(&run_dir).await?;
                let (docs, bytes) = volume(sc, &a);
                // The bar counts documents complete (in fan-out, once every
                // agency has one), the rate deliveries.
                let steps = match *sc {
                    "fan-out" => load_of(sc, &a).docs as u64,
                    _ => docs,
                };
                let b = bar(steps, &format!("{sc} · {sys} · run {round}"), a.json);
                let measured = if sys == TRUC || sys == TRUC_PG {
                    run_truc(sc, sys, &a, &run_dir, &b).await
                } else {
                    let bin = nats.as_deref().ok_or_else(|| anyhow::anyhow!("no peer"))?;
                    let server = peer::Server::start(bin, &run_dir, sys == NATS_SYNC).await?;
                    nats_version.get_or_insert(server.version.clone());
                    let sampler = procstat::Sampler::start(&[("nats-server".into(), server.pid)]);
                    let r = run_peer(sc, &a, &server, &b).await;
                    let usage = sampler.finish().await;
                    server.stop().await;
                    r.map(|mut m| {
                        let usage = m.usage.take().unwrap_or(usage);
                        (m, usage)
                    })
                };
                b.finish_and_clear();
                let (m, nodes) = match measured {
                    Ok(m) => m,
                    // The failed run's nodes, logs and stores stay for a look.
                    Err(e) => {
                        if let Some(t) = tmp.take() {
                            let _ = t.keep();
                        }
                        return Err(e.context(format!(
                            "{sc} · {sys} · run {round} (its nodes' logs and stores are kept in {})",
                            run_dir.display()
                        )));
                    }
                };
                // The disk as the run left it: a pair's two runs share the
                // state only if it did not swing in between.
                let fsync_after = probe(&run_dir).await?;
                let _ = std::fs::remove_dir_all(&run_dir);
                if let Some(dir) = &a.latency_log
                    && !m.latencies.is_empty()
                {
                    let path = dir.join(format!("{sc}-{sys}-{round}.csv"));
                    write_timeline(&path, &m.latencies)
                        .map_err(|e| e.context(format!("latency log {}", path.display())))?;
                    say(format!("latencies of each document: {}", path.display()));
                }
                let secs = m.elapsed.as_secs_f64().max(1e-9);
                let run = Run {
                    scenario: sc.to_string(),
                    system: sys.to_owned(),
                    round,
                    fsync_per_s: fsync,
                    fsync_after_per_s: fsync_after,
                    docs,
                    bytes,
                    secs,
                    docs_per_s: docs as f64 / secs,
                    mb_per_s: bytes as f64 / 1e6 / secs,
                    latency: Latency::of(load::Timed::latencies(&m.latencies)),
                    nodes,
                    extra: m
                        .extra
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                };
                say(line(&run));
                runs.push(run);
            }
        }
    }
    let summary = summarize(&runs);
    let targets = targets::check_all(&summary, &a, &m);
    let notes = notes(&summary);
    let report = Report {
        machine: m,
        nats_server: nats_version,
        runs,
        summary,
        targets,
        in_flight,
        notes,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

/// Each document's send time (seconds from the run's first send, and on the
/// system's monotonic clock, to line up with `perf record -k CLOCK_MONOTONIC`
/// or `journalctl -o short-monotonic`) and latency (milliseconds), in the order they were
/// sent, as CSV.
fn write_timeline(path: &std::path::Path, timed: &[load::Timed]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut v = timed.to_vec();
    v.sort_by_key(|t| t.sent);
    let first = v.first().map_or(Duration::ZERO, |t| t.sent);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "sent_s,latency_ms,sent_monotonic_s")?;
    for t in &v {
        writeln!(
            out,
            "{:.6},{:.3},{:.6}",
            (t.sent - first).as_secs_f64(),
            t.latency.as_secs_f64() * 1e3,
            t.sent.as_secs_f64()
        )?;
    }
    out.flush()?;
    Ok(())
}

fn line(r: &Run) -> String {
    let lat = r
        .latency
        .map(|l| {
            format!(
                "  p50 {:.1} ms  p99 {:.1} ms  p99.9 {} ms",
                l.p50_ms,
                l.p99_ms,
                ms(l.p999_ms)
            )
        })
        .unwrap_or_default();
    let extra: String = r
        .extra
        .iter()
        .map(|(k, v)| format!("  {k} {v:.1}"))
        .collect();
    format!(
        "{:13} {:12} run {}  fsync {:5.0}/s → {:5.0}/s  {:8.0}/s  {:7.2} MB/s{lat}{extra}",
        r.scenario, r.system, r.round, r.fsync_per_s, r.fsync_after_per_s, r.docs_per_s, r.mb_per_s
    )
}

/// What the summary's figures do not say on their face.
fn notes(summary: &[Summary]) -> Vec<String> {
    let mut out = Vec::new();
    if summary
        .iter()
        .any(|s| s.scenario == "queued-drain" && s.system == NATS_SYNC)
    {
        out.push(
            "queued-drain: no × nats-sync: the peer's drain is a read of its stream, not a durable copy at a recipient".to_owned(),
        );
    }
    out
}

/// The × column: the median of the pair ratios, and how many pairs.
fn ratio_cell(s: &Summary) -> String {
    let pairs = |n: usize| format!("{n} pair{}", if n == 1 { "" } else { "s" });
    match (s.vs_nats_sync, s.vs_embedded_hub) {
        (Some(v), _) => format!("{v:.2}× ({})", pairs(s.pair_ratios.len())),
        (None, Some(v)) => format!("{v:.2}× embedded hub ({})", pairs(s.pair_ratios.len())),
        (None, None) => "—".into(),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "—".into())
}

fn print_summary(r: &Report) {
    let mut t = client::table();
    t.set_header(vec![
        "scenario",
        "system",
        "fsync",
        "runs",
        "per s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "× nats-sync",
        "other",
        "CPU s · peak RSS MiB per node",
    ]);
    for s in &r.summary {
        let nodes: Vec<String> = s
            .nodes
            .iter()
            .map(|u| format!("{} {:.1}s {:.0}", u.node, u.cpu_s, u.rss_peak_mib))
            .collect();
        let extra: Vec<String> = s.extra.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
        t.add_row(vec![
            s.scenario.clone(),
            s.system.clone(),
            format!("{:.0}–{:.0}/s", s.fsync_lo_per_s, s.fsync_hi_per_s),
            s.runs.to_string(),
            format!("{:.0}", s.docs_per_s),
            format!("{:.2}", s.mb_per_s),
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.p999_ms),
            ratio_cell(s),
            extra.join("\n"),
            nodes.join("\n"),
        ]);
    }
    println!(
        "\nmedians over every run; fsync: the lowest and highest probe, before and after each run; × is the median over pairs of runs made one right after the other (same round, the order alternating), each truc run over the run beside it:\n{t}"
    );
    for n in &r.notes {
        println!("{n}");
    }
    let pairs: Vec<String> = r
        .summary
        .iter()
        .filter(|s| !s.pair_ratios.is_empty())
        .map(|s| {
            let v: Vec<String> = s.pair_ratios.iter().map(|v| format!("{v:.2}")).collect();
            format!("  {:13} {:8} {}", s.scenario, s.system, v.join(", "))
        })
        .collect();
    if !pairs.is_empty() {
        println!(
            "\nthe pairs' ratios, in the order they ran:\n{}",
            pairs.join("\n")
        );
    }
    let floors: Vec<String> = r
        .summary
        .iter()
        .filter_map(|s| {
            let (made, verified, ms) = crypto_floor_ms(s, &r.machine)?;
            let ceiling = r.machine.cpus as f64 * 1000.0 / ms;
            // Only where the rates compare (not at a fixed offered rate): the
            // peer's rate is the one `summarize` took the ratio against.
            // The 1.5× target is set for throughput (a drain is judged by
            // link speed).
            let peer = s
                .vs_nats_sync
                .filter(|_| s.scenario != "queued-drain")
                .and(peer_of(s, &r.summary))
                .filter(|p| p.docs_per_s > 0.0)
                .map(|p| {
                    let target = 1.5 * p.docs_per_s;
                    format!(
                        "; 1.5× nats-sync is {target:.0}/s, {:.0}% of the cores for signatures alone",
                        target * ms / 10.0 / r.machine.cpus as f64
                    )
                })
                .unwrap_or_default();
            // What the nodes spent in all, per document (medians of the runs).
            let spent = cpu_ms_per_doc(s)
                .map(|all| format!(" (of {all:.2} ms the nodes spent in all)"))
                .unwrap_or_default();
            let at_peer_cost = peer_cost_ceiling(s, &r.summary, ms, r.machine.cpus)
                .map(|l| format!("\n  {:13} {l}", ""))
                .unwrap_or_default();
            Some(format!(
                "  {:13} {:.1} signatures made + {:.1} checked per document delivered = {:.2} ms of CPU{spent}: at most {:.0}/s on {} cores if nothing else cost anything{peer}{at_peer_cost}",
                s.scenario, made, verified, ms, ceiling, r.machine.cpus
            ))
        })
        .collect();
    if !floors.is_empty() {
        println!(
            "\npublic-key work per document delivered (per delivery in fan-out), all nodes (ECDSA P-256: sign {:.1} µs, verify {:.1} µs here):\n{}",
            r.machine.ecdsa_sign_us,
            r.machine.ecdsa_verify_us,
            floors.join("\n")
        );
    }
    if !r.targets.is_empty() {
        let mut t = client::table();
        let head = format!("target (set for 2 cores; {} here)", r.machine.cpus);
        t.set_header(vec![head.as_str(), "measured (medians)", "verdict"]);
        for c in &r.targets {
            t.add_row(vec![c.target.as_str(), &c.measured, &c.verdict]);
        }
        println!("\nthe targets this run measured:\n{t}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--latency-log`: one line per document, in the order they were sent,
    /// from the first send, so that a stall shows where it happened.
    #[test]
    fn the_latency_log_lists_documents_in_send_order_from_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/steady-truc-1.csv");
        let t = |sent_ms: u64, latency_us: u64| load::Timed {
            sent: Duration::from_millis(sent_ms),
            latency: Duration::from_micros(latency_us),
        };
        // Arrival order: the stalled first document arrives last.
        write_timeline(&path, &[t(1010, 5_100), t(1020, 5_200), t(1000, 38_700)]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "sent_s,latency_ms,sent_monotonic_s\n0.000000,38.700,1.000000\n0.010000,5.100,1.010000\n0.020000,5.200,1.020000\n"
        );
    }

    #[test]
    fn the_fsync_probe_measures_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let rate = fsync_probe(dir.path(), Duration::from_millis(50)).unwrap();
        assert!(rate > 0.0, "{rate}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_data_dir_on_tmpfs_is_named_and_counts_as_in_memory() {
        assert_eq!(fs_name(0x0102_1994), "tmpfs");
        assert!(in_memory(&fs_name(0x0102_1994)));
        assert!(in_memory(&fs_name(0x8584_58f6)));
        assert!(!in_memory(&fs_name(0xef53)));
        assert_eq!(fs_name(0x1234), "0x1234");
        let dir = tempfile::tempdir().unwrap();
        assert!(filesystem(dir.path()).is_some());
    }

    fn run_of(scenario: &str, system: &str, round: usize, docs_per_s: f64) -> Run {
        Run {
            scenario: scenario.into(),
            system: system.into(),
            round,
            fsync_per_s: 0.0,
            fsync_after_per_s: 0.0,
            docs: 1,
            bytes: 1,
            secs: 1.0,
            docs_per_s,
            mb_per_s: 0.0,
            latency: None,
            nodes: Vec::new(),
            extra: BTreeMap::new(),
        }
    }

    fn run(system: &str, round: usize, docs_per_s: f64) -> Run {
        run_of("edge-hub-edge", system, round, docs_per_s)
    }

    #[test]
    fn the_compared_systems_take_turns_running_first() {
        let s = systems("edge-hub-edge", true);
        assert_eq!(in_round(s.clone(), 1), [NATS_SYNC, TRUC, NATS_DEFAULT]);
        assert_eq!(in_round(s.clone(), 2), [TRUC, NATS_SYNC, NATS_DEFAULT]);
        assert_eq!(in_round(s, 3), [NATS_SYNC, TRUC, NATS_DEFAULT]);
        assert_eq!(in_round(systems("pg-hub", true), 2), [TRUC_PG, TRUC]);
        assert_eq!(in_round(systems("relay", true), 2), [TRUC]);
    }

    /// Each truc run over the peer run beside it, in the same round; a run
    /// with no partner (a round cut short) is in no pair, and the
    /// non-durable peer's runs neither pair nor part a pair.
    #[test]
    fn a_pair_is_a_peer_run_and_the_truc_run_beside_it() {
        let runs = [
            run(NATS_SYNC, 1, 1000.0),
            run(TRUC, 1, 500.0),
            run(NATS_DEFAULT, 1, 9000.0),
            run(TRUC, 2, 900.0),
            run(NATS_SYNC, 2, 3000.0),
            run(NATS_DEFAULT, 2, 9000.0),
            run(NATS_SYNC, 3, 2000.0),
            run(TRUC, 3, 1200.0),
            run(NATS_SYNC, 4, 1000.0),
        ];
        let of: Vec<&Run> = runs.iter().collect();
        assert_eq!(pair_ratios(&of, NATS_SYNC, TRUC), [0.5, 0.3, 0.6]);
        // Runs of two rounds side by side are not a pair.
        let apart = [run(TRUC, 1, 500.0), run(NATS_SYNC, 2, 1000.0)];
        let of: Vec<&Run> = apart.iter().collect();
        assert!(pair_ratios(&of, NATS_SYNC, TRUC).is_empty());
        // A peer run that delivered nothing gives no ratio.
        let none = [run(NATS_SYNC, 1, 0.0), run(TRUC, 1, 500.0)];
        let of: Vec<&Run> = none.iter().collect();
        assert!(pair_ratios(&of, NATS_SYNC, TRUC).is_empty());
    }

    /// The disk swung between the rounds: each system's median comes from
    /// another round, and their ratio (800 / 2,000 = 0.4) mixes the states;
    /// each pair shares one, and the pairs read 0.5, 0.6 and 0.4.
    #[test]
    fn the_ratio_is_the_median_of_the_pairs_not_of_the_medians() {
        let runs = vec![
            run(NATS_SYNC, 1, 4000.0),
            run(TRUC, 1, 2000.0),
            run(TRUC, 2, 600.0),
            run(NATS_SYNC, 2, 1000.0),
            run(NATS_SYNC, 3, 2000.0),
            run(TRUC, 3, 800.0),
        ];
        let s = summarize(&runs);
        let truc = s.iter().find(|r| r.system == TRUC).unwrap();
        let peer = s.iter().find(|r| r.system == NATS_SYNC).unwrap();
        assert_eq!((truc.runs, peer.runs), (3, 3), "every run counts");
        assert_eq!((truc.docs_per_s, peer.docs_per_s), (800.0, 2000.0));
        assert_eq!(truc.pair_ratios, [0.5, 0.6, 0.4]);
        assert_eq!(truc.vs_nats_sync, Some(0.5));
        assert_eq!(peer.vs_nats_sync, None);
        assert_eq!(ratio_cell(truc), "0.50× (3 pairs)");
        assert_eq!(ratio_cell(peer), "—");
    }

    #[test]
    fn the_fsync_column_spans_the_probes_before_and_after_every_run() {
        let mut a = run(TRUC, 1, 100.0);
        (a.fsync_per_s, a.fsync_after_per_s) = (4000.0, 1500.0);
        let mut b = run(TRUC, 2, 100.0);
        (b.fsync_per_s, b.fsync_after_per_s) = (2000.0, 4200.0);
        let l = line(&a);
        assert!(l.contains("fsync  4000/s →  1500/s"), "{l}");
        let s = summarize(&[a, b]);
        assert_eq!((s[0].fsync_lo_per_s, s[0].fsync_hi_per_s), (1500.0, 4200.0));
    }

    /// The peer's drain reads its stream with nothing kept durably; truc's
    /// ends in a durable copy at the recipient: no ratio, and a note says why.
    #[test]
    fn the_drain_is_not_compared_with_the_peer() {
        let runs = vec![
            run_of("queued-drain", NATS_SYNC, 1, 45_000.0),
            run_of("queued-drain", TRUC, 1, 1_800.0),
        ];
        let s = summarize(&runs);
        assert!(s.iter().all(|r| r.vs_nats_sync.is_none()), "{s:?}");
        let truc = s.iter().find(|r| r.system == TRUC).unwrap();
        assert_eq!(ratio_cell(truc), "—");
        assert_eq!(
            notes(&s),
            [
                "queued-drain: no × nats-sync: the peer's drain is a read of its stream, not a durable copy at a recipient"
            ]
        );
        // Without the peer, nothing to explain.
        assert!(notes(&summarize(&runs[1..])).is_empty());
    }

    #[test]
    fn the_postgresql_hub_is_compared_pair_by_pair_with_the_embedded_one() {
        let runs = vec![
            run_of("pg-hub", TRUC, 1, 1000.0),
            run_of("pg-hub", TRUC_PG, 1, 500.0),
            run_of("pg-hub", TRUC_PG, 2, 300.0),
            run_of("pg-hub", TRUC, 2, 500.0),
        ];
        let s = summarize(&runs);
        let pg = s.iter().find(|r| r.system == TRUC_PG).unwrap();
        assert_eq!(pg.pair_ratios, [0.5, 0.6]);
        assert_eq!(pg.vs_embedded_hub, Some(0.55));
        assert_eq!(ratio_cell(pg), "0.55× embedded hub (2 pairs)");
    }
    #[test]
    fn the_bound_at_the_peers_cost_counts_each_durable_copy_and_the_signatures() {
        let with_cpu = |system: &str, docs_per_s: f64, cpu_s: f64| {
            let mut r = run(system, 1, docs_per_s);
            r.docs = docs_per_s as u64;
            r.nodes = vec![procstat::Usage {
                node: system.into(),
                cpu_s,
                rss_start_mib: 0.0,
                rss_peak_mib: 0.0,
            }];
            r
        };
        // The peer: 2,000 messages in a second for 0.6 CPU-s, 0.3 ms each.
        let s = summarize(&[
            with_cpu(NATS_SYNC, 2000.0, 0.6),
            with_cpu(TRUC, 1000.0, 1.7),
        ]);
        let truc = s.iter().find(|r| r.system == TRUC).unwrap();
        // Three copies at 0.3 ms and 0.5 ms of signatures: 1.4 ms, 1,429/s on 2 cores.
        let line = peer_cost_ceiling(truc, &s, 0.5, 2).unwrap();
        assert!(
            line.contains("0.30 ms of CPU per message stored and delivered"),
            "{line}"
        );
        assert!(line.contains("3 durable copies"), "{line}");
        assert!(
            line.contains("1.40 ms, at most 1429/s on 2 cores = 0.71× nats-sync"),
            "{line}"
        );
        // Without the peer there is no bound to give.
        let alone = summarize(&[with_cpu(TRUC, 1000.0, 1.7)]);
        assert!(peer_cost_ceiling(&alone[0], &alone, 0.5, 2).is_none());
    }
}
