//! What operators see of a node: Prometheus metrics (counters updated where
//! things happen, gauges read from the state at each scrape), facts about peers
//! for the federation tree, the reports children send up, throughput samples
//! for the dashboard's chart, and the alerts computed from all of it.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, Weak, atomic::AtomicI64},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::Registry,
};
use serde::Serialize;
use truc_core::NodeId;
use truc_proto::v1 as pb;

use crate::{config::AlertSection, state::NodeState};

type Labels = Vec<(&'static str, String)>;

/// Upper bounds (seconds) of the end-to-end delivery latency buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];
/// Latencies kept for percentiles in `truc stats`.
const RECENT_LATENCIES: usize = 10_000;
/// Throughput samples kept for the dashboard (one per sample interval).
const SAMPLES: usize = 900;

/// What this node knows of a direct peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerInfo {
    pub version: String,
    /// Unix seconds; 0 when not known (a child sees its parent's only by report).
    pub cert_not_after: i64,
    /// Unix ms of the last time the link came up or went down.
    pub up_since_ms: i64,
    pub down_since_ms: i64,
    pub up: bool,
    pub reconnects: u64,
}

/// One point of the throughput chart: counters at a time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub at_ms: i64,
    pub accepted: u64,
    pub delivered: u64,
    pub refused: u64,
}

/// The audit chain's state when it was last checked.
#[derive(Debug, Clone, Serialize)]
pub struct AuditStatus {
    pub checked_at_ms: i64,
    pub entries: u64,
    pub ok: bool,
    pub reason: String,
}

/// One active alert.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Alert {
    /// overdue, link_down, cert_expiry, disk, audit, store, crl.
    pub kind: &'static str,
    /// What it is about: an agency, a node, a certificate.
    pub subject: String,
    pub detail: String,
}

