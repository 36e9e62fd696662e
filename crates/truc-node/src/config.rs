//! Node configuration: a TOML file with a `version`, unknown fields rejected,
//! every limit and timeout a named field with a documented default. Paths are
//! relative to the file's directory. [`Config::load`] validates everything a node
//! needs (it reads the certificates and keys) so a bad file fails before start.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use truc_core::{NodeId, OrganId};

/// The config layout this build reads.
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The file as written. See `certs-dev/README.md` and the README for every field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub version: u32,
    pub node_id: String,
    /// Where the store and blob files live.
    pub data_dir: PathBuf,
    pub tls: TlsSection,
    pub signing: SigningSection,
    /// Present on hubs and relays: where children connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<ListenSection>,
    /// Present on edges and relays: the node to dial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentSection>,
    /// Present on edges: the local API for agency software and the CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency_api: Option<AgencyApiSection>,
    /// Agencies this node serves itself, with their signing keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agencies: Vec<AgencySection>,
    /// Hubs and relays: the directory of children and the agencies each serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildSection>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub link: LinkTuning,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub delivery: DeliverySection,
    #[serde(default)]
    pub quotas: QuotaSection,
    /// The operator port: admin gRPC API, dashboard, `/metrics`, health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_api: Option<AdminApiSection>,
    /// A plaintext port serving only `grpc.health.v1.Health`, for orchestrators
    /// whose probes cannot present a certificate (Kubernetes gRPC probes). It
    /// says SERVING or NOT_SERVING and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSection>,
    #[serde(default)]
    pub alerts: AlertSection,
    /// Edges: checking the signatures embedded in received PDF attachments.
    #[serde(default)]
    pub pdf: PdfSection,
    /// REST/JSON agency API for document software (edges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<RestSection>,
    /// Hubs and relays: names and administrative parents of the agencies below.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directory: Vec<DirectoryEntry>,
    /// Relays: the subtree this node may register agencies in on its own (agencies
    /// whose parent chain reaches this OrganId); its parent holds the same grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// Fault injection for tests. Never set in production; a node logs a warning.
    #[serde(default, skip_serializing_if = "TestHooks::is_off")]
    pub test_hooks: TestHooks,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Transport CA certificate(s), PEM.
    pub ca: PathBuf,
    /// This node's certificate (chain), PEM.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate revocation lists of the transport CA, PEM or DER. Node
    /// signatures (directory changes, receipts a node signs) are checked
    /// against them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<PathBuf>,
    /// How often the CRL files are read again (ms): a new list applies to the next
    /// handshake, and links of children it revokes are closed at once.
    #[serde(default = "default_crl_reload_ms")]
    pub crl_reload_ms: u64,
}

fn default_crl_reload_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    /// Signing CA certificate(s), PEM: envelopes must chain to one of them.
    pub ca: PathBuf,
    /// Certificate revocation lists of the signing CA(s), PEM or DER: a
    /// revoked agency certificate's documents and receipts are refused at
    /// every hop. Read again every `tls.crl_reload_ms`. None: no revocation
    /// check of signers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// `host:port` for the link listener; port 0 picks a free port.
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentSection {
    /// `host:port` of the parent's link listener.
    pub address: String,
    /// The parent's node id; its certificate must name it.
    pub node_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencyApiSection {
    /// `host:port`, loopback only (plaintext; callers present the node's token,
    /// `agency::load_or_make_token`).
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// `host:port`.
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminApiSection {
    /// `host:port`. TLS 1.3 with this node's certificate; the admin gRPC API and
    /// `/metrics` need an operator certificate, the dashboard a certificate or a
    /// login token.
    pub listen: String,
    /// Dashboard logins for browsers without an operator certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logins: Vec<LoginEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginEntry {
    pub name: String,
    /// `viewer` or `operator`.
    pub role: String,
    /// Hex SHA-256 of the login token (the token itself is not kept in the config).
    pub token_sha256: String,
}

/// How an edge checks the signatures inside the PDF attachments it receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PdfSection {
    /// Check them at all. Default true.
    pub check: bool,
    /// CA certificates (PEM) a PDF signer must chain to: the government's CAs
    /// for special-use certificates. Default: the signing CA (`signing.ca`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_anchors: Vec<PathBuf>,
    /// Larger PDFs are not read for this ("not checked"): a PDF is read whole
    /// to be checked. Default 64 MiB.
    pub max_bytes: u64,
}

impl Default for PdfSection {
    fn default() -> Self {
        Self {
            check: true,
            trust_anchors: Vec::new(),
            max_bytes: 64 << 20,
        }
    }
}

/// When the node raises an alert (as metrics and on the dashboard).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSection {
    /// A link to a child or the parent down longer than this.
    pub link_down_ms: u64,
    /// A certificate (node, agency, child node) expiring within this.
    pub cert_expiry_days: u64,
    /// Disk of `data_dir` fuller than this fraction.
    pub disk_high_water: f64,
}

