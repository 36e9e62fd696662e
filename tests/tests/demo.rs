//! `truc demo --once`: the README's first command works on a fresh machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[test]
fn the_demo_delivers_its_documents_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["demo", "--once", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("demo finished: 7 documents delivered"),
        "{stdout}"
    );
    assert!(stdout.contains("000.00.00.H14 delivered"), "{stdout}");
    // The PDF carries the agency's own signature, which the recipient checked.
    assert!(
        stdout.contains("signature inside QD-1234-TTg.pdf: valid, signed by Văn phòng Chính phủ"),
        "{stdout}"
    );
    assert!(dir.path().join("vpcp.toml").exists());
}