#[derive(Debug)]
pub struct Telemetry {
    documents: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    delivery: Histogram,
    recent: Mutex<VecDeque<f64>>,
    peers: Mutex<HashMap<NodeId, PeerInfo>>,
    reports: Mutex<HashMap<NodeId, (i64, Vec<pb::NodeView>)>>,
    samples: Mutex<VecDeque<Sample>>,
    audit: Mutex<Option<AuditStatus>>,
    /// (which: "tls" | "signing", file, next update in Unix seconds).
    crls: Mutex<Vec<(String, String, i64)>>,
    /// This node's own transport certificate (Unix seconds).
    pub own_cert_not_after: AtomicI64,
    pub started_ms: i64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            documents: Family::default(),
            refused: Family::default(),
            delivery: Histogram::new(LATENCY_BUCKETS),
            recent: Mutex::default(),
            peers: Mutex::default(),
            reports: Mutex::default(),
            samples: Mutex::default(),
            audit: Mutex::default(),
            crls: Mutex::default(),
            own_cert_not_after: AtomicI64::new(0),
            started_ms: crate::state::now_ms(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Telemetry {
    /// A message in from a peer or an application: `result` is stored,
    /// duplicate, refused or deferred.
    pub fn document_in(&self, kind: &str, result: &str) {
        self.documents
            .get_or_create(&vec![
                ("direction", "in".to_owned()),
                ("kind", kind.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }

    /// A message out to a peer: `result` is acked or rejected.
    pub fn document_out(&self, kind: &str, result: &str) {
        self.documents
            .get_or_create(&vec![
                ("direction", "out".to_owned()),
                ("kind", kind.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }

    /// Input refused: where (link, agency, rest, edxml) and why (the gRPC code).
    pub fn refused(&self, source: &str, code: tonic::Code) {
        let reason = format!("{code:?}")
            .chars()
            .flat_map(|c| {
                if c.is_uppercase() {
                    vec!['_', c.to_ascii_lowercase()]
                } else {
                    vec![c]
                }
            })
            .collect::<String>()
            .trim_start_matches('_')
            .to_owned();
        self.refused
            .get_or_create(&vec![("source", source.to_owned()), ("reason", reason)])
            .inc();
    }

    /// A recipient's delivered receipt reached the sender after `secs`.
    pub fn delivered_after(&self, secs: f64) {
        self.delivery.observe(secs);
        let mut r = lock(&self.recent);
        if r.len() == RECENT_LATENCIES {
            r.pop_front();
        }
        r.push_back(secs);
    }

    /// (count, p50, p90, p99) of recent delivery latencies, in seconds.
    pub fn latency_percentiles(&self) -> (u64, f64, f64, f64) {
        let mut v: Vec<f64> = lock(&self.recent).iter().copied().collect();
        if v.is_empty() {
            return (0, 0.0, 0.0, 0.0);
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (v.len() as u64, at(0.5), at(0.9), at(0.99))
    }

    pub fn link_up(&self, peer: &NodeId, version: &str, cert_not_after: i64) {
        let mut p = lock(&self.peers);
        let e = p.entry(peer.clone()).or_default();
        if e.up_since_ms != 0 || e.down_since_ms != 0 {
            e.reconnects += 1;
        }
        e.up = true;
        e.up_since_ms = crate::state::now_ms();
        e.version = version.to_owned();
        if cert_not_after != 0 {
            e.cert_not_after = cert_not_after;
        }
    }

    pub fn link_down(&self, peer: &NodeId) {
        let mut p = lock(&self.peers);
        let e = p.entry(peer.clone()).or_default();
        e.up = false;
        e.down_since_ms = crate::state::now_ms();
    }

    pub fn peer(&self, peer: &NodeId) -> Option<PeerInfo> {
        lock(&self.peers).get(peer).cloned()
    }

    /// A child's view of itself and the tree below it.
    pub fn set_report(&self, child: &NodeId, nodes: Vec<pb::NodeView>) {
        lock(&self.reports).insert(child.clone(), (crate::state::now_ms(), nodes));
    }

    pub fn report(&self, child: &NodeId) -> Option<(i64, Vec<pb::NodeView>)> {
        lock(&self.reports).get(child).cloned()
    }

    pub fn sample(&self, s: Sample) {
        let mut v = lock(&self.samples);
        if v.len() == SAMPLES {
            v.pop_front();
        }
        v.push_back(s);
    }

    pub fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).iter().copied().collect()
    }

    /// The revocation lists in force, each with when it is due to be
    /// replaced (Unix seconds): a list past it fails every check it covers.
    pub fn set_crls(&self, which: &str, due: Vec<(String, i64)>) {
        let mut m = lock(&self.crls);
        m.retain(|(w, _, _)| w != which);
        m.extend(
            due.into_iter()
                .map(|(path, at)| (which.to_owned(), path, at)),
        );
    }

    pub fn crls(&self) -> Vec<(String, String, i64)> {
        lock(&self.crls).clone()
    }

    pub fn set_audit(&self, a: AuditStatus) {
        *lock(&self.audit) = Some(a);
    }

    pub fn audit(&self) -> Option<AuditStatus> {
        lock(&self.audit).clone()
    }

    /// Registers this node's metrics: the counters above and a collector that
    /// reads the state at each scrape.
    pub fn registry(state: &Arc<NodeState>, alerts: AlertSection) -> Registry {
        let t = &state.telemetry;
        let mut r = Registry::with_prefix("truc");
        r.register(
            "documents",
            "Messages in (from a peer or an application) and out (acknowledged by a peer), by kind and result",
            t.documents.clone(),
        );
        r.register(
            "refused",
            "Input refused, by where it came in and the reason (gRPC code)",
            t.refused.clone(),
        );
        r.register(
            "delivery_latency_seconds",
            "From a document's creation to its recipient's signed delivered receipt at the sender",
            t.delivery.clone(),
        );
        r.register_collector(Box::new(StateCollector {
            state: Arc::downgrade(state),
            alerts,
        }));
        r
    }
}

/// Gauges read from the node's state when Prometheus scrapes.
#[derive(Debug)]
struct StateCollector {
    state: Weak<NodeState>,
    alerts: AlertSection,
}

fn gauge<N>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, N)],
) -> Result<(), std::fmt::Error>
where
    N: prometheus_client::encoding::EncodeGaugeValue + std::fmt::Debug + Send + Sync + Copy,
    ConstGauge<N>: EncodeMetric,
{
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    match rows {
        // A single unlabelled value is written without `{}`.
        [(labels, v)] if labels.is_empty() => ConstGauge::new(*v).encode(m)?,
        _ => {
            for (labels, v) in rows {
                let labels: Labels = labels.iter().map(|(k, v)| (*k, escaped(v))).collect();
                ConstGauge::new(*v).encode(m.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

/// A label value as the text format must carry it: prometheus-client writes
/// values as given, and a CA's name or a path may hold `"`, `\` or a newline.
fn escaped(v: &str) -> String {
    if !v.contains(['\\', '"', '\n']) {
        return v.to_owned();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(st) = self.state.upgrade() else {
            return Ok(());
        };
        let now = crate::state::now_ms();
        gauge(
            &mut enc,
            "info",
            "This node: id, role and software version",
            &[(
                vec![
                    ("node", st.node_id.to_string()),
                    ("role", st.role().to_owned()),
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ],
                1i64,
            )],
        )?;
        for (name, v) in st.counters() {
            let full = format!("node_{name}");
            let m = enc.encode_descriptor(
                &full,
                "Node counter since start (see `truc stats`)",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(v).encode(m)?;
        }

        // What the store holds, read once and within a wait, so that a store
        // that hangs does not hold the scrape. Unreadable: no gauges of it
        // (absent, not zero), and the store alert below.
        let (read, held, packs) = match st.read_within(crate::state::READ_WAIT, |st| {
            // The pack counts wait for a pack write under way (a disk that hangs).
            Ok((st.queue_counts(), st.held_bytes(), st.blobs.pack_stats()))
        }) {
            Ok((read, held, packs)) => (read, held.unwrap_or_default(), Some(packs)),
            Err(e) => (Err(e), Vec::new(), None),
        };
        let alerts = st.alerts(&self.alerts, &read);
        let readable = read.is_ok();
        let snap = read.unwrap_or_default();
        let depth: Vec<(Labels, i64)> = snap
            .recipients
            .iter()
            .map(|q| (vec![("recipient", q.organ.clone())], q.depth as i64))
            .collect();
        gauge(
            &mut enc,
            "queue_depth",
            "Documents waiting at this node for a recipient agency",
            &depth,
        )?;
        let age: Vec<(Labels, f64)> = snap
            .recipients
            .iter()
            .filter(|q| q.oldest_ms > 0)
            .map(|q| {
                (
                    vec![("recipient", q.organ.clone())],
                    (now - q.oldest_ms).max(0) as f64 / 1000.0,
                )
            })
            .collect();
        gauge(
            &mut enc,
            "queue_oldest_age_seconds",
            "Age of the oldest document waiting for a recipient agency",
            &age,
        )?;
        let overdue: Vec<(Labels, i64)> = snap
            .overdue_counts
            .into_iter()
            .map(|((r, p, parked), n)| {
                (
                    vec![
                        ("recipient", r),
                        ("priority", p.to_string()),
                        ("parked", parked.to_string()),
                    ],
                    n as i64,
                )
            })
            .collect();
        gauge(
            &mut enc,
            "overdue_documents",
            "Documents past their delivery deadline, by recipient and priority (parked: waiting for requeue)",
            &overdue,
        )?;
        gauge(
            &mut enc,
            "dead_letters",
            "Transfers refused for good, kept until an operator requeues or discards them (truc queues lists them)",
            &if readable {
                vec![(Vec::new(), snap.dead_total as i64)]
            } else {
                Vec::new()
            },
        )?;

        let links = st.links();
        let up: Vec<(Labels, i64)> = links
            .iter()
            .map(|(peer, dir, info)| {
                (
                    vec![("peer", peer.to_string()), ("direction", (*dir).to_owned())],
                    i64::from(info.up),
                )
            })
            .collect();
        gauge(&mut enc, "link_up", "1 while the link to a peer is up", &up)?;
        let down: Vec<(Labels, f64)> = links
            .iter()
            .map(|(peer, dir, info)| {
                let since = if info.down_since_ms != 0 {
                    info.down_since_ms
                } else {
                    st.telemetry.started_ms
                };
                let secs = if info.up {
                    0.0
                } else {
                    (now - since).max(0) as f64 / 1000.0
                };
                (
                    vec![("peer", peer.to_string()), ("direction", (*dir).to_owned())],
                    secs,
                )
            })
            .collect();
        gauge(
            &mut enc,
            "link_down_seconds",
            "How long the link to a peer has been down (0 while up)",
            &down,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "link_reconnects",
                "Times a link came back after it went down",
                None,
                MetricType::Counter,
            )?;
            for (peer, dir, info) in &links {
                ConstCounter::new(info.reconnects).encode(m.encode_family(&vec![
                    ("peer", peer.to_string()),
                    ("direction", (*dir).to_owned()),
                ])?)?;
            }
        }

        let certs: Vec<(Labels, i64)> = st
            .certificates()
            .into_iter()
            .map(|(subject, t)| (vec![("subject", subject)], t))
            .collect();
        gauge(
            &mut enc,
            "certificate_expiry_timestamp_seconds",
            "When a certificate this node uses or sees expires (node, agency:<organ>, peer:<node>)",
            &certs,
        )?;

        let held: Vec<(Labels, i64)> = held
            .into_iter()
            .map(|(from, n)| (vec![("agency", from)], n as i64))
            .collect();
        gauge(
            &mut enc,
            "stored_attachment_bytes",
            "Attachment bytes held at this node for documents from an agency",
            &held,
        )?;
        if let Ok((total, free)) = st.blobs.disk_usage() {
            gauge(
                &mut enc,
                "disk_total_bytes",
                "Size of the filesystem holding data_dir",
                &[(Labels::new(), total as i64)],
            )?;
            gauge(
                &mut enc,
                "disk_free_bytes",
                "Free bytes on the filesystem holding data_dir",
                &[(Labels::new(), free as i64)],
            )?;
        }
        // Absent (not zero) when the read above did not answer.
        let pack = |f: fn(&truc_store::pack::PackStats) -> usize| -> Vec<(Labels, i64)> {
            packs.iter().map(|p| (Labels::new(), f(p) as i64)).collect()
        };
        gauge(
            &mut enc,
            "pack_files",
            "Pack files holding small blobs (live ones, and the one being written)",
            &pack(|p| p.packs),
        )?;
        gauge(
            &mut enc,
            "packed_blobs",
            "Small blobs (envelopes, attachments up to 64 KiB) stored in pack files",
            &pack(|p| p.blobs),
        )?;
        gauge(
            &mut enc,
            "pack_index_bytes",
            "Memory of the index of packed blobs (rebuilt from the packs at start-up)",
            &pack(|p| p.index_bytes),
        )?;
        if let Some(r) = st.store().remote_stats() {
            gauge(
                &mut enc,
                "store_read_cache_bytes",
                "Memory of the answers to point reads the PostgreSQL store's writer keeps (storage.cache_bytes bounds it)",
                &[(Labels::new(), r.cached_bytes as i64)],
            )?;
            gauge(
                &mut enc,
                "store_requests_waiting",
                "Requests to the PostgreSQL store waiting for its one connection",
                &[(Labels::new(), i64::try_from(r.waiting).unwrap_or(i64::MAX))],
            )?;
        }
        gauge(
            &mut enc,
            "store_writable",
            "1 while the store accepts writes (0 after a failed flush, below the free-space reserve or when free space cannot be read, or while a store request or flush hangs for more than 5 s)",
            &[(Labels::new(), i64::from(st.writable()))],
        )?;
        if let Some(a) = st.telemetry.audit() {
            gauge(
                &mut enc,
                "audit_chain_ok",
                "1 if the audit hash chain verified at the last check",
                &[(Labels::new(), i64::from(a.ok))],
            )?;
            gauge(
                &mut enc,
                "audit_entries",
                "Entries in the audit chain at the last check",
                &[(Labels::new(), a.entries as i64)],
            )?;
        }
        {
            let (sum, count, buckets) = st.commit().stats().flush_histogram();
            let mut m = enc.encode_descriptor(
                "fsync_duration_seconds",
                "Duration of each store flush (fsync), shared by a group of writes",
                None,
                MetricType::Histogram,
            )?;
            m.encode_histogram::<Labels>(sum, count, &buckets, None)?;
        }
        let alerts: Vec<(Labels, i64)> = alerts
            .into_iter()
            .map(|a| {
                (
                    vec![("alert", a.kind.to_owned()), ("subject", a.subject)],
                    1i64,
                )
            })
            .collect();
        gauge(
            &mut enc,
            "alert_active",
            "An alert this node raises (the same list as on the dashboard)",
            &alerts,
        )?;
        Ok(())
    }
}

/// Renders a registry as Prometheus text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    /// A label value with the text format's special characters (a CA named
    /// with quotes, a path with a backslash) cannot break the scrape.
    #[test]
    fn label_values_are_escaped_for_the_text_format() {
        assert_eq!(
            super::escaped("O=\"Bộ\" \\ CN=x\ny"),
            "O=\\\"Bộ\\\" \\\\ CN=x\\ny"
        );
        assert_eq!(super::escaped("000.00.00.H41"), "000.00.00.H41");
    }
}
