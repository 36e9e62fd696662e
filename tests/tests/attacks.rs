//! Attacks on a running hub, each refused with a clear reason and changing
//! nothing: a captured envelope replayed after a restart, attachments swapped
//! between two valid documents, an oversize frame, malformed protobuf on the
//! link and the agency API, slow-loris connections and an HTTP/2 stream flood
//! while legitimate documents keep flowing. (Spoofed senders, foreign CAs, TLS
//! 1.2, revoked and expired certificates, tampered headers and signatures are in
//! security.rs; recall and status by a non-sender in lifecycle.rs; tampered
//! attachment bytes in attachments.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::Path, time::Duration};

use bytes::{Buf, BufMut};
use common::{raw::*, *};
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};
use truc_proto::v1::{self as pb, link_frame::Frame};
use truc_store::Digest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_replayed_after_a_hub_restart_is_delivered_once() {
    let mut c = Cluster::new();
    c.start("hub");
    c.start("caobang");
    let pki = c.dir.path().to_owned();
    let captured = sealed(&pki, G22, &[H14], "bắt được trên đường truyền");
    let mut link = raw_link(&pki, "vpcp", &c.hub_addr()).await.unwrap();
    link.offer(captured.clone(), &[H14]).await.unwrap();
    drop(link);

    c.kill("hub");
    c.start("hub");
    let mut link = raw_link(&pki, "vpcp", &c.hub_addr()).await.unwrap();
    // Acknowledged (the sender may have missed the first ack) but not delivered again.
    link.offer(captured, &[H14]).await.unwrap();
    link.offer(sealed(&pki, G22, &[H14], "barrier"), &[H14])
        .await
        .unwrap();
    let subjects = subjects_at(&c, "caobang", H14, "barrier").await;
    assert_eq!(
        subjects,
        vec!["bắt được trên đường truyền".to_string(), "barrier".into()]
    );
    assert!(c.stat("hub", "duplicates") >= 1);
}

fn with_attachment(pki: &Path, subject: &str, data: &[u8]) -> pb::SignedEnvelope {
    let header = pb::Header {
        format_version: truc_node::envelope::FORMAT_VERSION,
        doc_id: truc_core::DocId::new_v7().to_string(),
        kind: pb::Kind::Document as i32,
        from: G22.into(),
        to: vec![H14.into()],
        created_at_ms: 1,
        subject: subject.into(),
        attachments: vec![pb::AttachmentRef {
            name: "phu-luc.pdf".into(),
            content_type: "application/pdf".into(),
            size: data.len() as u64,
            sha256: Digest::of(data).0.to_vec(),
        }],
        ..Default::default()
    };
    seal_as(pki, G22, &header)
}

