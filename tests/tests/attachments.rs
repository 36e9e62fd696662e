//! Large attachments: streamed through every hop in bounded memory, resumed after
//! cuts, checked against the signed digest, stored once, refused at every limit
//! with a reason of their own.
//!
//! These tests move hundreds of MiB; they run one at a time (a lock here for
//! `cargo test`, a test group in .config/nextest.toml for nextest).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test has a runtime of its own; the lock only serializes whole tests.
#![allow(clippy::await_holding_lock)]

mod common;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::Mutex,
};

use common::{raw::*, *};
use tonic::Code;
use truc_proto::v1 as pb;

static HEAVY: Mutex<()> = Mutex::new(());

const MIB: u64 = 1 << 20;

/// A file of `size` random bytes.
fn random_file(path: &Path, size: u64) {
    let mut src = std::fs::File::open("/dev/urandom").unwrap().take(size);
    let mut dst = std::fs::File::create(path).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap();
    dst.sync_all().unwrap();
}

fn sha256_file(path: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finish().as_ref().to_vec()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every stored blob is whole: its content hashes to its name.
fn assert_blobs_whole(c: &Cluster, node: &str) {
    for f in files_under(&c.path(&format!("data/{node}/blobs/sha256"))) {
        let name = f.file_name().unwrap().to_str().unwrap().to_owned();
        let actual: String = sha256_file(&f).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            name,
            actual,
            "{} holds bytes that are not its name",
            f.display()
        );
    }
}

