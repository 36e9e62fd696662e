//! `truc demo`: a fresh development PKI, a hub and three edges on loopback in one
//! process, real mTLS and fsync, and a few official documents sent between them.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use truc_node::{Config, Listeners, RunningNode};
use truc_proto::v1::{self as pb};

use crate::{certs, client, pdf};

struct DemoDoc {
    from_node: &'static str,
    from: &'static str,
    to: &'static [&'static str],
    subject: &'static str,
    code: (&'static str, &'static str),
    priority: u32,
    pdf: Option<(&'static str, &'static [&'static str])>,
}

const DOCS: &[DemoDoc] = &[
    DemoDoc {
        from_node: "vpcp",
        from: "000.00.00.G22",
        to: &["000.00.00.H41"],
        subject: "Quyết định phê duyệt Đề án chuyển đổi số tỉnh Nghệ An giai đoạn 2026–2030",
        code: ("1234", "QĐ-TTg"),
        priority: 0,
        pdf: Some((
            "QD-1234-TTg.pdf",
            &[
                "THU TUONG CHINH PHU",
                "So: 1234/QD-TTg",
                "QUYET DINH",
                "Phe duyet De an chuyen doi so tinh Nghe An giai doan 2026-2030",
            ],
        )),
    },
    DemoDoc {
        from_node: "vpcp",
        from: "000.00.00.G22",
        to: &["000.00.00.H41", "000.00.00.H14"],
        subject: "Công văn về việc triển khai Nghị định 30/2020/NĐ-CP về công tác văn thư",
        code: ("567", "VPCP-HC"),
        priority: 1,
        pdf: None,
    },
    DemoDoc {
        from_node: "nghean",
        from: "000.00.00.H41",
        to: &["000.00.00.G22"],
        subject: "Báo cáo tình hình kinh tế - xã hội tháng 11 năm 2026",
        code: ("89", "BC-UBND"),
        priority: 0,
        pdf: Some((
            "BC-89-UBND.pdf",
            &[
                "UBND TINH NGHE AN",
                "So: 89/BC-UBND",
                "BAO CAO tinh hinh kinh te - xa hoi thang 11/2026",
            ],
        )),
    },
    DemoDoc {
        from_node: "duyxuyen",
        from: "001.00.10.H47",
        to: &["000.00.00.G22"],
        subject: "Báo cáo kết quả giải ngân vốn đầu tư công năm 2026 (huyện → Chính phủ, qua LGSP Quảng Nam)",
        code: ("112", "BC-UBND"),
        priority: 0,
        pdf: None,
    },
    DemoDoc {
        from_node: "vpcp",
        from: "000.00.00.G22",
        to: &["002.00.10.H47"],
        subject: "Công văn hướng dẫn thực hiện chương trình mục tiêu quốc gia (Chính phủ → thị xã, qua LGSP)",
        code: ("890", "VPCP-KTTH"),
        priority: 1,
        pdf: None,
    },
    DemoDoc {
        from_node: "duyxuyen",
        from: "001.00.10.H47",
        to: &["002.00.10.H47"],
        subject: "Giấy mời dự họp liên huyện về phòng chống lụt bão (huyện → thị xã, không qua trục quốc gia)",
        code: ("45", "GM-UBND"),
        priority: 3,
        pdf: None,
    },
    DemoDoc {
        from_node: "caobang",
        from: "000.00.00.H14",
        to: &["000.00.00.G22"],
        subject: "Tờ trình đề nghị hỗ trợ khắc phục hậu quả thiên tai",
        code: ("45", "TTr-UBND"),
        priority: 2,
        pdf: None,
    },
];

/// The agency API of a demo node by its socket, with the token the node
/// made under `data_dir`.
async fn agency(data_dir: PathBuf) -> Result<crate::client::AgencyApi> {
    let token = truc_node::agency::read_token(&truc_node::agency::token_path(&data_dir))
        .map_err(|e| anyhow::anyhow!(e))?;
    crate::client::agency_at(&data_dir, &token).await
}

pub async fn run(dir: Option<PathBuf>, once: bool) -> Result<()> {
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new().prefix("truc-demo-").tempdir()?;
            tmp.path().to_owned()
        }
    };
    println!("truc demo — working directory {}", dir.display());

    // Bind every listener first so the configs carry the real ports.
    let mut topo = certs::Topology::default_topology()?;
    let mut listeners: HashMap<String, Listeners> = HashMap::new();
    for n in &mut topo.nodes {
        let mut l = Listeners::default();
        if n.listen.is_some() {
            let tcp = TcpListener::bind("127.0.0.1:0").await?;
            n.listen = Some(tcp.local_addr()?.to_string());
            l.link = Some(tcp);
        }
        if n.agency_api.is_some() {
            let tcp = TcpListener::bind("127.0.0.1:0").await?;
            n.agency_api = Some(tcp.local_addr()?.to_string());
            l.agency = Some(tcp);
        }
        if n.admin_api.is_some() {
            let tcp = TcpListener::bind("127.0.0.1:0").await?;
            n.admin_api = Some(tcp.local_addr()?.to_string());
            l.admin = Some(tcp);
        }
        if n.rest_api.is_some() {
            let tcp = TcpListener::bind("127.0.0.1:0").await?;
            n.rest_api = Some(tcp.local_addr()?.to_string());
            l.rest = Some(tcp);
        }
        listeners.insert(n.id.clone(), l);
    }
    let started = Instant::now();
    let report = certs::init(&dir, &topo)?;
    println!(
        "  PKI: transport CA + signing CA, {} certificates ({:?})",
        report.created.len(),
        started.elapsed()
    );

    let mut nodes: Vec<RunningNode> = Vec::new();
    for n in &topo.nodes {
        let path = &report.configs[&n.id];
        let cfg = Config::load(path)?;
        let node = RunningNode::start_with(cfg, listeners.remove(&n.id).unwrap_or_default())
            .await
            .with_context(|| format!("start node {}", n.id))?;
        nodes.push(node);
    }
    for node in &nodes {
        if node.config.parent.is_some() {
            let mut up = node.parent_up();
            tokio::time::timeout(Duration::from_secs(20), up.wait_for(|u| *u))
                .await
                .with_context(|| format!("{} could not reach the hub", node.state.node_id))??;
        }
    }
    let mut t = client::table();
    t.set_header(vec![
        "node",
        "role",
        "link (children dial) / agency gRPC",
        "REST",
        "agencies",
    ]);
    for node in &nodes {
        t.add_row(vec![
            node.state.node_id.to_string(),
            node.config.role().to_string(),
            node.link_addr
                .or(node.agency_addr)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            node.rest_addr.map(|a| a.to_string()).unwrap_or_default(),
            node.config
                .agencies
                .iter()
                .map(|(o, name, _, _)| format!("{o} {name}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ]);
    }
    println!("{t}");

    let addr_of = |id: &str| {
        nodes
            .iter()
            .find(|n| n.state.node_id.as_str() == id && n.agency_addr.is_some())
            .map(|n| n.config.data_dir.clone())
    };
    let mut sent = Vec::new();
    for d in DOCS {
        let addr = addr_of(d.from_node).context("demo node missing")?;
        let mut c = agency(addr).await?;
        // The PDF carries the legally binding signature, made with the sending
        // agency's key as the special-use certificates would; recipients check it.
        let key_of = |organ: &str| {
            nodes.iter().find_map(|n| {
                n.config
                    .agencies
                    .iter()
                    .find(|(o, ..)| o.as_str() == organ)
                    .map(|(_, _, cert, key)| (cert.clone(), key.clone()))
            })
        };
        let mut attachments = Vec::new();
        if let Some((name, lines)) = d.pdf {
            let (cert, key) = key_of(d.from).context("demo agency key missing")?;
            attachments.push(pb::Attachment {
                name: name.into(),
                content_type: "application/pdf".into(),
                data: signed_pdf(lines, &cert, &key)?,
                ..Default::default()
            });
        }
        let t0 = Instant::now();
        let resp = c
            .send(pb::SendRequest {
                from: d.from.into(),
                to: d.to.iter().map(|s| s.to_string()).collect(),
                subject: d.subject.into(),
                code_number: d.code.0.into(),
                code_notation: d.code.1.into(),
                priority: d.priority,
                attachments,
                ..Default::default()
            })
            .await
            .map_err(client::status_error)?
            .into_inner();
        sent.push((d, resp.doc_id, t0));
    }

    // Wait for every recipient's signed DELIVERED receipt to reach the sender.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rows = Vec::new();
    for (d, doc_id, t0) in &sent {
        let addr = addr_of(d.from_node).context("demo node missing")?;
        let mut c = agency(addr).await?;
        loop {
            let s = c
                .get_status(pb::GetStatusRequest {
                    doc_id: doc_id.clone(),
                    ..Default::default()
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            let done = s
                .recipients
                .iter()
                .all(|r| r.state >= pb::DeliveryState::Delivered as i32);
            if done {
                rows.push((d, doc_id.clone(), s, t0.elapsed()));
                break;
            }
            if Instant::now() > deadline {
                bail!("document {doc_id} was not delivered within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    println!(
        "\nDocuments sent, each signed by its agency, verified at the hub and at the recipient:"
    );
    let mut t = client::table();
    t.set_header(vec![
        "doc_id",
        "from → to",
        "subject",
        "state",
        "receipt after",
    ]);
    for (d, doc_id, s, took) in &rows {
        t.add_row(vec![
            doc_id.clone(),
            format!("{} → {}", d.from, d.to.join(", ")),
            format!("{}/{} {}", d.code.0, d.code.1, d.subject),
            s.recipients
                .iter()
                .map(|r| format!("{} {}", r.organ, client::state_name(r.state)))
                .collect::<Vec<_>>()
                .join("\n"),
            format!("{} ms", took.as_millis()),
        ]);
    }
    println!("{t}");

    let cfg = |id: &str| report.configs[id].display().to_string();
    let first = &rows[0].1;
    // The first document as today's software would receive it from Nghệ An's edge.
    let edxml_path = dir.join(format!("{first}.edxml"));
    let package = agency(addr_of("nghean").context("demo node missing")?)
        .await?
        .export_edxml(pb::ExportEdxmlRequest {
            doc_id: first.clone(),
            ..Default::default()
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    std::fs::write(&edxml_path, &package.package)
        .with_context(|| format!("write {}", edxml_path.display()))?;
    for c in &package.pdf_signatures {
        println!(
            "Nghệ An's edge checked the signature inside {}: {}{}",
            c.attachment,
            c.verdict,
            if c.signer.is_empty() {
                String::new()
            } else {
                format!(", signed by {}", c.signer)
            }
        );
    }
    let rest_of = |id: &str| {
        nodes
            .iter()
            .find(|n| n.state.node_id.as_str() == id)
            .and_then(|n| n.rest_addr)
            .with_context(|| format!("{id} has no REST API"))
    };
    let rest = rest_of("nghean")?;
    let token = dir.join("tokens").join("nghean.token");
    let vpcp_rest = rest_of("vpcp")?;
    let vpcp_token = dir.join("tokens").join("vpcp.token");
    if let Some(admin) = nodes
        .iter()
        .find(|n| n.config.parent.is_none())
        .and_then(|n| n.admin_addr)
    {
        println!(
            "\nDashboard: https://{admin}/  — sign in with the token in {} (the certificate is from the demo's own CA, {}; accept it or import that CA)",
            dir.join("operators").join("admin.token").display(),
            dir.join("transport-ca.crt").display()
        );
    }
    println!("\nThe federation keeps running. In another terminal, try:");
    println!(
        "  truc inbox  --config {} --organ 000.00.00.H41",
        cfg("nghean")
    );
    println!(
        "  truc get    --config {} {first} --out ./received",
        cfg("nghean")
    );
    println!("  truc ack    --config {} {first}", cfg("nghean"));
    println!("  truc status --config {} {first}", cfg("vpcp"));
    println!("  truc trace  --config {} {first}", cfg("vpcp"));
    println!("  truc nodes  --config {}", cfg("hub"));
    println!("  truc queues --config {}", cfg("hub"));
    println!(
        "  truc send   --config {} --from 000.00.00.G22 --to 000.00.00.H14 --subject \"Giấy mời họp\" --attach README.md",
        cfg("vpcp")
    );
    println!(
        "  truc edxml inspect {}          # the first document, exported as edXML by Nghệ An's edge",
        edxml_path.display()
    );
    println!(
        "\nOr as a document-management application, over REST (each edge its own port, in the table above):"
    );
    println!(
        "  curl -H \"Authorization: Bearer $(cat {})\" -H 'content-type: application/json' 'http://{vpcp_rest}/v1/documents' -d '{{\"from\": \"000.00.00.G22\", \"to\": [\"000.00.00.H41\"], \"subject\": \"Giấy mời họp\"}}'",
        vpcp_token.display()
    );
    println!(
        "  curl -H \"Authorization: Bearer $(cat {})\" 'http://{rest}/v1/inbox?organ=000.00.00.H41'",
        token.display()
    );
    println!(
        "  curl -N -H \"Authorization: Bearer $(cat {})\" 'http://{rest}/v1/events?organ=000.00.00.H41'",
        token.display()
    );
    println!(
        "  python3 examples/dms_bridge.py --url http://{rest} --token $(cat {}) listen --organ 000.00.00.H41",
        token.display()
    );
    println!("(use `cargo run --release -p truc --` in place of `truc` inside the repository)");

    if !once {
        println!("\nPress Ctrl-C to stop.");
        crate::cli::wait_for_signal().await?;
    }
    for node in nodes.into_iter().rev() {
        node.shutdown().await?;
    }
    if once {
        println!("demo finished: {} documents delivered", rows.len());
    }
    Ok(())
}

/// A one-page PDF signed with an agency's certificate and key (PEM files).
fn signed_pdf(lines: &[&str], cert: &std::path::Path, key: &std::path::Path) -> Result<Vec<u8>> {
    let chain: Vec<Vec<u8>> = truc_pki::load_certs(cert)?
        .iter()
        .map(|c| c.to_vec())
        .collect();
    let key = truc_pki::load_key(key)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    truc_pdfsig::sign_pdf(&pdf::simple_pdf(lines), &chain, key.secret_der(), now)
        .map_err(|e| anyhow::anyhow!("sign the demo PDF: {e}"))
}
