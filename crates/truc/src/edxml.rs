//! `truc import`, `truc export` and `truc edxml inspect`: edXML packages from
//! and to today's document-management software.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use truc_edxml::{Kind, Limits, Package};
use truc_proto::v1 as pb;

use crate::client::{self, status_error};

/// The largest package `inspect` reads (the edge's own limit applies on import).
const INSPECT_MAX_BYTES: u64 = 1 << 30;

fn read_package(path: &Path, max: u64) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    if len > max {
        bail!(
            "{}: {len} bytes is more than the {max} a package may have",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("{}", path.display()))
}

/// The mapped fields of a package, as `inspect --json` prints them.
pub fn summary(p: &Package) -> Value {
    let (kind, business) = match p.kind {
        Kind::Document => (
            "document",
            json!({"business_doc_type": p.business.as_ref().map(|b| b.doc_type).unwrap_or(0)}),
        ),
        Kind::Status => ("status", json!({"status_code": p.status_code})),
    };
    let code = if p.code_notation.is_empty() {
        p.code_number.clone()
    } else {
        format!("{}/{}", p.code_number, p.code_notation)
    };
    let mut v = json!({
        "kind": kind,
        "from": p.from.organ_id,
        "to": p.recipients(),
        // A status is about the document it answers.
        "document_id": match p.kind {
            Kind::Document => p.document_id.clone(),
            Kind::Status => p.response_for.first().map(|r| r.document_id.clone()).unwrap_or_default(),
        },
        "subject": p.subject,
        "code": code,
        "promulgation_date": p.promulgation_date,
        "document_type": p.document_type,
        "priority": p.priority,
        "due_date": p.due_date,
        "signer": p.signer_full_name,
        "traces": p.traces.iter().map(|t| json!({"organ": t.organ_id, "at": t.timestamp})).collect::<Vec<_>>(),
        "attachments": p.attachments.iter().map(|a| json!({
            "name": a.name,
            // The file's type as the manifest declares it (the attachment
            // itself usually says application/zip, its transfer form).
            "content_type": if a.manifest_content_type.is_empty() { &a.content_type } else { &a.manifest_content_type },
            "transfer_content_type": a.content_type,
            "size": a.data.len(),
            "sha256": hex::encode(ring::digest::digest(&ring::digest::SHA256, &a.data)),
        })).collect::<Vec<_>>(),
    });
    if let (Some(o), Some(b)) = (v.as_object_mut(), business.as_object()) {
        o.extend(b.clone());
    }
    if p.kind == Kind::Status {
        v["description"] = p.description.clone().into();
        v["timestamp"] = p.timestamp.clone().into();
    }
    if let Some(b) = &p.business {
        // Revoke, update and replace name the document they change.
        v["affects_document_id"] = b.document_id.clone().into();
        v["reason"] = b.reason.clone().into();
        v["receivers"] = b
            .receivers
            .iter()
            .map(|(o, added)| json!({"organ": o, "added": added}))
            .collect::<Vec<Value>>()
            .into();
        v["replacements"] = b
            .replacements
            .iter()
            .map(|(d, organs)| json!({"document_id": d, "organs": organs}))
            .collect::<Vec<Value>>()
            .into();
    }
    v
}

fn business_label(t: u64) -> &'static str {
    match t {
        0 => "new",
        1 => "revoke",
        2 => "update",
        3 => "replace",
        _ => "?",
    }
}

/// Parses a package without sending it and prints what truc would make of it.
pub fn inspect(path: &Path, json_out: bool) -> Result<()> {
    let bytes = read_package(path, INSPECT_MAX_BYTES)?;
    let limits = Limits {
        max_package_bytes: INSPECT_MAX_BYTES as usize,
        ..Default::default()
    };
    let p = truc_edxml::parse(&bytes, &limits)
        .map_err(|e| anyhow::anyhow!("{}: not a valid edXML package: {e}", path.display()))?;
    let v = summary(&p);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut t = client::table();
    let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    t.add_row(vec!["kind".into(), s("kind")]);
    t.add_row(vec!["from".into(), s("from")]);
    let to: Vec<&str> = v["to"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    t.add_row(vec!["to".into(), to.join("\n")]);
    t.add_row(vec!["document_id".into(), s("document_id")]);
    match p.kind {
        Kind::Document => {
            let b = v["business_doc_type"].as_u64().unwrap_or(0);
            t.add_row(vec![
                "business_doc_type".into(),
                format!("{b} ({})", business_label(b)),
            ]);
            if b != 0 {
                t.add_row(vec!["affects".into(), s("affects_document_id")]);
                t.add_row(vec!["reason".into(), s("reason")]);
            }
        }
        Kind::Status => {
            t.add_row(vec![
                "status_code".into(),
                client::status_label(&p.status_code),
            ]);
        }
    }
    t.add_row(vec!["subject".into(), s("subject")]);
    t.add_row(vec!["code".into(), s("code")]);
    if !p.traces.is_empty() {
        let hops: Vec<String> = p
            .traces
            .iter()
            .map(|h| format!("{} {}", h.timestamp, h.organ_id))
            .collect();
        t.add_row(vec!["traces".into(), hops.join("\n")]);
    }
    println!("{t}");
    if !p.attachments.is_empty() {
        let mut a = client::table();
        a.set_header(vec!["attachment", "content type", "size", "sha256"]);
        for x in v["attachments"].as_array().into_iter().flatten() {
            a.add_row(vec![
                x["name"].as_str().unwrap_or("").to_owned(),
                x["content_type"].as_str().unwrap_or("").to_owned(),
                x["size"].to_string(),
                x["sha256"].as_str().unwrap_or("").to_owned(),
            ]);
        }
        println!("{a}");
    }
    Ok(())
}

/// Sends a package through an edge: prints the doc_id it became.
pub async fn import(config: &Path, path: &Path) -> Result<pb::ImportEdxmlResponse> {
    let package = read_package(
        path,
        truc_node::Config::load(config)?.limits.max_message_bytes as u64,
    )?;
    let mut c = client::connect(config).await?;
    let r = c
        .import_edxml(pb::ImportEdxmlRequest { package })
        .await
        .map_err(|s| status_error(s).context(format!("{} was not imported", path.display())))?;
    Ok(r.into_inner())
}

/// Writes a received document or status as an edXML package; returns the path.
pub async fn export(
    config: &Path,
    doc_id: &str,
    from: Option<String>,
    original: bool,
    out: Option<PathBuf>,
) -> Result<Option<PathBuf>> {
    let mut c = client::connect(config).await?;
    let r = c
        .export_edxml(pb::ExportEdxmlRequest {
            doc_id: doc_id.into(),
            from: from.unwrap_or_default(),
            original,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    client::print_pdf_checks(&r.pdf_signatures);
    match out {
        Some(path) if path.as_os_str() == "-" => {
            use std::io::Write;
            std::io::stdout().write_all(&r.package)?;
            Ok(None)
        }
        Some(path) => {
            write_atomically(&path, &r.package)?;
            Ok(Some(path))
        }
        None => {
            let path = PathBuf::from(format!("{doc_id}.edxml"));
            write_atomically(&path, &r.package)?;
            Ok(Some(path))
        }
    }
}

/// Writes next to the target and renames, so a reader never sees half a package.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("{}", path.display()))?;
    Ok(())
}
