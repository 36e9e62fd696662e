//! CLI commands that talk to an edge's agency API.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use truc_node::Config;
use truc_proto::v1::{self as pb, admin_client::AdminClient, agency_client::AgencyClient};

/// Which local API of a node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Agency,
    Admin,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Agency => "agency",
            Api::Admin => "admin",
        }
    }
}

/// A config without the API a command needs.
fn no_api(config_path: &Path, cfg: &Config, api: Api) -> anyhow::Error {
    anyhow!(
        "{} ({}) has no [{}_api]{}",
        config_path.display(),
        cfg.role(),
        api.name(),
        if api == Api::Agency {
            "; point --config at an edge"
        } else {
            ""
        }
    )
}

/// Finds a local API of the node a config describes.
pub fn api_addr(config_path: &Path, api: Api) -> Result<SocketAddr> {
    let cfg = Config::load(config_path)?;
    let configured = match api {
        Api::Agency => cfg.agency_api.as_ref(),
        Api::Admin => cfg.admin_api.as_ref(),
    };
    let listen = configured.ok_or_else(|| no_api(config_path, &cfg, api))?;
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("{}_api.listen {listen:?}", api.name()))?;
    if addr.port() != 0 {
        return Ok(addr);
    }
    let endpoints = cfg.data_dir.join("run").join("endpoints.json");
    let text = std::fs::read_to_string(&endpoints).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "the config says port 0 and {} is missing: is `truc node --config {}` running?",
            endpoints.display(),
            config_path.display()
        ),
        // An edge's run/ is its user's only.
        _ => anyhow!(
            "the config says port 0 and {} cannot be read ({e}): run this as the node's user, or give the API a fixed port",
            endpoints.display()
        ),
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}", endpoints.display()))?;
    v[api.name()]
        .as_str()
        .ok_or_else(|| anyhow!("{} names no {} address", endpoints.display(), api.name()))?
        .parse()
        .with_context(|| format!("{}", endpoints.display()))
}

async fn channel(config_path: &Path, api: Api) -> Result<Channel> {
    let addr = api_addr(config_path, api)?;
    Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach the {} API at {addr}: is `truc node --config {}` running?",
                api.name(),
                config_path.display()
            )
        })
}

/// A client of an edge's gRPC agency API, its token on every call.
pub type AgencyApi = AgencyClient<InterceptedService<Channel, Bearer>>;

/// Puts `authorization: Bearer <token>` on every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// The token of the agency API of the node `config_path` describes, which
/// the node made at its first start (readable by the node's user only).
pub fn agency_token(config_path: &Path) -> Result<String> {
    token_of(&Config::load(config_path)?, config_path)
}

fn token_of(cfg: &Config, config_path: &Path) -> Result<String> {
    let path = truc_node::agency::token_path(&cfg.data_dir);
    truc_node::agency::read_token(&path).map_err(|e| {
        anyhow!(
            "cannot read the agency API's token ({e}): the node makes it at its start (`truc node --config {}`), readable by its user only",
            config_path.display()
        )
    })
}

