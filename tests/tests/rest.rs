//! The REST/JSON agency API against real edges: every operation of today's
//! axis (domain/VDXP.md) as an application would call it, its errors, and the
//! event stream resuming across a reconnect and a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use base64::Engine;
use common::{rest::*, *};
use serde_json::{Value, json};

/// Every field of `v` is declared in the OpenAPI schema `name` and every
/// declared field is present (nested objects and arrays of objects too).
fn conforms(openapi: &Value, name: &str, v: &Value) {
    let schema = &openapi["components"]["schemas"][name];
    let props = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {name}"));
    let got = v.as_object().unwrap();
    let declared: BTreeSet<&String> = props.keys().collect();
    let returned: BTreeSet<&String> = got.keys().collect();
    assert_eq!(returned, declared, "{name}: returned vs declared fields");
    for (k, p) in props {
        let r = p["$ref"].as_str().or(p["items"]["$ref"].as_str());
        if let Some(r) = r {
            let inner = r.rsplit('/').next().unwrap();
            match &got[k] {
                Value::Array(a) => a.iter().for_each(|x| conforms(openapi, inner, x)),
                x => conforms(openapi, inner, x),
            }
        }
    }
}

fn start_default() -> Cluster {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean", "caobang"] {
        c.start(n);
    }
    c
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

fn recipient<'a>(status: &'a Value, organ: &str) -> &'a Value {
    status["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["organ"] == organ)
        .unwrap_or_else(|| panic!("{organ} not in {status}"))
}

