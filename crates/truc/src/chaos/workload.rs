//! The workload and its checker. Generators send documents with ids chosen in
//! advance and retry the same id until the edge says it was accepted; receiving
//! applications list their inbox, fetch each document, verify its signature
//! offline and hash its attachments, then acknowledge it. The ledger counts what
//! a user would call a failure: lost, duplicated, corrupted, phantom, misrouted
//! documents and order violations per (from, to).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use rustls::pki_types::UnixTime;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use truc_node::envelope::{self, Sender, Verifiers};
use truc_pki::sign::SignatureVerifier;
use truc_proto::v1::{self as pb};
use truc_store::Digest;

use crate::client;

/// A stream of documents from one agency to another, sent one after the other
/// (so that their order is defined).
#[derive(Debug, Clone)]
pub struct Flow {
    pub from_node: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

/// Every route of the default topology: edge to edge through the hub, down and
/// up through the relay, and inside the province.
pub fn flows() -> Vec<Flow> {
    let f = |from_node, from, to| Flow {
        from_node,
        from,
        to,
    };
    vec![
        f("vpcp", "000.00.00.G22", "000.00.00.H41"),
        f("nghean", "000.00.00.H41", "000.00.00.G22"),
        f("vpcp", "000.00.00.G22", "001.00.10.H47"),
        f("dienban", "002.00.10.H47", "000.00.00.H14"),
        f("duyxuyen", "001.00.10.H47", "002.00.10.H47"),
    ]
}

/// Every agency of the default topology and the node serving it: each gets a
/// receiving application, so a document delivered to the wrong one is seen.
pub fn receivers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("vpcp", "000.00.00.G22"),
        ("nghean", "000.00.00.H41"),
        ("caobang", "000.00.00.H14"),
        ("quangnam", "000.00.00.H47"),
        ("duyxuyen", "001.00.10.H47"),
        ("dienban", "002.00.10.H47"),
    ]
}

#[derive(Debug)]
struct Offered {
    flow: usize,
    seq: u64,
    from: String,
    to: Vec<String>,
    digests: Vec<Digest>,
    accepted_at: Option<Instant>,
}

#[derive(Debug)]
struct Seen {
    /// Order in which the receiving application first saw it.
    observed: u64,
    acked: bool,
    /// Its flow, if it was offered.
    flow: Option<usize>,
}

/// What every generator and receiver recorded.
#[derive(Debug, Default)]
pub struct Ledger {
    offered: HashMap<String, Offered>,
    seen: HashMap<(String, String), Seen>,
    observe: u64,
    duplicated: u64,
    corrupted: u64,
    phantom: u64,
    misrouted: u64,
    /// The first anomalies, described.
    pub anomalies: Vec<String>,
    /// Errors the generators met (and retried), by kind.
    pub send_errors: BTreeMap<String, u64>,
    /// Per flow: the latest acceptance time among documents seen delivered.
    fresh: HashMap<usize, Instant>,
    /// Per flow: documents accepted.
    accepted: HashMap<usize, u64>,
    finished: HashMap<usize, bool>,
    /// Per flow: documents acknowledged by their recipient.
    acked: HashMap<usize, u64>,
}

pub type Shared = Arc<Mutex<Ledger>>;

/// Documents per flow accepted and not yet acknowledged, at most.
const WINDOW: u64 = 16;

