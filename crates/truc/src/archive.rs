//! Archival packages: `truc archive export` writes one BagIt 1.0 bag per document
//! (RFC 8493) from what its edge keeps — the signed envelope, the attachments,
//! the receipts, the business statuses, the trace, the signer certificates and
//! the edge's audit entries about the document with the last of them signed.
//! `truc archive verify` checks a bag offline with nothing but the trusted CA
//! certificates, names any part that does not verify, and says what it proves.
//! The format is documented in docs/archive.md.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use prost::Message;
use rustls::pki_types::UnixTime;
use truc_node::{
    Config, audit,
    envelope::{self, Sender, Verifiers},
};
use truc_proto::v1 as pb;
use truc_store::{Digest, record::AuditEntry};

use crate::{client, verify::offline_limits};

/// The version of the package layout (bag-info.txt `Truc-Archive-Version`).
pub const FORMAT_VERSION: u32 = 1;

/// `truc archive export` (clap reads its flags from here).
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Documents to export (or a period with --from/--to).
    pub doc_ids: Vec<String>,
    /// The sender, when two senders used the same doc_id.
    #[arg(long)]
    pub sender: Option<String>,
    /// Every document sent or received from this day on (YYYY-MM-DD, Vietnam time).
    #[arg(long = "from")]
    pub since: Option<String>,
    /// … up to this day, inclusive (YYYY-MM-DD).
    #[arg(long = "to")]
    pub until: Option<String>,
    #[arg(long)]
    pub out: PathBuf,
}

/// Unix ms of the start of a day in Vietnam time (UTC+7).
fn day_start_ms(day: &str) -> Result<i64> {
    let d = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .with_context(|| format!("{day}: not a date (YYYY-MM-DD)"))?;
    let t = d
        .and_hms_opt(0, 0, 0)
        .ok_or_else(|| anyhow!("{day}: no midnight"))?;
    Ok(t.and_utc().timestamp_millis() - 7 * 3_600_000)
}