async fn wait_state(c: &Cluster, id: &str, state: &str) {
    eventually(&format!("{id} {state}"), || {
        let out = c.cli_ok(&["status", "--config", &c.cfg("vpcp"), id, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ok = v["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == state);
        async move { ok.then_some(()) }
    })
    .await;
}

fn send_file(c: &Cluster, path: &Path) -> String {
    c.cli_ok(&[
        "send",
        "--config",
        &c.cfg("vpcp"),
        "--from",
        G22,
        "--to",
        H41,
        "--subject",
        "Hồ sơ kèm tệp lớn",
        "--attach",
        path.to_str().unwrap(),
    ])
    .trim()
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_attachment_goes_through_every_hop_in_bounded_memory() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let before: Vec<u64> = ["hub", "vpcp", "nghean"]
        .iter()
        .map(|n| c.peak_rss_kib(n))
        .collect();
    // The sender's, the hub's and the recipient's copies, the received file and
    // the nodes' 512 MiB floors: say so up front rather than fail half-way.
    let need = 4 * 1024 * MIB + 3 * 512 * MIB + 256 * MIB;
    let free = common::ops::free_bytes(c.dir.path());
    assert!(
        free >= need,
        "this test moves 1 GiB through three nodes and needs {} MiB free under {}; {} MiB free",
        need / MIB,
        c.dir.path().display(),
        free / MIB
    );
    let file = c.path("video.bin");
    random_file(&file, 1024 * MIB);
    let sent = sha256_file(&file);
    let id = send_file(&c, &file);
    // The sender holds it durably once `send` returns: the source can go.
    std::fs::remove_file(&file).unwrap();
    wait_state(&c, &id, "delivered").await;
    let out = c.path("received");
    c.cli_ok(&[
        "get",
        "--config",
        &c.cfg("nghean"),
        &id,
        "--out",
        out.to_str().unwrap(),
    ]);
    let got = out.join(&id).join("attachments").join("video.bin");
    assert_eq!(sha256_file(&got), sent, "the received file is the sent one");
    for (i, n) in ["hub", "vpcp", "nghean"].iter().enumerate() {
        let after = c.peak_rss_kib(n);
        let grown = after.saturating_sub(before[i]);
        eprintln!(
            "{n}: peak RSS {} KiB before, {after} KiB after: +{grown} KiB for 1 GiB",
            before[i]
        );
        assert!(grown < 64 * 1024, "{n} grew by {grown} KiB moving 1 GiB");
    }
    let _ = std::fs::remove_file(&got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_three_times_resumes_and_resends_little() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let size = 200 * MIB;
    let file = c.path("scan.bin");
    random_file(&file, size);
    let bin = bin();
    let (cfg, path) = (c.cfg("vpcp"), file.to_str().unwrap().to_owned());
    let sender = std::thread::spawn(move || {
        let out = std::process::Command::new(bin)
            .args([
                "send",
                "--config",
                &cfg,
                "--from",
                G22,
                "--to",
                H41,
                "--subject",
                "Bản quét",
                "--attach",
                &path,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    });
    // Cut the hub three times while the attachment streams in.
    for cut in 1..=3 {
        let deadline = std::time::Instant::now() + DEADLINE;
        while c.stat("hub", "stream_bytes_received") < 40 * MIB {
            assert!(
                std::time::Instant::now() < deadline,
                "cut {cut}: the stream did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        c.kill("hub");
        c.start("hub");
    }
    let id = sender.join().unwrap();
    wait_state(&c, &id, "delivered").await;
    let out = c.path("received");
    c.cli_ok(&[
        "get",
        "--config",
        &c.cfg("nghean"),
        &id,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        sha256_file(&out.join(&id).join("attachments").join("scan.bin")),
        sha256_file(&file)
    );

    let sent = c.stat("vpcp", "stream_bytes_sent");
    let resent = c.stat("vpcp", "stream_bytes_resent");
    eprintln!(
        "200 MiB cut 3 times: {} MiB streamed, {} MiB of it re-sent",
        sent / MIB,
        resent / MIB
    );
    assert_eq!(sent, size + resent);
    assert!(
        resent > 0,
        "three cuts re-sent nothing: were they mid-stream?"
    );
    assert!(
        resent < 100 * MIB,
        "re-sent {resent} bytes: resumes did not start from the durable offset"
    );
    let resumes = c.logs("hub").matches("resuming an attachment").count();
    assert!(resumes >= 3, "the hub resumed {resumes} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_do_not_match_the_signed_digest_are_refused_and_nothing_is_delivered() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new();
    c.start("hub");
    c.start("nghean");
    let pki = c.dir.path().to_owned();
    let mut link = raw_link(&pki, "vpcp", &c.hub_addr()).await.unwrap();
    let signed: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
    let mut swapped = signed.clone();
    swapped[300_000] ^= 0xff;
    let digest = truc_store::Digest::of(&signed);
    let header = |subject: &str, size: usize| pb::Header {
        format_version: 1,
        doc_id: truc_core::DocId::new_v7().to_string(),
        kind: pb::Kind::Document as i32,
        from: G22.into(),
        to: vec![H41.into()],
        subject: subject.into(),
        attachments: vec![pb::AttachmentRef {
            name: "quyet-dinh.pdf".into(),
            content_type: "application/pdf".into(),
            size: size as u64,
            sha256: if size == signed.len() {
                digest.0.to_vec()
            } else {
                truc_store::Digest::of(&signed[..size]).0.to_vec()
            },
        }],
        ..Default::default()
    };
    // Streamed: the hub asks for the bytes and refuses them at the end.
    let (code, reason) = link
        .offer_streamed(
            seal_as(&pki, G22, &header("streamed", signed.len())),
            &[H41],
            &swapped,
        )
        .await
        .unwrap_err();
    assert_eq!(code, Code::InvalidArgument, "{reason}");
    assert!(
        reason.contains("do not match the signed sha-256"),
        "{reason}"
    );
    // Inline: refused the same way.
    let small = header("inline", 1000);
    let mut bad = signed[..1000].to_vec();
    bad[10] ^= 1;
    link.tx
        .send(frame(pb::link_frame::Frame::Transfer(pb::Transfer {
            seq: 100,
            envelope: Some(seal_as(&pki, G22, &small)),
            attachments: vec![pb::AttachmentData {
                sha256: small.attachments[0].sha256.clone(),
                data: bad,
            }],
            recipients: vec![H41.into()],
        })))
        .await
        .unwrap();
    link.seq = 100;
    // The barrier: a valid streamed document after both.
    link.offer_streamed(
        seal_as(&pki, G22, &header("barrier", signed.len())),
        &[H41],
        &signed,
    )
    .await
    .unwrap();
    let items = eventually("barrier", || async {
        let items = inbox(&c, "nghean", H41).await;
        items
            .iter()
            .any(|i| i.subject == "barrier")
            .then_some(items)
    })
    .await;
    assert_eq!(
        items.iter().map(|i| i.subject.as_str()).collect::<Vec<_>>(),
        vec!["barrier"]
    );
    assert!(c.logs("hub").contains("inline") || c.logs("hub").contains("do not match"));
    assert_blobs_whole(&c, "hub");
    assert!(
        files_under(&c.path("data/hub/blobs/partial")).is_empty(),
        "no partial file is left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_and_a_full_disk_refuse_with_their_own_reason() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new();
    // Room for what this test writes plus a margin, measured on the real disk.
    let filler = c.path("filler.bin");
    random_file(&filler, 256 * MIB);
    let free = common::ops::free_bytes(c.dir.path());
    c.edit("vpcp", |t| {
        let limits = t["limits"].as_table_mut().unwrap();
        limits.insert("max_attachment_bytes".into(), ((3 * MIB) as i64).into());
        limits.insert("max_attachments".into(), 3.into());
        let quotas = t
            .entry("quotas")
            .or_insert(toml::Value::Table(Default::default()))
            .as_table_mut()
            .unwrap();
        quotas.insert("max_agency_bytes".into(), ((5 * MIB) as i64).into());
        let storage = t
            .entry("storage")
            .or_insert(toml::Value::Table(Default::default()))
            .as_table_mut()
            .unwrap();
        storage.insert("min_free_bytes".into(), ((free - 192 * MIB) as i64).into());
    });
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let vpcp = c.cfg("vpcp");
    let send = |files: &[&Path]| {
        let mut args = vec![
            "send",
            "--config",
            &vpcp,
            "--from",
            G22,
            "--to",
            H41,
            "--subject",
            "hồ sơ",
        ];
        for f in files {
            args.push("--attach");
            args.push(f.to_str().unwrap());
        }
        c.cli_any(&args)
    };
    let f = |name: &str, size: u64| {
        let p = c.path(name);
        random_file(&p, size);
        p
    };

    // Oversize: refused before a byte is written.
    let big = f("big.bin", 4 * MIB);
    let (ok, text) = send(&[&big]);
    assert!(
        !ok && text.contains("limits.max_attachment_bytes"),
        "{text}"
    );
    assert!(files_under(&c.path("data/vpcp/blobs/partial")).is_empty());

    // Too many attachments.
    let small: Vec<PathBuf> = (0..4).map(|i| f(&format!("s{i}.txt"), 100)).collect();
    let refs: Vec<&Path> = small.iter().map(PathBuf::as_path).collect();
    let (ok, text) = send(&refs);
    assert!(!ok && text.contains("limits.max_attachments"), "{text}");

    // The agency's byte quota: two of 2 MiB fit in 5 MiB, a third does not.
    let two = f("two.bin", 2 * MIB);
    for _ in 0..2 {
        let (ok, text) = send(&[&two]);
        assert!(ok, "{text}");
    }
    let other = f("other.bin", 2 * MIB);
    let (ok, text) = send(&[&other]);
    assert!(!ok && text.contains("quotas.max_agency_bytes"), "{text}");

    // A full disk: intake that would cut into the reserve is refused... The
    // disk is shared with tests running beside this one, which write and
    // delete gigabytes: the fill is sized from the free space measured now,
    // to 512 MiB below the reserve, not from the figure at the start (64 MiB
    // was not enough: a clean-clone run saw the send accepted once).
    let one = f("one.bin", MIB);
    let reserve = free - 192 * MIB;
    let fill = c.path("fill-up.bin");
    let now = common::ops::free_bytes(c.dir.path());
    common::ops::zero_file(&fill, (now + 512 * MIB).saturating_sub(reserve));
    let (ok, text) = send(&[&one]);
    assert!(!ok && text.contains("disk full"), "{text}");
    // ...and taken again once space is freed.
    std::fs::remove_file(&fill).unwrap();
    std::fs::remove_file(&filler).unwrap();
    let (ok, text) = send(&[&one]);
    assert!(ok, "{text}");
    let id = text.lines().last().unwrap().trim().to_owned();
    wait_state(&c, &id, "delivered").await;
    // No half-written file is counted as stored anywhere.
    for n in ["vpcp", "hub", "nghean"] {
        assert_blobs_whole(&c, n);
    }
}

/// Free bytes on the filesystem holding `dir`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_100_mib_attachment_in_10_documents_is_stored_once_at_the_hub() {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let size = 100 * MIB;
    let file = c.path("annex.bin");
    random_file(&file, size);
    let mut a = c.agency("vpcp").await;
    // Upload once, as an integrator would, then name it in ten documents.
    let upload_id = uuid_like();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let path = file.clone();
    let uid = upload_id.clone();
    tokio::spawn(async move {
        let mut f = std::fs::File::open(path).unwrap();
        let mut offset = 0u64;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            buf.truncate(n);
            tx.send(pb::UploadChunk {
                upload_id: uid.clone(),
                size,
                offset,
                data: buf,
                sha256: vec![],
            })
            .await
            .unwrap();
            offset += n as u64;
        }
    });
    let up = a
        .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(up.size, size);
    let mut ids = Vec::new();
    for i in 0..10 {
        let mut req = doc(G22, &[H41], &format!("Phụ lục {i}"));
        req.attachments.push(pb::Attachment {
            name: "phu-luc.bin".into(),
            content_type: "application/octet-stream".into(),
            sha256: up.sha256.clone(),
            size,
            ..Default::default()
        });
        ids.push(a.send(req).await.unwrap().into_inner().doc_id);
    }
    for id in &ids {
        wait_state(&c, id, "delivered").await;
    }
    for n in ["hub", "nghean"] {
        let stored: u64 = files_under(&c.path(&format!("data/{n}/blobs/sha256")))
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        eprintln!(
            "{n}: {} MiB of blob files for 10 documents naming one 100 MiB attachment",
            stored / MIB
        );
        assert_eq!(stored, size, "{n} stores the attachment once");
    }
    let _ = std::fs::File::create(c.path("done")).and_then(|mut f| f.write_all(b"ok"));
}

fn uuid_like() -> String {
    truc_core::DocId::new_v7().to_string()
}

/// A sender that cannot serve an attachment it was asked for says so
/// (`Unavailable`): the hub refuses that transfer at once, instead of waiting
/// out its 120 s chunk stall, and the link goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_the_sender_cannot_serve_is_refused_at_once_and_the_link_goes_on() {
    let mut c = Cluster::new();
    c.start("hub");
    c.start("nghean");
    let pki = c.dir.path().to_owned();
    let mut link = raw_link(&pki, "vpcp", &c.hub_addr()).await.unwrap();
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 241) as u8).collect();
    let header = pb::Header {
        format_version: 1,
        doc_id: truc_core::DocId::new_v7().to_string(),
        kind: pb::Kind::Document as i32,
        from: G22.into(),
        to: vec![H41.into()],
        subject: "phụ lục đã mất".into(),
        attachments: vec![pb::AttachmentRef {
            name: "phu-luc.pdf".into(),
            content_type: "application/pdf".into(),
            size: data.len() as u64,
            sha256: truc_store::Digest::of(&data).0.to_vec(),
        }],
        ..Default::default()
    };
    link.seq += 1;
    let seq = link.seq;
    link.tx
        .send(frame(pb::link_frame::Frame::Transfer(pb::Transfer {
            seq,
            envelope: Some(seal_as(&pki, G22, &header)),
            attachments: vec![],
            recipients: vec![H41.into()],
        })))
        .await
        .unwrap();
    let (code, reason) = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            match link.rx.message().await.unwrap().and_then(|f| f.frame) {
                Some(pb::link_frame::Frame::Want(w)) if w.seq == seq => {
                    let u = pb::Unavailable {
                        seq,
                        index: w.index,
                        reason: "gone from the sender's disk".into(),
                    };
                    link.tx
                        .send(frame(pb::link_frame::Frame::Unavailable(u)))
                        .await
                        .unwrap();
                }
                Some(pb::link_frame::Frame::Reject(r)) if r.seq == seq => {
                    return (Code::from_i32(r.code), r.reason);
                }
                Some(pb::link_frame::Frame::Ack(a)) if a.seq >= seq => {
                    panic!("acknowledged a transfer whose bytes never came")
                }
                Some(_) => continue,
                None => panic!("link closed"),
            }
        }
    })
    .await
    .expect("refused at once, not after the chunk stall");
    assert_eq!(code, Code::DataLoss, "{reason}");
    assert!(reason.contains("gone from the sender's disk"), "{reason}");
    // The same link goes on.
    link.offer(sealed(&pki, G22, &[H41], "sau đó"), &[H41])
        .await
        .unwrap();
}