fn lock(l: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ledger {
    fn anomaly(&mut self, what: String) {
        tracing::error!(anomaly = %what, "chaos checker");
        if self.anomalies.len() < 20 {
            self.anomalies.push(what);
        }
    }

    /// Records the first time the application sees a document at an agency.
    fn first_seen(&mut self, key: &(String, String), flow: Option<usize>) {
        self.observe += 1;
        let observed = self.observe;
        self.seen.insert(
            key.clone(),
            Seen {
                observed,
                acked: false,
                flow,
            },
        );
    }

    /// Documents of a flow accepted and not yet acknowledged by their recipient.
    fn in_flight(&self, flow: usize) -> u64 {
        self.accepted
            .get(&flow)
            .copied()
            .unwrap_or(0)
            .saturating_sub(self.acked.get(&flow).copied().unwrap_or(0))
    }

    pub fn accepted_total(&self) -> u64 {
        self.accepted.values().sum()
    }

    /// Whether every flow still sending has had a document accepted at or after
    /// `since` delivered.
    pub fn recovered(&self, since: Instant, flows: usize) -> bool {
        (0..flows).all(|f| {
            self.finished.get(&f).copied().unwrap_or(false)
                || self.fresh.get(&f).is_some_and(|t| *t >= since)
        })
    }

    /// Accepted documents not yet acknowledged by every recipient.
    pub fn outstanding(&self) -> u64 {
        self.offered
            .iter()
            .filter(|(_, o)| o.accepted_at.is_some())
            .map(|(id, o)| {
                o.to.iter()
                    .filter(|to| {
                        !self
                            .seen
                            .get(&(id.clone(), (*to).clone()))
                            .is_some_and(|s| s.acked)
                    })
                    .count() as u64
            })
            .sum()
    }

    pub fn outcome(&self) -> Outcome {
        let mut o = Outcome {
            offered: self.offered.len() as u64,
            accepted: self.accepted_total(),
            duplicated: self.duplicated,
            corrupted: self.corrupted,
            phantom: self.phantom,
            misrouted: self.misrouted,
            ..Default::default()
        };
        let mut by_flow: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
        for (id, off) in &self.offered {
            if off.accepted_at.is_none() {
                o.unaccepted += 1;
                continue;
            }
            let mut all = true;
            for to in &off.to {
                match self.seen.get(&(id.clone(), to.clone())) {
                    Some(s) if s.acked => {
                        by_flow
                            .entry(off.flow)
                            .or_default()
                            .push((off.seq, s.observed));
                    }
                    _ => all = false,
                }
            }
            if all {
                o.delivered += 1;
            } else {
                o.lost += 1;
                if o.lost_examples.len() < 10 {
                    o.lost_examples.push(format!(
                        "{id} (flow {} #{}: {} → {})",
                        off.flow,
                        off.seq,
                        off.from,
                        off.to.join(",")
                    ));
                }
            }
        }
        for seen in by_flow.values_mut() {
            seen.sort();
            o.order_violations += seen.windows(2).filter(|w| w[0].1 > w[1].1).count() as u64;
        }
        o
    }
}

/// The checker's verdict.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Outcome {
    pub offered: u64,
    pub accepted: u64,
    /// Accepted and acknowledged by every recipient.
    pub delivered: u64,
    /// Accepted, never delivered.
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub phantom: u64,
    pub misrouted: u64,
    pub order_violations: u64,
    /// Offered but never accepted by the sending edge before the run ended.
    pub unaccepted: u64,
    pub lost_examples: Vec<String>,
}

impl Outcome {
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.corrupted == 0
            && self.phantom == 0
            && self.misrouted == 0
            && self.order_violations == 0
            && self.unaccepted == 0
    }
}

/// Attachment contents shared by the generators: a few large ones (uploaded
/// before the send, streamed between nodes) reused across documents.
pub struct Pool {
    pub large: Vec<Vec<u8>>,
    /// Every n-th document of a flow carries a large attachment (0: none).
    pub large_every: u64,
}

impl Pool {
    pub fn new(large_every: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(7);
        let large = (0..3)
            .map(|_| {
                let mut v = vec![0u8; 600 << 10];
                rng.fill(&mut v);
                v
            })
            .collect();
        Self { large, large_every }
    }
}

async fn agency(dir: &std::path::Path, node: &str) -> Result<crate::client::AgencyApi> {
    client::connect(&dir.join(format!("{node}.toml"))).await
}

fn error_kind(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    let s = s.split(':').next().unwrap_or("").trim();
    s.chars().take(60).collect()
}

