//! `truc chaos <scenario>`: real `truc node` processes on loopback under load,
//! faults injected in a loop, and a checker that must count zero lost,
//! duplicated, corrupted, phantom and misrouted documents and zero order
//! violations. See RELIABILITY.md for the scenarios and the figures.

pub mod cluster;
pub mod proxy;
pub mod workload;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tokio::sync::watch;

use self::{
    cluster::{Cluster, table},
    proxy::Faults,
    workload::{Ledger, Outcome, Pool, Shared},
};

/// The scenarios, in the order `all` runs them.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("kill-hub", "SIGKILL the hub, restart it"),
    ("kill-relay", "SIGKILL the province relay, restart it"),
    (
        "kill-edges",
        "SIGKILL a sending or receiving edge, restart it",
    ),
    (
        "crash-before-ack",
        "hub, relay and a sender abort between storing and acknowledging",
    ),
    (
        "partition",
        "cut a link both ways or one way, add latency, cap bandwidth, reset connections",
    ),
    ("disk-full", "fill the disk under the hub and a recipient"),
    (
        "corrupt-partials",
        "kill a node mid-transfer, flip bytes in or truncate its partial files",
    ),
    (
        "clock-skew",
        "restart an edge with its clock 2 h ahead or behind",
    ),
    (
        "cert-rotation",
        "revoke an edge's certificate, give it a new one, restart it",
    ),
];

#[derive(Debug, Clone)]
pub struct ChaosArgs {
    pub scenario: String,
    /// At least this many documents (generators keep going until the faults are done).
    pub docs: u64,
    /// At least this many faults.
    pub faults: u64,
    pub json: bool,
    pub dir: Option<PathBuf>,
    pub seed: Option<u64>,
}

/// One injected fault and how long the federation took to deliver fresh
/// documents on every route again.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultRecord {
    pub kind: String,
    pub target: String,
    pub held_ms: u64,
    pub recovery_ms: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub documents: u64,
    pub faults: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub recovery_p50_ms: u64,
    pub recovery_p99_ms: u64,
    pub recovery_max_ms: u64,
    pub not_recovered: u64,
    /// Nodes that exited on their own where no fault asked them to.
    pub unexpected_exits: Vec<String>,
    /// Panics and audit-chain failures in the node logs.
    pub integrity_errors: Vec<String>,
    pub duration_s: f64,
    pub anomalies: Vec<String>,
    pub send_errors_retried: u64,
    pub fault_log: Vec<FaultRecord>,
    pub ok: bool,
}