async fn verdict(rx: &mut tonic::Streaming<pb::LinkFrame>, seq: u64) -> Result<(), (Code, String)> {
    loop {
        match rx.message().await.unwrap().and_then(|f| f.frame) {
            Some(Frame::Reject(r)) if r.seq == seq => {
                return Err((Code::from_i32(r.code), r.reason));
            }
            Some(Frame::Ack(a)) if a.seq >= seq => return Ok(()),
            Some(_) => continue,
            None => panic!("link closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_swapped_between_two_valid_documents_are_refused() {
    let mut c = Cluster::new();
    c.start("hub");
    c.start("caobang");
    let pki = c.dir.path().to_owned();
    let (a, b) = (b"quyet dinh A".to_vec(), b"quyet dinh B".to_vec());
    let doc_a = with_attachment(&pki, "văn bản A", &a);
    let doc_b = with_attachment(&pki, "văn bản B", &b);
    let mut link = raw_link(&pki, "vpcp", &c.hub_addr()).await.unwrap();
    let send = |link: &mut RawLink, env: pb::SignedEnvelope, data: &[u8]| {
        link.seq += 1;
        let t = pb::Transfer {
            seq: link.seq,
            envelope: Some(env),
            attachments: vec![pb::AttachmentData {
                sha256: Digest::of(data).0.to_vec(),
                data: data.to_vec(),
            }],
            recipients: vec![H14.into()],
        };
        (link.seq, frame(Frame::Transfer(t)))
    };

    // A's signed header with B's bytes, and the other way round.
    for (env, data) in [(doc_a.clone(), &b), (doc_b.clone(), &a)] {
        let (seq, f) = send(&mut link, env, data);
        link.tx.send(f).await.unwrap();
        let (code, reason) = verdict(&mut link.rx, seq).await.unwrap_err();
        assert_eq!(code, Code::InvalidArgument, "{reason}");
        assert!(
            reason.contains("sha-256") || reason.contains("digest"),
            "{reason}"
        );
    }
    // Each with its own bytes goes through: the refusals changed nothing.
    for (env, data) in [(doc_a, &a), (doc_b, &b)] {
        let (seq, f) = send(&mut link, env, data);
        link.tx.send(f).await.unwrap();
        verdict(&mut link.rx, seq).await.unwrap();
    }
    let subjects = subjects_at(&c, "caobang", H14, "văn bản B").await;
    assert_eq!(subjects, vec!["văn bản A".to_string(), "văn bản B".into()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_closes_only_its_own_stream() {
    let mut c = Cluster::new();
    c.edit("hub", |t| {
        let mut limits = toml::Table::new();
        limits.insert("max_message_bytes".into(), (1i64 << 20).into());
        t.insert("limits".into(), limits.into());
        t["link"]
            .as_table_mut()
            .unwrap()
            .insert("chunk_bytes".into(), (256i64 << 10).into());
    });
    c.start("hub");
    c.start("caobang");
    c.start("nghean");
    let pki = c.dir.path().to_owned();
    let mut link = raw_link(&pki, "vpcp", &c.hub_addr()).await.unwrap();
    let big = vec![7u8; 2 << 20];
    let env = with_attachment(&pki, "quá cỡ", &big);
    link.tx
        .send(frame(Frame::Transfer(pb::Transfer {
            seq: 1,
            envelope: Some(env),
            attachments: vec![pb::AttachmentData {
                sha256: Digest::of(&big).0.to_vec(),
                data: big.clone(),
            }],
            recipients: vec![H14.into()],
        })))
        .await
        .unwrap();
    // The stream ends (the hub could not read past the frame) without an ack.
    loop {
        match link.rx.message().await {
            Ok(Some(pb::LinkFrame {
                frame: Some(Frame::Ack(a)),
            })) => panic!("an oversize transfer was acknowledged: {a:?}"),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    // The hub says why.
    c.wait_log("hub", &["link ended", "too large"]);
    // Other nodes, and the same node on a new stream, go on.
    let (ok, id) = c.send_as("nghean", H41, H14, "vẫn thông suốt", &[]);
    assert!(ok, "{id}");
    c.wait_delivered("nghean", &id);
    let mut link = raw_link(&pki, "vpcp", &c.hub_addr()).await.unwrap();
    link.offer(sealed(&pki, G22, &[H14], "nhỏ thôi"), &[H14])
        .await
        .unwrap();
    let subjects = subjects_at(&c, "caobang", H14, "nhỏ thôi").await;
    assert!(!subjects.iter().any(|s| s == "quá cỡ"), "{subjects:?}");
}

/// Sends bytes as they are, whatever the method's message type.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

const GARBAGE: &[u8] = &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x03, 0xde, 0xad];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_refused_on_the_link_and_the_agency_api() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "caobang"] {
        c.start(n);
    }
    // The agency API.
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", c.agency_addr("vpcp")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let mut garbage = Request::new(GARBAGE.to_vec());
    let token = truc::client::agency_token(&c.config("vpcp")).unwrap();
    garbage
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let err = g
        .unary(
            garbage,
            http::uri::PathAndQuery::from_static("/truc.v1.Agency/Send"),
            Raw,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Internal | Code::InvalidArgument),
        "{err:?}"
    );
    assert!(err.message().contains("decode"), "{err:?}");

    // The link, with a valid node certificate.
    let pki = c.dir.path();
    let ch = node_channel(pki, "nghean", &c.hub_addr());
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let r = g
        .streaming(
            Request::new(tokio_stream::iter(vec![GARBAGE.to_vec()])),
            http::uri::PathAndQuery::from_static("/truc.v1.Link/Open"),
            Raw,
        )
        .await;
    let err = match r {
        Err(s) => s,
        Ok(resp) => {
            let mut s = resp.into_inner();
            loop {
                match s.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the link took garbage"),
                    Err(e) => break e,
                }
            }
        }
    };
    assert!(
        matches!(
            err.code(),
            Code::Internal | Code::InvalidArgument | Code::Unknown
        ),
        "{err:?}"
    );
    // Nothing else changed: a real document goes through.
    let id = c.send_from_vpcp(H14, "sau dữ liệu rác", &[]);
    c.wait_delivered("vpcp", &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_and_a_stream_flood_do_not_stop_legitimate_traffic() {
    let mut c = Cluster::new();
    c.edit("hub", |t| {
        let link = t["link"].as_table_mut().unwrap();
        link.insert("handshake_timeout_ms".into(), 1000.into());
        link.insert("max_connections".into(), 64.into());
    });
    // The established links are under test, not their heartbeats: the storm
    // loads both cores, and a lapse of the tests' usual 2 s timeout would make
    // an edge reconnect through the loris instead.
    for n in ["hub", "vpcp", "caobang"] {
        c.edit(n, |t| {
            let l = t["link"].as_table_mut().unwrap();
            l.insert("heartbeat_interval_ms".into(), 2_000.into());
            l.insert("heartbeat_timeout_ms".into(), 20_000.into());
        });
    }
    for n in ["hub", "vpcp", "caobang"] {
        c.start(n);
    }
    let hub = c.hub_addr();
    // Slow loris: more idle TCP connections than the hub takes, reopened as the
    // handshake timeout drops them, for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loris = {
        let (hub, stop) = (hub.clone(), stop.clone());
        tokio::spawn(async move {
            // Each connection says nothing and is replaced after 3 s (the hub
            // gives up on it after 1 s).
            let mut held: std::collections::VecDeque<(std::time::Instant, tokio::net::TcpStream)> =
                Default::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                while held
                    .front()
                    .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(3))
                {
                    held.pop_front();
                }
                while held.len() < 100 {
                    match tokio::net::TcpStream::connect(&hub).await {
                        Ok(s) => held.push_back((std::time::Instant::now(), s)),
                        Err(_) => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // A stream flood from an authenticated node: hundreds of link streams that
    // never say hello, on one HTTP/2 connection.
    let pki = c.dir.path().to_owned();
    let ch = node_channel(&pki, "nghean", &hub);
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut client = pb::link_client::LinkClient::new(ch.clone());
        flood.push(tokio::spawn(async move {
            let (_tx, rx) = tokio::sync::mpsc::channel::<pb::LinkFrame>(1);
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                client.open(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await;
        }));
    }

    // Meanwhile, the established links carry documents as usual.
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(c.send_from_vpcp(H14, &format!("giữa cơn bão kết nối {i}"), &[]));
    }
    for id in &ids {
        c.wait_delivered("vpcp", id);
    }
    c.wait_log("hub", &["tls handshake timed out"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = loris.await;
    for f in flood {
        f.abort();
    }
    assert!(c.running("hub"));
    // And a node that connects now still gets in. The hub's 1 s handshake
    // timeout holds for it too, so a busy machine gets two more tries, as a
    // node would retry; three handshakes that all fail still fail the test.
    let mut failed = Vec::new();
    while let Err(e) = raw_link(&pki, "nghean", &hub).await {
        failed.push(e);
        assert!(failed.len() < 3, "no link after the storm: {failed:?}");
    }
}

/// A peer that asks for attachment bytes far faster than it reads the
/// answers cannot make the hub queue its requests without limit: the hub ends
/// the link and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_requests_for_attachment_bytes_is_dropped() {
    let mut c = Cluster::new();
    c.start("hub");
    let pki = c.dir.path().to_owned();
    let RawLink { tx, mut rx, .. } = raw_link(&pki, "vpcp", &c.hub_addr()).await.unwrap();
    // Requests for transfers the hub never sent: each is answered
    // `Unavailable`, which this peer does not read.
    let flood = tokio::spawn(async move {
        for seq in 1..=2_000_000u64 {
            let w = pb::Want {
                seq,
                index: 0,
                offset: 0,
            };
            if tx.send(frame(Frame::Want(w))).await.is_err() {
                return;
            }
        }
    });
    tokio::task::block_in_place(|| {
        c.wait_log(
            "hub",
            &["link ended", "without waiting for them to be served"],
        )
    });
    flood.abort();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(_)) = rx.message().await {}
    })
    .await
    .expect("the hub closed the link");
}