#[test]
fn every_vdxp_operation_works_over_rest() {
    let c = start_default();
    let vpcp = c.rest("vpcp");
    let nghean = c.rest("nghean");
    let caobang = c.rest("caobang");

    // The OpenAPI document is served and lists what the router serves.
    let (s, doc) = vpcp.get_anonymous("/v1/openapi.json");
    assert_eq!(s, 200);
    let openapi = doc.clone();
    assert!(doc["paths"]["/v1/documents"]["post"].is_object(), "{doc}");

    // Authentication and authorization, each with its own stable code.
    let (s, e) = vpcp.get_anonymous(&format!("/v1/inbox?organ={G22}"));
    assert_eq!(
        (s, e["code"].as_str()),
        (401, Some("UNAUTHENTICATED")),
        "{e}"
    );
    let (s, e) = vpcp
        .with_token("not-a-token")
        .get(&format!("/v1/inbox?organ={G22}"));
    assert_eq!(
        (s, e["code"].as_str()),
        (401, Some("UNAUTHENTICATED")),
        "{e}"
    );
    let (s, e) = vpcp.with_token(&nghean.token).post(
        "/v1/documents",
        json!({"from": G22, "to": [H41], "subject": "giả mạo"}),
    );
    assert_eq!(s, 401, "nghean's token means nothing at vpcp: {e}");
    let (s, e) = nghean.post(
        "/v1/documents",
        json!({"from": G22, "to": [H41], "subject": "giả mạo"}),
    );
    assert_eq!(
        (s, e["code"].as_str()),
        (403, Some("PERMISSION_DENIED")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains(G22), "{e}");

    // Directory lookup and sync.
    let (s, dir) = vpcp.get("/v1/directory");
    assert_eq!(s, 200, "{dir}");
    let organs: BTreeSet<&str> = dir["agencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["organ"].as_str().unwrap())
        .collect();
    assert!(organs.contains(H41) && organs.contains(H14), "{dir}");
    assert!(dir["version"].as_u64().unwrap() > 0, "{dir}");
    conforms(&openapi, "Directory", &dir);
    let (s, a) = vpcp.get(&format!("/v1/directory/{H41}"));
    assert_eq!(
        (s, a["name"].as_str()),
        (200, Some("UBND tỉnh Nghệ An")),
        "{a}"
    );
    let (s, e) = vpcp.get("/v1/directory/000.00.00.Z99");
    assert_eq!((s, e["code"].as_str()), (404, Some("NOT_FOUND")), "{e}");

    // A resumable upload: half, ask where to resume, the rest.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let up = "/v1/uploads/0196f1d2-7c3a-7e21-9a4b-5c6d7e8f9012";
    let (s, e) = vpcp.put_bytes(&format!("{up}?size={}", big.len()), &big[..100_000]);
    assert!(s >= 400, "a short upload is not complete");
    // Said of the application's own upload id.
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("upload 0196f1d2-7c3a-7e21-9a4b-5c6d7e8f9012 stopped at byte"),
        "{e}"
    );
    let (s, st) = vpcp.get(up);
    assert_eq!(s, 200, "{st}");
    let offset = st["offset"].as_u64().unwrap() as usize;
    assert!(offset > 0 && offset <= 100_000, "{st}");
    let (s, done) = vpcp.put_bytes(
        &format!("{up}?size={}&offset={offset}", big.len()),
        &big[offset..],
    );
    assert_eq!(s, 201, "{done}");
    assert_eq!(done["sha256"], sha256_hex(&big));
    // Bytes other than the digest announced are refused.
    let wrong = sha256_hex(b"another file");
    let (s, e) = vpcp.put_bytes(
        &format!("/v1/uploads/0196f1d2-7c3a-7e21-9a4b-000000000001?size=3&sha256={wrong}"),
        b"abc",
    );
    assert!((400..500).contains(&s), "{s} {e}");
    assert!(e["message"].as_str().unwrap().contains("sha-256"), "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("upload 0196f1d2-7c3a-7e21-9a4b-000000000001:"),
        "{e}"
    );
    // A body with no bytes finishes an upload: here a zero-byte file.
    let (s, empty) = vpcp.put_bytes(
        "/v1/uploads/0196f1d2-7c3a-7e21-9a4b-000000000000?size=0",
        b"",
    );
    assert_eq!(s, 201, "{empty}");
    assert_eq!(empty["sha256"], sha256_hex(b""));

    // Send: an inline attachment and the uploaded one.
    let small = "Nội dung công văn".as_bytes();
    let mut letter = json!({
        "from": G22, "to": [H41, H14],
        "subject": "Về việc triển khai Nghị định 30/2020/NĐ-CP",
        "code_number": "7816", "code_notation": "VPCP-TTĐT", "priority": 1,
        "attachments": [
            {"name": "7816.txt", "content_type": "text/plain",
             "data_base64": base64::engine::general_purpose::STANDARD.encode(small)},
            {"name": "phu-luc.bin", "content_type": "application/octet-stream",
             "sha256": done["sha256"], "size": big.len()},
        ],
    });
    let (s, sent) = vpcp.post("/v1/documents", letter.clone());
    assert_eq!(s, 201, "{sent}");
    let id = sent["doc_id"].as_str().unwrap().to_owned();
    assert_eq!(sent["duplicate"], false);
    // The same document under its doc_id again (a retry) is a no-op, said so.
    letter["doc_id"] = json!(id);
    let (s, again) = vpcp.post("/v1/documents", letter.clone());
    assert_eq!(
        (s, again["duplicate"].as_bool()),
        (201, Some(true)),
        "{again}"
    );
    // Another document under it is refused, not dropped as a duplicate.
    letter["attachments"] = json!([]);
    let (s, other) = vpcp.post("/v1/documents", letter);
    assert_eq!(s, 409, "{other}");
    assert!(
        other["message"]
            .as_str()
            .unwrap()
            .contains("was used for another document (attachments [\"7816.txt\", \"phu-luc.bin\"]"),
        "{other}"
    );
    // A name that would display as another is refused with the reason.
    let (s, e) = vpcp.post(
        "/v1/documents",
        json!({"from": G22, "to": [H41], "subject": "x",
               "attachments": [{"name": "hop-dong\u{2067}fdp.exe", "data_base64": "TVo="}]}),
    );
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("bidirectional override characters"),
        "{e}"
    );
    // An unknown recipient is refused with a reason naming it.
    let (s, e) = vpcp.post(
        "/v1/documents",
        json!({"from": G22, "to": ["000.00.00.Z99"], "subject": "x"}),
    );
    assert!((400..500).contains(&s), "{s} {e}");
    assert!(
        e["message"].as_str().unwrap().contains("000.00.00.Z99"),
        "{e}"
    );
    assert!(!e["code"].as_str().unwrap().is_empty());

    // The recipient: counts, inbox, the document, its attachments, edXML.
    let item = nghean.wait_inbox(H41, &id, "");
    assert_eq!(
        item["subject"],
        "Về việc triển khai Nghị định 30/2020/NĐ-CP"
    );
    assert_eq!(item["acked"], false);
    conforms(&openapi, "InboxItem", &item);
    let (s, n) = nghean.get(&format!("/v1/counts?organ={H41}"));
    assert_eq!((s, n["documents"].as_u64()), (200, Some(1)), "{n}");
    conforms(&openapi, "Counts", &n);
    let (s, d) = nghean.get(&format!("/v1/inbox/{id}"));
    assert_eq!(s, 200, "{d}");
    conforms(&openapi, "ReceivedDocument", &d);
    assert_eq!(d["from"], G22);
    // Naming the sender (needed when two used one doc_id): the same document;
    // naming another, nothing of it.
    let (s, named) = nghean.get(&format!("/v1/inbox/{id}?from={G22}"));
    assert_eq!((s, &named["subject"]), (200, &d["subject"]), "{named}");
    let (s, e) = nghean.get(&format!("/v1/inbox/{id}?from={H14}"));
    assert_eq!(s, 404, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .ends_with(&format!("agencies from {H14}")),
        "{e}"
    );
    let atts = d["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 2, "{d}");
    for (a, want) in atts.iter().zip([small, &big[..]]) {
        assert_eq!(a["sha256"], sha256_hex(want));
        let (s, bytes) = nghean.get_bytes(a["href"].as_str().unwrap());
        assert_eq!(s, 200);
        assert_eq!(bytes, want, "{} comes back byte for byte", a["name"]);
    }
    // A download cut part way resumes where it stopped, and a part of it
    // can be read; a range past the end is 416.
    let href = atts[1]["href"].as_str().unwrap();
    let n = big.len();
    let (s, cr, tail) = nghean.get_range(href, &format!("bytes={}-", n - 1000));
    assert_eq!(
        (s, cr.as_str()),
        (206, format!("bytes {}-{}/{n}", n - 1000, n - 1).as_str())
    );
    assert_eq!(tail, &big[n - 1000..]);
    let (s, cr, part) = nghean.get_range(href, "bytes=100-199");
    assert_eq!(
        (s, cr.as_str()),
        (206, format!("bytes 100-199/{n}").as_str())
    );
    assert_eq!(part, &big[100..200]);
    let (s, cr, _) = nghean.get_range(href, &format!("bytes={n}-"));
    assert_eq!((s, cr), (416, format!("bytes */{n}")));
    let (s, xml) = nghean.get_bytes(&format!("/v1/inbox/{id}/edxml"));
    assert_eq!(s, 200);
    let p = truc_edxml::parse(&xml, &truc_edxml::Limits::default()).unwrap();
    assert_eq!(p.subject, "Về việc triển khai Nghị định 30/2020/NĐ-CP");
    assert_eq!(
        (p.code_number.as_str(), p.code_notation.as_str()),
        ("7816", "VPCP-TTĐT")
    );
    assert_eq!(p.attachments[1].data, big);
    // An application whose agencies did not receive it sees nothing of it.
    let (s, e) = vpcp.get(&format!("/v1/inbox/{id}"));
    assert_eq!(s, 404, "{e}");

    // Ack, then a business status; nack at the other recipient.
    // Not for an agency this application may not act for: 403, not an empty 200.
    for verb in ["ack", "nack"] {
        let (s, e) = nghean.post(&format!("/v1/inbox/{id}/{verb}"), json!({"organ": H14}));
        assert_eq!(
            (s, e["code"].as_str()),
            (403, Some("PERMISSION_DENIED")),
            "{verb}: {e}"
        );
    }
    let (s, a) = nghean.post(&format!("/v1/inbox/{id}/ack"), Value::Null);
    assert_eq!((s, a["acked"].clone()), (200, json!([H41])), "{a}");
    let (s, st) = nghean.post(
        &format!("/v1/inbox/{id}/status"),
        json!({"code": "03", "note": "Đã vào sổ", "staff": "Nguyễn Văn A"}),
    );
    assert_eq!(s, 201, "{st}");
    let (s, e) = nghean.post(&format!("/v1/inbox/{id}/status"), json!({"code": "42"}));
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{e}"
    );
    caobang.wait_inbox(H14, &id, "");
    let (s, nk) = caobang.post(
        &format!("/v1/inbox/{id}/nack"),
        json!({"reason": "tệp đính kèm không mở được"}),
    );
    assert_eq!((s, nk["nacked"].clone()), (200, json!([H14])), "{nk}");
    let it = caobang.inbox_item(H14, &id, "").unwrap();
    assert_eq!(
        (it["nacked"].as_bool(), it["acked"].as_bool()),
        (Some(true), Some(false)),
        "{it}"
    );
    // A nack after the ack is refused, saying why, not answered empty.
    let (s, e) = nghean.post(&format!("/v1/inbox/{id}/nack"), json!({}));
    assert_eq!(
        (s, e["code"].as_str()),
        (409, Some("FAILED_PRECONDITION")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{id} was already acknowledged by {H41}")),
        "{e}"
    );

    // The sender: per-recipient state, the sent list, receipts.
    let status = poll("acked with status 03 at the sender", || {
        let (s, v) = vpcp.get(&format!("/v1/documents/{id}"));
        assert_eq!(s, 200, "{v}");
        let r = recipient(&v, H41);
        (r["state"] == "acked" && r["last_status"] == "03").then_some(v)
    });
    assert_eq!(recipient(&status, H41)["status_note"], "Đã vào sổ");
    conforms(&openapi, "SentDocument", &status);
    assert_eq!(recipient(&status, H14)["state"], "delivered");
    let (s, list) = vpcp.get(&format!("/v1/sent?from={G22}"));
    assert_eq!(s, 200);
    assert!(
        list["documents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["doc_id"] == id),
        "{list}"
    );
    let (s, rc) = vpcp.get(&format!("/v1/documents/{id}/receipts"));
    assert_eq!(s, 200, "{rc}");
    let types: BTreeSet<(String, String)> = rc["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["organ"].as_str().unwrap().into(),
                r["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    for t in ["accepted", "delivered", "acked"] {
        assert!(
            types.contains(&(H41.to_owned(), t.to_owned())),
            "{t}: {types:?}"
        );
    }
    assert!(rc["document_envelope_base64"].is_string());
    conforms(&openapi, "Receipts", &rc);
    // Nobody else's application reads the sender's view.
    let (s, _) = nghean.get(&format!("/v1/documents/{id}"));
    assert!(s == 403 || s == 404);

    // Update (remove Cao Bằng), replace, recall: each a new message at the recipient.
    let (s, upd) = vpcp.post(
        &format!("/v1/documents/{id}/update"),
        json!({"remove": [H14], "reason": "Bớt nơi nhận"}),
    );
    assert_eq!(s, 201, "{upd}");
    let (s, rep) = vpcp.post(
        &format!("/v1/documents/{id}/replace"),
        json!({"to": [H41], "subject": "Thay thế công văn 7816", "reason": "Sai sót",
               "attachments": [{"name": "7816-v2.txt", "data_base64": "djI="}]}),
    );
    assert_eq!(s, 201, "{rep}");
    let (s, rec) = vpcp.post(
        &format!("/v1/documents/{id}/recall"),
        json!({"reason": "Ban hành nhầm"}),
    );
    assert_eq!(s, 201, "{rec}");
    for (resp, kind) in [(&upd, "update"), (&rep, "replace"), (&rec, "revoke")] {
        let change_id = resp["doc_id"].as_str().unwrap();
        let got = nghean.wait_inbox(H41, change_id, "");
        assert_eq!(got["business_type"], kind, "{got}");
        assert_eq!(got["target_doc_id"], id.as_str(), "{got}");
        // The document itself says so too: software that reads it (not
        // the list) does not take it for a new document.
        let (s, d) = nghean.get(&format!("/v1/inbox/{change_id}"));
        assert_eq!(s, 200, "{d}");
        conforms(&openapi, "ReceivedDocument", &d);
        assert_eq!(
            (&d["kind"], &d["status"]),
            (&json!("document"), &Value::Null)
        );
        assert_eq!(
            (&d["business_type"], &d["target_doc_id"]),
            (&json!(kind), &json!(id.as_str())),
            "{d}"
        );
    }
    // And so does its event.
    let mut events = nghean.events(H41, None);
    let rec_id = rec["doc_id"].as_str().unwrap();
    let ev = loop {
        let e = events.next().expect("stream open");
        if e.event == "arrived" && e.data["doc_id"] == rec_id {
            break e;
        }
    };
    conforms(&openapi, "Event", &ev.data);
    assert_eq!(
        (&ev.data["business_type"], &ev.data["target_doc_id"]),
        (&json!("revoke"), &json!(id.as_str())),
        "{:?}",
        ev.data
    );
    drop(events);
    // A recall is not registered (03): it is accepted (15) or refused (16).
    let (s, e) = nghean.post(
        &format!("/v1/inbox/{rec_id}/status"),
        json!({"code": "03", "note": "Đã vào sổ"}),
    );
    assert_eq!(s, 400, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("does not answer a recall"),
        "{e}"
    );
    // A recall is a request: the recipient agrees with a 15 on it.
    let (s, agree) = nghean.post(
        &format!("/v1/inbox/{rec_id}/status"),
        json!({"code": "15", "note": "Đồng ý thu hồi"}),
    );
    assert_eq!(s, 201, "{agree}");
    let it = poll("the recall is seen on the original", || {
        nghean
            .inbox_item(H41, &id, "")
            .filter(|i| i["recalled"] == true)
    });
    assert_eq!(it["doc_id"], id.as_str());
    // Only the original sender may change it.
    let (s, _) = nghean.post(&format!("/v1/documents/{id}/recall"), json!({}));
    assert!(s == 403 || s == 404, "{s}");

    // Statuses arrive at the sender's inbox and can be listed by kind.
    let st_id = st["doc_id"].as_str().unwrap();
    let got = poll("the status in the sender's inbox", || {
        let (_, v) = vpcp.get(&format!("/v1/inbox?organ={G22}&kind=status&all=true"));
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["doc_id"] == st_id)
            .cloned()
    });
    assert_eq!(
        (got["status_code"].as_str(), got["for_doc_id"].as_str()),
        (Some("03"), Some(id.as_str()))
    );
    // Read alone, it says it is a status and what it says.
    let (s, v) = vpcp.get(&format!("/v1/inbox/{st_id}"));
    assert_eq!(s, 200, "{v}");
    conforms(&openapi, "ReceivedDocument", &v);
    assert_eq!(v["kind"], "status", "{v}");
    assert_eq!(
        (&v["status"]["code"], &v["status"]["for_doc_id"]),
        (&json!("03"), &json!(id.as_str())),
        "{v}"
    );
    let (s, n) = vpcp.get(&format!("/v1/counts?organ={G22}"));
    assert_eq!(s, 200);
    assert!(n["statuses"].as_u64().unwrap() >= 1, "{n}");
}

#[test]
fn the_event_stream_delivers_each_event_once_across_a_reconnect_and_a_restart() {
    let mut c = start_default();
    let vpcp = c.rest("vpcp");
    let send = |i: usize| -> String {
        let (s, v) = vpcp.post(
            "/v1/documents",
            json!({"from": G22, "to": [H41], "subject": format!("Công văn số {i}")}),
        );
        assert_eq!(s, 201, "{v}");
        v["doc_id"].as_str().unwrap().to_owned()
    };
    let mut sent: Vec<String> = (0..10).map(send).collect();

    let mut seen: Vec<SseEvent> = Vec::new();
    {
        let mut stream = c.rest("nghean").events(H41, None);
        while seen.len() < 4 {
            seen.push(stream.next().expect("stream open"));
        }
        // Dropped here: the client goes away mid-stream.
    }
    let last = seen.last().unwrap().id;

    // More arrive while nobody listens, and the edge restarts in between.
    sent.extend((10..15).map(send));
    c.stop("nghean");
    sent.extend((15..20).map(send));
    c.start("nghean");

    let mut stream = c.rest("nghean").events(H41, Some(last));
    let want: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    loop {
        let arrived: BTreeSet<String> = seen
            .iter()
            .filter(|e| e.event == "arrived")
            .map(|e| e.data["doc_id"].as_str().unwrap().to_owned())
            .collect();
        if arrived.len() == want.len() {
            break;
        }
        seen.push(stream.next().expect("stream open"));
    }
    let ids: Vec<u64> = seen.iter().map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "event ids increase with no repeat: {ids:?}"
    );
    let arrivals: Vec<&str> = seen
        .iter()
        .filter(|e| e.event == "arrived")
        .map(|e| e.data["doc_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        arrivals.len(),
        want.len(),
        "each arrival once: {arrivals:?}"
    );
    assert_eq!(arrivals.iter().copied().collect::<BTreeSet<_>>(), want);
    for e in &seen {
        assert_eq!(e.data["organ"], H41);
        assert_eq!(e.data["id"], e.id);
    }

    // The sender's stream carries the recipients' receipts of its documents.
    let mut s = c.rest("vpcp").events(G22, None);
    let ev = s.next().unwrap();
    assert_eq!(ev.event, "state", "{ev:?}");
    assert!(want.contains(ev.data["doc_id"].as_str().unwrap()));
    assert_eq!(ev.data["recipient"], H41);

    // The inbox page by page: every document once, in arrival order, and
    // no next page after the last.
    let openapi: Value = serde_json::from_str(truc_node::rest::OPENAPI).unwrap();
    let nghean = c.rest("nghean");
    let (mut paged, mut after, mut pages) = (Vec::new(), 0u64, 0);
    loop {
        let (s, v) = nghean.get(&format!(
            "/v1/inbox?organ={H41}&all=true&limit=7&after={after}"
        ));
        assert_eq!(s, 200, "{v}");
        conforms(&openapi, "Inbox", &v);
        pages += 1;
        for i in v["items"].as_array().unwrap() {
            paged.push(i["doc_id"].as_str().unwrap().to_owned());
        }
        match v["next_after"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(paged, sent, "in arrival order, each once");
    assert_eq!(pages, 3, "20 documents in pages of 7");
    // So does the sender's list, newest first (documents of one
    // millisecond in any order), each once.
    let (mut listed, mut created, mut after) = (Vec::new(), Vec::new(), String::new());
    loop {
        let (s, v) = vpcp.get(&format!("/v1/sent?from={G22}&limit=7&after={after}"));
        assert_eq!(s, 200, "{v}");
        conforms(&openapi, "SentList", &v);
        for d in v["documents"].as_array().unwrap() {
            listed.push(d["doc_id"].as_str().unwrap().to_owned());
            created.push(d["created_at_ms"].as_i64().unwrap());
        }
        match v["next_after"].as_str() {
            Some(n) => after = n.to_owned(),
            None => break,
        }
    }
    assert_eq!(listed.len(), sent.len(), "{listed:?}");
    assert_eq!(
        listed.iter().collect::<BTreeSet<_>>(),
        sent.iter().collect::<BTreeSet<_>>()
    );
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");
}

/// Upload ids are each application's own: another application naming the
/// same id neither sees where the first one's upload stands, nor continues
/// it with its own bytes; the first finishes it.
#[test]
fn an_upload_is_its_applications_own() {
    let mut c = Cluster::new();
    let second = "token-of-another-application";
    let second_sha256 = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        second.as_bytes(),
    ));
    c.edit("vpcp", |t| {
        let apps = t["rest"]["apps"].as_array_mut().unwrap();
        let mut app = toml::Table::new();
        app.insert("name".into(), "qlvb-khac".into());
        app.insert("token_sha256".into(), second_sha256.into());
        app.insert("organs".into(), toml::Value::Array(vec![G22.into()]));
        apps.push(toml::Value::Table(app));
    });
    for n in ["hub", "vpcp"] {
        c.start(n);
    }
    let a = c.rest("vpcp");
    let b = a.with_token(second);
    let file: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let up = "/v1/uploads/0196f1d2-7c3a-7e21-9a4b-0000000000aa";
    let (s, _) = a.put_bytes(&format!("{up}?size={}", file.len()), &file[..80_000]);
    assert!(s >= 400, "a short upload is not complete");
    let (_, st) = a.get(up);
    let offset = st["offset"].as_u64().unwrap();
    assert!(offset > 0, "{st}");
    let (s, other) = b.get(up);
    assert_eq!((s, other["offset"].as_u64()), (200, Some(0)), "{other}");
    let (s, e) = b.put_bytes(
        &format!("{up}?size={}&offset={offset}", file.len()),
        &[0u8; 10],
    );
    assert!(
        (400..500).contains(&s),
        "another application's bytes: {s} {e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("upload 0196f1d2-7c3a-7e21-9a4b-0000000000aa continues at byte 0"),
        "named as the application named it: {e}"
    );
    let (_, st) = a.get(up);
    assert_eq!(
        st["offset"].as_u64(),
        Some(offset),
        "the first one's bytes untouched"
    );
    let (s, done) = a.put_bytes(
        &format!("{up}?size={}&offset={offset}", file.len()),
        &file[offset as usize..],
    );
    assert_eq!(s, 201, "{done}");
    assert_eq!(done["sha256"], sha256_hex(&file));

    // Sent by digest: by the application that uploaded it only. Another
    // (one that learnt the digest) hears that it uploaded nothing such.
    let letter = |subject: &str| {
        json!({
            "from": G22, "to": [H41], "subject": subject,
            "attachments": [{"name": "phu-luc.bin", "sha256": sha256_hex(&file), "size": file.len()}],
        })
    };
    let (s, e) = b.post("/v1/documents", letter("Mượn tệp của ứng dụng khác"));
    assert_eq!((s, e["code"].as_str()), (404, Some("NOT_FOUND")), "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("qlvb-khac uploaded nothing"),
        "{e}"
    );
    let (s, sent) = a.post("/v1/documents", letter("Phụ lục đã tải lên"));
    assert_eq!(s, 201, "{sent}");
    // Nor in an update or a replacement of a document it may change.
    let id = sent["doc_id"].as_str().unwrap();
    for change in ["update", "replace"] {
        let (s, e) = b.post(
            &format!("/v1/documents/{id}/{change}"),
            json!({
                "reason": "Bổ sung phụ lục",
                "attachments": [{"name": "phu-luc.bin", "sha256": sha256_hex(&file), "size": file.len()}],
            }),
        );
        assert_eq!(
            (s, e["code"].as_str()),
            (404, Some("NOT_FOUND")),
            "{change}: {e}"
        );
    }
}

/// Two applications of one edge upload the same bytes (stored once): each
/// owns its upload and may name the file in a document, while a third that
/// uploaded nothing hears so.
#[test]
fn two_applications_uploading_the_same_bytes_may_each_send_them() {
    let mut c = Cluster::new();
    let apps = [
        ("qlvb-hai", "token-of-the-second-application"),
        ("qlvb-ba", "token-of-the-third-application"),
    ];
    c.edit("vpcp", |t| {
        let list = t["rest"]["apps"].as_array_mut().unwrap();
        for (name, token) in apps {
            let mut app = toml::Table::new();
            app.insert("name".into(), name.into());
            app.insert("token_sha256".into(), sha256_hex(token.as_bytes()).into());
            app.insert("organs".into(), toml::Value::Array(vec![G22.into()]));
            list.push(toml::Value::Table(app));
        }
    });
    for n in ["hub", "vpcp"] {
        c.start(n);
    }
    let first = c.rest("vpcp");
    let second = first.with_token(apps[0].1);
    let third = first.with_token(apps[1].1);
    let file: Vec<u8> = (0..100_000usize).map(|i| (i * 7 % 253) as u8).collect();
    let digest = sha256_hex(&file);
    // Each under the same upload id, which is each application's own.
    let up = format!(
        "/v1/uploads/0196f1d2-7c3a-7e21-9a4b-0000000000bb?size={}",
        file.len()
    );
    for app in [&first, &second] {
        let (s, done) = app.put_bytes(&up, &file);
        assert_eq!(
            (s, done["sha256"].as_str()),
            (201, Some(&digest[..])),
            "{done}"
        );
    }
    let letter = json!({
        "from": G22, "to": [H41], "subject": "Phụ lục chung",
        "attachments": [{"name": "phu-luc.bin", "sha256": digest, "size": file.len()}],
    });
    let (s, e) = third.post("/v1/documents", letter.clone());
    assert_eq!((s, e["code"].as_str()), (404, Some("NOT_FOUND")), "{e}");
    let said = format!("application qlvb-ba uploaded nothing with sha-256 {digest}");
    assert!(e["message"].as_str().unwrap().contains(&said), "{e}");
    let mut sent = BTreeSet::new();
    for app in [&first, &second] {
        let (s, v) = app.post("/v1/documents", letter.clone());
        assert_eq!(s, 201, "{v}");
        sent.insert(v["doc_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(sent.len(), 2, "two documents: {sent:?}");
}
