//! Playing a node by hand over a real link: crafted transfers to a real hub.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};
use truc_node::envelope;
use truc_pki::{sign::AgencySigner, tls::TransportMaterial};
use truc_proto::v1::{self as pb, link_frame::Frame};

pub struct RawLink {
    pub tx: mpsc::Sender<pb::LinkFrame>,
    pub rx: Streaming<pb::LinkFrame>,
    pub seq: u64,
}

pub fn frame(f: Frame) -> pb::LinkFrame {
    pb::LinkFrame { frame: Some(f) }
}

/// Opens a link to the hub as `node`, with that node's certificate from `pki`.
/// A TLS channel to a parent's link port at `addr` with `node`'s certificate
/// (nothing sent yet).
pub fn node_channel(pki: &Path, node: &str, addr: &str) -> tonic::transport::Channel {
    let t = TransportMaterial::load(
        &pki.join("transport-ca.crt"),
        &pki.join(format!("nodes/{node}.crt")),
        &pki.join(format!("nodes/{node}.key")),
        &[] as &[&Path],
    )
    .unwrap();
    truc_node::transport::tls_channel(
        addr,
        "hub",
        t.client_config().unwrap(),
        Duration::from_secs(5),
        Duration::from_secs(5),
        4 << 20,
    )
    .unwrap()
}

pub async fn raw_link(pki: &Path, node: &str, hub: &str) -> Result<RawLink, String> {
    raw_link_to(pki, node, "hub", hub).await
}

/// Opens a link to `parent` (listening at `addr`) as `node`.
pub async fn raw_link_to(
    pki: &Path,
    node: &str,
    parent: &str,
    addr: &str,
) -> Result<RawLink, String> {
    let hub = addr;
    let t = TransportMaterial::load(
        &pki.join("transport-ca.crt"),
        &pki.join(format!("nodes/{node}.crt")),
        &pki.join(format!("nodes/{node}.key")),
        &[] as &[&Path],
    )
    .map_err(|e| e.to_string())?;
    let ch = truc_node::transport::tls_channel(
        hub,
        parent,
        t.client_config().map_err(|e| e.to_string())?,
        Duration::from_secs(5),
        Duration::from_secs(5),
        4 << 20,
    )?;
    let mut client = pb::link_client::LinkClient::new(ch);
    let (tx, rx) = mpsc::channel(16);
    tx.send(frame(Frame::Hello(pb::Hello {
        node_id: node.into(),
        protocol_version: truc_node::link::PROTOCOL_VERSION,
        software_version: "test".into(),
        window: 16,
    })))
    .await
    .unwrap();
    let mut rx = client
        .open(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("open: {s}"))?
        .into_inner();
    match rx.message().await {
        Ok(Some(pb::LinkFrame {
            frame: Some(Frame::Welcome(_)),
        })) => {
            keep_alive(&tx);
            Ok(RawLink { tx, rx, seq: 0 })
        }
        other => Err(format!("no welcome: {other:?}")),
    }
}

/// Says something every half second, as a node does at each heartbeat: the
/// hub ends a link silent for its timeout (2 s in these tests), however long
/// a test's own steps take between two offers on a loaded machine. Ends with
/// the link (a weak sender: dropping the `RawLink` still closes the stream).
fn keep_alive(tx: &mpsc::Sender<pb::LinkFrame>) {
    let weak = tx.downgrade();
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            beat.tick().await;
            let Some(tx) = weak.upgrade() else { return };
            // A full channel is traffic enough.
            if let Err(mpsc::error::TrySendError::Closed(_)) =
                tx.try_send(frame(Frame::Ping(pb::Ping { nonce: 0 })))
            {
                return;
            }
        }
    });
}