/// An agency API client over `ch` that presents `token`.
pub fn agency_client(ch: Channel, token: &str) -> Result<AgencyApi> {
    let bearer = Bearer(
        format!("Bearer {token}")
            .parse()
            .context("the agency API's token is not text")?,
    );
    Ok(AgencyClient::with_interceptor(ch, bearer)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// The agency API of the node `config_path` describes, over the node's
/// Unix socket (never its TCP port: while the node is down, any user of the
/// machine may bind that port and would be handed the token).
pub async fn connect(config_path: &Path) -> Result<AgencyApi> {
    let cfg = Config::load(config_path)?;
    if cfg.agency_api.is_none() {
        return Err(no_api(config_path, &cfg, Api::Agency));
    }
    let token = token_of(&cfg, config_path)?;
    let path = truc_node::agency::socket_path(&cfg.data_dir);
    agency_at(&cfg.data_dir, &token).await.with_context(|| {
        if !path.exists() && cfg.data_dir.join("run").join("endpoints.json").exists() {
            format!(
                "the node of {} runs but serves no agency socket at {}: a node started by an older truc does not; restart it",
                config_path.display(),
                path.display()
            )
        } else {
            not_running("agency", &path, config_path)
        }
    })
}

/// The CLI could not reach a node's `api` socket: the node is not running.
fn not_running(api: &str, socket: &Path, config_path: &Path) -> String {
    format!(
        "cannot reach the {api} API at {}: is `truc node --config {}` running?",
        socket.display(),
        config_path.display()
    )
}

/// The agency API of the node whose data directory is `data_dir`, by its
/// socket, presenting `token`.
pub async fn agency_at(data_dir: &Path, token: &str) -> Result<AgencyApi> {
    let ch = socket_channel(
        &truc_node::agency::socket_path(data_dir),
        node_user(data_dir)?,
    )
    .await?;
    agency_client(ch, token)
}

/// The user a node's socket server must run as, for a client run by `euid`:
/// the client's own user (who may read the node's token is the node's
/// user); for root, the data directory's owner, or when that is root too (a
/// volume's root, or a node run by root) the owner of `run/`.
fn expected_node_user(euid: u32, data_dir_owner: u32, run_owner: u32) -> u32 {
    match (euid, data_dir_owner) {
        (0, 0) => run_owner,
        (0, owner) => owner,
        (me, _) => me,
    }
}

fn node_user(data_dir: &Path) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let owner = |p: &Path| -> Result<u32> {
        Ok(std::fs::metadata(p)
            .with_context(|| format!("{}", p.display()))?
            .uid())
    };
    Ok(expected_node_user(
        rustix::process::geteuid().as_raw(),
        owner(data_dir)?,
        owner(&data_dir.join("run"))?,
    ))
}

/// A channel to the gRPC server on the Unix socket at `path`, refused
/// before a byte is sent unless that server runs as user `uid` (one who
/// replaced the socket, in a directory others could write, is not handed
/// the token).
pub async fn socket_channel(path: &Path, uid: u32) -> Result<Channel> {
    let path = path.to_owned();
    // The connector dials the socket; the URI only names the HTTP/2 authority.
    // A node that accepts and then says nothing (stopped by a debugger, a
    // frozen host) is given up on rather than waited for without end.
    let ch = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let dial = truc_node::agency::socket_dial_path(&path)?;
                let stream = tokio::net::UnixStream::connect(&dial.path).await?;
                let peer = stream.peer_cred()?.uid();
                if peer != uid {
                    return Err(std::io::Error::other(format!(
                        "{} is served by uid {peer}, not the node's user (uid {uid}): not talking to it",
                        path.display()
                    )));
                }
                Ok(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(ch)
}

/// [`connect`] over the node's TCP port instead, for the benchmark, whose
/// load tool reaches truc and its peer alike over loopback TCP.
pub async fn connect_tcp(config_path: &Path) -> Result<AgencyApi> {
    let token = agency_token(config_path)?;
    agency_client(channel(config_path, Api::Agency).await?, &token)
}

/// The operator certificate and key the CLI presents to a node's operator
/// port: `TRUC_OPERATOR_CERT` and `TRUC_OPERATOR_KEY`, or
/// `operators/<TRUC_OPERATOR or admin>.crt|key` beside the config (as
/// `truc certs init` writes them).
pub fn operator_identity(config_path: &Path) -> Result<(PathBuf, PathBuf)> {
    if let (Ok(c), Ok(k)) = (
        std::env::var("TRUC_OPERATOR_CERT"),
        std::env::var("TRUC_OPERATOR_KEY"),
    ) {
        return Ok((c.into(), k.into()));
    }
    let name = std::env::var("TRUC_OPERATOR").unwrap_or_else(|_| "admin".into());
    let dir = config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("operators");
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    if !cert.exists() || !key.exists() {
        bail!(
            "no operator certificate: {} is missing; set TRUC_OPERATOR_CERT and TRUC_OPERATOR_KEY (or TRUC_OPERATOR=<name> for operators/<name>.crt)",
            cert.display()
        );
    }
    Ok((cert, key))
}

/// The admin API of a node. An operator certificate the environment names
/// (`TRUC_OPERATOR_CERT` and `TRUC_OPERATOR_KEY`, or `TRUC_OPERATOR`) is
/// presented on the operator port. Otherwise a caller who can reach the
/// node's admin socket (the node's user, or root; `run/` is theirs only)
/// uses it and is known by its uid, with no certificate. Otherwise
/// `operators/admin.crt` beside the config, on the operator port.
pub async fn admin(config_path: &Path) -> Result<AdminClient<Channel>> {
    let cfg = Config::load(config_path)?;
    let set = |v: &str| std::env::var_os(v).is_some_and(|v| !v.is_empty());
    let named = (set("TRUC_OPERATOR_CERT") && set("TRUC_OPERATOR_KEY")) || set("TRUC_OPERATOR");
    let socket = truc_node::admin::socket_path(&cfg.data_dir);
    if !named && cfg.admin_api.is_some() && socket.exists() {
        let ch = socket_channel(&socket, node_user(&cfg.data_dir)?)
            .await
            .with_context(|| not_running("admin", &socket, config_path))?;
        return Ok(AdminClient::new(ch));
    }
    let addr = api_addr(config_path, Api::Admin)?;
    let (cert, key) = operator_identity(config_path).map_err(|e| {
        // The node's user, whose `run/` holds no socket: the node is down.
        if !named && cfg.admin_api.is_some() && socket.parent().is_some_and(Path::is_dir) {
            anyhow!("{} ({e:#})", not_running("admin", &socket, config_path))
        } else {
            e
        }
    })?;
    let tls = truc_pki::tls::TransportMaterial::load(&cfg.tls.ca, &cert, &key, &cfg.tls.crls)
        .with_context(|| format!("operator certificate {}", cert.display()))?
        .client_config()?;
    let ch = truc_node::transport::tls_channel(
        &addr.to_string(),
        cfg.node_id.as_str(),
        tls,
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(30),
        1 << 20,
    )
    .map_err(|e| anyhow!("{e}"))?;
    Ok(AdminClient::new(ch))
}

/// Turns a gRPC status into a one-line error naming the code.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow!("{} ({:?})", s.message(), s.code())
}

/// What the edge found inside a document's PDFs (the legally binding
/// signatures), one line each on stderr: stdout stays for paths and data.
pub fn print_pdf_checks(checks: &[pb::PdfSignatureCheck]) {
    for c in checks {
        let mut line = if c.verdict == "unsigned" {
            format!("{}: no signature", c.attachment)
        } else {
            format!("{}: signature {}", c.attachment, c.verdict)
        };
        if !c.signer.is_empty() {
            line.push_str(&format!(", signed by {}", c.signer));
        }
        if c.signing_time_ms != 0 {
            line.push_str(&format!(" at {}", time(c.signing_time_ms)));
        }
        if !c.detail.is_empty() {
            line.push_str(&format!(" — {}", c.detail));
        }
        eprintln!("{line}");
        // Every signature when there are several, or when the one there is
        // was made by another agency than the sender (not an error: said so).
        if c.signatures.len() > 1 || c.signatures.iter().any(|s| s.other_agency) {
            for (i, s) in c.signatures.iter().enumerate() {
                eprintln!("  {}", pdf_signature_line(i + 1, c.signatures.len(), s));
            }
        }
    }
}

/// One signature of a PDF, for people: `signature 2 of 3: valid, signed by
/// … (agency …) at …, over an earlier revision — why`.
pub fn pdf_signature_line(n: usize, of: usize, s: &pb::PdfSignature) -> String {
    let mut line = format!("signature {n} of {of}: {}", s.verdict);
    if !s.signer.is_empty() {
        line.push_str(&format!(", signed by {}", s.signer));
    }
    if !s.signer_organ.is_empty() {
        line.push_str(&format!(" (agency {})", s.signer_organ));
    }
    if s.signing_time_ms != 0 {
        line.push_str(&format!(" at {}", time(s.signing_time_ms)));
    }
    if s.verdict == "valid" {
        line.push_str(if s.covers_whole_file {
            ", over the whole file"
        } else {
            ", over an earlier revision"
        });
    }
    if s.other_agency {
        line.push_str(", signed by another agency than the sender");
    }
    if !s.detail.is_empty() {
        line.push_str(&format!(" — {}", s.detail));
    }
    line
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

/// Attachments up to this size travel inside the send request; larger ones are
/// uploaded first, in resumable chunks, with a progress bar.
const INLINE_MAX: u64 = 256 << 10;
const UPLOAD_CHUNK: usize = 1 << 20;

fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

fn retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::FailedPrecondition
            // The edge still receiving the cut stream: it lets go shortly.
            | tonic::Code::Aborted
            | tonic::Code::Internal
            | tonic::Code::DeadlineExceeded
    )
}