/// Sends the documents of one flow until `stop`, one after the other; each is
/// retried with the same id until the edge accepts it.
pub async fn generate(
    dir: PathBuf,
    index: usize,
    flow: Flow,
    ledger: Shared,
    pool: Arc<Pool>,
    stop: watch::Receiver<bool>,
) {
    let mut conn: Option<crate::client::AgencyApi> = None;
    let mut seq = 0u64;
    while !*stop.borrow() {
        // An application keeps a bounded number of documents in flight: the
        // run measures faults, not an ever-growing queue.
        while lock(&ledger).in_flight(index) >= WINDOW && !*stop.borrow() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if *stop.borrow() {
            break;
        }
        let doc_id = uuid::Uuid::now_v7().to_string();
        let body = format!(
            "Công văn thử nghiệm {doc_id}: luồng {index} số {seq}, từ {} đến {}.\n",
            flow.from, flow.to
        )
        .repeat(8)
        .into_bytes();
        let large = (pool.large_every > 0 && seq % pool.large_every == pool.large_every - 1)
            .then(|| &pool.large[(seq / pool.large_every) as usize % pool.large.len()]);
        let mut digests = vec![Digest::of(&body)];
        if let Some(l) = large {
            digests.push(Digest::of(l));
        }
        lock(&ledger).offered.insert(
            doc_id.clone(),
            Offered {
                flow: index,
                seq,
                from: flow.from.into(),
                to: vec![flow.to.into()],
                digests,
                accepted_at: None,
            },
        );
        // Until accepted. When the run ends, the document being offered still gets
        // a minute (the faults are healed by then); only then does it count as
        // never accepted.
        let mut stopping: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                let since = *stopping.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(60) {
                    break;
                }
            }
            let r = send_once(&dir, &mut conn, &flow, &doc_id, seq, &body, large).await;
            match r {
                Ok(()) => {
                    let mut l = lock(&ledger);
                    if let Some(o) = l.offered.get_mut(&doc_id) {
                        o.accepted_at = Some(Instant::now());
                    }
                    *l.accepted.entry(index).or_default() += 1;
                    break;
                }
                Err(e) => {
                    conn = None;
                    *lock(&ledger).send_errors.entry(error_kind(&e)).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        seq += 1;
    }
    lock(&ledger).finished.insert(index, true);
}

async fn send_once(
    dir: &std::path::Path,
    conn: &mut Option<crate::client::AgencyApi>,
    flow: &Flow,
    doc_id: &str,
    seq: u64,
    body: &[u8],
    large: Option<&Vec<u8>>,
) -> Result<()> {
    if conn.is_none() {
        *conn = Some(agency(dir, flow.from_node).await?);
    }
    let c = conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
    let mut attachments = vec![pb::Attachment {
        name: "noi-dung.txt".into(),
        content_type: "text/plain".into(),
        data: body.to_vec(),
        ..Default::default()
    }];
    if let Some(l) = large {
        let chunk = pb::UploadChunk {
            upload_id: uuid::Uuid::now_v7().to_string(),
            size: l.len() as u64,
            offset: 0,
            data: l.clone(),
            sha256: Vec::new(),
        };
        let up = tokio::time::timeout(
            Duration::from_secs(30),
            c.upload(tokio_stream::iter(vec![chunk])),
        )
        .await
        .map_err(|_| anyhow!("upload timed out"))?
        .map_err(client::status_error)?
        .into_inner();
        attachments.push(pb::Attachment {
            name: "phu-luc.bin".into(),
            content_type: "application/octet-stream".into(),
            sha256: up.sha256,
            size: up.size,
            data: Vec::new(),
        });
    }
    let req = pb::SendRequest {
        from: flow.from.into(),
        to: vec![flow.to.into()],
        subject: format!("Thử nghiệm độ tin cậy số {seq}"),
        attachments,
        doc_id: doc_id.into(),
        ..Default::default()
    };
    tokio::time::timeout(Duration::from_secs(30), c.send(req))
        .await
        .map_err(|_| anyhow!("send timed out"))?
        .map_err(client::status_error)?;
    Ok(())
}

/// The receiving application of one agency: until `stop`, takes every new
/// document in its inbox, checks it and acknowledges it.
pub async fn receive(
    dir: PathBuf,
    node: &'static str,
    organ: &'static str,
    ledger: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let verifiers = match (
        SignatureVerifier::from_file(&dir.join("signing-ca.crt")),
        SignatureVerifier::from_file(&dir.join("transport-ca.crt")),
    ) {
        (Ok(agencies), Ok(nodes)) => Verifiers { agencies, nodes },
        _ => {
            lock(&ledger).anomaly(format!("{organ}: cannot load the CAs"));
            return;
        }
    };
    let mut conn: Option<crate::client::AgencyApi> = None;
    loop {
        let idle = match receive_once(&dir, node, organ, &ledger, &verifiers, &mut conn).await {
            Ok(n) => n == 0,
            Err(_) => {
                conn = None;
                true
            }
        };
        if idle {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.changed() => {}
            }
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// One pass over the inbox, in its order (arrival order); stops at the first
/// error so that a later document is never taken before an earlier one.
async fn receive_once(
    dir: &std::path::Path,
    node: &str,
    organ: &str,
    ledger: &Shared,
    verifiers: &Verifiers,
    conn: &mut Option<crate::client::AgencyApi>,
) -> Result<usize> {
    if conn.is_none() {
        *conn = Some(agency(dir, node).await?);
    }
    let c = conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
    let items = c
        .list_inbox(pb::ListInboxRequest {
            organ: organ.into(),
            include_acked: false,
            limit: 2000,
            kind: "document".into(),
            after: 0,
        })
        .await?
        .into_inner()
        .items;
    let n = items.len();
    for item in items {
        take(c, organ, &item, ledger, verifiers).await?;
    }
    Ok(n)
}

async fn take(
    c: &mut crate::client::AgencyApi,
    organ: &str,
    item: &pb::InboxItem,
    ledger: &Shared,
    verifiers: &Verifiers,
) -> Result<()> {
    let key = (item.doc_id.clone(), organ.to_owned());
    let already = lock(ledger).seen.get(&key).is_some_and(|s| s.acked);
    if !already {
        let doc = c
            .get_document(pb::GetDocumentRequest {
                doc_id: item.doc_id.clone(),
                from: item.from.clone(),
                without_data: true,
            })
            .await?
            .into_inner();
        let envelope = doc.envelope.ok_or_else(|| anyhow!("no envelope"))?;
        let mut fetched = Vec::new();
        for index in 0..doc.attachments.len() {
            let mut s = c
                .get_attachment(pb::GetAttachmentRequest {
                    doc_id: item.doc_id.clone(),
                    from: item.from.clone(),
                    index: index as u32,
                    offset: 0,
                })
                .await?
                .into_inner();
            let mut h = ring::digest::Context::new(&ring::digest::SHA256);
            while let Some(chunk) = s.next().await {
                h.update(&chunk?.data);
            }
            let d = h.finish();
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            fetched.push(Digest(out));
        }
        let limits = crate::verify::offline_limits();
        let verdict = envelope::verify(envelope, verifiers, &limits, UnixTime::now());
        record(ledger, &key, verdict, fetched);
    } else {
        let mut l = lock(ledger);
        l.duplicated += 1;
        l.anomaly(format!(
            "{} delivered to {organ} again after it was acknowledged",
            item.doc_id
        ));
    }
    ack(c, organ, item).await?;
    let mut l = lock(ledger);
    if let Some(s) = l.seen.get_mut(&key)
        && !s.acked
    {
        s.acked = true;
        if let Some(f) = s.flow {
            *l.acked.entry(f).or_default() += 1;
        }
    }
    Ok(())
}

/// Checks a fetched document against what was offered and records it.
fn record(
    ledger: &Shared,
    key: &(String, String),
    verdict: Result<envelope::Verified, truc_node::error::Refusal>,
    fetched: Vec<Digest>,
) {
    let (doc_id, organ) = (&key.0, &key.1);
    let mut l = lock(ledger);
    {
        let Some(off) = l.offered.get(doc_id) else {
            if !l.seen.contains_key(key) {
                l.phantom += 1;
                l.anomaly(format!("phantom {doc_id} at {organ}"));
                l.first_seen(key, None);
            }
            return;
        };
        let (flow, accepted_at) = (off.flow, off.accepted_at);
        let misrouted = !off.to.iter().any(|t| t == organ);
        let corrupt = match &verdict {
            Err(r) => Some(format!("signature refused: {}", r.reason)),
            Ok(v) if !matches!(&v.from, Sender::Agency(o) if o.to_string() == off.from) => {
                Some(format!("signed by {:?}, sent by {}", v.from, off.from))
            }
            Ok(v) if v.attachments != fetched => {
                Some("attachment bytes differ from the signed digests".into())
            }
            Ok(_) if fetched != off.digests => Some("attachments differ from what was sent".into()),
            Ok(_) => None,
        };
        if l.seen.contains_key(key) {
            // Fetched before, not acknowledged yet (the edge or this app stopped
            // between the two): seen again, not a duplicate.
        } else {
            l.first_seen(key, Some(flow));
            if misrouted {
                l.misrouted += 1;
                l.anomaly(format!("{doc_id} delivered to {organ}, not a recipient"));
            }
            if let Some(why) = corrupt {
                l.corrupted += 1;
                l.anomaly(format!("{doc_id} at {organ} is corrupted: {why}"));
            }
            if let Some(t) = accepted_at {
                let f = l.fresh.entry(flow).or_insert(t);
                if *f < t {
                    *f = t;
                }
            }
        }
    }
}

/// An acknowledgement can be recorded by the edge and its answer lost (the edge
/// killed right after): the application then never sees the document again. It
/// asks the edge which of the documents it fetched are acknowledged there.
pub async fn reconcile(dir: &std::path::Path, ledger: &Shared) {
    for (node, organ) in receivers() {
        let Ok(mut c) = agency(dir, node).await else {
            continue;
        };
        let Ok(items) = c
            .list_inbox(pb::ListInboxRequest {
                organ: organ.into(),
                include_acked: true,
                limit: 100_000,
                kind: "document".into(),
                after: 0,
            })
            .await
        else {
            continue;
        };
        let mut l = lock(ledger);
        let mut newly = Vec::new();
        for item in items.into_inner().items.into_iter().filter(|i| i.acked) {
            if let Some(s) = l.seen.get_mut(&(item.doc_id.clone(), organ.to_owned()))
                && !s.acked
            {
                s.acked = true;
                newly.extend(s.flow);
            }
        }
        for f in newly {
            *l.acked.entry(f).or_default() += 1;
        }
    }
}

async fn ack(c: &mut crate::client::AgencyApi, organ: &str, item: &pb::InboxItem) -> Result<()> {
    c.ack(pb::AckRequest {
        doc_id: item.doc_id.clone(),
        from: item.from.clone(),
        organ: organ.into(),
    })
    .await
    .context("ack")?;
    Ok(())
}