impl RawLink {
    /// Sends one transfer and returns the hub's verdict on it: Ok(()) for an ack,
    /// Err((code, reason)) for a reject.
    pub async fn offer(
        &mut self,
        envelope: pb::SignedEnvelope,
        recipients: &[&str],
    ) -> Result<(), (Code, String)> {
        self.seq += 1;
        let seq = self.seq;
        self.tx
            .send(frame(Frame::Transfer(pb::Transfer {
                seq,
                envelope: Some(envelope),
                attachments: vec![],
                recipients: recipients.iter().map(|s| s.to_string()).collect(),
            })))
            .await
            .unwrap();
        loop {
            match self.rx.message().await.unwrap().and_then(|f| f.frame) {
                Some(Frame::Reject(r)) if r.seq == seq => {
                    return Err((Code::from_i32(r.code), r.reason));
                }
                Some(Frame::Ack(a)) if a.seq >= seq => return Ok(()),
                Some(_) => continue,
                None => panic!("link closed"),
            }
        }
    }
}

pub fn sealed(pki: &Path, organ: &str, to: &[&str], subject: &str) -> pb::SignedEnvelope {
    let o: truc_core::OrganId = organ.parse().unwrap();
    let signer = AgencySigner::load(
        &o,
        &pki.join(format!("agencies/{organ}.crt")),
        &pki.join(format!("agencies/{organ}.key")),
    )
    .unwrap();
    let header = pb::Header {
        format_version: envelope::FORMAT_VERSION,
        doc_id: truc_core::DocId::new_v7().to_string(),
        kind: pb::Kind::Document as i32,
        from: organ.into(),
        to: to.iter().map(|s| s.to_string()).collect(),
        created_at_ms: 1,
        subject: subject.into(),
        ..Default::default()
    };
    envelope::seal(&header, &signer).unwrap()
}

/// Signs any header as `organ`, with that agency's key from `pki`.
pub fn seal_as(pki: &Path, organ: &str, header: &pb::Header) -> pb::SignedEnvelope {
    let o: truc_core::OrganId = organ.parse().unwrap();
    let signer = AgencySigner::load(
        &o,
        &pki.join(format!("agencies/{organ}.crt")),
        &pki.join(format!("agencies/{organ}.key")),
    )
    .unwrap();
    envelope::seal(header, &signer).unwrap()
}

impl RawLink {
    /// Offers a transfer whose attachment bytes are streamed on request: answers
    /// every `Want` with `data` (whatever the manifest says), returns the verdict.
    pub async fn offer_streamed(
        &mut self,
        envelope: pb::SignedEnvelope,
        recipients: &[&str],
        data: &[u8],
    ) -> Result<(), (Code, String)> {
        self.seq += 1;
        let seq = self.seq;
        self.tx
            .send(frame(Frame::Transfer(pb::Transfer {
                seq,
                envelope: Some(envelope),
                attachments: vec![],
                recipients: recipients.iter().map(|s| s.to_string()).collect(),
            })))
            .await
            .unwrap();
        loop {
            match self.rx.message().await.unwrap().and_then(|f| f.frame) {
                Some(Frame::Want(w)) if w.seq == seq => {
                    let mut offset = w.offset as usize;
                    while offset < data.len() {
                        let end = (offset + (64 << 10)).min(data.len());
                        self.tx
                            .send(frame(Frame::Chunk(pb::Chunk {
                                seq,
                                index: w.index,
                                offset: offset as u64,
                                data: data[offset..end].to_vec(),
                            })))
                            .await
                            .unwrap();
                        offset = end;
                    }
                }
                Some(Frame::Reject(r)) if r.seq == seq => {
                    return Err((Code::from_i32(r.code), r.reason));
                }
                Some(Frame::Ack(a)) if a.seq >= seq => return Ok(()),
                Some(_) => continue,
                None => panic!("link closed"),
            }
        }
    }
}

/// Signs a header as node `node` with its node key from `pki` (directory changes).
pub fn seal_as_node(pki: &Path, node: &str, header: &pb::Header) -> pb::SignedEnvelope {
    let n: truc_core::NodeId = node.parse().unwrap();
    let signer = truc_pki::sign::Signer::load_for(
        &truc_pki::identity::Identity::Node(n),
        &pki.join(format!("nodes/{node}.crt")),
        &pki.join(format!("nodes/{node}.key")),
    )
    .unwrap();
    envelope::seal(header, &signer).unwrap()
}