/// Uploads one file to the edge; resumes from the edge's durable offset after a cut.
pub(crate) async fn upload_file(
    client: &mut AgencyApi,
    path: &Path,
    name: &str,
) -> Result<pb::Attachment> {
    // Hashed first and announced: the edge refuses bytes that are not these
    // (a file saved again during the upload, or between two resumes).
    let (expected, size) = tokio::task::spawn_blocking({
        let path = path.to_owned();
        move || sha256_file(&path)
    })
    .await??;
    let id = uuid::Uuid::now_v7().to_string();
    let bar = progress(size, name);
    let mut attempt = 0u32;
    loop {
        let st = client
            .upload_status(pb::UploadStatusRequest {
                upload_id: id.clone(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        if !st.sha256.is_empty() {
            bar.finish();
            return Ok(pb::Attachment {
                name: name.to_owned(),
                content_type: guess_content_type(path).into(),
                sha256: st.sha256,
                size,
                data: Vec::new(),
            });
        }
        bar.set_position(st.offset);
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadChunk>(4);
        let file_path = path.to_owned();
        let (uid, b) = (id.clone(), bar.clone());
        let mut offset = st.offset;
        let mut announce = Some(expected.clone());
        let mut reader = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let mut f = tokio::fs::File::open(&file_path).await?;
            f.seek(std::io::SeekFrom::Start(offset)).await?;
            loop {
                let len = ((size - offset) as usize).min(UPLOAD_CHUNK);
                let mut data = vec![0u8; len];
                f.read_exact(&mut data).await?;
                let chunk = pb::UploadChunk {
                    upload_id: uid.clone(),
                    size,
                    offset,
                    data,
                    sha256: announce.take().unwrap_or_default(),
                };
                if tx.send(chunk).await.is_err() {
                    break;
                }
                offset += len as u64;
                b.set_position(offset);
                if offset >= size {
                    break;
                }
            }
            Ok::<_, std::io::Error>(())
        });
        let result = client
            .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        // What stopped the file's reading is the cause, not the cut stream.
        if result.is_err()
            && reader.is_finished()
            && let Ok(Err(e)) = (&mut reader).await
        {
            bar.abandon();
            return Err(anyhow!("read attachment {}: {e}", path.display()));
        }
        reader.abort();
        match result {
            Ok(r) => {
                bar.finish();
                let r = r.into_inner();
                if r.sha256 != expected {
                    bail!(
                        "{name}: the edge stored other bytes than {} holds (the file changed?)",
                        path.display()
                    );
                }
                return Ok(pb::Attachment {
                    name: name.to_owned(),
                    content_type: guess_content_type(path).into(),
                    sha256: r.sha256,
                    size: r.size,
                    data: Vec::new(),
                });
            }
            Err(s)
                if s.code() == tonic::Code::InvalidArgument && s.message().contains("sha-256") =>
            {
                bar.abandon();
                bail!(
                    "{name}: the edge received other bytes than {} held when it was read (the file changed during the upload?): {}",
                    path.display(),
                    s.message()
                );
            }
            Err(s) if retryable(&s) && attempt < 10 => {
                attempt += 1;
                bar.println(format!(
                    "upload of {name} interrupted ({}); resuming",
                    s.message()
                ));
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)))
                    .await;
            }
            Err(s) => {
                bar.abandon();
                return Err(status_error(s));
            }
        }
    }
}

/// Small files inline, large ones uploaded first.
async fn prepare_attachments(
    client: &mut AgencyApi,
    paths: &[PathBuf],
) -> Result<Vec<pb::Attachment>> {
    let mut out = Vec::new();
    for path in paths {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{} has no usable file name", path.display()))?
            .to_owned();
        let size = std::fs::metadata(path)
            .with_context(|| format!("read attachment {}", path.display()))?
            .len();
        if size > INLINE_MAX {
            out.push(upload_file(client, path, &name).await?);
        } else {
            out.extend(attachments(std::slice::from_ref(path))?);
        }
    }
    Ok(out)
}

fn attachments(paths: &[PathBuf]) -> Result<Vec<pb::Attachment>> {
    let mut out = Vec::new();
    for path in paths {
        let data =
            std::fs::read(path).with_context(|| format!("read attachment {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{} has no usable file name", path.display()))?
            .to_owned();
        out.push(pb::Attachment {
            name,
            content_type: guess_content_type(path).into(),
            data,
            ..Default::default()
        });
    }
    Ok(out)
}

