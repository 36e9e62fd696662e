//! CLI commands that talk to an edge's agency API.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use tonic::transport::Channel;
use truc_node::Config;
use truc_proto::v1::{self as pb, agency_client::AgencyClient};

/// Finds the agency API of the edge a config describes.
pub fn agency_addr(config_path: &Path) -> Result<SocketAddr> {
    let cfg = Config::load(config_path)?;
    let api = cfg.agency_api.as_ref().ok_or_else(|| {
        anyhow!(
            "{} describes a {} with no [agency_api]; point --config at an edge",
            config_path.display(),
            cfg.role()
        )
    })?;
    let addr: SocketAddr = api
        .parse()
        .with_context(|| format!("agency_api.listen {api:?}"))?;
    if addr.port() != 0 {
        return Ok(addr);
    }
    let endpoints = cfg.data_dir.join("run").join("endpoints.json");
    let text = std::fs::read_to_string(&endpoints).with_context(|| {
        format!(
            "the config says port 0 and {} is missing: is `truc node --config {}` running?",
            endpoints.display(),
            config_path.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}", endpoints.display()))?;
    v["agency"]
        .as_str()
        .ok_or_else(|| anyhow!("{} names no agency address", endpoints.display()))?
        .parse()
        .with_context(|| format!("{}", endpoints.display()))
}

pub async fn connect(config_path: &Path) -> Result<AgencyClient<Channel>> {
    let addr = agency_addr(config_path)?;
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach the edge's agency API at {addr}: is `truc node --config {}` running?",
                config_path.display()
            )
        })?;
    Ok(AgencyClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// Turns a gRPC status into a one-line error naming the code.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow!("{} ({:?})", s.message(), s.code())
}

/// Unix milliseconds as Vietnam local time (UTC+7), as edXML dates are.
pub fn time(ms: i64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms).filter(|_| ms != 0) else {
        return "-".into();
    };
    match chrono::FixedOffset::east_opt(7 * 3600) {
        Some(vn) => t.with_timezone(&vn).format("%Y-%m-%d %H:%M:%S").to_string(),
        None => t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    }
}

pub fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t
}

fn guess_content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("pdf") => "application/pdf",
        Some("xml") => "application/xml",
        Some("doc") => "application/msword",
        Some("docx") => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        Some("xls") => "application/vnd.ms-excel",
        Some("xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        Some("zip") => "application/zip",
        Some("txt") => "text/plain; charset=utf-8",
        Some("png") => "image/png",
        Some("jpg") | Some("jpeg") => "image/jpeg",
        _ => "application/octet-stream",
    }
}

pub struct SendArgs {
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub code: Option<String>,
    pub priority: u32,
    pub attach: Vec<PathBuf>,
    pub doc_id: Option<String>,
}

