//! Offline checks: `truc verify` (envelopes and receipts against the CAs) and
//! `truc audit verify` (a node's hash-chained audit log).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use prost::Message;
use rustls::pki_types::UnixTime;
use truc_node::{
    Config,
    config::Limits,
    envelope::{self, Sender, Verifiers},
};
use truc_pki::sign::SignatureVerifier;
use truc_proto::v1 as pb;
use truc_store::Digest;

use crate::client;

pub struct VerifyArgs {
    pub files: Vec<PathBuf>,
    pub trust: TrustArgs,
    /// A document envelope the receipts must name.
    pub document: Option<PathBuf>,
}

/// The CAs an offline check trusts (`truc verify`, `truc archive verify`).
#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// Take the CA certificates from a node's config (or give both CA files).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub signing_ca: Option<PathBuf>,
    #[arg(long)]
    pub transport_ca: Option<PathBuf>,
}

impl TrustArgs {
    /// Those a node's config names, or the two files given.
    pub fn verifiers(&self) -> Result<Verifiers> {
        let (signing, transport) = match (&self.config, &self.signing_ca, &self.transport_ca) {
            (Some(c), None, None) => {
                let cfg = Config::load(c)?;
                (cfg.signing_ca, cfg.tls.ca)
            }
            (None, Some(s), Some(t)) => (s.clone(), t.clone()),
            _ => bail!("give either --config FILE or both --signing-ca and --transport-ca"),
        };
        Ok(Verifiers {
            agencies: SignatureVerifier::from_file(&signing)?,
            nodes: SignatureVerifier::from_file(&transport)?,
        })
    }
}

fn read_envelope(path: &Path) -> Result<pb::SignedEnvelope> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    pb::SignedEnvelope::decode(bytes.as_slice())
        .map_err(|e| anyhow!("{}: not a signed envelope: {e}", path.display()))
}

/// Limits for checking a document that already travelled: its size was a matter
/// for the nodes; offline, only the signature and the bytes count.
pub fn offline_limits() -> Limits {
    Limits {
        max_recipients: usize::MAX,
        max_attachments: usize::MAX,
        max_attachment_bytes: u64::MAX,
        max_subject_chars: usize::MAX,
        refuse_disguised_names: false,
        ..Limits::default()
    }
}

/// Checks each file; prints what each proves; fails if any does not verify.
pub fn verify(a: VerifyArgs) -> Result<()> {
    let v = a.trust.verifiers()?;
    let limits = offline_limits();
    let document = match &a.document {
        Some(p) => Some(Digest::of(&read_envelope(p)?.header_bytes)),
        None => None,
    };
    let mut failed = 0;
    for file in &a.files {
        let result = read_envelope(file).and_then(|env| {
            envelope::verify(env, &v, &limits, UnixTime::now())
                .map_err(|r| anyhow!("{} ({:?})", r.reason, r.code))
        });
        match result {
            Ok(m) => {
                let signer = match &m.from {
                    Sender::Agency(o) => format!("agency {o} ({})", m.signer),
                    Sender::Node(n) => format!("node {n}"),
                };
                let what = match (&m.receipt, &m.status) {
                    (Some(r), _) => {
                        let names = match document {
                            Some(d) if d == r.envelope_sha256 => {
                                ", which is the given document".to_owned()
                            }
                            Some(_) => {
                                failed += 1;
                                println!(
                                    "FAIL {}: the receipt names other bytes than the given document",
                                    file.display()
                                );
                                continue;
                            }
                            None => String::new(),
                        };
                        format!(
                            "{} receipt for {} from {} (envelope sha-256 {}{names}) at {}",
                            r.kind.as_str(),
                            r.for_doc_id,
                            r.for_from,
                            &r.envelope_sha256.hex()[..16],
                            client::time(r.at_ms)
                        )
                    }
                    (_, Some(s)) => format!(
                        "status {} ({}) about {}",
                        s.code.code(),
                        s.code.meaning(),
                        s.for_doc_id
                    ),
                    _ => format!(
                        "document {} \"{}\" to {}",
                        m.doc_id,
                        m.header.subject,
                        m.to.iter()
                            .map(|o| o.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                println!("OK   {}: {what}; signed by {signer}", file.display());
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e}", file.display());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} files did not verify", a.files.len());
    }
    Ok(())
}

/// Checks a node's audit chain: through its admin API when it runs, else on
/// disk — also when the API's address is known but nothing answers there (a
/// fixed admin port, or the address file a killed node left behind).
pub async fn audit_verify(config: &Path, json: bool) -> Result<()> {
    let report = match client::admin(config).await {
        Ok(mut c) => match c.audit_verify(pb::AuditVerifyRequest {}).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => on_disk(config).await?,
            Err(s) => return Err(client::status_error(s)),
        },
        Err(_) => on_disk(config).await?,
    };
    print_audit(report, json)
}

/// [`audit_verify_on_disk`] off the async threads (PostgreSQL's client blocks).
async fn on_disk(config: &Path) -> Result<pb::AuditVerifyResponse> {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || audit_verify_on_disk(&config)).await?
}

/// Verifies the audit chain in a stopped node's store (or its PostgreSQL
/// database, read-only).
fn audit_verify_on_disk(config: &Path) -> Result<pb::AuditVerifyResponse> {
    let cfg = Config::load(config)?;
    if let Some(url) = cfg.storage.postgres_url.clone() {
        let store = truc_store::PgStore::open_shared(&url)?;
        return Ok(truc_node::admin::report_pb(truc_node::audit::verify(
            &store,
        )?));
    }
    let configured = cfg.storage.engine;
    let engine = if configured.path(&cfg.data_dir).exists() {
        configured
    } else {
        match truc_store::embedded::Engine::found_in(&cfg.data_dir) {
            Some(e) => e,
            None => bail!("{} has no store yet", cfg.data_dir.display()),
        }
    };
    let store = truc_store::embedded::open(&cfg.data_dir, engine, cfg.storage.cache())
        .with_context(|| {
            format!(
                "open the {} store in {} (is the node running without an admin API?)",
                engine.name(),
                cfg.data_dir.display()
            )
        })?;
    Ok(truc_node::admin::report_pb(truc_node::audit::verify(
        store.as_ref(),
    )?))
}

fn print_audit(report: pb::AuditVerifyResponse, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "entries": report.entries,
                "ok": report.ok,
                "first_bad": if report.ok { None } else { Some(report.first_bad) },
                "reason": report.reason,
                "head": report.head,
                "pruned_through": report.pruned_through,
            })
        );
    } else if report.ok {
        println!(
            "audit log intact: {} entries, head {}",
            report.entries, report.head
        );
        if report.pruned_through > 0 {
            println!(
                "entries 1–{} were removed after the retention period; the chain is checked from the anchor they left",
                report.pruned_through
            );
        }
    }
    if !report.ok {
        bail!(
            "audit log broken at entry {}: {}",
            report.first_bad,
            report.reason
        );
    }
    Ok(())
}