fn split_code(code: &Option<String>) -> (String, String) {
    match code {
        Some(c) => match c.split_once('/') {
            Some((n, s)) => (n.to_owned(), s.to_owned()),
            None => (c.clone(), String::new()),
        },
        None => (String::new(), String::new()),
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
    let (code_number, code_notation) = split_code(&a.code);
    let mut client = connect(config).await?;
    let attachments = prepare_attachments(&mut client, &a.attach).await?;
    let resp = client
        .send(pb::SendRequest {
            from: a.from,
            to: a.to,
            subject: a.subject,
            code_number,
            code_notation,
            priority: a.priority,
            attachments,
            doc_id: a.doc_id.unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if resp.duplicate {
        eprintln!("already sent earlier: nothing new was queued");
    }
    Ok(resp.doc_id)
}

/// What a revoke, update or replace changes.
pub struct ChangeArgs {
    pub business: pb::BusinessType,
    pub target: String,
    /// The target's sender, when several agencies here used its doc_id.
    pub from: Option<String>,
    pub reason: String,
    pub to: Vec<String>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
    pub subject: Option<String>,
    pub code: Option<String>,
    pub attach: Vec<PathBuf>,
}

/// Sends a revoke, update or replace of a document this edge sent; prints its id.
pub async fn change(config: &Path, a: ChangeArgs) -> Result<String> {
    let mut client = connect(config).await?;
    let target = client
        .get_status(pb::GetStatusRequest {
            doc_id: a.target.clone(),
            from: a.from.clone().unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let verb = match a.business {
        pb::BusinessType::Revoke => "Thu hồi",
        pb::BusinessType::Update => "Cập nhật",
        pb::BusinessType::Replace => "Thay thế",
        pb::BusinessType::New => "",
    };
    let (code_number, code_notation) = split_code(&a.code);
    let mut changes: Vec<pb::RecipientChange> = a
        .add
        .iter()
        .map(|o| pb::RecipientChange {
            organ: o.clone(),
            added: true,
        })
        .collect();
    changes.extend(a.remove.iter().map(|o| pb::RecipientChange {
        organ: o.clone(),
        added: false,
    }));
    let attachments = prepare_attachments(&mut client, &a.attach).await?;
    let resp = client
        .send(pb::SendRequest {
            from: target.from.clone(),
            to: a.to,
            subject: a
                .subject
                .unwrap_or_else(|| format!("{verb}: {}", target.subject)),
            code_number,
            code_notation,
            priority: target.priority,
            attachments,
            business_type: a.business as i32,
            target_doc_id: a.target,
            reason: a.reason,
            recipient_changes: changes,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if resp.duplicate {
        eprintln!("this was already sent: nothing new was queued");
    }
    Ok(resp.doc_id)
}

pub async fn reply(config: &Path, r: pb::ReplyRequest) -> Result<String> {
    let mut client = connect(config).await?;
    let resp = client.reply(r).await.map_err(status_error)?.into_inner();
    Ok(resp.doc_id)
}

use truc_node::json::business_name;

pub async fn inbox(config: &Path, organ: &str, all: bool, kind: &str, json: bool) -> Result<()> {
    let mut client = connect(config).await?;
    let page = client
        .list_inbox(pb::ListInboxRequest {
            organ: organ.into(),
            include_acked: all,
            limit: 0,
            kind: kind.into(),
            after: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if page.next_after != 0 {
        eprintln!(
            "the first {} shown (limits.max_list); the REST API lists the rest page by page (GET /v1/inbox?…&after={})",
            page.items.len(),
            page.next_after
        );
    }
    let items = page.items;
    if json {
        let v: Vec<_> = items
            .iter()
            .map(|i| {
                // The REST shape, plus the time as people read it.
                let mut v = truc_node::json::inbox_item(i);
                v["received"] = time(i.received_at_ms).into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if items.is_empty() {
        println!(
            "nothing {}for {organ}",
            if all { "" } else { "unacknowledged " }
        );
        return Ok(());
    }
    let mut t = table();
    t.set_header(vec![
        "doc_id",
        "kind",
        "from",
        "subject",
        "received (UTC+7)",
        "files",
        "state",
    ]);
    for i in &items {
        let kind = if i.kind == "status" {
            format!("status {}", i.status_code)
        } else if i.business_type != 0 {
            business_name(i.business_type).to_owned()
        } else {
            "document".to_owned()
        };
        let subject = if i.kind == "status" {
            format!(
                "about {}{}",
                i.for_doc_id,
                if i.note.is_empty() {
                    String::new()
                } else {
                    format!(": {}", i.note)
                }
            )
        } else if !i.target_doc_id.is_empty() {
            format!("{} (of {})", i.subject, i.target_doc_id)
        } else {
            i.subject.clone()
        };
        let mut state = vec![if i.acked { "acked" } else { "new" }.to_owned()];
        if !i.replied.is_empty() {
            state.push(format!("replied {}", i.replied));
        }
        if i.recalled {
            state.push("recalled".into());
        }
        if !i.pdf_signatures.is_empty() {
            state.push(format!("PDF {}", i.pdf_signatures));
        }
        t.add_row(vec![
            i.doc_id.clone(),
            kind,
            i.from.clone(),
            subject,
            time(i.received_at_ms),
            i.attachments.to_string(),
            state.join(", "),
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
            from: from.clone().unwrap_or_default(),
            without_data: true,
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
        "business_type": business_name(doc.business_type),
        "target_doc_id": doc.target_doc_id,
        "kind": doc.kind,
        "status": doc.status.as_ref().map(|s| serde_json::json!({
            "code": s.code, "for_from": s.for_from, "for_doc_id": s.for_doc_id, "note": s.note, "staff": s.staff,
        })),
        "attachments": doc.attachments.iter().map(|a| serde_json::json!({
            "name": a.name, "content_type": a.content_type, "size": a.size, "sha256": hex_of(&a.sha256),
        })).collect::<Vec<_>>(),
        "pdf_signatures": truc_node::json::pdf_checks(&doc.pdf_signatures),
    });
    print_pdf_checks(&doc.pdf_signatures);
    std::fs::write(
        dir.join("document.json"),
        serde_json::to_string_pretty(&meta)?,
    )?;
    let files = file_names(&doc.attachments);
    for (i, (a, file)) in doc.attachments.iter().zip(&files).enumerate() {
        // Names were checked by every hop; check again before touching the disk.
        truc_core::check_attachment_path(&a.name).map_err(|e| anyhow!(e))?;
        if file != &a.name {
            println!(
                "  {}: saved as {file} (another attachment has its name, or it held characters that display it as another)",
                a.name
            );
        }
        download(
            &mut client,
            &doc.doc_id,
            from.as_deref(),
            i as u32,
            a,
            &dir.join("attachments"),
            file,
        )
        .await?;
    }
    Ok(dir)
}

/// Where partly downloaded attachments wait, beside the finished ones.
const PART_DIR: &str = ".part";

/// A file name in one directory for each attachment: its own name, unless an
/// earlier attachment has it (names need not be unique), then "QD (2).pdf";
/// compared without case, as some file systems do.
pub(crate) fn file_names(attachments: &[pb::AttachmentRef]) -> Vec<String> {
    let mut taken = std::collections::HashSet::from([PART_DIR.to_owned()]);
    attachments
        .iter()
        .map(|a| {
            // A name from before nodes refused bidirectional overrides is
            // saved without them, so that it does not display as another.
            let plain = truc_core::plain_file_name(&a.name);
            let (stem, ext) = match plain.rfind('.') {
                Some(i) if i > 0 => plain.split_at(i),
                _ => (plain.as_str(), ""),
            };
            let mut name = plain.clone();
            let mut k = 2;
            while !taken.insert(name.to_lowercase()) {
                name = format!("{stem} ({k}){ext}");
                k += 1;
            }
            name
        })
        .collect()
}

/// SHA-256 and length of a file, read in 1 MiB pieces.
pub(crate) fn sha256_file(path: &Path) -> Result<(Vec<u8>, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("read {}", path.display()))?;
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finish().as_ref().to_vec(), n))
}

/// Streams one attachment to `dir/<file>` through `dir/.part/<file>` (resumed
/// if it is there), checks its SHA-256 against the signed manifest, then
/// renames it.
pub(crate) async fn download(
    client: &mut AgencyApi,
    doc_id: &str,
    from: Option<&str>,
    index: u32,
    a: &pb::AttachmentRef,
    dir: &Path,
    file: &str,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let dest = dir.join(file);
    let parts = dir.join(PART_DIR);
    std::fs::create_dir_all(&parts).with_context(|| format!("create {}", parts.display()))?;
    let part = parts.join(file);
    let mut offset = std::fs::metadata(&part)
        .map(|m| m.len())
        .unwrap_or(0)
        .min(a.size);
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .await
        .with_context(|| format!("open {}", part.display()))?;
    f.set_len(offset).await?;
    let bar = progress(a.size, &a.name);
    bar.set_position(offset);
    let mut stream = client
        .get_attachment(pb::GetAttachmentRequest {
            doc_id: doc_id.into(),
            from: from.unwrap_or_default().into(),
            index,
            offset,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        if chunk.offset != offset {
            bail!(
                "{}: the edge sent bytes at {} while {offset} were expected",
                a.name,
                chunk.offset
            );
        }
        f.write_all(&chunk.data).await?;
        offset += chunk.data.len() as u64;
        bar.set_position(offset);
    }
    f.sync_all().await?;
    drop(f);
    if offset != a.size {
        bail!(
            "{}: the stream ended at {offset} of {} bytes; run the command again to resume",
            a.name,
            a.size
        );
    }
    let actual = tokio::task::spawn_blocking({
        let part = part.clone();
        move || sha256_file(&part).map(|(h, _)| h)
    })
    .await??;
    if actual != a.sha256 {
        let _ = std::fs::remove_file(&part);
        bail!(
            "{}: the bytes do not match the signed sha-256; removed",
            a.name
        );
    }
    std::fs::rename(&part, &dest).with_context(|| format!("rename to {}", dest.display()))?;
    // Empty once every attachment is in place.
    let _ = std::fs::remove_dir(&parts);
    bar.finish();
    Ok(())
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

pub use truc_node::json::state_name;

pub fn status_label(code: &str) -> String {
    match code.parse::<truc_core::StatusCode>() {
        Ok(c) => format!("{code} {}", c.meaning()),
        Err(_) => code.to_owned(),
    }
}

fn recipients_table(s: &pb::GetStatusResponse) -> Table {
    let mut t = table();
    t.set_header(vec![
        "recipient",
        "state",
        "accepted",
        "delivered",
        "acked",
        "business status",
        "detail",
    ]);
    for r in &s.recipients {
        t.add_row(vec![
            r.organ.clone(),
            state_name(r.state).into(),
            time(r.accepted_at_ms),
            time(r.delivered_at_ms),
            time(r.acked_at_ms),
            if r.last_status.is_empty() {
                "-".into()
            } else {
                format!(
                    "{} at {}",
                    status_label(&r.last_status),
                    time(r.last_status_at_ms)
                )
            },
            [r.detail.as_str(), r.status_note.as_str()]
                .iter()
                .filter(|x| !x.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        ]);
    }
    t
}

pub async fn status(config: &Path, doc_id: &str, from: Option<&str>, json: bool) -> Result<()> {
    let mut client = connect(config).await?;
    let s = client
        .get_status(pb::GetStatusRequest {
            doc_id: doc_id.into(),
            from: from.unwrap_or_default().into(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&truc_node::json::sent_document(&s))?
        );
        return Ok(());
    }
    let change = if s.business_type != 0 {
        format!(
            "  ({} of {})",
            business_name(s.business_type),
            s.target_doc_id
        )
    } else {
        String::new()
    };
    println!(
        "{}  {}  from {}  sent {}  deliver by {}{change}",
        s.doc_id,
        s.subject,
        s.from,
        time(s.created_at_ms),
        time(s.deadline_ms)
    );
    println!("{}", recipients_table(&s));
    if s.recipients
        .iter()
        .any(|r| r.state == pb::DeliveryState::Failed as i32)
    {
        bail!("delivery failed for at least one recipient");
    }
    Ok(())
}

/// The sent list of one agency (today's getSentEdocList).
pub async fn sent(config: &Path, from: &str, limit: u32, json: bool) -> Result<()> {
    let mut client = connect(config).await?;
    let page = client
        .list_sent(pb::ListSentRequest {
            from: from.into(),
            limit,
            after: String::new(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if !page.next_after.is_empty() {
        eprintln!(
            "the newest {} shown; the REST API lists older ones page by page (GET /v1/sent?…&after={})",
            page.documents.len(),
            page.next_after
        );
    }
    let docs = page.documents;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &docs
                    .iter()
                    .map(truc_node::json::sent_document)
                    .collect::<Vec<_>>()
            )?
        );
        return Ok(());
    }
    if docs.is_empty() {
        println!("{from} has sent nothing from this edge");
        return Ok(());
    }
    let mut t = table();
    t.set_header(vec![
        "doc_id",
        "sent (UTC+7)",
        "subject",
        "recipient",
        "state",
        "business status",
    ]);
    for d in &docs {
        for (i, r) in d.recipients.iter().enumerate() {
            t.add_row(vec![
                if i == 0 {
                    d.doc_id.clone()
                } else {
                    String::new()
                },
                if i == 0 {
                    time(d.created_at_ms)
                } else {
                    String::new()
                },
                if i == 0 {
                    d.subject.clone()
                } else {
                    String::new()
                },
                r.organ.clone(),
                state_name(r.state).into(),
                if r.last_status.is_empty() {
                    "-".into()
                } else {
                    status_label(&r.last_status)
                },
            ]);
        }
    }
    println!("{t}");
    Ok(())
}

/// Writes a sent document's envelope and every signed receipt into `out`.
pub async fn receipts(
    config: &Path,
    doc_id: &str,
    from: Option<&str>,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    let mut client = connect(config).await?;
    let r = client
        .get_receipts(pb::GetReceiptsRequest {
            doc_id: doc_id.into(),
            from: from.unwrap_or_default().into(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let mut written = Vec::new();
    if let Some(doc) = &r.document {
        let p = out.join("document.pb");
        std::fs::write(&p, prost::Message::encode_to_vec(doc))?;
        written.push(p);
    }
    for (i, rv) in r.receipts.iter().enumerate() {
        let kind = truc_node::envelope::receipt_type(rv.r#type)
            .map(|k| k.as_str())
            .unwrap_or("receipt");
        let p = out.join(format!("{:02}-{}-{kind}.pb", i + 1, rv.organ));
        if let Some(env) = &rv.envelope {
            std::fs::write(&p, prost::Message::encode_to_vec(env))?;
            written.push(p);
        }
    }
    Ok(written)
}

pub async fn requeue(config: &Path, held: &crate::cli::HeldArgs, json: bool) -> Result<()> {
    let doc_id = held.doc_id.as_deref();
    let r = admin(config)
        .await?
        .requeue(pb::RequeueRequest {
            doc_id: doc_id.unwrap_or_default().into(),
            all: held.all,
            queue: held.queue.clone().unwrap_or_default(),
            from: held.from.clone().unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let v = serde_json::json!({
            "requeued": r.requeued,
            "refused_total": r.refused_total,
            "refused": r.refused.iter().map(|f| serde_json::json!({"doc_id": f.doc_id, "from": f.from, "reason": f.reason})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_requeued(&r, doc_id);
    }
    // A node from before the total was sent: the list is all there is.
    let n = r.refused_total.max(r.refused.len() as u32);
    if n > 0 {
        let shown = if n as usize > r.refused.len() {
            format!(" (the first {} listed)", r.refused.len())
        } else {
            String::new()
        };
        bail!(
            "{n} held entr{} could not be requeued, in whole or in part{shown}; what could not go stays where it is",
            if n == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}

fn print_requeued(r: &pb::RequeueResponse, doc_id: Option<&str>) {
    let n = r.requeued;
    let entries = if n == 1 { "entry" } else { "entries" };
    match doc_id {
        Some(d) => println!("requeued {n} queue {entries} of {d}"),
        None => println!("requeued {n} queue {entries}"),
    }
    if !r.refused.is_empty() {
        let mut t = table();
        t.set_header(vec!["still held doc_id", "from", "why"]);
        for f in &r.refused {
            t.add_row(vec![f.doc_id.clone(), f.from.clone(), f.reason.clone()]);
        }
        println!("{t}");
    }
}

pub async fn discard(config: &Path, held: &crate::cli::HeldArgs, reason: &str) -> Result<u32> {
    Ok(admin(config)
        .await?
        .discard(pb::DiscardRequest {
            doc_id: held.doc_id.clone().unwrap_or_default(),
            from: held.from.clone().unwrap_or_default(),
            all: held.all,
            queue: held.queue.clone().unwrap_or_default(),
            reason: reason.into(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .discarded)
}

pub async fn trace(config: &Path, doc_id: &str, from: Option<&str>, json: bool) -> Result<()> {
    let cfg = Config::load(config)?;
    let req = pb::TraceRequest {
        doc_id: doc_id.into(),
        from: from.unwrap_or_default().into(),
    };
    let steps = if cfg.agency_api.is_some() {
        connect(config)
            .await?
            .trace(req)
            .await
            .map_err(status_error)?
            .into_inner()
            .steps
    } else {
        admin(config)
            .await?
            .trace(req)
            .await
            .map_err(status_error)?
            .into_inner()
            .steps
    };
    if json {
        let v: Vec<_> = steps
            .iter()
            .map(|s| serde_json::json!({"at_ms": s.at_ms, "node": s.node, "step": s.step, "detail": s.detail}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if steps.is_empty() {
        bail!("nothing is known of {doc_id} here");
    }
    let t0 = steps.first().map(|s| s.at_ms).unwrap_or(0);
    let mut t = table();
    t.set_header(vec!["time (UTC+7)", "+ms", "where", "step", "detail"]);
    for s in &steps {
        t.add_row(vec![
            time(s.at_ms),
            format!("{}", s.at_ms - t0),
            s.node.clone(),
            s.step.clone(),
            s.detail.clone(),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub async fn queues(config: &Path, json: bool) -> Result<()> {
    let r = admin(config)
        .await?
        .queues(pb::QueuesRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let v = serde_json::json!({
            "recipients": r.recipients.iter().map(|q| serde_json::json!({"recipient": q.recipient, "depth": q.depth, "oldest_ms": q.oldest_ms})).collect::<Vec<_>>(),
            "queues": r.queues.iter().map(|q| serde_json::json!({"queue": q.queue, "depth": q.depth, "oldest_ms": q.oldest_ms})).collect::<Vec<_>>(),
            "overdue": r.overdue.iter().map(|o| serde_json::json!({"doc_id": o.doc_id, "from": o.from, "recipient": o.recipient, "priority": o.priority, "deadline_ms": o.deadline_ms, "parked": o.parked, "queue": o.queue})).collect::<Vec<_>>(),
            "overdue_total": r.overdue_total,
            "parked": r.parked.iter().map(|p| serde_json::json!({"queue": p.queue, "doc_id": p.doc_id, "from": p.from, "recipients": p.recipients, "reason": p.reason, "at_ms": p.at_ms})).collect::<Vec<_>>(),
            "dead": r.dead.iter().map(|p| serde_json::json!({"queue": p.queue, "doc_id": p.doc_id, "from": p.from, "recipients": p.recipients, "code": p.code, "reason": p.reason, "at_ms": p.at_ms})).collect::<Vec<_>>(),
            "dead_total": r.dead_total,
            "parked_total": r.parked_total,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let now = chrono::Utc::now().timestamp_millis();
    let mut t = table();
    t.set_header(vec!["recipient", "waiting", "oldest (UTC+7)", "age"]);
    for q in &r.recipients {
        t.add_row(vec![
            q.recipient.clone(),
            q.depth.to_string(),
            time(q.oldest_ms),
            age(q.oldest_ms, now),
        ]);
    }
    if r.recipients.is_empty() {
        t.add_row(vec!["(nothing waiting)", "", "", ""]);
    }
    println!("{t}");
    let mut t = table();
    t.set_header(vec!["link queue", "depth", "oldest (UTC+7)"]);
    for q in &r.queues {
        t.add_row(vec![
            q.queue.clone(),
            q.depth.to_string(),
            time(q.oldest_ms),
        ]);
    }
    if !r.queues.is_empty() {
        println!("{t}");
    }
    if !r.overdue.is_empty() {
        let mut t = table();
        t.set_header(vec![
            "overdue doc_id",
            "from",
            "recipient",
            "priority",
            "deadline (UTC+7)",
            "state",
        ]);
        for o in &r.overdue {
            t.add_row(vec![
                o.doc_id.clone(),
                o.from.clone(),
                o.recipient.clone(),
                o.priority.to_string(),
                time(o.deadline_ms),
                if o.parked {
                    format!("parked ({}): truc requeue", o.queue)
                } else {
                    format!("queued ({})", o.queue)
                },
            ]);
        }
        println!("{t}");
        if r.overdue_total > r.overdue.len() as u64 {
            println!(
                "{} overdue in all (per recipient); the {} with the earliest deadlines shown",
                r.overdue_total,
                r.overdue.len()
            );
        }
    }
    if !r.parked.is_empty() {
        println!(
            "{}",
            held_table("parked doc_id", "parked (UTC+7)", &r.parked)
        );
        let shown = first_shown(r.parked_total, r.parked.len());
        println!(
            "{} parked past their deadline{shown}, their senders told; once a recipient is back:",
            r.parked_total.max(r.parked.len() as u64)
        );
        let queues: std::collections::BTreeSet<&str> =
            r.parked.iter().map(|p| p.queue.as_str()).collect();
        for q in queues {
            println!(
                "  truc requeue --config {} --all --queue {q}",
                config.display()
            );
        }
    }
    if !r.dead.is_empty() {
        println!(
            "{}",
            held_table("dead letter doc_id", "refused (UTC+7)", &r.dead)
        );
        let shown = first_shown(r.dead_total, r.dead.len());
        println!(
            "{} transfer(s) refused for good{shown}; once the cause is fixed: truc requeue --config {} DOC_ID",
            r.dead_total,
            config.display()
        );
    }
    Ok(())
}

/// " (the first N shown: …)" when a list of held entries has more.
fn first_shown(total: u64, shown: usize) -> String {
    if total > shown as u64 {
        format!(" (the first {shown} shown: by queue, oldest first)")
    } else {
        String::new()
    }
}

/// Parked entries or dead letters as `truc queues` shows them; one whose
/// record cannot be read has no doc_id and says so in its reason.
fn held_table(first: &str, when: &str, held: &[pb::ParkedView]) -> Table {
    let mut t = table();
    t.set_header(vec![first, "from", "recipients", "queue", when, "why"]);
    for d in held {
        t.add_row(vec![
            if d.doc_id.is_empty() {
                "(unreadable)".to_owned()
            } else {
                d.doc_id.clone()
            },
            d.from.clone(),
            d.recipients.join(", "),
            d.queue.clone(),
            time(d.at_ms),
            if d.code.is_empty() {
                d.reason.clone()
            } else {
                format!("{}: {}", d.code, d.reason)
            },
        ]);
    }
    t
}

/// A duration since `ms` as people read it.
fn age(ms: i64, now: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let s = ((now - ms) / 1000).max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{:.1} h", s as f64 / 3600.0),
        _ => format!("{:.1} d", s as f64 / 86_400.0),
    }
}

pub async fn directory(config: &Path, organ: Option<&str>, json: bool) -> Result<()> {
    if Config::load(config)?.agency_api.is_none() {
        // Hubs and relays without agencies answer through their admin API.
        let r = admin(config)
            .await?
            .list_directory(pb::ListAgenciesRequest {
                prefix: organ.unwrap_or_default().into(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        return print_directory(r.version, &r.agencies, organ.is_none(), json);
    }
    let mut client = connect(config).await?;
    let (version, agencies) = match organ {
        Some(o) => (
            0,
            vec![
                client
                    .lookup_agency(pb::LookupAgencyRequest { organ: o.into() })
                    .await
                    .map_err(status_error)?
                    .into_inner(),
            ],
        ),
        None => {
            let r = client
                .list_agencies(pb::ListAgenciesRequest {
                    prefix: String::new(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            (r.version, r.agencies)
        }
    };
    print_directory(version, &agencies, organ.is_none(), json)
}

fn print_directory(
    version: u64,
    agencies: &[pb::AgencyEntry],
    all: bool,
    json: bool,
) -> Result<()> {
    if json {
        let v: Vec<_> = agencies
            .iter()
            .map(|a| serde_json::json!({"organ": a.organ, "name": a.name, "parent": a.parent, "node": a.node}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut t = table();
    t.set_header(vec!["organ", "name", "parent", "node"]);
    for a in agencies {
        t.add_row(vec![
            a.organ.clone(),
            a.name.clone(),
            a.parent.clone(),
            a.node.clone(),
        ]);
    }
    println!("{t}");
    if all {
        println!(
            "directory version {version:016x}, {} agencies",
            agencies.len()
        );
    }
    Ok(())
}

pub async fn change_directory(config: &Path, c: pb::DirectoryChange) -> Result<()> {
    let what = format!(
        "{} {}",
        if c.remove { "removed" } else { "registered" },
        c.organ
    );
    let r = admin(config)
        .await?
        .change_directory(c)
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{what}; directory version {:016x}; signed change {}",
        r.version, r.doc_id
    );
    Ok(())
}

pub async fn nodes(config: &Path, json: bool) -> Result<()> {
    let nodes = admin(config)
        .await?
        .nodes(pb::NodesRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .nodes;
    if json {
        let v: Vec<_> = nodes.iter().map(truc_node::json::node_view).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    // Depth in the tree, from the parent links.
    let parent_of: std::collections::HashMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.node.as_str(), n.parent.as_str()))
        .collect();
    let depth = |node: &str| -> usize {
        let mut d = 0;
        let mut cur = node.to_owned();
        while let Some(p) = parent_of.get(cur.as_str()).filter(|p| !p.is_empty()) {
            d += 1;
            cur = (*p).to_owned();
            if d > 16 {
                break;
            }
        }
        d
    };
    let now = chrono::Utc::now().timestamp_millis();
    let mut t = table();
    t.set_header(vec![
        "node",
        "role",
        "agencies",
        "link",
        "queued",
        "last seen (UTC+7)",
        "version",
        "certificate expires",
    ]);
    for n in &nodes {
        let cert = if n.cert_not_after_ms == 0 {
            "-".to_owned()
        } else {
            format!(
                "{} ({} days)",
                &time(n.cert_not_after_ms)[..10],
                (n.cert_not_after_ms - now) / 86_400_000
            )
        };
        let link = if n.down_since_ms > 0 && !n.link.starts_with("up") {
            format!("{} since {}", n.link, &time(n.down_since_ms)[11..])
        } else {
            n.link.clone()
        };
        t.add_row(vec![
            format!("{}{}", "  ".repeat(depth(&n.node)), n.node),
            n.role.clone(),
            n.agencies.join("\n"),
            link,
            n.queue_depth.to_string(),
            time(n.last_seen_ms),
            if n.version.is_empty() {
                "-".into()
            } else {
                n.version.clone()
            },
            cert,
        ]);
    }
    println!("{t}");
    Ok(())
}

pub async fn stats(config: &Path, json: bool) -> Result<()> {
    let r = admin(config)
        .await?
        .stats(pb::StatsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let counters: std::collections::BTreeMap<_, _> = r.counters.into_iter().collect();
    let lat = r.latency.unwrap_or_default();
    if json {
        let v = serde_json::json!({
            "counters": counters,
            "daily": r.daily.iter().map(|d| serde_json::json!({
                "day": d.day, "organ": d.organ, "direction": d.direction,
                "documents": d.documents, "bytes": d.bytes,
            })).collect::<Vec<_>>(),
            "latency": {"count": lat.count, "p50_s": lat.p50_s, "p90_s": lat.p90_s, "p99_s": lat.p99_s},
            "failures": {
                "refused": counters.get("refused").copied().unwrap_or(0),
                "dead_letters": r.dead_letters,
                "parked_now": r.parked,
                "edxml_refused": counters.get("edxml_refused").copied().unwrap_or(0),
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut t = table();
    t.set_header(vec![
        "day (UTC+7)",
        "agency",
        "direction",
        "documents",
        "bytes",
    ]);
    for d in &r.daily {
        t.add_row(vec![
            d.day.clone(),
            d.organ.clone(),
            if d.direction == "in" {
                "accepted from".into()
            } else {
                "delivered to".to_owned()
            },
            d.documents.to_string(),
            human_bytes(d.bytes),
        ]);
    }
    if r.daily.is_empty() {
        t.add_row(vec!["(no documents yet)", "", "", "", ""]);
    }
    println!("{t}");
    if lat.count > 0 {
        println!(
            "delivery latency (creation → delivered receipt, last {} documents sent from here): p50 {:.3} s · p90 {:.3} s · p99 {:.3} s",
            lat.count, lat.p50_s, lat.p90_s, lat.p99_s
        );
    }
    println!(
        "failures: {} refused · {} refused by a peer for good (dead letters) · {} parked after their deadline · {} edXML packages refused",
        counters.get("refused").copied().unwrap_or(0),
        r.dead_letters,
        r.parked,
        counters.get("edxml_refused").copied().unwrap_or(0),
    );
    let mut t = table();
    t.set_header(vec!["counter (since start)", "value"]);
    for (k, v) in counters {
        t.add_row(vec![k, v.to_string()]);
    }
    println!("{t}");
    Ok(())
}

/// Bytes as people read them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket's server must run as the node's user: the client's own, or
    /// for root the data directory's owner (never root just for being root).
    #[test]
    fn the_socket_server_must_be_the_nodes_user() {
        assert_eq!(expected_node_user(1000, 1000, 1000), 1000);
        assert_eq!(expected_node_user(1000, 0, 2000), 1000);
        assert_eq!(expected_node_user(0, 999, 999), 999);
        assert_eq!(expected_node_user(0, 0, 65532), 65532, "a volume's root");
    }

    /// A socket served by another user than the node's is refused before
    /// the token is sent: the channel does not open.
    #[tokio::test]
    async fn a_socket_served_by_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agency.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let me = rustix::process::geteuid().as_raw();
        let e = socket_channel(&path, me.wrapping_add(1)).await.unwrap_err();
        assert!(format!("{e:?}").contains("not the node's user"), "{e:?}");
    }

    /// Attachments with one name are saved side by side, not over each
    /// other, and none takes the place of the partial downloads.
    #[test]
    fn attachments_sharing_a_name_get_a_file_each() {
        let a = |name: &str| pb::AttachmentRef {
            name: name.into(),
            ..Default::default()
        };
        let names = file_names(&[
            a("QD.pdf"),
            a("qd.PDF"),
            a("QD.pdf"),
            a(".part"),
            a("README"),
        ]);
        assert_eq!(
            names,
            ["QD.pdf", "qd (2).PDF", "QD (3).pdf", ".part (2)", "README"]
        );
    }

    /// A name that displays as another (sent before nodes refused them) is
    /// saved without its bidirectional overrides.
    #[test]
    fn a_disguised_name_is_saved_plain() {
        let a = pb::AttachmentRef {
            name: "hop-dong\u{202E}fdp.exe".into(),
            ..Default::default()
        };
        assert_eq!(file_names(&[a]), ["hop-dong_fdp.exe"]);
    }
}