pub async fn send(config: &Path, a: SendArgs) -> Result<String> {
    let mut attachments = Vec::new();
    for path in &a.attach {
        let data =
            std::fs::read(path).with_context(|| format!("read attachment {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{} has no usable file name", path.display()))?
            .to_owned();
        attachments.push(pb::Attachment {
            name,
            content_type: guess_content_type(path).into(),
            data,
        });
    }
    let (code_number, code_notation) = match &a.code {
        Some(c) => match c.split_once('/') {
            Some((n, s)) => (n.to_owned(), s.to_owned()),
            None => (c.clone(), String::new()),
        },
        None => (String::new(), String::new()),
    };
    let mut client = connect(config).await?;
    let resp = client
        .send(pb::SendRequest {
            from: a.from,
            to: a.to,
            subject: a.subject,
            code_number,
            code_notation,
            priority: a.priority,
            due_at_ms: 0,
            attachments,
            doc_id: a.doc_id.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if resp.duplicate {
        eprintln!("already sent earlier: nothing new was queued");
    }
    Ok(resp.doc_id)
}

pub async fn inbox(config: &Path, organ: &str, all: bool, json: bool) -> Result<()> {
    let mut client = connect(config).await?;
    let items = client
        .list_inbox(pb::ListInboxRequest {
            organ: organ.into(),
            include_acked: all,
            limit: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .items;
    if json {
        let v: Vec<_> = items
            .iter()
            .map(|i| {
                serde_json::json!({
                    "doc_id": i.doc_id,
                    "from": i.from,
                    "to": i.organ,
                    "subject": i.subject,
                    "code": format!("{}/{}", i.code_number, i.code_notation).trim_matches('/'),
                    "priority": i.priority,
                    "attachments": i.attachments,
                    "received_at_ms": i.received_at_ms,
                    "received": time(i.received_at_ms),
                    "acked": i.acked,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if items.is_empty() {
        println!(
            "no {}documents for {organ}",
            if all { "" } else { "unacknowledged " }
        );
        return Ok(());
    }
    let mut t = table();
    t.set_header(vec![
        "doc_id",
        "from",
        "subject",
        "received (UTC+7)",
        "files",
        "acked",
    ]);
    for i in &items {
        t.add_row(vec![
            i.doc_id.clone(),
            i.from.clone(),
            i.subject.clone(),
            time(i.received_at_ms),
            i.attachments.to_string(),
            if i.acked { "yes".into() } else { "no".into() },
        ]);
    }
    println!("{t}");
    Ok(())
}

pub async fn get(config: &Path, doc_id: &str, from: Option<String>, out: &Path) -> Result<PathBuf> {
    let mut client = connect(config).await?;
    let resp = client
        .get_document(pb::GetDocumentRequest {
            doc_id: doc_id.into(),
            from: from.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let doc = resp
        .document
        .ok_or_else(|| anyhow!("edge returned no document"))?;
    let dir = out.join(&doc.doc_id);
    std::fs::create_dir_all(dir.join("attachments"))
        .with_context(|| format!("create {}", dir.display()))?;
    if let Some(env) = &resp.envelope {
        std::fs::write(dir.join("envelope.pb"), prost::Message::encode_to_vec(env))?;
    }
    let meta = serde_json::json!({
        "doc_id": doc.doc_id,
        "from": doc.from,
        "to": doc.to,
        "subject": doc.subject,
        "code_number": doc.code_number,
        "code_notation": doc.code_notation,
        "priority": doc.priority,
        "created_at_ms": doc.created_at_ms,
        "received_at_ms": doc.received_at_ms,
        "signer": doc.signer,
        "delivered_to": doc.delivered_to,
        "acked": doc.acked,
        "attachments": doc.attachments.iter().map(|a| serde_json::json!({
            "name": a.name, "content_type": a.content_type, "size": a.size, "sha256": hex_of(&a.sha256),
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("document.json"),
        serde_json::to_string_pretty(&meta)?,
    )?;
    for a in &resp.attachments {
        // Names were checked by every hop; check again before touching the disk.
        truc_node::envelope::check_attachment_name(&a.name).map_err(|e| anyhow!(e))?;
        std::fs::write(dir.join("attachments").join(&a.name), &a.data)
            .with_context(|| format!("write attachment {}", a.name))?;
    }
    Ok(dir)
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub async fn ack(
    config: &Path,
    doc_id: &str,
    from: Option<String>,
    organ: Option<String>,
) -> Result<Vec<String>> {
    let mut client = connect(config).await?;
    let resp = client
        .ack(pb::AckRequest {
            doc_id: doc_id.into(),
            from: from.unwrap_or_default(),
            organ: organ.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    Ok(resp.acked)
}

pub fn state_name(s: i32) -> &'static str {
    match pb::DeliveryState::try_from(s) {
        Ok(pb::DeliveryState::Queued) => "queued",
        Ok(pb::DeliveryState::AtHub) => "at hub",
        Ok(pb::DeliveryState::Delivered) => "delivered",
        Ok(pb::DeliveryState::Acked) => "acked",
        Ok(pb::DeliveryState::Failed) => "failed",
        _ => "unknown",
    }
}

pub async fn status(config: &Path, doc_id: &str, json: bool) -> Result<()> {
    let mut client = connect(config).await?;
    let s = client
        .get_status(pb::GetStatusRequest {
            doc_id: doc_id.into(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let v = serde_json::json!({
            "doc_id": s.doc_id,
            "from": s.from,
            "subject": s.subject,
            "created_at_ms": s.created_at_ms,
            "recipients": s.recipients.iter().map(|r| serde_json::json!({
                "organ": r.organ,
                "state": state_name(r.state),
                "updated_at_ms": r.updated_at_ms,
                "detail": r.detail,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{}  {}  from {}  sent {}",
        s.doc_id,
        s.subject,
        s.from,
        time(s.created_at_ms)
    );
    let mut t = table();
    t.set_header(vec!["recipient", "state", "since (UTC+7)", "detail"]);
    for r in &s.recipients {
        t.add_row(vec![
            r.organ.clone(),
            state_name(r.state).into(),
            time(r.updated_at_ms),
            r.detail.clone(),
        ]);
    }
    println!("{t}");
    if s.recipients
        .iter()
        .any(|r| r.state == pb::DeliveryState::Failed as i32)
    {
        bail!("delivery failed for at least one recipient");
    }
    Ok(())
}