/// The documents of this edge (sent by its agencies or received by them) whose
/// creation or arrival falls within the days given.
async fn documents_between(
    config: &Path,
    client: &mut crate::client::AgencyApi,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let lo = since.map(day_start_ms).transpose()?.unwrap_or(i64::MIN);
    let hi = until
        .map(|d| day_start_ms(d).map(|ms| ms + 86_400_000))
        .transpose()?
        .unwrap_or(i64::MAX);
    let cfg = Config::load(config)?;
    let mut out = BTreeSet::new();
    for (organ, ..) in &cfg.agencies {
        // Both lists page by page, however many they hold.
        let mut after = String::new();
        loop {
            let sent = client
                .list_sent(pb::ListSentRequest {
                    from: organ.to_string(),
                    limit: u32::MAX,
                    after,
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            for d in sent.documents {
                if (lo..hi).contains(&d.created_at_ms) {
                    out.insert((d.doc_id, d.from));
                }
            }
            if sent.next_after.is_empty() {
                break;
            }
            after = sent.next_after;
        }
        let mut after = 0;
        loop {
            let page = client
                .list_inbox(pb::ListInboxRequest {
                    organ: organ.to_string(),
                    include_acked: true,
                    limit: u32::MAX,
                    kind: "document".into(),
                    after,
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            for i in page.items {
                if (lo..hi).contains(&i.received_at_ms) {
                    out.insert((i.doc_id, i.from));
                }
            }
            if page.next_after == 0 {
                break;
            }
            after = page.next_after;
        }
    }
    Ok(out.into_iter().collect())
}

pub async fn export(a: ExportArgs) -> Result<()> {
    let mut c = client::connect(&a.config).await?;
    let docs: Vec<(String, Option<String>)> = if a.doc_ids.is_empty() {
        if a.since.is_none() && a.until.is_none() {
            bail!("name documents, or a period with --from DATE and/or --to DATE");
        }
        documents_between(&a.config, &mut c, a.since.as_deref(), a.until.as_deref())
            .await?
            .into_iter()
            .map(|(id, from)| (id, Some(from)))
            .collect()
    } else {
        a.doc_ids
            .iter()
            .map(|id| (id.clone(), a.sender.clone()))
            .collect()
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let mut t = client::table();
    t.set_header(vec!["document", "package", "files", "bytes"]);
    for (id, from) in &docs {
        let (dir, files, bytes, kept) = export_one(&mut c, id, from.as_deref(), &a.out)
            .await
            .with_context(|| format!("export {id}"))?;
        let shown = if kept {
            format!(
                "{} (already there, kept: an archival package is never overwritten)",
                dir.display()
            )
        } else {
            dir.display().to_string()
        };
        t.add_row(vec![
            id.clone(),
            shown,
            files.to_string(),
            client::human_bytes(bytes),
        ]);
    }
    println!("{t}");
    println!(
        "{} package(s); check one with `truc archive verify PACKAGE --config FILE`",
        docs.len()
    );
    Ok(())
}

/// A file name made only of characters that are safe on every filesystem.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Every file under `dir`, as paths relative to `base` with `/` separators.
fn files_under(base: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(files_under(base, &p)?);
        } else {
            let rel = p
                .strip_prefix(base)
                .map_err(|e| anyhow!("{e}"))?
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push(rel);
        }
    }
    out.sort();
    Ok(out)
}

async fn export_one(
    c: &mut crate::client::AgencyApi,
    doc_id: &str,
    from: Option<&str>,
    out: &Path,
) -> Result<(PathBuf, usize, u64, bool)> {
    let rec = c
        .archive_record(pb::ArchiveRecordRequest {
            doc_id: doc_id.into(),
            from: from.unwrap_or_default().into(),
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    let env = rec
        .envelope
        .clone()
        .ok_or_else(|| anyhow!("the edge sent no envelope"))?;
    let header = pb::Header::decode(env.header_bytes.as_slice())?;
    let final_dir = out.join(safe(&format!("{}-{}", header.from, header.doc_id)));
    if final_dir.exists() {
        // Never overwritten. A package is renamed into place only whole, so
        // one that is there is this document's: it is recorded as archived
        // again (a run stopped after the rename and before that record can
        // be run again), and a period's run goes on with the next document.
        let (package_sha256, _) = client::sha256_file(&final_dir.join("tagmanifest-sha256.txt"))
            .with_context(|| format!("{} exists but is not a package", final_dir.display()))?;
        c.archive_exported(pb::ArchiveExportedRequest {
            doc_id: header.doc_id.clone(),
            from: header.from.clone(),
            package_sha256: package_sha256.to_vec(),
        })
        .await
        .map_err(client::status_error)?;
        let payload = files_under(&final_dir, &final_dir.join("data"))?;
        let bytes = payload
            .iter()
            .filter_map(|rel| std::fs::metadata(final_dir.join(rel)).ok())
            .map(|m| m.len())
            .sum();
        return Ok((final_dir, payload.len(), bytes, true));
    }
    // Built beside its final place, renamed when complete: a package that is
    // there is whole.
    let dir = out.join(format!(
        ".{}.partial",
        final_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let data = dir.join("data");
    for sub in ["attachments", "receipts", "statuses", "audit", "certs"] {
        std::fs::create_dir_all(data.join(sub))?;
    }
    std::fs::write(data.join("envelope.pb"), env.encode_to_vec())?;
    let sender = (!header.from.is_empty()).then_some(header.from.as_str());
    let files = client::file_names(&header.attachments);
    for (i, (a, file)) in header.attachments.iter().zip(&files).enumerate() {
        truc_core::check_attachment_path(&a.name).map_err(|e| anyhow!(e))?;
        client::download(
            c,
            doc_id,
            sender.or(from),
            i as u32,
            a,
            &data.join("attachments"),
            file,
        )
        .await?;
    }
    let mut certs: Vec<Vec<u8>> = env.signer_chain.clone();
    for (i, r) in rec.receipts.iter().enumerate() {
        let Some(e) = &r.envelope else { continue };
        let kind = pb::ReceiptType::try_from(r.r#type)
            .map(|t| {
                t.as_str_name()
                    .trim_start_matches("RECEIPT_TYPE_")
                    .to_lowercase()
            })
            .unwrap_or_else(|_| "receipt".into());
        let name = safe(&format!("{:02}-{kind}-{}.pb", i + 1, r.organ));
        std::fs::write(data.join("receipts").join(name), e.encode_to_vec())?;
        certs.extend(e.signer_chain.iter().cloned());
    }
    for (i, s) in rec.statuses.iter().enumerate() {
        let h = pb::Header::decode(s.header_bytes.as_slice())?;
        let code = h
            .status
            .as_ref()
            .map(|s| s.code.clone())
            .unwrap_or_default();
        let name = safe(&format!("{:02}-status-{code}-{}.pb", i + 1, h.from));
        std::fs::write(data.join("statuses").join(name), s.encode_to_vec())?;
        certs.extend(s.signer_chain.iter().cloned());
    }
    let trace: Vec<serde_json::Value> = rec
        .trace
        .iter()
        .map(|s| {
            serde_json::json!({
                "at_ms": s.at_ms,
                "at": client::time(s.at_ms),
                "node": s.node,
                "step": s.step,
                "detail": s.detail,
            })
        })
        .collect();
    std::fs::write(
        data.join("trace.json"),
        serde_json::to_string_pretty(&trace)?,
    )?;
    let mut entries = Vec::new();
    for e in &rec.audit_entries {
        prost::encoding::encode_varint(e.len() as u64, &mut entries);
        entries.extend_from_slice(e);
    }
    std::fs::write(data.join("audit").join("entries.pb"), entries)?;
    let checkpoint = rec
        .checkpoint
        .ok_or_else(|| anyhow!("the edge sent no audit checkpoint"))?;
    certs.extend(checkpoint.signer_chain.iter().cloned());
    std::fs::write(
        data.join("audit").join("checkpoint.pb"),
        checkpoint.encode_to_vec(),
    )?;
    let mut seen = BTreeSet::new();
    for der in certs {
        let d = Digest::of(&der).hex();
        if seen.insert(d.clone()) {
            std::fs::write(data.join("certs").join(format!("{}.cer", &d[..16])), der)?;
        }
    }

    let (files, octets, package_sha256) = write_bag_files(&dir, &header, &rec.node)?;
    sync_tree(&dir)?;
    std::fs::rename(&dir, &final_dir)?;
    if let Ok(d) = std::fs::File::open(out) {
        let _ = d.sync_all();
    }
    // Only a package that is whole on disk counts as archived at the edge.
    c.archive_exported(pb::ArchiveExportedRequest {
        doc_id: header.doc_id.clone(),
        from: header.from.clone(),
        package_sha256,
    })
    .await
    .map_err(client::status_error)?;
    Ok((final_dir, files, octets, false))
}

/// BagIt's files around the payload under `dir/data`: the payload manifest,
/// `bagit.txt`, `bag-info.txt` and the tag manifest. Returns the payload's file
/// count and bytes, and the tag manifest's SHA-256 (the package's digest).
fn write_bag_files(dir: &Path, header: &pb::Header, node: &str) -> Result<(usize, u64, Vec<u8>)> {
    let payload = files_under(dir, &dir.join("data"))?;
    let mut manifest = String::new();
    let mut octets = 0u64;
    for rel in &payload {
        let (h, n) = client::sha256_file(&dir.join(rel))?;
        octets += n;
        manifest.push_str(&format!("{}  {rel}\n", hex::encode(h)));
    }
    let bagit = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n".to_owned();
    let info = format!(
        "Source-Organization: {}\nBagging-Date: {}\nExternal-Identifier: {}\nExternal-Description: {}\nPayload-Oxum: {octets}.{}\nBag-Software-Agent: truc {}\nTruc-Archive-Version: {FORMAT_VERSION}\nTruc-Node: {}\n",
        one_line(&header.from),
        chrono::Utc::now().format("%Y-%m-%d"),
        one_line(&header.doc_id),
        one_line(&header.subject),
        payload.len(),
        env!("CARGO_PKG_VERSION"),
        one_line(node),
    );
    let mut tags = String::new();
    for (name, text) in [
        ("bagit.txt", &bagit),
        ("bag-info.txt", &info),
        ("manifest-sha256.txt", &manifest),
    ] {
        std::fs::write(dir.join(name), text)?;
        let h = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        tags.push_str(&format!("{}  {name}\n", hex::encode(h)));
    }
    std::fs::write(dir.join("tagmanifest-sha256.txt"), &tags)?;
    let package = ring::digest::digest(&ring::digest::SHA256, tags.as_bytes());
    Ok((payload.len(), octets, package.as_ref().to_vec()))
}

/// A bag-info value on one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// fsyncs every file and directory of a package before it is renamed into place.
fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            std::fs::File::open(&p)?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// `truc archive verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    pub package: PathBuf,
    #[command(flatten)]
    pub trust: crate::verify::TrustArgs,
}

/// What a verified package proves, line by line.
struct Findings {
    problems: Vec<String>,
    proves: Vec<String>,
}

impl Findings {
    fn fail(&mut self, part: &str, why: impl std::fmt::Display) {
        self.problems.push(format!("{part}: {why}"));
    }
}

/// The package's payload files as they are on disk, by their names in Unicode
/// NFC. Export writes NFC names (as truc carries them); a copy through a tool
/// or filesystem that stores names decomposed (NFD, as macOS tools often
/// write them) still finds each file the manifest and the envelope name.
struct OnDisk {
    by_nfc: BTreeMap<String, String>,
}

fn nfc(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfc().collect()
}

impl OnDisk {
    fn read(pkg: &Path) -> Result<Self> {
        let by_nfc = files_under(pkg, &pkg.join("data"))?
            .into_iter()
            .map(|rel| (nfc(&rel), rel))
            .collect();
        Ok(Self { by_nfc })
    }

    /// Where the file the package names `rel` is.
    fn path(&self, pkg: &Path, rel: &str) -> PathBuf {
        pkg.join(self.by_nfc.get(&nfc(rel)).map_or(rel, String::as_str))
    }

    /// Whether the package has a file named `rel`.
    fn has(&self, rel: &str) -> bool {
        self.by_nfc.contains_key(&nfc(rel))
    }

    /// The files under `dir` (a path under `data/`, ending in `/`), as named on disk.
    fn under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a String> {
        self.by_nfc.values().filter(move |rel| rel.starts_with(dir))
    }
}

fn read(pkg: &Path, rel: &str) -> Result<Vec<u8>> {
    std::fs::read(pkg.join(rel)).with_context(|| format!("{rel} is missing"))
}

fn at(ms: i64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_millis(ms.max(0) as u64))
}

/// The BagIt layer: every payload file listed and unchanged, nothing extra, tag
/// files unchanged.
fn check_bag(pkg: &Path, disk: &OnDisk, f: &mut Findings) -> Result<()> {
    let bagit = String::from_utf8_lossy(&read(pkg, "bagit.txt")?).into_owned();
    if !bagit.contains("BagIt-Version: 1.0") {
        f.fail("bagit.txt", "not a BagIt 1.0 bag");
    }
    let parse = |text: &str| -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| {
                let (h, p) = l.split_once(char::is_whitespace)?;
                Some((p.trim().to_owned(), h.to_lowercase()))
            })
            .collect()
    };
    let manifest = parse(&String::from_utf8_lossy(&read(pkg, "manifest-sha256.txt")?));
    let tags = parse(&String::from_utf8_lossy(&read(
        pkg,
        "tagmanifest-sha256.txt",
    )?));
    for (rel, want) in manifest.iter().chain(tags.iter()) {
        if rel.contains("..") || rel.starts_with('/') {
            f.fail(rel, "a path outside the package");
            continue;
        }
        match client::sha256_file(&disk.path(pkg, rel)) {
            Ok((h, _)) if hex::encode(&h) == *want => {}
            Ok(_) => f.fail(rel, "changed: its sha-256 is not the one in the manifest"),
            Err(_) => f.fail(rel, "missing"),
        }
    }
    let listed: std::collections::HashSet<String> = manifest.keys().map(|k| nfc(k)).collect();
    for (name, rel) in &disk.by_nfc {
        if !listed.contains(name) {
            f.fail(rel, "not in the manifest (added after export)");
        }
    }
    for t in ["bag-info.txt", "manifest-sha256.txt"] {
        if !tags.contains_key(t) {
            f.fail("tagmanifest-sha256.txt", format!("does not cover {t}"));
        }
    }
    Ok(())
}

/// Who signed, for people.
fn signer_of(v: &envelope::Verified) -> String {
    match &v.from {
        Sender::Agency(o) => format!("{o} ({})", v.signer),
        Sender::Node(n) => format!("node {n}"),
    }
}

pub fn verify(a: VerifyArgs) -> Result<()> {
    let v = a.trust.verifiers()?;
    let pkg = &a.package;
    if !pkg.join("bagit.txt").exists() {
        bail!(
            "{} is not an archival package (no bagit.txt)",
            pkg.display()
        );
    }
    let mut f = Findings {
        problems: Vec::new(),
        proves: Vec::new(),
    };
    let disk = OnDisk::read(pkg)?;
    check_bag(pkg, &disk, &mut f)?;
    let limits = offline_limits();

    // The document: its signature at the time it says it was made.
    let mut created = 0;
    let doc = match pb::SignedEnvelope::decode(read(pkg, "data/envelope.pb")?.as_slice()) {
        Ok(env) => {
            created = pb::Header::decode(env.header_bytes.as_slice())
                .map(|h| h.created_at_ms)
                .unwrap_or(0);
            match envelope::verify(env, &v, &limits, at(created)) {
                Ok(d) => Some(d),
                Err(r) => {
                    f.fail("envelope (data/envelope.pb)", r.reason);
                    None
                }
            }
        }
        Err(e) => {
            f.fail(
                "envelope (data/envelope.pb)",
                format!("not a signed envelope: {e}"),
            );
            None
        }
    };
    if let Some(d) = &doc {
        f.proves.push(format!(
            "document {} \"{}\" from {} to {}, created {}, signed by {}",
            d.doc_id,
            d.header.subject,
            d.header.from,
            d.to.iter()
                .map(|o| o.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            client::time(created),
            signer_of(d)
        ));
        // Named as export names them (a second "QD.pdf" is "QD (2).pdf"), or,
        // when any of those names is not there, by their own names, as a
        // package written before that names them all (file by file, one
        // attachment's old name could be another's new one).
        let exported = client::file_names(&d.header.attachments);
        let files: Vec<String> = if exported
            .iter()
            .all(|f| disk.has(&format!("data/attachments/{f}")))
        {
            exported
        } else {
            d.header
                .attachments
                .iter()
                .map(|a| a.name.clone())
                .collect()
        };
        for (i, (a, file)) in d.header.attachments.iter().zip(&files).enumerate() {
            let rel = format!("data/attachments/{file}");
            match client::sha256_file(&disk.path(pkg, &rel)) {
                Ok((h, n))
                    if Some(&h[..]) == d.attachments.get(i).map(|x| &x.0[..]) && n == a.size =>
                {
                    f.proves.push(format!(
                        "attachment {} ({}) is the one signed",
                        a.name,
                        client::human_bytes(n)
                    ));
                }
                Ok(_) => f.fail(
                    &format!("attachment {}", a.name),
                    "its bytes are not the ones the envelope signs",
                ),
                Err(_) => f.fail(&format!("attachment {}", a.name), "missing"),
            }
        }
        // The manifest is not signed: a file beside the signed ones would
        // pass for part of the document.
        let named: std::collections::HashSet<String> = files
            .iter()
            .map(|file| nfc(&format!("data/attachments/{file}")))
            .collect();
        for (name, rel) in &disk.by_nfc {
            if name.starts_with("data/attachments/") && !named.contains(name) {
                f.fail(rel, "an attachment the signed envelope does not name");
            }
        }
    }

    // Receipts and statuses: each signed, each about these exact bytes.
    for (dir, what) in [("data/receipts/", "receipt"), ("data/statuses/", "status")] {
        for rel in disk.under(dir) {
            let part = format!("{what} {rel}");
            let Ok(e) = pb::SignedEnvelope::decode(read(pkg, rel)?.as_slice()) else {
                f.fail(&part, "not a signed envelope");
                continue;
            };
            let h = pb::Header::decode(e.header_bytes.as_slice()).unwrap_or_default();
            let when = h
                .receipt
                .as_ref()
                .map(|r| r.at_ms)
                .filter(|t| *t > 0)
                .unwrap_or(h.created_at_ms);
            let m = match envelope::verify(e, &v, &limits, at(when)) {
                Ok(m) => m,
                Err(r) => {
                    f.fail(&part, r.reason);
                    continue;
                }
            };
            let names = match (&m.receipt, &m.status) {
                (Some(r), _) => Some(r.envelope_sha256),
                (_, Some(s)) => Some(s.envelope_sha256),
                _ => None,
            };
            match (&doc, names) {
                (Some(d), Some(n)) if n == d.header_sha256 => {
                    let line = match (&m.receipt, &m.status) {
                        (Some(r), _) => format!(
                            "{} for {} at {}, signed by {}",
                            r.kind.as_str(),
                            if r.recipients.is_empty() {
                                m.header.from.clone()
                            } else {
                                r.recipients
                                    .iter()
                                    .map(|o| o.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            },
                            client::time(r.at_ms),
                            signer_of(&m)
                        ),
                        (_, Some(s)) => format!(
                            "status {} ({}) at {}, signed by {}",
                            s.code.code(),
                            s.code.meaning(),
                            client::time(m.header.created_at_ms),
                            signer_of(&m)
                        ),
                        _ => String::new(),
                    };
                    f.proves.push(line);
                }
                (Some(_), _) => f.fail(&part, "names other bytes than this document"),
                (None, _) => {}
            }
        }
    }

    // The audit proof: entries chained to a head the node signed.
    match check_audit(pkg, &v, doc.as_ref()) {
        Ok(line) => f.proves.push(line),
        Err(e) => f.fail("audit proof (data/audit)", e),
    }

    if !f.problems.is_empty() {
        for p in &f.problems {
            println!("FAIL {p}");
        }
        bail!(
            "{} does not verify: {} problem(s)",
            pkg.display(),
            f.problems.len()
        );
    }
    println!("OK {}", pkg.display());
    for p in &f.proves {
        println!("  - {p}");
    }
    Ok(())
}

fn check_audit(pkg: &Path, v: &Verifiers, doc: Option<&envelope::Verified>) -> Result<String> {
    let doc_id = doc.map(|d| d.doc_id.to_string());
    let bytes = read(pkg, "data/audit/entries.pb")?;
    let mut buf = bytes.as_slice();
    let mut entries = Vec::new();
    while !buf.is_empty() {
        let e = AuditEntry::decode_length_delimited(&mut buf)
            .map_err(|e| anyhow!("entry {} is unreadable: {e}", entries.len() + 1))?;
        entries.push(e);
    }
    let first = entries.first().ok_or_else(|| anyhow!("no entries"))?;
    // The segment's first link is taken as given; the signed entry closes it (the
    // last one about the document, or the log's head in packages made before).
    let mut walk = audit::ChainWalk::from_entry(first);
    for e in &entries {
        walk.step(e).map_err(|why| anyhow!(why))?;
    }
    let signed = pb::SignedCheckpoint::decode(read(pkg, "data/audit/checkpoint.pb")?.as_slice())
        .map_err(|e| anyhow!("checkpoint unreadable: {e}"))?;
    let cp = pb::AuditCheckpoint::decode(signed.checkpoint_bytes.as_slice())
        .map_err(|e| anyhow!("checkpoint unreadable: {e}"))?;
    let alg = envelope::algorithm(signed.algorithm)
        .ok_or_else(|| anyhow!("checkpoint: unknown signature algorithm"))?;
    let who = v
        .nodes
        .verify(
            &signed.checkpoint_bytes,
            &signed.signature,
            alg,
            &signed.signer_chain,
            at(cp.at_ms),
        )
        .map_err(|e| anyhow!("checkpoint signature: {e}"))?;
    match &who.identity {
        truc_pki::identity::Identity::Node(n) if n.to_string() == cp.node => {}
        other => bail!(
            "checkpoint names node {} but is signed by {other:?}",
            cp.node
        ),
    }
    if cp.seq != walk.last_seq() || cp.head_sha256 != walk.head() {
        bail!(
            "the entries end at {} but the signed entry is {}",
            walk.last_seq(),
            cp.seq
        );
    }
    // The segment's start and the document, as the node signed them (in
    // checkpoints that carry them: those made before are weaker, and say so).
    let signed_ends = cp.first_seq != 0;
    if signed_ends && (first.seq != cp.first_seq || first.prev != cp.first_prev) {
        bail!(
            "the entries start at {} but the signed segment starts at {}: entries were removed",
            first.seq,
            cp.first_seq
        );
    }
    if let Some(d) = doc
        && !cp.document_sha256.is_empty()
        && cp.document_sha256 != d.header_sha256.0.to_vec()
    {
        bail!(
            "the node signed these entries for another version of {}",
            d.doc_id
        );
    }
    let about: Vec<&AuditEntry> = entries
        .iter()
        .filter(|e| doc_id.as_deref() == Some(e.doc_id.as_str()))
        .collect();
    if doc_id.is_some() && about.is_empty() {
        bail!("no entry is about this document");
    }
    let weaker = if signed_ends && !cp.document_sha256.is_empty() {
        ""
    } else {
        " (a checkpoint from before the segment's start and the document's digest were signed)"
    };
    Ok(format!(
        "{} entries of node {}'s audit log are about it ({}), chained to entry #{} signed by that node at {}{weaker}",
        about.len(),
        cp.node,
        about
            .iter()
            .map(|e| e.event.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        cp.seq,
        client::time(cp.at_ms)
    ))
}