impl Default for AlertSection {
    fn default() -> Self {
        Self {
            link_down_ms: 5 * 60_000,
            cert_expiry_days: 30,
            disk_high_water: 0.9,
        }
    }
}

/// A dashboard login, validated.
#[derive(Debug, Clone)]
pub struct AdminLogin {
    pub name: String,
    pub role: truc_pki::identity::Role,
    pub token_sha256: [u8; 32],
}

/// The REST/JSON agency API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestSection {
    /// `host:port`; loopback only (use a reverse proxy with TLS to publish it).
    pub listen: String,
    /// Applications allowed to call it, each with a bearer token.
    #[serde(default)]
    pub apps: Vec<RestApp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestApp {
    pub name: String,
    /// Hex SHA-256 of the bearer token (the token itself is not kept in the config).
    pub token_sha256: String,
    /// The agencies this application may act for.
    pub organs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryEntry {
    pub organ: String,
    #[serde(default)]
    pub name: String,
    /// The agency above it in the administrative tree, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent: String,
    /// The node that serves it, when that is not the child itself (below a relay).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
}

/// When an undelivered document is given up on and its sender told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// Delivery deadline by priority: normal, urgent, very urgent, express (hỏa
    /// tốc), timed express. Default 24 h, 8 h, 4 h, 2 h, 1 h. A document's own
    /// earlier due date wins.
    pub deadline_ms: [u64; 5],
    /// How often queues are checked for overdue documents. Default 5000 ms.
    pub sweep_interval_ms: u64,
}

impl Default for DeliverySection {
    fn default() -> Self {
        const H: u64 = 3_600_000;
        Self {
            deadline_ms: [24 * H, 8 * H, 4 * H, 2 * H, H],
            sweep_interval_ms: 5000,
        }
    }
}

impl DeliverySection {
    pub fn deadline_for(&self, priority: u32) -> u64 {
        self.deadline_ms[(priority as usize).min(4)]
    }
}

/// Backpressure: limits on what waits in this node's queues.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaSection {
    /// Documents waiting here for one recipient agency. Default 100000.
    pub max_queued_per_recipient: u64,
    /// Documents waiting here from one sending agency. Default 200000.
    pub max_queued_per_sender: u64,
    /// Documents an edge keeps in its outbox before refusing new ones. Default 100000.
    pub max_outbox: u64,
    /// Retry hint given with RESOURCE_EXHAUSTED. Default 1000 ms.
    pub retry_after_ms: u32,
    /// Attachment bytes held here for the documents of one sending agency. Default 100 GiB.
    pub max_agency_bytes: u64,
}

