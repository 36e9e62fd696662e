//! The command line: argument parsing and dispatch.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result, bail};

use crate::{archive, bench, certs, client, demo, edxml, verify};
use clap::{Parser, Subcommand, ValueEnum};
use truc_proto::v1 as pb;

#[derive(Parser)]
#[command(
    name = "truc",
    version,
    about = "truc — a federated bus for signed official documents"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Which held entries (parked after their deadline, dead letters) a
/// requeue or a discard takes.
#[derive(clap::Args)]
pub struct HeldArgs {
    /// The document (every parked entry and dead letter of it).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub doc_id: Option<String>,
    /// Every parked entry and dead letter.
    #[arg(long)]
    pub all: bool,
    /// With --all: only those held on this link queue ("parent", "child:NODE").
    #[arg(long, requires = "all")]
    pub queue: Option<String>,
    /// With DOC_ID: the sending agency, when several used the doc_id.
    #[arg(long, conflicts_with = "all")]
    pub from: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Development PKI and configs.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run a hub, relay or edge until SIGINT/SIGTERM.
    Node {
        #[arg(long)]
        config: PathBuf,
    },
    /// Sign and send a document from one of this edge's agencies; prints its doc_id.
    Send {
        #[arg(long)]
        config: PathBuf,
        /// Sending agency (OrganId).
        #[arg(long)]
        from: String,
        /// Recipient agencies, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        #[arg(long)]
        subject: String,
        /// Number/notation, e.g. 1234/QĐ-TTg.
        #[arg(long)]
        code: Option<String>,
        /// 0 normal, 1 urgent, 2 very urgent, 3 express, 4 timed express.
        #[arg(long, default_value_t = 0)]
        priority: u32,
        /// A file to attach; repeat for several.
        #[arg(long)]
        attach: Vec<PathBuf>,
        /// Choose the doc_id (UUID) yourself; sending the same id again is a no-op.
        #[arg(long)]
        doc_id: Option<String>,
    },
    /// List documents received by one of this edge's agencies.
    Inbox {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        organ: String,
        /// Include acknowledged documents.
        #[arg(long)]
        all: bool,
        /// Only documents or only statuses.
        #[arg(long, value_parser = ["document", "status"])]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write a received document, its envelope and attachments under DIR/<doc_id>/.
    Get {
        #[arg(long)]
        config: PathBuf,
        doc_id: String,
        #[arg(long)]
        out: PathBuf,
        /// The sender, if two senders used the same doc_id.
        #[arg(long)]
        from: Option<String>,
    },
    /// Acknowledge a received document: the sender gets a signed ACKED receipt.
    Ack {
        #[arg(long)]
        config: PathBuf,
        doc_id: String,
        #[arg(long)]
        from: Option<String>,
        /// Only for this agency of the edge (default: every one it was delivered to).
        #[arg(long)]
        organ: Option<String>,
    },
    /// Send an edXML package (document or status) through this edge; prints its doc_id.
    Import {
        #[arg(long)]
        config: PathBuf,
        /// The package, as the document-management software wrote it.
        package: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write a received document or status as an edXML package today's software
    /// accepts (a TraceHeader for this hop appended).
    Export {
        #[arg(long)]
        config: PathBuf,
        doc_id: String,
        /// The sender, if two senders used the same doc_id.
        #[arg(long)]
        from: Option<String>,
        /// At the sender's edge: the package exactly as it was imported, byte for byte.
        #[arg(long)]
        original: bool,
        /// Where to write it (`-` for stdout); default `<doc_id>.edxml`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// edXML packages, offline.
    Edxml {
        #[command(subcommand)]
        command: EdxmlCommand,
    },
    /// Per-recipient state of a document sent from this edge.
    Status {
        #[arg(long)]
        config: PathBuf,
        doc_id: String,
        /// The sending agency, when several agencies of this edge used this doc_id.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Documents one agency of this edge sent, newest first, per recipient.
    Sent {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Send a signed business status about a document: 01 arrived, 02 rejected,
    /// 03 accepted, 04 assigned, 05 processing, 06 finished (to its sender);
    /// 15/16 accept/refuse a recall or update; 13 recall request (from its sender).
    Reply {
        #[arg(long)]
        config: PathBuf,
        doc_id: String,
        #[arg(long)]
        status: String,
        #[arg(long)]
        note: Option<String>,
        /// Who handled it.
        #[arg(long)]
        staff: Option<String>,
        /// Which agency of this edge replies, if the document reached several.
        #[arg(long)]
        organ: Option<String>,
        /// The document's sender, if two senders used the same doc_id.
        #[arg(long)]
        from: Option<String>,
    },
    /// Revoke (thu hồi) a document this edge sent; recipients answer 15 or 16.
    Recall {
        #[arg(long)]
        config: PathBuf,
        doc_id: String,
        /// The sending agency, when several agencies of this edge used this doc_id.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        reason: String,
        /// Only these recipients (default: every recipient).
        #[arg(long, value_delimiter = ',')]
        to: Vec<String>,
    },
    /// Update a document this edge sent; may add or remove recipients.
    Update {
        #[arg(long)]
        config: PathBuf,
        doc_id: String,
        /// The sending agency, when several agencies of this edge used this doc_id.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        reason: String,
        #[arg(long, value_delimiter = ',')]
        add: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        remove: Vec<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        attach: Vec<PathBuf>,
    },
    /// Replace a document this edge sent with a new one.
    Replace {
        #[arg(long)]
        config: PathBuf,
        doc_id: String,
        /// The sending agency, when several agencies of this edge used this doc_id.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        code: Option<String>,
        #[arg(long)]
        attach: Vec<PathBuf>,
        #[arg(long, value_delimiter = ',')]
        to: Vec<String>,
    },
    /// Write a sent document's envelope and its signed receipts into DIR.
    Receipts {
        #[arg(long)]
        config: PathBuf,
        doc_id: String,
        /// The sending agency, when several agencies of this edge used this doc_id.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check signed envelopes and receipts offline against the CAs.
    Verify {
        #[command(flatten)]
        trust: verify::TrustArgs,
        /// The document envelope every receipt must name.
        #[arg(long)]
        document: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Put a document parked after its deadline, or refused for good (a dead
    /// letter, once the cause is fixed), back into its queue (admin API).
    /// What can go is queued; what cannot (all or part of an entry) stays
    /// held and is listed, and the command then exits non-zero.
    Requeue {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        held: HeldArgs,
        /// `{"requeued", "refused_total", "refused": [{doc_id, from, reason}]}`
        /// on stdout (refused: what stays held); the same exit code.
        #[arg(long)]
        json: bool,
    },
    /// Drop parked entries and dead letters for good, once dealt with
    /// otherwise (sent again under a new doc_id, say) (admin API).
    Discard {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        held: HeldArgs,
        /// Why (audited, and told to a sender on this node).
        #[arg(long)]
        reason: String,
        /// With --all and no --queue: yes, every held entry on the node.
        #[arg(long, requires = "all")]
        yes: bool,
        /// `{"discarded": N}` on stdout. A discard that fails is an error on
        /// stderr, exit code non-zero; one of --all that fails part way says
        /// how many it dropped before (those stay dropped).
        #[arg(long)]
        json: bool,
    },
    /// One document's path and timings: this node's audit entries and every signed
    /// receipt and status from the other hops.
    Trace {
        #[arg(long)]
        config: PathBuf,
        doc_id: String,
        /// The sending agency, when several agencies of this edge used this
        /// doc_id: only its records are shown.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Counters of a running node (admin API): documents accepted, refused,
    /// deferred, bytes streamed and re-sent, fsyncs.
    Stats {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The tree of nodes below this one: agencies, link state, queue depth, last seen.
    Nodes {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Queue depths and parked documents of a node (admin API).
    Queues {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Archival packages of documents, and their offline check.
    Archive {
        #[command(subcommand)]
        command: ArchiveCommand,
    },
    /// The agency directory as an edge knows it.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Measure truc side by side with NATS JetStream (run bench/setup for the
    /// peer): real `truc node` processes on loopback, interleaved runs, ratios
    /// of neighbouring pairs (BENCHMARKS.md). Scenarios: one-hop, edge-hub-edge,
    /// steady, relay, fan-out (the default set), attachment, queued-drain,
    /// idle-edges, reconnect, pg-hub (a hub on PostgreSQL beside the embedded
    /// one), outbox-drain (a sending edge's backlog after an outage), or all.
    Bench {
        scenarios: Vec<String>,
        /// Documents per run (fan-out: at most 1,000, each to --fanout
        /// agencies).
        #[arg(long, default_value_t = 5000)]
        docs: usize,
        /// Documents in flight (the same for truc and the peer): back to back,
        /// from a document's send until every recipient has it (one-hop: until
        /// the hub's acceptance, or the peer's ack, is back); at a steady rate,
        /// until the send returns.
        #[arg(long, alias = "concurrency", default_value_t = 64)]
        window: usize,
        #[arg(long, default_value_t = 10 * 1024)]
        body_bytes: usize,
        /// Runs of each system per scenario, interleaved.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Documents per second of the steady scenario.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Agencies one fan-out document goes to.
        #[arg(long, default_value_t = 60)]
        fanout: usize,
        /// Documents queued for the offline edge in queued-drain, and at the
        /// cut-off sending edge in outbox-drain.
        #[arg(long, default_value_t = 100_000)]
        queued: usize,
        #[arg(long, default_value_t = 1000)]
        idle_edges: usize,
        #[arg(long, default_value_t = 100)]
        reconnect_edges: usize,
        #[arg(long, default_value_t = 1024)]
        attachment_mib: u64,
        /// truc alone, even when nats-server is installed.
        #[arg(long)]
        no_peer: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Keep the runs' data here (deleted after each run) instead of a temp dir.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Write every document's send time and latency here, one CSV file
        /// per run of a scenario that times documents
        /// (SCENARIO-SYSTEM-RUN.csv): when the slow ones were sent shows
        /// stalls a percentile hides (a period, a moment).
        #[arg(long, value_name = "DIR")]
        latency_log: Option<PathBuf>,
        /// queued-drain and outbox-drain only: every edge (in outbox-drain the
        /// sender alone) reaches the hub over an emulated WAN link of this
        /// rate, each way (a proxy in the bench), and the drain is judged
        /// against the link: whether it kept the link busy (the recipient's
        /// link in queued-drain, the sender's in outbox-drain).
        #[arg(long, value_name = "MBIT")]
        link_mbit: Option<f64>,
        /// The emulated link's round trip (half of it each way), with
        /// --link-mbit; at most 1000.
        #[arg(long, value_name = "MS", default_value_t = 0.0, requires = "link_mbit")]
        link_rtt_ms: f64,
    },
    /// The node's key-value store: PostgreSQL schema, embedded engine conversion.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Asks a node's plaintext health port (`[health] listen`) whether it serves:
    /// prints SERVING or NOT_SERVING, exits 0 only when serving. For container
    /// health checks and scripts.
    Health {
        /// `host:port` of the health port.
        addr: String,
    },
    /// Fault injection: real nodes on loopback under load, faults in a loop, and a
    /// checker that must count nothing lost, duplicated, corrupted, phantom or
    /// misrouted (RELIABILITY.md). Scenarios: all, kill-hub, kill-relay,
    /// kill-edges, crash-before-ack, partition, disk-full, corrupt-partials,
    /// clock-skew, cert-rotation.
    Chaos {
        scenario: String,
        /// At least this many documents (sending goes on until the faults are done).
        #[arg(long, default_value_t = 10_000)]
        docs: u64,
        /// At least this many injected faults.
        #[arg(long, default_value_t = 50)]
        faults: u64,
        /// Print the reports as JSON (for scripts and the tests).
        #[arg(long)]
        json: bool,
        /// Keep PKI, data and node logs here (one directory per scenario).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seed of the fault schedule (printed by every run).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run the default federation on loopback with a fresh PKI — a hub, edges,
    /// a provincial relay with its districts — send documents and serve the
    /// dashboard.
    Demo {
        /// Keep the PKI, configs and data here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Exit once the demo documents are delivered instead of running until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand)]
enum ArchiveCommand {
    /// Write one archival package (a BagIt bag, docs/archive.md) per document:
    /// signed envelope, attachments, receipts, statuses, trace, certificates and
    /// the edge's audit entries chained to a head it signs.
    Export(archive::ExportArgs),
    /// Check a package offline against the trusted CA certificates; names every
    /// part that does not verify, and prints what the package proves.
    Verify(archive::VerifyArgs),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the chain; names the first entry that was changed or removed.
    Verify {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum EdxmlCommand {
    /// Parse a package without sending it and print the fields truc maps;
    /// exits non-zero naming the element that is wrong.
    Inspect {
        package: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Applies the schema migrations a PostgreSQL database lacks (versioned SQL in
    /// crates/truc-store/migrations), each in its own transaction; safe to run again
    /// and from several hosts at once.
    Migrate {
        /// libpq URL or key=value string, e.g. `postgresql://truc@db/truc` or
        /// `host=/run/postgresql dbname=truc`.
        #[arg(long, env = "TRUC_POSTGRES_URL")]
        url: String,
    },
    /// Converts a stopped node's embedded store to another engine (by default
    /// to the one its config names, `storage.engine`): copies every entry,
    /// reads the copy back and compares it (entries and SHA-256 per space), and
    /// only then puts it in place. The old store is kept beside it as
    /// `store.<engine>-old`; delete it once the node runs.
    Convert {
        #[arg(long)]
        config: PathBuf,
        /// `redb` or `sled`; default: the config's `storage.engine`.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DirectoryCommand {
    /// Every agency.
    List {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// One agency.
    Lookup {
        #[arg(long)]
        config: PathBuf,
        organ: String,
        #[arg(long)]
        json: bool,
    },
    /// Register an agency below this node (a relay: inside its grant); the change
    /// is signed and goes up to the parent, the new directory down to the children.
    Add {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        organ: String,
        #[arg(long)]
        name: String,
        /// Its parent agency in the administrative tree.
        #[arg(long)]
        parent: String,
        /// The child node that serves it.
        #[arg(long)]
        node: String,
    },
    /// Remove an agency registered below this node.
    Remove {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        organ: String,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create (or complete) a development PKI and one config per node.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// Topology file (format in certs-dev/README.md); default: hub + vpcp, nghean,
        /// caobang, and the relay quangnam with its districts duyxuyen and dienban.
        #[arg(long)]
        topology: Option<PathBuf>,
    },
    /// Issue a new certificate and key for a node (the old ones kept as .old);
    /// restart the node to use them.
    Rotate {
        #[arg(long)]
        out: PathBuf,
        node: String,
    },
    /// Revoke the current certificate of a node (into transport-ca.crl) or of
    /// an agency (into signing-ca.crl); running nodes read the lists again
    /// every `tls.crl_reload_ms` (and at start).
    Revoke {
        #[arg(long)]
        out: PathBuf,
        /// A node id (`hub`) or an agency code (`000.00.00.G22`).
        node: String,
    },
}

fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: a log file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

/// Runs the `truc` command line with the process arguments.
pub fn main() -> ExitCode {
    truc_pki::install_default_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Certs {
            command: CertsCommand::Rotate { out, node },
        } => {
            let crt = certs::rotate(&out, &node)?;
            println!("{} rewritten; restart {node} to use it", crt.display());
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Revoke { out, node },
        } => {
            let (serial, crl) = certs::revoke(&out, &node)?;
            println!(
                "serial {serial} of {node} revoked in {}; nodes refuse it once they reload the list (tls.crl_reload_ms)",
                crl.display()
            );
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Init { out, topology },
        } => {
            let topo = match &topology {
                Some(p) => certs::Topology::parse(
                    &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
                    &p.display().to_string(),
                )?,
                None => certs::Topology::default_topology()?,
            };
            let report = certs::init(&out, &topo)?;
            let mut t = client::table();
            t.set_header(vec!["node", "config", "role"]);
            for n in &topo.nodes {
                let role = match (&n.listen, &n.parent) {
                    (Some(_), Some(_)) => "relay",
                    (Some(_), None) => "hub",
                    _ => "edge",
                };
                t.add_row(vec![
                    n.id.clone(),
                    report
                        .configs
                        .get(&n.id)
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    role.into(),
                ]);
            }
            println!("{t}");
            println!(
                "{} certificates created, {} kept in {}",
                report.created.len(),
                report.kept.len(),
                out.display()
            );
            println!(
                "run a node:  truc node --config {}",
                out.join("hub.toml").display()
            );
            Ok(())
        }
        Command::Node { config } => {
            init_logging(cli.log_format, "info");
            run_node(config).await
        }
        Command::Send {
            config,
            from,
            to,
            subject,
            code,
            priority,
            attach,
            doc_id,
        } => {
            let id = client::send(
                &config,
                client::SendArgs {
                    from,
                    to,
                    subject,
                    code,
                    priority,
                    attach,
                    doc_id,
                },
            )
            .await?;
            println!("{id}");
            Ok(())
        }
        Command::Inbox {
            config,
            organ,
            all,
            kind,
            json,
        } => client::inbox(&config, &organ, all, kind.as_deref().unwrap_or(""), json).await,
        Command::Sent {
            config,
            from,
            limit,
            json,
        } => client::sent(&config, &from, limit, json).await,
        Command::Reply {
            config,
            doc_id,
            status,
            note,
            staff,
            organ,
            from,
        } => {
            let id = client::reply(
                &config,
                pb::ReplyRequest {
                    doc_id,
                    from: from.unwrap_or_default(),
                    organ: organ.unwrap_or_default(),
                    code: status,
                    note: note.unwrap_or_default(),
                    staff: staff.unwrap_or_default(),
                },
            )
            .await?;
            println!("{id}");
            Ok(())
        }
        Command::Recall {
            config,
            doc_id,
            from,
            reason,
            to,
        } => {
            let id = client::change(
                &config,
                client::ChangeArgs {
                    business: pb::BusinessType::Revoke,
                    target: doc_id,
                    from,
                    reason,
                    to,
                    add: vec![],
                    remove: vec![],
                    subject: None,
                    code: None,
                    attach: vec![],
                },
            )
            .await?;
            println!("{id}");
            Ok(())
        }
        Command::Update {
            config,
            doc_id,
            from,
            reason,
            add,
            remove,
            subject,
            attach,
        } => {
            let id = client::change(
                &config,
                client::ChangeArgs {
                    business: pb::BusinessType::Update,
                    target: doc_id,
                    from,
                    reason,
                    to: vec![],
                    add,
                    remove,
                    subject,
                    code: None,
                    attach,
                },
            )
            .await?;
            println!("{id}");
            Ok(())
        }
        Command::Replace {
            config,
            doc_id,
            from,
            reason,
            subject,
            code,
            attach,
            to,
        } => {
            let id = client::change(
                &config,
                client::ChangeArgs {
                    business: pb::BusinessType::Replace,
                    target: doc_id,
                    from,
                    reason,
                    to,
                    add: vec![],
                    remove: vec![],
                    subject,
                    code,
                    attach,
                },
            )
            .await?;
            println!("{id}");
            Ok(())
        }
        Command::Receipts {
            config,
            doc_id,
            from,
            out,
        } => {
            for p in client::receipts(&config, &doc_id, from.as_deref(), &out).await? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Command::Verify {
            trust,
            document,
            files,
        } => verify::verify(verify::VerifyArgs {
            files,
            trust,
            document,
        }),
        Command::Requeue { config, held, json } => client::requeue(&config, &held, json).await,
        Command::Discard {
            config,
            held,
            reason,
            yes,
            json,
        } => {
            if held.all && held.queue.is_none() && !yes {
                bail!(
                    "discard --all without --queue drops every parked entry and dead letter on the node; add --yes"
                );
            }
            let n = client::discard(&config, &held, &reason).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "discarded": n }))?
                );
            } else {
                println!(
                    "discarded {n} held entr{}",
                    if n == 1 { "y" } else { "ies" }
                );
            }
            Ok(())
        }
        Command::Trace {
            config,
            doc_id,
            from,
            json,
        } => client::trace(&config, &doc_id, from.as_deref(), json).await,
        Command::Queues { config, json } => client::queues(&config, json).await,
        Command::Stats { config, json } => client::stats(&config, json).await,
        Command::Nodes { config, json } => client::nodes(&config, json).await,
        Command::Audit {
            command: AuditCommand::Verify { config, json },
        } => verify::audit_verify(&config, json).await,
        Command::Archive { command } => match command {
            ArchiveCommand::Export(a) => archive::export(a).await,
            ArchiveCommand::Verify(a) => archive::verify(a),
        },
        Command::Directory { command } => match command {
            DirectoryCommand::List { config, json } => client::directory(&config, None, json).await,
            DirectoryCommand::Lookup {
                config,
                organ,
                json,
            } => client::directory(&config, Some(&organ), json).await,
            DirectoryCommand::Add {
                config,
                organ,
                name,
                parent,
                node,
            } => {
                let c = pb::DirectoryChange {
                    remove: false,
                    organ,
                    name,
                    parent,
                    node,
                };
                client::change_directory(&config, c).await
            }
            DirectoryCommand::Remove { config, organ } => {
                let c = pb::DirectoryChange {
                    remove: true,
                    organ,
                    ..Default::default()
                };
                client::change_directory(&config, c).await
            }
        },
        Command::Get {
            config,
            doc_id,
            out,
            from,
        } => {
            let dir = client::get(&config, &doc_id, from, &out).await?;
            println!("{}", dir.display());
            Ok(())
        }
        Command::Ack {
            config,
            doc_id,
            from,
            organ,
        } => {
            let acked = client::ack(&config, &doc_id, from, organ).await?;
            if acked.is_empty() {
                println!("already acknowledged");
            } else {
                println!("acknowledged for {}", acked.join(", "));
            }
            Ok(())
        }
        Command::Status {
            config,
            doc_id,
            from,
            json,
        } => client::status(&config, &doc_id, from.as_deref(), json).await,
        Command::Import {
            config,
            package,
            json,
        } => {
            let r = edxml::import(&config, &package).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"doc_id": r.doc_id, "kind": r.kind, "duplicate": r.duplicate})
                );
            } else if r.duplicate {
                println!("{} (already imported; nothing sent again)", r.doc_id);
            } else {
                println!("{}", r.doc_id);
            }
            Ok(())
        }
        Command::Export {
            config,
            doc_id,
            from,
            original,
            out,
        } => {
            if let Some(path) = edxml::export(&config, &doc_id, from, original, out).await? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Edxml {
            command: EdxmlCommand::Inspect { package, json },
        } => edxml::inspect(&package, json),
        Command::Bench {
            scenarios,
            docs,
            window,
            body_bytes,
            runs,
            rate,
            fanout,
            queued,
            idle_edges,
            reconnect_edges,
            attachment_mib,
            no_peer,
            json,
            dir,
            latency_log,
            link_mbit,
            link_rtt_ms,
        } => {
            init_logging(cli.log_format, "error");
            bench::run(bench::BenchArgs {
                scenarios,
                docs,
                window,
                body_bytes,
                runs,
                rate,
                fanout,
                queued,
                idle_edges,
                reconnect_edges,
                attachment_mib,
                no_peer,
                json,
                dir,
                latency_log,
                link: link_mbit.map(|mbit| bench::EmulatedLink {
                    mbit,
                    rtt_ms: link_rtt_ms,
                }),
            })
            .await
        }
        Command::Health { addr } => health(&addr).await,
        Command::Store {
            command: StoreCommand::Convert { config, to },
        } => store_convert(&config, to.as_deref()).await,
        Command::Store {
            command: StoreCommand::Migrate { url },
        } => {
            let applied = tokio::task::spawn_blocking(move || {
                let applied = truc_store::pg::migrate(&url)?;
                let version = truc_store::pg::schema_version(&url)?;
                Ok::<_, truc_store::StoreError>((applied, version))
            })
            .await??;
            let (applied, version) = applied;
            if applied.is_empty() {
                println!("schema at version {version}: nothing to apply");
            } else {
                for a in &applied {
                    println!("applied {a}");
                }
                println!("schema at version {version}");
            }
            Ok(())
        }
        Command::Chaos {
            scenario,
            docs,
            faults,
            json,
            dir,
            seed,
        } => {
            init_logging(cli.log_format, "error");
            crate::chaos::run(crate::chaos::ChaosArgs {
                scenario,
                docs,
                faults,
                json,
                dir,
                seed,
            })
            .await
        }
        Command::Demo { dir, once } => {
            init_logging(cli.log_format, "warn");
            demo::run(dir, once).await
        }
    }
}

async fn store_convert(config: &Path, to: Option<&str>) -> Result<()> {
    use truc_store::embedded::{self, Engine};
    let cfg = truc_node::Config::load(config)?;
    if cfg.storage.postgres_url.is_some() {
        bail!(
            "{} keeps its store in PostgreSQL: nothing embedded to convert",
            config.display()
        );
    }
    let to = match to {
        None => cfg.storage.engine,
        Some(name) => name
            .parse::<Engine>()
            .map_err(|e| anyhow::anyhow!("--to {e}"))?,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let dir = cfg.data_dir.clone();
    let cache = cfg.storage.cache();
    let b = bar.clone();
    let done = tokio::task::spawn_blocking(move || {
        embedded::convert(&dir, to, cache, |space, n| {
            b.set_message(format!("to {}: {space:?} {n} entries", to.name()));
        })
    })
    .await?
    .with_context(|| format!("convert the store of {}", cfg.data_dir.display()))?;
    bar.finish_and_clear();
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["space", "entries", "sha-256 (both stores)"]);
    for c in done.spaces.iter().filter(|c| c.entries > 0) {
        table.add_row([
            format!("{:?}", c.space),
            c.entries.to_string(),
            hex::encode(&c.digest[..8]),
        ]);
    }
    println!("{table}");
    println!(
        "converted {} entries from {} to {}; the old store is kept at {}",
        done.entries(),
        done.from.name(),
        done.to.name(),
        done.old_kept_at.display()
    );
    if cfg.storage.engine != done.to {
        println!(
            "set storage.engine = \"{}\" in {} before starting the node",
            done.to.name(),
            config.display()
        );
    }
    Ok(())
}

async fn health(addr: &str) -> Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("no health port answers at {addr}"))?;
    let status = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(client::status_error)?
        .into_inner()
        .status;
    let status = ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        anyhow::bail!("{addr} is {}", status.as_str_name());
    }
    Ok(())
}

async fn run_node(path: PathBuf) -> Result<()> {
    let config = truc_node::Config::load(&path)?;
    let node = truc_node::RunningNode::start(config).await?;
    println!(
        "truc node {} ({}) ready link={} agency={} rest={} admin={} health={}",
        node.state.node_id,
        node.config.role(),
        node.link_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        node.agency_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        node.rest_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        node.admin_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        node.health_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    tokio::select! {
        r = wait_for_signal() => {
            r?;
            tracing::info!("signal received; draining");
            node.shutdown().await?;
            Ok(())
        }
        why = node.failure() => {
            // The store cannot take the final flush; what was acknowledged is
            // already durable.
            if let Err(e) = node.shutdown().await {
                tracing::warn!(error = %e, "shutdown after the store was fenced");
            }
            anyhow::bail!("node stopped: {why}")
        }
    }
}

pub(crate) async fn wait_for_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("wait for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
    Ok(())
}
