//! The integration example in examples/ works as its documentation says,
//! against real edges: send with an inline and an uploaded attachment, listen,
//! save, acknowledge, answer 01 and 03, and resume after a restart without
//! repeating a document.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::PathBuf, process::Command};

use common::{rest::*, *};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/dms_bridge.py")
}

fn run(c: &Cluster, node: &str, args: &[&str]) -> String {
    let api = c.rest(node);
    let out = Command::new("python3")
        .arg(script())
        .args(["--url", &api.base, "--token", &api.token])
        // Uploads in 1 MiB pieces, so that a 3 MB file resumes twice.
        .env("DMS_UPLOAD_PIECE", (1 << 20).to_string())
        .args(args)
        .output()
        .expect("python3 (scripts/test installs it when missing)");
    assert!(
        out.status.success(),
        "dms_bridge.py {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_example_sends_listens_acknowledges_and_answers_and_resumes_after_a_restart() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let small = c.path("to-trinh.txt");
    std::fs::write(&small, "Tờ trình số 12".as_bytes()).unwrap();
    // Over the example's inline limit: goes through a resumable upload.
    let big = c.path("phu-luc.bin");
    let big_bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&big, &big_bytes).unwrap();

    let send = |c: &Cluster, subject: &str, files: &[&str]| -> String {
        let mut args = vec![
            "send",
            "--from",
            G22,
            "--to",
            H41,
            "--subject",
            subject,
            "--code",
            "12/VPCP-KGVX",
        ];
        args.extend(files);
        run(c, "vpcp", &args).trim().to_owned()
    };
    let first = send(
        &c,
        "Tờ trình dự thảo Nghị định",
        &[small.to_str().unwrap(), big.to_str().unwrap()],
    );

    let out = c.path("inbox");
    let state = c.path("last-event");
    let listen = |c: &Cluster| {
        run(
            c,
            "nghean",
            &[
                "listen",
                "--organ",
                H41,
                "--out",
                out.to_str().unwrap(),
                "--state",
                state.to_str().unwrap(),
                "--count",
                "1",
            ],
        )
    };
    let said = listen(&c);
    assert!(said.contains(&format!("received {first}")), "{said}");
    let folder = out.join(&first);
    assert_eq!(
        std::fs::read(folder.join("0-to-trinh.txt")).unwrap(),
        "Tờ trình số 12".as_bytes()
    );
    assert_eq!(
        std::fs::read(folder.join("1-phu-luc.bin")).unwrap(),
        big_bytes
    );

    // The sender sees the acknowledgement and the last status.
    let vpcp = c.rest("vpcp");
    poll("acked with status 03", || {
        let (_, v) = vpcp.get(&format!("/v1/documents/{first}"));
        let r = &v["recipients"][0];
        (r["state"] == "acked" && r["last_status"] == "03").then_some(())
    });

    // A second document while the listener is down, and the edge restarts:
    // the listener resumes after its last event and handles only the new one.
    let second = send(&c, "Công văn thứ hai", &[]);
    c.stop("nghean");
    c.start("nghean");
    let said = listen(&c);
    assert!(said.contains(&format!("received {second}")), "{said}");
    assert!(!said.contains(&first), "{first} handled twice: {said}");

    // The sender recalls the second: the listener tells it as a recall of
    // that one, not as a new document, and registers nothing (no 01/03).
    let (s, rec) = vpcp.post(
        &format!("/v1/documents/{second}/recall"),
        serde_json::json!({"reason": "Ban hành nhầm"}),
    );
    assert_eq!(s, 201, "{rec}");
    let recall = rec["doc_id"].as_str().unwrap();
    let said = listen(&c);
    assert!(
        said.contains(&format!("revoke of {second} from {G22} ({recall})")),
        "{said}"
    );
    assert!(!said.contains("received"), "{said}");
    let (_, v) = c.rest("nghean").get(&format!("/v1/inbox/{recall}"));
    assert_eq!(v["acked"], true, "{v}");
    let (_, v) = vpcp.get(&format!("/v1/documents/{recall}"));
    assert_eq!(v["recipients"][0]["last_status"], "", "{v}");
}