/// Runs one scenario, or every one for `all`; prints the reports; fails if any
/// run is not clean.
pub async fn run(a: ChaosArgs) -> Result<()> {
    let names: Vec<&str> = if a.scenario == "all" {
        SCENARIOS.iter().map(|(n, _)| *n).collect()
    } else if SCENARIOS.iter().any(|(n, _)| *n == a.scenario) {
        vec![a.scenario.as_str()]
    } else {
        let list: Vec<String> = SCENARIOS
            .iter()
            .map(|(n, what)| format!("  {n:18} {what}"))
            .collect();
        bail!(
            "unknown scenario {:?}; choose all or one of:\n{}",
            a.scenario,
            list.join("\n")
        );
    };
    let mut reports = Vec::new();
    for name in names {
        let dir = a.dir.as_ref().map(|d| d.join(name));
        let r = run_one(name, &a, dir).await?;
        if !a.json {
            print_report(&r);
        }
        reports.push(r);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else if reports.len() > 1 {
        print_summary(&reports);
    }
    let bad: Vec<&str> = reports
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.scenario.as_str())
        .collect();
    if !bad.is_empty() {
        bail!("not clean: {}", bad.join(", "));
    }
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// How long a single fault is held, at most.
fn hold(rng: &mut fastrand::Rng, min_ms: u64, max_ms: u64) -> Duration {
    Duration::from_millis(rng.u64(min_ms..=max_ms))
}

/// After a fault heals: until every route delivers a document accepted after
/// the heal, or a minute passes. Nodes that exit meanwhile (a test hook's
/// abort) are restarted and counted.
async fn await_recovery(
    c: &mut Cluster,
    ledger: &Shared,
    since: Instant,
    flows: usize,
    scenario: &str,
    log: &mut Vec<FaultRecord>,
    unexpected: &mut Vec<String>,
) -> Result<Option<u64>> {
    let deadline = since + Duration::from_secs(60);
    loop {
        if ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recovered(since, flows)
        {
            return Ok(Some(since.elapsed().as_millis() as u64));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        restart_exited(c, scenario, log, unexpected).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_one(name: &str, a: &ChaosArgs, dir: Option<PathBuf>) -> Result<Report> {
    let seed = a.seed.unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let mut c = Cluster::create(dir).await?;
    eprintln!(
        "chaos {name}: seed {seed}, ≥{} documents, ≥{} faults, in {}",
        a.docs,
        a.faults,
        c.dir.display()
    );

    // Per-scenario setup before the nodes start.
    let mut large_every = 20;
    let mut filler_reserve = 0u64;
    match name {
        "crash-before-ack" => {
            // About two crashes per fault wanted, spread over the run.
            let every = (a.docs * 3 / a.faults.max(1) / 2).clamp(25, 5000);
            for (node, n) in [
                ("hub", every),
                ("quangnam", every + 7),
                ("vpcp", every + 13),
            ] {
                c.edit(node, |t| {
                    hooks(t).insert("abort_before_ack_every".into(), (n as i64).into());
                })?;
            }
        }
        "disk-full" => {
            let free = c.free_bytes()?;
            if free < 2 << 30 {
                bail!(
                    "disk-full needs 2 GiB free under {} to fill without harm; {} free",
                    c.dir.display(),
                    crate::client::human_bytes(free)
                );
            }
            // The hub and a recipient refuse intake below (free now - margin,
            // room for what the run writes): a filler file taking the margin
            // makes their disk full. The other nodes keep their 512 MiB floor.
            let margin = (free / 4).min(4 << 30);
            filler_reserve = free - margin;
            for node in ["hub", "nghean"] {
                c.edit(node, |t| {
                    table(t, "storage")
                        .insert("min_free_bytes".into(), (filler_reserve as i64).into());
                })?;
            }
        }
        "corrupt-partials" => {
            large_every = 3;
            // Partial files reach the disk (and record a resume offset) every
            // 64 KiB, so that a kill leaves something to damage.
            for node in c.nodes() {
                c.edit(&node, |t| {
                    table(t, "storage").insert("sync_every_bytes".into(), 65_536.into());
                })?;
            }
        }
        _ => {}
    }
    c.start_all().await?;

    let ledger: Shared = Arc::new(std::sync::Mutex::new(Ledger::default()));
    let (stop_gen_tx, stop_gen) = watch::channel(false);
    let (stop_recv_tx, stop_recv) = watch::channel(false);
    let pool = Arc::new(Pool::new(large_every));
    let flows = workload::flows();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, f) in flows.iter().enumerate() {
        tasks.spawn(workload::generate(
            c.dir.clone(),
            i,
            f.clone(),
            ledger.clone(),
            pool.clone(),
            stop_gen.clone(),
        ));
    }
    let mut receivers = tokio::task::JoinSet::new();
    for (node, organ) in workload::receivers() {
        receivers.spawn(workload::receive(
            c.dir.clone(),
            node,
            organ,
            ledger.clone(),
            stop_recv.clone(),
        ));
    }

    let bar = indicatif::ProgressBar::new(a.faults);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:24} [{bar:30}] {pos}/{len} faults, {prefix} documents accepted, {elapsed}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(name.to_owned());
    if a.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }

    let mut log: Vec<FaultRecord> = Vec::new();

    let mut unexpected: Vec<String> = Vec::new();
    let edges = ["vpcp", "nghean", "caobang", "duyxuyen", "dienban"];
    let accepted = |l: &Shared| l.lock().unwrap_or_else(|e| e.into_inner()).accepted_total();
    // Let traffic start before the first fault.
    let warm = Instant::now();
    while accepted(&ledger) < 10 && warm.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every run is bounded: a federation that stops making progress ends the run
    // as a failure instead of hanging it.
    let budget = Duration::from_secs(300 + a.docs / 20 + a.faults * 20);
    let mut timed_out = false;
    let mut faults = 0u64;
    while faults < a.faults || accepted(&ledger) < a.docs {
        if started.elapsed() > budget {
            timed_out = true;
            break;
        }
        bar.set_prefix(accepted(&ledger).to_string());
        if faults >= a.faults {
            // Enough faults: let the generators reach the document count.
            tokio::time::sleep(Duration::from_millis(100)).await;
            restart_exited(&mut c, name, &mut log, &mut unexpected).await?;
            continue;
        }
        tokio::time::sleep(hold(&mut rng, 100, 600)).await;
        restart_exited(&mut c, name, &mut log, &mut unexpected).await?;
        let injected = Instant::now();
        let (kind, target): (String, String) = match name {
            "kill-hub" | "kill-relay" | "kill-edges" => {
                let node = match name {
                    "kill-hub" => "hub",
                    "kill-relay" => "quangnam",
                    _ => edges[rng.usize(..edges.len())],
                };
                c.kill(node).await?;
                tokio::time::sleep(hold(&mut rng, 50, 1500)).await;
                c.start(node).await?;
                ("sigkill".into(), node.into())
            }
            "crash-before-ack" => {
                // The nodes crash on their own; wait for the next ones (two
                // can go down together) and bring every one back.
                let t0 = Instant::now();
                let down = loop {
                    let down = c.exited();
                    if !down.is_empty() {
                        break down;
                    }
                    if t0.elapsed() > Duration::from_secs(120) {
                        bail!("no node crashed in 2 minutes: is the test hook on?");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                };
                for (n, _) in &down {
                    c.start(n).await?;
                }
                // Every crash counts; the first is timed here, the others are logged.
                for (n, how) in &down[1..] {
                    log.push(crash_record(n, how));
                }
                let (n, how) = down[0].clone();
                (format!("abort before ack ({how})"), n)
            }
            "partition" => {
                let links: Vec<String> = c.proxies.keys().cloned().collect();
                let link = links[rng.usize(..links.len())].clone();
                let p = &c.proxies[&link];
                // Every kind in turn, so that a short run sees each one.
                let (kind, f) = match faults % 6 {
                    0 => (
                        "partition both ways",
                        Faults {
                            hold_up: true,
                            hold_down: true,
                            ..Default::default()
                        },
                    ),
                    1 => (
                        "partition child→parent",
                        Faults {
                            hold_up: true,
                            ..Default::default()
                        },
                    ),
                    2 => (
                        "partition parent→child",
                        Faults {
                            hold_down: true,
                            ..Default::default()
                        },
                    ),
                    3 => (
                        "latency 300 ms",
                        Faults {
                            latency: Duration::from_millis(300),
                            ..Default::default()
                        },
                    ),
                    4 => (
                        "bandwidth 128 KiB/s",
                        Faults {
                            rate_bps: 128 << 10,
                            ..Default::default()
                        },
                    ),
                    _ => (
                        "reset mid-transfer",
                        Faults {
                            rate_bps: 256 << 10,
                            ..Default::default()
                        },
                    ),
                };
                p.set(f);
                tokio::time::sleep(hold(&mut rng, 300, 3000)).await;
                if kind == "reset mid-transfer" {
                    p.reset_all();
                }
                p.heal();
                (kind.into(), format!("{link}→parent"))
            }
            "disk-full" => {
                let free = c.free_bytes()?;
                let fill = free.saturating_sub(filler_reserve) + (64 << 20);
                let path = c.dir.join("filler");
                let f = std::fs::File::create(&path)?;
                rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, fill)?;
                f.sync_all()?;
                tokio::time::sleep(hold(&mut rng, 300, 2500)).await;
                drop(f);
                std::fs::remove_file(&path)?;
                ("disk full".into(), "hub, nghean".into())
            }
            "corrupt-partials" => {
                // Slow links make transfers long; kill a node while partial
                // files are there, damage them, restart it.
                let targets = [
                    "hub", "nghean", "quangnam", "duyxuyen", "vpcp", "caobang", "dienban",
                ];
                for p in c.proxies.values() {
                    p.set(Faults {
                        rate_bps: 512 << 10,
                        ..Default::default()
                    });
                }
                // The first node seen holding a partial file (a transfer under
                // way), or a random one after 5 s.
                let t0 = Instant::now();
                let node = loop {
                    let busy: Vec<&str> = targets
                        .iter()
                        .copied()
                        .filter(|n| {
                            cluster::files_under(&c.data_dir(n), "partial/")
                                .iter()
                                .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))
                        })
                        .collect();
                    if !busy.is_empty() {
                        break busy[rng.usize(..busy.len())];
                    }
                    if t0.elapsed() > Duration::from_secs(10) {
                        break targets[rng.usize(..targets.len())];
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                };
                c.kill(node).await?;
                let mut damaged = 0;
                for f in cluster::files_under(&c.data_dir(node), "partial/") {
                    damaged += damage(&f, &mut rng)?;
                }
                for p in c.proxies.values() {
                    p.heal();
                }
                c.start(node).await?;
                (
                    format!("kill + {damaged} partial files damaged"),
                    node.into(),
                )
            }
            "clock-skew" => {
                let node = edges[rng.usize(..edges.len())];
                let offset: i64 = match rng.u8(0..3) {
                    0 => 2 * 3_600_000,
                    1 => -2 * 3_600_000,
                    _ => 0,
                };
                c.edit(node, |t| {
                    hooks(t).insert("clock_offset_ms".into(), offset.into());
                })?;
                c.kill(node).await?;
                c.start(node).await?;
                (format!("clock {:+} h", offset / 3_600_000), node.into())
            }
            "cert-rotation" => {
                let node = edges[rng.usize(..edges.len())];
                crate::certs::revoke(&c.dir, node)?;
                crate::certs::rotate(&c.dir, node)?;
                // The parent drops the revoked link within crl_reload_ms; the
                // node comes back with its new certificate.
                tokio::time::sleep(hold(&mut rng, 250, 1000)).await;
                c.kill(node).await?;
                c.start(node).await?;
                ("revoke + rotate".into(), node.into())
            }
            other => bail!("scenario {other} has no fault"),
        };
        let healed = Instant::now();
        let recovery = await_recovery(
            &mut c,
            &ledger,
            healed,
            flows.len(),
            name,
            &mut log,
            &mut unexpected,
        )
        .await?;
        faults += 1;
        bar.inc(1);
        if !a.json {
            let rec = recovery.map_or("not recovered in 60 s".to_owned(), |ms| {
                format!(
                    "every route delivering again {:.1} s after",
                    ms as f64 / 1000.0
                )
            });
            bar.suspend(|| {
                eprintln!(
                    "  fault {faults}: {kind} on {target}, held {:.1} s; {rec}",
                    (healed - injected).as_secs_f64()
                )
            });
        }
        log.push(FaultRecord {
            kind,
            target,
            held_ms: (healed - injected).as_millis() as u64,
            recovery_ms: recovery,
        });
    }

    // Drain: heal everything, stop sending (what is being offered is finished),
    // wait for every accepted document.
    for p in c.proxies.values() {
        p.heal();
    }
    let _ = std::fs::remove_file(c.dir.join("filler"));
    stop_gen_tx.send_replace(true);
    // The generators finish what they are offering; crashed nodes keep coming back.
    while !tasks.is_empty() {
        tokio::select! {
            _ = tasks.join_next() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                restart_exited(&mut c, name, &mut log, &mut unexpected).await?;
            }
        }
    }
    if name == "crash-before-ack" {
        for node in ["hub", "quangnam", "vpcp"] {
            c.edit(node, |t| {
                hooks(t).remove("abort_before_ack_every");
            })?;
        }
    }
    let drain_started = Instant::now();
    let drain_deadline = drain_started + Duration::from_secs(120);
    let mut last_reconcile = drain_started;
    loop {
        restart_exited(&mut c, name, &mut log, &mut unexpected).await?;
        let left = ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .outstanding();
        if left == 0 || Instant::now() > drain_deadline {
            break;
        }
        // Asking every edge for its whole inbox is heavy: every 2 s at most.
        if last_reconcile.elapsed() > Duration::from_secs(2) {
            workload::reconcile(&c.dir, &ledger).await;
            last_reconcile = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A last look for late duplicates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_recv_tx.send_replace(true);
    while receivers.join_next().await.is_some() {}
    c.stop_all().await;
    bar.finish_and_clear();

    let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
    if timed_out {
        l.anomalies.push(format!(
            "the run did not reach {} documents and {} faults within {} s",
            a.docs,
            a.faults,
            budget.as_secs()
        ));
    }
    let outcome = l.outcome();
    let mut rec: Vec<u64> = log.iter().filter_map(|f| f.recovery_ms).collect();
    rec.sort_unstable();
    let not_recovered = log
        .iter()
        .filter(|f| f.recovery_ms.is_none() && !f.kind.starts_with("abort"))
        .count() as u64;
    let integrity_errors = c.integrity_errors();
    let ok = outcome.clean() && unexpected.is_empty() && integrity_errors.is_empty() && !timed_out;
    Ok(Report {
        scenario: name.into(),
        seed,
        documents: outcome.offered,
        faults: log.len() as u64,
        recovery_p50_ms: percentile(&rec, 0.5),
        recovery_p99_ms: percentile(&rec, 0.99),
        recovery_max_ms: rec.last().copied().unwrap_or(0),
        not_recovered,
        unexpected_exits: unexpected,
        integrity_errors,
        duration_s: started.elapsed().as_secs_f64(),
        anomalies: l.anomalies.clone(),
        send_errors_retried: l.send_errors.values().sum(),
        fault_log: log,
        ok,
        outcome,
    })
}

/// A crash the test hook caused, counted as a fault (not timed).
fn crash_record(node: &str, how: &str) -> FaultRecord {
    FaultRecord {
        kind: format!("abort before ack ({how})"),
        target: node.to_owned(),
        held_ms: 0,
        recovery_ms: None,
    }
}

/// Restarts the nodes that exited on their own: a fault of `crash-before-ack`,
/// unexpected anywhere else.
async fn restart_exited(
    c: &mut Cluster,
    scenario: &str,
    log: &mut Vec<FaultRecord>,
    unexpected: &mut Vec<String>,
) -> Result<()> {
    for (n, how) in c.exited() {
        if scenario == "crash-before-ack" {
            log.push(crash_record(&n, &how));
        } else {
            unexpected.push(format!("{n}: {how}"));
        }
        c.start(&n).await?;
    }
    Ok(())
}

/// Flips a byte or truncates; returns 1 if the file was damaged.
fn damage(path: &std::path::Path, rng: &mut fastrand::Rng) -> Result<u32> {
    let Ok(mut bytes) = std::fs::read(path) else {
        return Ok(0);
    };
    if bytes.is_empty() {
        return Ok(0);
    }
    if rng.bool() {
        let i = rng.usize(..bytes.len());
        bytes[i] ^= 0x5a;
    } else {
        bytes.truncate(rng.usize(..bytes.len()));
    }
    std::fs::write(path, bytes)?;
    Ok(1)
}

fn hooks(t: &mut toml::Table) -> &mut toml::Table {
    table(t, "test_hooks")
}

fn print_report(r: &Report) {
    let o = &r.outcome;
    let mut t = crate::client::table();
    t.set_header(vec!["chaos", &r.scenario]);
    let rows: Vec<(&str, String)> = vec![
        (
            "verdict",
            if r.ok {
                "CLEAN".into()
            } else {
                "FAILED".into()
            },
        ),
        ("documents offered", o.offered.to_string()),
        ("accepted by the sender's edge", o.accepted.to_string()),
        ("delivered and acknowledged", o.delivered.to_string()),
        ("faults injected", r.faults.to_string()),
        ("lost", o.lost.to_string()),
        ("duplicated", o.duplicated.to_string()),
        ("corrupted", o.corrupted.to_string()),
        ("phantom", o.phantom.to_string()),
        ("misrouted", o.misrouted.to_string()),
        ("order violations", o.order_violations.to_string()),
        ("never accepted", o.unaccepted.to_string()),
        (
            "recovery p50 / p99 / max",
            format!(
                "{} / {} / {} ms",
                r.recovery_p50_ms, r.recovery_p99_ms, r.recovery_max_ms
            ),
        ),
        ("not recovered within 60 s", r.not_recovered.to_string()),
        ("unexpected exits", r.unexpected_exits.len().to_string()),
        (
            "panics, audit chain errors",
            r.integrity_errors.len().to_string(),
        ),
        ("send errors retried", r.send_errors_retried.to_string()),
        ("seed", r.seed.to_string()),
        ("duration", format!("{:.1} s", r.duration_s)),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    println!("{t}");
    for a in &r.anomalies {
        println!("  anomaly: {a}");
    }
    for l in &o.lost_examples {
        println!("  lost: {l}");
    }
    for u in &r.unexpected_exits {
        println!("  unexpected exit: {u}");
    }
    for e in r.integrity_errors.iter().take(10) {
        println!("  in the logs: {e}");
    }
}

fn print_summary(reports: &[Report]) {
    let mut t = crate::client::table();
    t.set_header(vec![
        "scenario",
        "docs",
        "faults",
        "lost",
        "dup",
        "corrupt",
        "phantom",
        "misrouted",
        "order",
        "rec p50",
        "rec p99",
        "verdict",
    ]);
    for r in reports {
        let o = &r.outcome;
        t.add_row(vec![
            r.scenario.clone(),
            o.offered.to_string(),
            r.faults.to_string(),
            o.lost.to_string(),
            o.duplicated.to_string(),
            o.corrupted.to_string(),
            o.phantom.to_string(),
            o.misrouted.to_string(),
            o.order_violations.to_string(),
            format!("{} ms", r.recovery_p50_ms),
            format!("{} ms", r.recovery_p99_ms),
            if r.ok {
                "clean".into()
            } else {
                "FAILED".into()
            },
        ]);
    }
    println!("{t}");
}
