//! `cargo run -p truc-pdfsig --example verify-pdf -- CA.pem FILE.pdf...`: prints
//! the verdict on every signature of each file, verified now.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ca = args.next().ok_or("usage: verify-pdf CA.pem FILE.pdf...")?;
    let anchors = truc_pdfsig::TrustAnchors::from_pem(&std::fs::read(ca)?)?;
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    for file in args {
        match truc_pdfsig::verify_pdf(&std::fs::read(&file)?, &anchors, now_ms) {
            Ok(report) => {
                println!("{file}: {}", report.summary().describe());
                for (i, v) in report.signatures.iter().enumerate() {
                    println!("  signature {}: {v:?}", i + 1);
                }
            }
            Err(e) => println!("{file}: {e}"),
        }
    }
    Ok(())
}