impl Default for QuotaSection {
    fn default() -> Self {
        Self {
            max_queued_per_recipient: 100_000,
            max_queued_per_sender: 200_000,
            max_outbox: 100_000,
            retry_after_ms: 1000,
            max_agency_bytes: 100 << 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencySection {
    pub organ: String,
    #[serde(default)]
    pub name: String,
    pub signing_cert: PathBuf,
    pub signing_key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildSection {
    pub node_id: String,
    pub organs: Vec<String>,
    /// A relay's grant: it may register agencies whose parent chain reaches this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

/// Size and count limits. Every one is enforced; none relies on a library default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest gRPC message accepted on the link and the agency API. Default 64 MiB.
    pub max_message_bytes: usize,
    /// Largest single attachment. Default 2 GiB.
    pub max_attachment_bytes: u64,
    /// Largest total of all attachments of one document. Default 4 GiB.
    pub max_document_bytes: u64,
    /// Most attachments per document. Default 100.
    pub max_attachments: usize,
    /// Most recipients per document. Default 1000.
    pub max_recipients: usize,
    /// Longest subject, in characters. Default 2000.
    pub max_subject_chars: usize,
    /// Inbox entries returned by one list call. Default 1000.
    pub max_list: usize,
    /// Attachment names that display as another name (bidirectional
    /// overrides) are refused. Always on a node; off only for checking a
    /// document that already travelled, offline (nodes accepted such names
    /// before they refused them). Not a setting.
    #[serde(skip)]
    pub refuse_disguised_names: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 << 20,
            max_attachment_bytes: 2 << 30,
            max_document_bytes: 4 << 30,
            max_attachments: 100,
            max_recipients: 1000,
            max_subject_chars: 2000,
            max_list: 1000,
            refuse_disguised_names: true,
        }
    }
}

/// Link timing and flow control.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkTuning {
    /// Unacknowledged transfers this node lets a peer have in flight. Default
    /// 1024: a peer sends at most this many per round trip, so 10 KiB
    /// documents fill a 100 Mbit/s link up to a round trip of about 650 ms,
    /// where `stream_window_bytes` runs out first (256 filled half of it at
    /// 400 ms). What it holds in flight stays
    /// bounded by bytes too (`max_inflight_bytes`).
    pub window: u32,
    /// Ping period. Default 2000 ms.
    pub heartbeat_interval_ms: u64,
    /// A link that hears nothing this long is dropped. Default 8000 ms.
    pub heartbeat_timeout_ms: u64,
    /// TCP connect timeout when dialling the parent. Default 3000 ms.
    pub connect_timeout_ms: u64,
    /// TLS handshake timeout on the listener. Default 5000 ms.
    pub handshake_timeout_ms: u64,
    /// First reconnect delay; doubles up to the maximum, with jitter. Default 100 ms.
    pub reconnect_min_ms: u64,
    /// Default 10000 ms.
    pub reconnect_max_ms: u64,
    /// Concurrent TLS connections a listener accepts. Default 10000.
    pub max_connections: usize,
    /// HTTP/2 streams per connection. Default 16.
    pub max_concurrent_streams: u32,
    /// Bytes of unacknowledged transfers this node sends on one link. Default 32 MiB.
    pub max_inflight_bytes: usize,
    /// Attachments of a document travel inline in its transfer up to this total;
    /// larger ones are streamed in chunks, resumably. Default 256 KiB.
    pub inline_attachment_bytes: u64,
    /// Size of one streamed chunk. Default 256 KiB.
    pub chunk_bytes: usize,
    /// HTTP/2 flow-control window per stream (the connection's: twice this);
    /// bounds the bytes a link's receiver holds unread. Default 8 MiB: a
    /// drain over a WAN link sends at most a window per round trip, and this
    /// covers 1 Gbit/s at a 64 ms round trip (4 MiB kept a 1 Gbit/s, 40 ms
    /// link half busy with 256 KiB documents), while a 1 GiB attachment
    /// stays within 64 MiB of extra memory per node (16 MiB did not, in a
    /// debug build).
    pub stream_window_bytes: u32,
}

impl Default for LinkTuning {
    fn default() -> Self {
        Self {
            window: 1024,
            heartbeat_interval_ms: 2000,
            heartbeat_timeout_ms: 8000,
            connect_timeout_ms: 3000,
            handshake_timeout_ms: 5000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 10_000,
            max_connections: 10_000,
            max_concurrent_streams: 16,
            max_inflight_bytes: 32 << 20,
            inline_attachment_bytes: 256 << 10,
            chunk_bytes: 256 << 10,
            stream_window_bytes: 8 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// The embedded store's engine: `redb` (default; `data_dir/store.redb`) or
    /// `sled` (`data_dir/store/`, the default before redb). A node refuses a
    /// data directory holding the other engine's store; `truc store convert`
    /// converts it. Ignored with `postgres_url`.
    pub engine: truc_store::embedded::Engine,
    /// Page cache of the embedded store. Default: 8 MiB with redb, whose
    /// memory stays within it (100,000 documents queued at a hub: +21 MiB of
    /// RSS with 8 MiB, +52 MiB with 32, drained as fast); 32 MiB with sled,
    /// which keeps memory per written page on top and ran 23% slower with
    /// 8 MiB once its store had grown (BENCHMARKS.md). See [`Self::cache`].
    /// With `postgres_url`: the memory of the writer's answers to point reads
    /// (the same default, 8 MiB unless `engine` says sled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,
    /// Intake is refused (RESOURCE_EXHAUSTED, "disk full") when it would leave less
    /// free space than this on the data disk. Default 512 MiB.
    pub min_free_bytes: u64,
    /// How long the attachment files of a fully delivered document are kept before
    /// they are deleted (the envelope, receipts and dedup entry stay). Default 30 days.
    pub retention_ms: u64,
    /// How long a document's signed envelope is kept once every delivery of it
    /// here is done; then the envelope (and any attachment still held) is
    /// removed, audited as `envelope-removed`. Its record stays: dedup, trace,
    /// receipts and statuses. At least `retention_ms`. Default: kept for good.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope_retention_ms: Option<u64>,
    /// How long audit entries are kept: older entries are removed from the
    /// start of the chain, which then starts from a recorded anchor; the removal
    /// is itself an audit entry (`audit-pruned`). Default: kept for good.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_retention_ms: Option<u64>,
    /// Records duty: nothing of a document is deleted before it has been
    /// exported as an archival package (`truc archive export`) — attachments
    /// and envelope past their retention, and the audit entries about it, are
    /// kept and removed at the first sweep after the export. Default false.
    pub keep_until_archived: bool,
    /// How often partial transfers are made durable while they stream. Default 8 MiB.
    pub sync_every_bytes: u64,
    /// Blob files no document names (uploads never sent, leftovers of a crash) and
    /// abandoned partial transfers are deleted after this long. Default 24 h.
    pub orphan_grace_ms: u64,
    /// Keep the key-value store (queues, dedup index, directory, receipts, audit)
    /// in PostgreSQL instead of the embedded store: a libpq URL or key=value
    /// string. The schema comes from `truc store migrate`. One process writes a
    /// database at a time: a second hub on the same URL stands by (health
    /// NOT_SERVING) and takes over when the first dies. Default: none (embedded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    /// Where attachment and body files are kept (relative paths from the config
    /// file). Hubs sharing one PostgreSQL database share this directory too (a
    /// shared volume). Default: `data_dir/blobs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob_dir: Option<PathBuf>,
}

impl StorageSection {
    /// The embedded store's page cache: `cache_bytes`, or the engine's default.
    pub fn cache(&self) -> u64 {
        use truc_store::embedded::Engine;
        self.cache_bytes.unwrap_or(match self.engine {
            Engine::Redb => 8 << 20,
            Engine::Sled => 32 << 20,
        })
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            engine: truc_store::embedded::Engine::default(),
            cache_bytes: None,
            min_free_bytes: 512 << 20,
            retention_ms: 30 * 24 * 3_600_000,
            envelope_retention_ms: None,
            audit_retention_ms: None,
            keep_until_archived: false,
            sync_every_bytes: 8 << 20,
            orphan_grace_ms: 24 * 3_600_000,
            postgres_url: None,
            blob_dir: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestHooks {
    /// Flip one byte of the header of every envelope this node forwards.
    pub corrupt_forwarded_headers: bool,
    /// Crash (abort) once every N acknowledgements, after what they cover is
    /// durable and before the ack leaves: the window between "stored" and "acked".
    pub abort_before_ack_every: u64,
    /// Shift this node's clock (Unix ms it stamps and compares) by this much.
    pub clock_offset_ms: i64,
}

impl TestHooks {
    pub fn is_off(&self) -> bool {
        !self.corrupt_forwarded_headers
            && self.abort_before_ack_every == 0
            && self.clock_offset_ms == 0
    }

    /// Called where an acknowledgement is about to leave, once it is durable.
    pub fn before_ack(&self, what: &str) {
        static ACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = self.abort_before_ack_every;
        if n > 0 && ACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n == n - 1 {
            tracing::error!(what, "test hook: aborting between stored and acknowledged");
            std::process::abort();
        }
    }
}

/// A validated configuration, paths resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub tls: TlsSection,
    pub signing_ca: PathBuf,
    /// `signing.crls`, resolved.
    pub signing_crls: Vec<PathBuf>,
    pub listen: Option<String>,
    pub parent: Option<(String, NodeId)>,
    pub agency_api: Option<String>,
    pub agencies: Vec<(OrganId, String, PathBuf, PathBuf)>,
    pub children: BTreeMap<NodeId, Vec<OrganId>>,
    pub limits: Limits,
    pub link: LinkTuning,
    pub storage: StorageSection,
    pub delivery: DeliverySection,
    pub quotas: QuotaSection,
    pub admin_api: Option<String>,
    pub admin_logins: Vec<AdminLogin>,
    /// The plaintext health-only listener, if any.
    pub health_listen: Option<String>,
    pub alerts: AlertSection,
    /// PDF signature checks; `trust_anchors` resolved (the signing CA if none given).
    pub pdf: PdfSection,
    /// OrganId → (name, parent, serving node if given).
    pub directory: BTreeMap<OrganId, (String, Option<OrganId>, Option<NodeId>)>,
    pub grant: Option<OrganId>,
    pub child_grants: BTreeMap<NodeId, OrganId>,
    /// REST listener and the applications allowed to use it.
    pub rest: Option<RestApi>,
    pub test_hooks: TestHooks,
}

/// The REST listener of a node and the applications allowed to use it.
#[derive(Debug, Clone)]
pub struct RestApi {
    pub listen: String,
    pub apps: Vec<RestClient>,
}

/// One document-management application: its bearer token is never stored,
/// only its SHA-256, and it may act only for the organs listed.
#[derive(Debug, Clone)]
pub struct RestClient {
    pub name: String,
    pub token_sha256: [u8; 32],
    pub organs: Vec<OrganId>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        Self::from_file(path, file)
    }

    pub fn from_file(path: &Path, f: FileConfig) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if f.version != CONFIG_VERSION {
            return Err(invalid(format!(
                "version {} is not supported (this build reads version {CONFIG_VERSION})",
                f.version
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let must_exist = |what: &str, p: &Path| -> Result<PathBuf, ConfigError> {
            let r = resolve(p);
            if r.is_file() {
                Ok(r)
            } else {
                Err(invalid(format!(
                    "{what} file {} does not exist",
                    r.display()
                )))
            }
        };
        let node_id: NodeId = f
            .node_id
            .parse()
            .map_err(|e| invalid(format!("node_id: {e}")))?;
        let tls = TlsSection {
            ca: must_exist("tls.ca", &f.tls.ca)?,
            cert: must_exist("tls.cert", &f.tls.cert)?,
            key: must_exist("tls.key", &f.tls.key)?,
            crls: f
                .tls
                .crls
                .iter()
                .map(|p| must_exist("tls.crls", p))
                .collect::<Result<_, _>>()?,
            crl_reload_ms: f.tls.crl_reload_ms.max(100),
        };
        let signing_ca = must_exist("signing.ca", &f.signing.ca)?;
        let signing_crls = f
            .signing
            .crls
            .iter()
            .map(|p| must_exist("signing.crls", p))
            .collect::<Result<_, _>>()?;
        let pdf = PdfSection {
            trust_anchors: if f.pdf.trust_anchors.is_empty() {
                vec![signing_ca.clone()]
            } else {
                f.pdf
                    .trust_anchors
                    .iter()
                    .map(|p| must_exist("pdf.trust_anchors", p))
                    .collect::<Result<_, _>>()?
            },
            ..f.pdf.clone()
        };
        if f.listen.is_none() && f.parent.is_none() {
            return Err(invalid(
                "a node needs [listen] (hub or relay), [parent] (edge or relay), or both".into(),
            ));
        }
        let listen = match f.listen {
            Some(l) => {
                parse_addr(&l.address).map_err(|e| invalid(format!("listen.address: {e}")))?;
                Some(l.address)
            }
            None => None,
        };
        let parent = match f.parent {
            Some(p) => {
                if p.address.trim().is_empty() {
                    return Err(invalid("parent.address is empty".into()));
                }
                let id: NodeId = p
                    .node_id
                    .parse()
                    .map_err(|e| invalid(format!("parent.node_id: {e}")))?;
                Some((p.address, id))
            }
            None => None,
        };
        let agency_api = match f.agency_api {
            Some(a) => {
                let addr = parse_addr(&a.listen)
                    .map_err(|e| invalid(format!("agency_api.listen: {e}")))?;
                if !addr.ip().is_loopback() {
                    return Err(invalid(format!(
                        "agency_api.listen {addr} is not a loopback address; the agency API is plaintext, for software on this machine (publish the REST API through a TLS reverse proxy instead)"
                    )));
                }
                Some(a.listen)
            }
            None => None,
        };
        let mut seen = BTreeMap::new();
        let mut agencies = Vec::new();
        for a in f.agencies {
            let organ: OrganId = a
                .organ
                .parse()
                .map_err(|e| invalid(format!("agencies: {e}")))?;
            if seen.insert(organ.clone(), "this node").is_some() {
                return Err(invalid(format!("agency {organ} is listed twice")));
            }
            agencies.push((
                organ,
                a.name,
                must_exist("agencies.signing_cert", &a.signing_cert)?,
                must_exist("agencies.signing_key", &a.signing_key)?,
            ));
        }
        if agencies.is_empty() && agency_api.is_some() {
            return Err(invalid(
                "[agency_api] is set but no [[agencies]] are served".into(),
            ));
        }
        if !agencies.is_empty() && agency_api.is_none() {
            return Err(invalid(
                "[[agencies]] are served but there is no [agency_api] to reach them".into(),
            ));
        }
        let mut children: BTreeMap<NodeId, Vec<OrganId>> = BTreeMap::new();
        let mut child_grants = BTreeMap::new();
        for c in f.children {
            let id: NodeId = c
                .node_id
                .parse()
                .map_err(|e| invalid(format!("children: {e}")))?;
            if id == node_id {
                return Err(invalid(format!("node {id} lists itself as a child")));
            }
            let mut organs = Vec::new();
            for o in c.organs {
                let organ: OrganId = o
                    .parse()
                    .map_err(|e| invalid(format!("children.{id}: {e}")))?;
                if let Some(other) = seen.insert(organ.clone(), "a child") {
                    return Err(invalid(format!(
                        "agency {organ} is served by {other} and by child {id}"
                    )));
                }
                organs.push(organ);
            }
            if let Some(g) = &c.grant {
                let g: OrganId = g
                    .parse()
                    .map_err(|e| invalid(format!("children.{id}.grant: {e}")))?;
                child_grants.insert(id.clone(), g);
            }
            if children.insert(id.clone(), organs).is_some() {
                return Err(invalid(format!("child {id} is listed twice")));
            }
        }
        if !children.is_empty() && listen.is_none() {
            return Err(invalid(
                "[[children]] are listed but there is no [listen] for them to reach".into(),
            ));
        }
        // A parent that is this node or one of its children would make a
        // link both ways between one pair of nodes (a routing loop).
        if let Some((_, p)) = &parent {
            if p == &node_id {
                return Err(invalid(format!("node {p} names itself as its parent")));
            }
            if children.contains_key(p) {
                return Err(invalid(format!(
                    "node {p} is both this node's parent and one of its [[children]]"
                )));
            }
        }
        let mut admin_logins = Vec::new();
        let admin_api = match f.admin_api {
            Some(a) => {
                parse_addr(&a.listen).map_err(|e| invalid(format!("admin_api.listen: {e}")))?;
                for l in a.logins {
                    let role = l
                        .role
                        .parse()
                        .map_err(|e| invalid(format!("admin_api.logins.{}: {e}", l.name)))?;
                    let token_sha256 = hex::decode(l.token_sha256.trim())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| {
                            invalid(format!(
                                "admin_api.logins.{}: token_sha256 is not 64 hex digits",
                                l.name
                            ))
                        })?;
                    admin_logins.push(AdminLogin {
                        name: l.name,
                        role,
                        token_sha256,
                    });
                }
                Some(a.listen)
            }
            None => None,
        };
        if !(0.0..=1.0).contains(&f.alerts.disk_high_water) {
            return Err(invalid(
                "alerts.disk_high_water must be between 0 and 1".into(),
            ));
        }
        let rest = match f.rest {
            Some(r) => {
                let addr =
                    parse_addr(&r.listen).map_err(|e| invalid(format!("rest.listen: {e}")))?;
                if !addr.ip().is_loopback() {
                    return Err(invalid(format!(
                        "rest.listen {addr} is not a loopback address; publish it through a TLS reverse proxy"
                    )));
                }
                let mut apps: Vec<RestClient> = Vec::new();
                for a in r.apps {
                    // The name keys what it uploads (and its upload ids):
                    // two applications by one name would share them.
                    if a.name.trim().is_empty() {
                        return Err(invalid("rest.apps: an application without a name".into()));
                    }
                    if apps.iter().any(|b| b.name == a.name) {
                        return Err(invalid(format!(
                            "rest.apps: two applications are named {}; each needs a name of its own",
                            a.name
                        )));
                    }
                    let raw = hex::decode(a.token_sha256.trim())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| {
                            invalid(format!(
                                "rest.apps.{}: token_sha256 is not 64 hex digits",
                                a.name
                            ))
                        })?;
                    let mut organs = Vec::new();
                    for o in a.organs {
                        let organ: OrganId = o
                            .parse()
                            .map_err(|e| invalid(format!("rest.apps.{}: {e}", a.name)))?;
                        if seen.get(&organ).is_none_or(|w| *w != "this node") {
                            return Err(invalid(format!(
                                "rest.apps.{} acts for {organ}, which this node does not serve",
                                a.name
                            )));
                        }
                        organs.push(organ);
                    }
                    apps.push(RestClient {
                        name: a.name,
                        token_sha256: raw,
                        organs,
                    });
                }
                Some(RestApi {
                    listen: r.listen,
                    apps,
                })
            }
            None => None,
        };
        let mut directory = BTreeMap::new();
        for d in f.directory {
            let organ: OrganId = d
                .organ
                .parse()
                .map_err(|e| invalid(format!("directory: {e}")))?;
            let parent = if d.parent.is_empty() {
                None
            } else {
                Some(
                    d.parent
                        .parse::<OrganId>()
                        .map_err(|e| invalid(format!("directory.{organ}.parent: {e}")))?,
                )
            };
            if !seen.contains_key(&organ) {
                return Err(invalid(format!(
                    "directory names {organ}, which neither this node nor a child serves"
                )));
            }
            let node = if d.node.is_empty() {
                None
            } else {
                Some(
                    d.node
                        .parse::<NodeId>()
                        .map_err(|e| invalid(format!("directory.{organ}.node: {e}")))?,
                )
            };
            if directory
                .insert(organ.clone(), (d.name, parent, node))
                .is_some()
            {
                return Err(invalid(format!("directory lists {organ} twice")));
            }
        }
        if let Some(e) = f.storage.envelope_retention_ms
            && e < f.storage.retention_ms
        {
            return Err(invalid(format!(
                "storage.envelope_retention_ms ({e}) is shorter than storage.retention_ms ({}): an attachment is only reachable through its envelope",
                f.storage.retention_ms
            )));
        }
        if f.delivery.sweep_interval_ms == 0 || f.delivery.deadline_ms.contains(&0) {
            return Err(invalid(
                "delivery.deadline_ms and delivery.sweep_interval_ms must be > 0".into(),
            ));
        }
        if f.link.chunk_bytes == 0
            || f.link.chunk_bytes as u64 > f.limits.max_message_bytes as u64 / 2
        {
            return Err(invalid(
                "link.chunk_bytes must be > 0 and at most half of limits.max_message_bytes".into(),
            ));
        }
        if f.link.window == 0
            || f.link.window > crate::link::MAX_WINDOW
            || f.link.heartbeat_interval_ms == 0
            || f.link.heartbeat_timeout_ms <= f.link.heartbeat_interval_ms
        {
            return Err(invalid(
                "link.window must be between 1 and 65536, and link.heartbeat_timeout_ms greater than link.heartbeat_interval_ms".into(),
            ));
        }
        Ok(Self {
            path: path.to_owned(),
            node_id,
            data_dir: resolve(&f.data_dir),
            tls,
            signing_ca,
            signing_crls,
            listen,
            parent,
            agency_api,
            agencies,
            children,
            limits: f.limits,
            link: f.link,
            storage: StorageSection {
                blob_dir: Some(
                    f.storage
                        .blob_dir
                        .as_deref()
                        .map_or_else(|| resolve(&f.data_dir).join("blobs"), resolve),
                ),
                ..f.storage
            },
            delivery: f.delivery,
            quotas: f.quotas,
            admin_api,
            admin_logins,
            health_listen: f.health.map(|h| h.listen),
            alerts: f.alerts,
            pdf,
            directory,
            grant: match f.grant {
                Some(g) => Some(g.parse().map_err(|e| invalid(format!("grant: {e}")))?),
                None => None,
            },
            child_grants,
            rest,
            test_hooks: f.test_hooks,
        })
    }

    /// Where blob files are kept (`storage.blob_dir`, resolved at load).
    pub fn blob_dir(&self) -> PathBuf {
        self.storage
            .blob_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("blobs"))
    }

    pub fn role(&self) -> &'static str {
        match (self.listen.is_some(), self.parent.is_some()) {
            (true, true) => "relay",
            (true, false) => "hub",
            _ => "edge",
        }
    }

    pub fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|e| format!("{s:?} is not an ip:port address ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn base(dir: &Path) -> String {
        for f in ["ca.pem", "cert.pem", "key.pem", "signing.pem"] {
            write(dir, f, "x");
        }
        r#"
version = 1
node_id = "hub"
data_dir = "data"
[tls]
ca = "ca.pem"
cert = "cert.pem"
key = "key.pem"
[signing]
ca = "signing.pem"
[listen]
address = "127.0.0.1:0"
[[children]]
node_id = "vpcp"
organs = ["000.00.00.G22"]
"#
        .to_string()
    }

    #[test]
    fn a_valid_hub_config_loads_with_paths_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "hub.toml", &base(dir.path()));
        let c = Config::load(&p).unwrap();
        assert_eq!(c.role(), "hub");
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(c.children.len(), 1);
        assert_eq!(c.link.window, 1024);
        // Not a setting: a node always refuses names that display as another,
        // a [limits] section or not.
        assert!(c.limits.refuse_disguised_names);
        let text = base(dir.path()).replace("[listen]", "[limits]\nmax_list = 10\n[listen]");
        let p = write(dir.path(), "hub.toml", &text);
        assert!(Config::load(&p).unwrap().limits.refuse_disguised_names);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = base(dir.path()).replace("data_dir", "colour = \"red\"\ndata_dir");
        let p = write(dir.path(), "hub.toml", &text);
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn a_missing_certificate_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let text = base(dir.path()).replace("cert.pem", "nowhere.pem");
        let p = write(dir.path(), "hub.toml", &text);
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("tls.cert file") && err.contains("nowhere.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_parent_that_is_this_node_or_a_child_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let parent =
            |id: &str| format!("[parent]\naddress = \"127.0.0.1:1\"\nnode_id = \"{id}\"\n");
        let child = "[[children]]\nnode_id = \"other\"\norgans = [\"000.00.00.H41\"]\n";
        for (text, says) in [
            (
                base(dir.path()) + &parent("hub"),
                "names itself as its parent",
            ),
            (
                base(dir.path()) + &parent("other") + child,
                "both this node's parent and one of its [[children]]",
            ),
        ] {
            let p = write(dir.path(), "hub.toml", &text);
            let err = Config::load(&p).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        let p = write(
            dir.path(),
            "hub.toml",
            &(base(dir.path()) + &parent("national") + child),
        );
        Config::load(&p).unwrap();
    }

    #[test]
    fn an_agency_served_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            base(dir.path()) + "[[children]]\nnode_id = \"other\"\norgans = [\"000.00.00.G22\"]\n";
        let p = write(dir.path(), "hub.toml", &text);
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(err.contains("000.00.00.G22"), "{err}");
    }

    #[test]
    fn an_envelope_kept_shorter_than_its_attachments_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = base(dir.path())
            + "[storage]\nretention_ms = 86400000\nenvelope_retention_ms = 3600000\n";
        let p = write(dir.path(), "hub.toml", &text);
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("storage.envelope_retention_ms") && err.contains("storage.retention_ms"),
            "{err}"
        );
        let ok = base(dir.path())
            + "[storage]\nretention_ms = 3600000\nenvelope_retention_ms = 86400000\naudit_retention_ms = 1\n";
        let p = write(dir.path(), "hub.toml", &ok);
        let c = Config::load(&p).unwrap();
        assert_eq!(c.storage.audit_retention_ms, Some(1));
    }

    #[test]
    fn wrong_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = base(dir.path()).replace("version = 1", "version = 7");
        let p = write(dir.path(), "hub.toml", &text);
        assert!(
            Config::load(&p)
                .unwrap_err()
                .to_string()
                .contains("version 7")
        );
    }
}
