//! `truc bench`: load through a real federation (in-process nodes on loopback, real
//! mTLS, real fsync, signatures made and verified at every hop).
//!
//! Scenario `edge-hub-edge`: one ministry edge sends N documents with a 10 KB body
//! to one province edge through the hub, C at a time; latency runs from the
//! application's `Send` call to the recipient edge having the document durably.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use truc_node::{Config, Event, Listeners, RunningNode};
use truc_proto::v1::{self as pb, agency_client::AgencyClient};

use crate::{certs, client};

pub struct BenchArgs {
    pub docs: usize,
    pub concurrency: usize,
    pub body_bytes: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
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

pub async fn run(a: BenchArgs) -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("truc-bench-").tempdir()?;
    let dir = tmp.path();
    let probe = {
        let d = dir.to_owned();
        tokio::task::spawn_blocking(move || fsync_probe(&d, Duration::from_millis(500))).await??
    };
    println!(
        "fsync probe: {probe:.0} write+fdatasync/s of 4 KiB in {}",
        dir.display()
    );
    let mut topo = certs::Topology::default_topology()?;
    topo.nodes.retain(|n| n.id != "caobang");
    let mut listeners: HashMap<String, Listeners> = HashMap::new();
    for n in &mut topo.nodes {
        let mut l = Listeners::default();
        if n.listen.is_some() {
            let tcp = TcpListener::bind("127.0.0.1:0").await?;
            n.listen = Some(tcp.local_addr()?.to_string());
            l.link = Some(tcp);
        }
        if n.agency_api.is_some() {
            let tcp = TcpListener::bind("127.0.0.1:0").await?;
            n.agency_api = Some(tcp.local_addr()?.to_string());
            l.agency = Some(tcp);
        }
        if n.admin_api.is_some() {
            let tcp = TcpListener::bind("127.0.0.1:0").await?;
            n.admin_api = Some(tcp.local_addr()?.to_string());
            l.admin = Some(tcp);
        }
        n.rest_api = None;
        listeners.insert(n.id.clone(), l);
    }
    let report = certs::init(dir, &topo)?;
    let mut nodes = Vec::new();
    for n in &topo.nodes {
        let cfg = Config::load(&report.configs[&n.id])?;
        nodes
            .push(RunningNode::start_with(cfg, listeners.remove(&n.id).unwrap_or_default()).await?);
    }
    for node in &nodes {
        if node.config.parent.is_some() {
            let mut up = node.parent_up();
            tokio::time::timeout(Duration::from_secs(20), up.wait_for(|u| *u)).await??;
        }
    }
    let sender_addr = nodes
        .iter()
        .find(|n| n.state.node_id.as_str() == "vpcp")
        .and_then(|n| n.agency_addr)
        .context("sender")?;
    let recipient = nodes
        .iter()
        .find(|n| n.state.node_id.as_str() == "nghean")
        .context("recipient")?;

    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut events = recipient.state.subscribe();
    let st = started.clone();
    let total = a.docs;
    let collector = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total);
        let mut early: HashMap<String, Instant> = HashMap::new();
        while lat.len() < total {
            match events.recv().await {
                Ok(Event::Delivered { doc_id, .. }) => {
                    let now = Instant::now();
                    let id = doc_id.to_string();
                    match st.lock().ok().and_then(|m| m.get(&id).copied()) {
                        Some(t0) => lat.push(now - t0),
                        None => {
                            early.insert(id, now);
                        }
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("bench: missed {n} events");
                }
                Err(_) => break,
            }
            // Deliveries seen before their send returned.
            if !early.is_empty()
                && let Ok(m) = st.lock()
            {
                early.retain(|id, at| match m.get(id) {
                    Some(t0) => {
                        lat.push(at.saturating_duration_since(*t0));
                        false
                    }
                    None => true,
                });
            }
        }
        lat
    });

    let ch = Channel::from_shared(format!("http://{sender_addr}"))?
        .connect()
        .await?;
    let t0 = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let mut c = AgencyClient::new(ch.clone());
        let next = next.clone();
        let started = started.clone();
        let body = a.body_bytes;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let mut data = vec![b'x'; body];
                data[..8.min(body)].copy_from_slice(&(i as u64).to_be_bytes()[..8.min(body)]);
                let id = truc_core::DocId::new_v7().to_string();
                if let Ok(mut m) = started.lock() {
                    m.insert(id.clone(), Instant::now());
                }
                c.send(pb::SendRequest {
                    from: "000.00.00.G22".into(),
                    to: vec!["000.00.00.H41".into()],
                    subject: format!("Công văn số {i}"),
                    attachments: vec![pb::Attachment {
                        name: "body.bin".into(),
                        content_type: "application/octet-stream".into(),
                        data,
                        ..Default::default()
                    }],
                    doc_id: id,
                    ..Default::default()
                })
                .await
                .map_err(client::status_error)?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let sent = t0.elapsed();
    let mut lat = tokio::time::timeout(Duration::from_secs(600), collector).await??;
    let done = t0.elapsed();
    lat.sort();
    println!(
        "edge→hub→edge: {} docs of {} B, {} in flight: sent in {:.2?}, delivered in {:.2?} = {:.0} docs/s; latency p50 {:.1?} p99 {:.1?} max {:.1?}",
        total,
        a.body_bytes,
        a.concurrency,
        sent,
        done,
        total as f64 / done.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
    );
    for n in &nodes {
        let s = n.state.commit().stats();
        println!(
            "  {:8} flushes {:6}  batches {:6}  mean flush {:.2} ms",
            n.state.node_id.as_str(),
            s.flushes.load(std::sync::atomic::Ordering::Relaxed),
            s.batches.load(std::sync::atomic::Ordering::Relaxed),
            s.flush_micros_total
                .load(std::sync::atomic::Ordering::Relaxed) as f64
                / 1000.0
                / s.flushes.load(std::sync::atomic::Ordering::Relaxed).max(1) as f64
        );
    }
    for node in nodes.into_iter().rev() {
        node.shutdown().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fsync_probe_measures_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let rate = fsync_probe(dir.path(), Duration::from_millis(50)).unwrap();
        assert!(rate > 0.0, "{rate}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
