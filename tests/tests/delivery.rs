//! Documents from one ministry to one and to two provinces, end to end through real
//! processes: signed at the sender, verified at the hub and the recipient, shown as
//! delivered (then acked) to the sender.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use prost::Message;
use rustls::pki_types::UnixTime;
use truc_pki::sign::{Algorithm, SignatureVerifier};
use truc_proto::v1 as pb;

fn states(c: &Cluster, id: &str) -> Vec<(String, String)> {
    let out = c.cli_ok(&[
        "status",
        "--config",
        c.config("vpcp").to_str().unwrap(),
        id,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["organ"].as_str().unwrap().to_owned(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_reach_one_and_two_recipients_with_signatures_that_verify() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean", "caobang"] {
        c.start(n);
    }
    let vpcp = c.config("vpcp").to_str().unwrap().to_owned();
    let nghean = c.config("nghean").to_str().unwrap().to_owned();
    let caobang = c.config("caobang").to_str().unwrap().to_owned();
    let pdf_path = c.path("QD-1234-TTg.pdf");
    let pdf = truc::pdf::simple_pdf(&["QUYET DINH 1234/QD-TTg"]);
    std::fs::write(&pdf_path, &pdf).unwrap();

    let one = c
        .cli_ok(&[
            "send",
            "--config",
            &vpcp,
            "--from",
            G22,
            "--to",
            H41,
            "--subject",
            "Quyết định phê duyệt Đề án chuyển đổi số",
            "--code",
            "1234/QĐ-TTg",
            "--attach",
            pdf_path.to_str().unwrap(),
        ])
        .trim()
        .to_owned();
    let two = c
        .cli_ok(&[
            "send",
            "--config",
            &vpcp,
            "--from",
            G22,
            "--to",
            &format!("{H41},{H14}"),
            "--subject",
            "Công văn triển khai Nghị định 30/2020/NĐ-CP",
        ])
        .trim()
        .to_owned();

    for (id, n) in [(&one, 1), (&two, 2)] {
        let s = eventually("delivered receipts", || {
            let s = states(&c, id);
            async move { s.iter().all(|(_, st)| st == "delivered").then_some(s) }
        })
        .await;
        assert_eq!(s.len(), n);
    }
    assert_eq!(
        states(&c, &two)
            .into_iter()
            .map(|(o, _)| o)
            .collect::<Vec<_>>(),
        vec![H41.to_string(), H14.to_string()]
    );

    // Each recipient has exactly what was meant for it.
    let inbox_json = |cfg: &str, organ: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(
            &c.cli_ok(&["inbox", "--config", cfg, "--organ", organ, "--json"]),
        )
        .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["doc_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(inbox_json(&nghean, H41), vec![one.clone(), two.clone()]);
    assert_eq!(inbox_json(&caobang, H14), vec![two.clone()]);

    // The recipient hands out the bytes that were signed, and they verify offline.
    let out = c.path("received");
    let dir = c.cli_ok(&[
        "get",
        "--config",
        &nghean,
        &one,
        "--out",
        out.to_str().unwrap(),
    ]);
    let dir = std::path::PathBuf::from(dir.trim());
    assert_eq!(
        std::fs::read(dir.join("attachments").join("QD-1234-TTg.pdf")).unwrap(),
        pdf
    );
    let meta: serde_json::Value = serde_json::from_str(&read(&dir.join("document.json"))).unwrap();
    assert_eq!(meta["from"], G22);
    assert!(
        meta["signer"]
            .as_str()
            .unwrap()
            .contains("Văn phòng Chính phủ"),
        "{meta}"
    );
    let env =
        pb::SignedEnvelope::decode(std::fs::read(dir.join("envelope.pb")).unwrap().as_slice())
            .unwrap();
    let verifier = SignatureVerifier::from_file(&c.path("signing-ca.crt")).unwrap();
    let verified = verifier
        .verify(
            &env.header_bytes,
            &env.signature,
            Algorithm::EcdsaP256Sha256,
            &env.signer_chain,
            UnixTime::now(),
        )
        .unwrap();
    assert_eq!(verified.organ().unwrap().as_str(), G22);
    let mut tampered = env.header_bytes.clone();
    tampered[10] ^= 1;
    assert!(
        verifier
            .verify(
                &tampered,
                &env.signature,
                Algorithm::EcdsaP256Sha256,
                &env.signer_chain,
                UnixTime::now()
            )
            .is_err()
    );

    // The application acknowledges; the sender sees it through a signed receipt.
    assert!(c.cli_ok(&["ack", "--config", &nghean, &one]).contains(H41));
    assert!(
        c.cli_ok(&["ack", "--config", &nghean, &one])
            .contains("already")
    );
    eventually("acked receipt", || {
        let s = states(&c, &one);
        async move { (s[0].1 == "acked").then_some(()) }
    })
    .await;
    let unacked: serde_json::Value =
        serde_json::from_str(&c.cli_ok(&["inbox", "--config", &nghean, "--organ", H41, "--json"]))
            .unwrap();
    assert_eq!(
        unacked.as_array().unwrap().len(),
        1,
        "inbox without --all hides acked documents"
    );

    // Every node drains and exits 0 on SIGTERM.
    for n in ["vpcp", "nghean", "caobang", "hub"] {
        assert!(c.stop(n).success(), "{n}: {}", c.logs(n));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_doc_id_sent_twice_is_queued_once() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let mut a = c.agency("vpcp").await;
    let id = truc_core::DocId::new_v7().to_string();
    let mut req = doc(G22, &[H41], "Giấy mời họp");
    req.doc_id = id.clone();
    let first = a.send(req.clone()).await.unwrap().into_inner();
    let second = a.send(req).await.unwrap().into_inner();
    assert_eq!(
        (first.doc_id.as_str(), first.duplicate),
        (id.as_str(), false)
    );
    assert_eq!(
        (second.doc_id.as_str(), second.duplicate),
        (id.as_str(), true)
    );
    let barrier = a
        .send(doc(G22, &[H41], "barrier"))
        .await
        .unwrap()
        .into_inner()
        .doc_id;
    let items = eventually("barrier delivered", || {
        let c = &c;
        let barrier = barrier.clone();
        async move {
            let items = inbox(c, "nghean", H41).await;
            items.iter().any(|i| i.doc_id == barrier).then_some(items)
        }
    })
    .await;
    assert_eq!(items.iter().filter(|i| i.doc_id == id).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_up_front_with_the_reason() {
    let mut c = Cluster::new();
    c.start("vpcp");
    let mut a = c.agency("vpcp").await;
    let err = a.send(doc(H41, &[G22], "not ours")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("does not serve agency 000.00.00.H41"),
        "{err}"
    );

    let err = a.send(doc(G22, &[], "nobody")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let mut bad_name = doc(G22, &[H41], "path trick");
    bad_name.attachments.push(pb::Attachment {
        name: "../../etc/passwd".into(),
        content_type: "text/plain".into(),
        data: b"x".to_vec(),
        ..Default::default()
    });
    let err = a.send(bad_name).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("is a path"), "{err}");

    // A name that displays as another ("hop-dongexe.pdf" for an .exe) is
    // refused natively too, as an edXML import refuses it.
    let mut disguised = doc(G22, &[H41], "bidi trick");
    disguised.attachments.push(pb::Attachment {
        name: "hop-dong\u{202E}fdp.exe".into(),
        content_type: "application/pdf".into(),
        data: b"MZ".to_vec(),
        ..Default::default()
    });
    let err = a.send(disguised).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("bidirectional override characters"),
        "{err}"
    );

    let mut too_many = doc(G22, &[H41], "too many files");
    for i in 0..101 {
        too_many.attachments.push(pb::Attachment {
            name: format!("{i}.txt"),
            content_type: String::new(),
            data: vec![b'x'],
            ..Default::default()
        });
    }
    let err = a.send(too_many).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("limits.max_attachments"), "{err}");
    assert!(
        err.metadata().get("retry-after-ms").is_none(),
        "the same request never passes a limit: no retry hint"
    );

    let err = a
        .send(doc(G22, &["000.00.00/H41"], "bad id"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("'/'"), "{err}");
}

/// The hub's acknowledgement of a document is lost (a fault proxy holds
/// everything the hub sends the edge), and by the time the edge resends it
/// over a new link the hub's checks would refuse it (its subject limit was
/// lowered across a restart). The hub answers the resend as a duplicate:
/// the document reaches its recipient once, the edge's queue empties with
/// no dead letter, and its sender sees it delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_a_lost_ack_is_a_duplicate_though_its_checks_now_fail() {
    use truc::chaos::proxy::{Faults, Proxy};

    let mut c = Cluster::new();
    // Both ends keep the link while the hub's answers are held (the hub
    // would otherwise drop it for want of the edge's heartbeats, before a
    // slow host sends the document), so that the document goes up at once;
    // the proxy's reset ends it.
    for n in ["vpcp", "hub"] {
        c.edit(n, |t| {
            let l = t["link"].as_table_mut().unwrap();
            l.insert("heartbeat_interval_ms".into(), 10_000.into());
            l.insert("heartbeat_timeout_ms".into(), 60_000.into());
        });
    }
    for n in ["hub", "nghean"] {
        c.start(n);
    }
    let proxy = Proxy::start(c.hub_addr().parse().unwrap()).await.unwrap();
    c.set("vpcp", "parent", "address", proxy.addr.to_string());
    c.start("vpcp");
    let before = c.send_from_vpcp(H41, "Trước", &[]);
    c.wait_delivered("vpcp", &before);

    proxy.set(Faults {
        hold_down: true,
        ..Faults::default()
    });
    let subject = "Công văn mà hub không còn nhận tiêu đề dài như thế";
    let id = c.send_from_vpcp(H41, subject, &[]);
    // The hub took it (and passed it on); its ack waits in the proxy.
    eventually("taken by the hub and delivered", || {
        let c = &c;
        let id = id.clone();
        async move {
            let items = inbox(c, "nghean", H41).await;
            items.iter().any(|i| i.doc_id == id).then_some(())
        }
    })
    .await;

    c.kill("hub");
    c.set("hub", "limits", "max_subject_chars", 10);
    c.start("hub");
    proxy.reset_all();
    proxy.heal();

    // The edge resent it from the head of its queue; answered, it is gone.
    let queues = eventually("the edge's queue to the hub emptied", || {
        let v: serde_json::Value =
            serde_json::from_str(&c.cli_ok(&["queues", "--config", &c.cfg("vpcp"), "--json"]))
                .unwrap();
        let empty = v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["queue"] != "parent" || q["depth"] == 0);
        async move { empty.then_some(v) }
    })
    .await;
    assert_eq!(queues["dead_total"], 0, "{queues}");
    c.wait_delivered("vpcp", &id);
    let items = inbox(&c, "nghean", H41).await;
    assert_eq!(items.iter().filter(|i| i.doc_id == id).count(), 1);
    assert!(c.stat("hub", "duplicates") >= 1);
    // The hub does refuse such a subject now: a new document with it is
    // the edge's dead letter.
    let later = c.send_from_vpcp(H41, subject, &[]);
    let queues = eventually("the new one refused", || {
        let v: serde_json::Value =
            serde_json::from_str(&c.cli_ok(&["queues", "--config", &c.cfg("vpcp"), "--json"]))
                .unwrap();
        async move { (v["dead_total"] == 1).then_some(v) }
    })
    .await;
    assert_eq!(queues["dead"][0]["doc_id"], later.as_str(), "{queues}");
    let reason = queues["dead"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("subject is longer than 10"), "{queues}");
}
