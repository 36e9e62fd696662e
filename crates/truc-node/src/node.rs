//! Starting and stopping a node: open the store, bind listeners, run the link
//! server (hub, relay), the parent dialer (edge, relay) and the agency API (edge).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use truc_core::RoutingTable;
use truc_pki::{
    identity::Identity,
    sign::{SignatureVerifier, Signer},
    tls::TransportMaterial,
};
use truc_proto::v1 as pb;
use truc_store::BlobStore;

use crate::{
    admin::AdminService,
    agency::AgencyService,
    config::Config,
    directory::Directory,
    envelope::Verifiers,
    error::NodeError,
    link::{LinkParams, LinkService, dial_parent},
    state::{NodeState, Parts},
    transport::tls_incoming,
};

/// Listeners bound by the caller (tests, the demo); unset ones are bound from config.
#[derive(Debug, Default)]
pub struct Listeners {
    pub link: Option<TcpListener>,
    pub agency: Option<TcpListener>,
    pub admin: Option<TcpListener>,
    pub rest: Option<TcpListener>,
}

/// A node that is running.
pub struct RunningNode {
    pub config: Config,
    pub state: Arc<NodeState>,
    pub link_addr: Option<SocketAddr>,
    pub agency_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub rest_addr: Option<SocketAddr>,
    pub health_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    parent_up: watch::Receiver<bool>,
    failed: watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("node", &self.state.node_id)
            .field("link_addr", &self.link_addr)
            .field("agency_addr", &self.agency_addr)
            .finish_non_exhaustive()
    }
}

/// The names health reports on: the server as a whole and each truc service.
const HEALTH_SERVICES: [&str; 4] = ["", "truc.v1.Link", "truc.v1.Agency", "truc.v1.Admin"];

/// The health name for liveness probes: SERVING while the process is up,
/// opening its store or standing by included, and NOT_SERVING only when a
/// restart is what the node needs (a failed flush). A node short of disk
/// space, hanging on its disk or standing by is not made better by a
/// restart: it is NOT_SERVING on the other names (readiness) only.
pub const LIVE: &str = "truc.live";

/// Sets every name health reports on.
async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    for name in HEALTH_SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Health from whether the store takes writes, set and logged when that
/// changes: SERVING or NOT_SERVING, and a new reason while NOT_SERVING (the
/// seconds a hang has lasted aside). `last` is the previous check's reason.
async fn check_health(
    st: &Arc<NodeState>,
    reporter: &tonic_health::server::HealthReporter,
    last: &mut Option<Option<crate::state::Unwritable>>,
) {
    let st = st.clone();
    let why = tokio::task::spawn_blocking(move || st.unwritable())
        .await
        .unwrap_or_else(|e| Some(crate::state::Unwritable::Unchecked(e.to_string())));
    // Told once per reason, not again as a hang's seconds go up.
    let same = match (last.as_ref(), &why) {
        (Some(None), None) => true,
        (Some(Some(a)), Some(b)) => a.same_kind(b),
        _ => false,
    };
    if same {
        return;
    }
    match &why {
        None => {
            if last.is_some() {
                tracing::info!("store writable again: health SERVING");
            }
            set_health(reporter, tonic_health::ServingStatus::Serving).await;
        }
        Some(why) => {
            tracing::error!(reason = %why, "store not writable: health NOT_SERVING");
            set_health(reporter, tonic_health::ServingStatus::NotServing).await;
        }
    }
    let live = match &why {
        Some(crate::state::Unwritable::FlushFailed) => tonic_health::ServingStatus::NotServing,
        _ => tonic_health::ServingStatus::Serving,
    };
    reporter.set_service_status(LIVE, live).await;
    *last = Some(why);
}

/// How often the dashboard's throughput is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How often the audit chain is re-verified in the background.
const AUDIT_EVERY: Duration = Duration::from_secs(300);

/// gRPC server reflection for every truc service and health.
fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    NodeError,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(truc_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Other(format!("reflection: {e}")))
}

/// Opens the store and loads every key, certificate and revocation list the
/// config names.
pub fn open_state(config: &Config) -> Result<Arc<NodeState>, NodeError> {
    let tls_crls =
        load_crl_files(&config.tls.crls).map_err(|e| NodeError::Other(format!("tls.crls: {e}")))?;
    open_state_with(config, &tls_crls)
}

/// [`open_state`] with the transport's revocation lists already read (by
/// [`RunningNode::start_with`], which built its TLS configurations from them).
fn open_state_with(config: &Config, tls_crls: &CrlFiles) -> Result<Arc<NodeState>, NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(NodeError::io(format!(
        "data_dir {}",
        config.data_dir.display()
    )))?;
    let store: Arc<dyn truc_store::Store> = match &config.storage.postgres_url {
        Some(url) => Arc::new(truc_store::PgStore::open(
            url,
            config.storage.cache(),
            || {
                tracing::warn!(
                    "another process writes this PostgreSQL store: standing by (health NOT_SERVING) until it stops"
                );
            },
        )?),
        None => truc_store::embedded::open(
            &config.data_dir,
            config.storage.engine,
            config.storage.cache(),
        )?,
    };
    let blobs = BlobStore::open(&config.blob_dir())?;
    let mut routing = RoutingTable::new(config.parent.is_some());
    let mut signers = Vec::new();
    for (organ, _name, cert, key) in &config.agencies {
        routing.add_local(organ.clone());
        signers.push(Signer::load(organ, cert, key)?);
    }
    for (child, organs) in &config.children {
        routing.add_child(child.clone());
        for o in organs {
            routing.add_child_organ(o.clone(), child.clone());
        }
    }
    // Hubs and relays sign their own receipts with their node key; they hold no
    // agency key (invariant 6).
    // Every node signs the audit checkpoints of its archival packages with
    // that key too; loaded once.
    let node_key = Signer::load_for(
        &Identity::Node(config.node_id.clone()),
        &config.tls.cert,
        &config.tls.key,
    )?;
    let (node_signer, checkpoint_signer) = if config.listen.is_some() {
        (Some(node_key), None)
    } else {
        (None, Some(node_key))
    };
    // Edges check the signatures inside the PDFs their agencies receive.
    let pdf = if config.pdf.check && !config.agencies.is_empty() {
        let mut cas = Vec::new();
        for p in &config.pdf.trust_anchors {
            cas.extend(truc_pki::load_certs(p)?.iter().map(|c| c.to_vec()));
        }
        let anchors = truc_pdfsig::TrustAnchors::from_der(&cas)
            .map_err(|e| NodeError::Other(format!("pdf.trust_anchors: {e}")))?;
        Some(crate::state::PdfCheck {
            anchors,
            max_bytes: config.pdf.max_bytes,
        })
    } else {
        None
    };
    let verifiers = Verifiers {
        agencies: SignatureVerifier::from_file(&config.signing_ca)?,
        nodes: SignatureVerifier::from_file(&config.tls.ca)?,
    };
    let signing_crls = load_crl_files(&config.signing_crls)
        .map_err(|e| NodeError::Other(format!("signing.crls: {e}")))?;
    let signing_lists = all_crls(&signing_crls);
    verifiers
        .agencies
        .set_crls(&signing_lists)
        .map_err(|e| NodeError::Other(format!("signing.crls: {e}")))?;
    // The signatures inside PDFs answer to the agencies' lists too.
    if let Some(p) = &pdf {
        p.anchors
            .set_crls(&signing_lists)
            .map_err(|e| NodeError::Other(format!("signing.crls: {e}")))?;
    }
    verifiers
        .nodes
        .set_crls(&all_crls(tls_crls))
        .map_err(|e| NodeError::Other(format!("tls.crls: {e}")))?;
    crate::state::set_clock_offset_ms(config.test_hooks.clock_offset_ms);
    if !config.test_hooks.is_off() {
        tracing::warn!(hooks = ?config.test_hooks, "test hooks are on: this node misbehaves on purpose");
    }
    let state = NodeState::new(Parts {
        node_id: config.node_id.clone(),
        routing,
        signers,
        node_signer,
        checkpoint_signer,
        pdf,
        verifiers,
        limits: config.limits.clone(),
        delivery: config.delivery.clone(),
        quotas: config.quotas.clone(),
        hooks: config.test_hooks.clone(),
        store,
        blobs,
        directory: Directory::from_config(config),
        storage: config.storage.clone(),
        grant: config.grant.clone(),
        child_grants: config.child_grants.clone().into_iter().collect(),
        parent: config.parent.as_ref().map(|(_, p)| p.clone()),
    })?;
    note_crl_dates(&state, "tls", tls_crls);
    note_crl_dates(&state, "signing", &signing_crls);
    Ok(state)
}

fn params(config: &Config) -> LinkParams {
    let l = &config.link;
    LinkParams {
        window: l.window,
        heartbeat_interval: Config::ms(l.heartbeat_interval_ms),
        heartbeat_timeout: Config::ms(l.heartbeat_timeout_ms),
        handshake_timeout: Config::ms(l.handshake_timeout_ms),
        connect_timeout: Config::ms(l.connect_timeout_ms),
        reconnect_min: Config::ms(l.reconnect_min_ms),
        reconnect_max: Config::ms(l.reconnect_max_ms),
        max_message_bytes: config.limits.max_message_bytes,
        max_inflight_bytes: l.max_inflight_bytes,
        inline_attachment_bytes: l.inline_attachment_bytes,
        chunk_bytes: l.chunk_bytes,
        stream_window_bytes: l.stream_window_bytes,
    }
}

/// Serves a plaintext gRPC router on `listener` until the node stops.
fn serve_plain(
    tasks: &mut JoinSet<()>,
    router: tonic::transport::server::Router,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    span: tracing::Span,
    what: &'static str,
) {
    serve_incoming(tasks, router, plain_incoming(listener), stop, span, what);
}

/// Serves `router` on the connections `incoming` yields until the node stops.
fn serve_incoming<IO>(
    tasks: &mut JoinSet<()>,
    router: tonic::transport::server::Router,
    incoming: impl futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
    mut stop: watch::Receiver<bool>,
    span: tracing::Span,
    what: &'static str,
) where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    tasks.spawn(tracing::Instrument::instrument(
        async move {
            let shutdown = async move {
                let _ = crate::stopped(&mut stop).await;
            };
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::error!(error = %e, "{what} failed");
            }
        },
        span,
    ));
}

/// Binds the Unix socket of the node's agency or admin API (`what`) at
/// `path`, of mode 600 in the node's `run/`, which
/// [`crate::agency::prepare_run_dir`] made mode 700: only the node's user
/// may connect. (A TCP port on loopback, once free while the
/// node is down, is any user's to bind.) What keeps the token from a socket
/// someone else put there (a data directory others may write, as
/// Kubernetes' fsGroup makes a volume at each mount, lets them replace
/// `run/` itself) is the client's check that the socket's server runs as
/// the node's user (`truc::client::socket_channel`). A socket left by a
/// node that did not stop cleanly is replaced: the embedded store's lock,
/// taken before, says no other node runs on this data_dir (hubs on one
/// PostgreSQL store each have a data_dir of their own). The node removes it
/// when it stops.
fn bind_socket(path: &std::path::Path, what: &str) -> Result<tokio::net::UnixListener, NodeError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(NodeError::io(format!("removing the stale socket {shown}")))?,
        Ok(_) => {
            return Err(NodeError::Other(format!(
                "{shown} is in the way of the {what}'s socket: it is not a socket; move it away"
            )));
        }
        Err(_) => {}
    }
    let what = format!("binding the {what}'s socket {shown}");
    let listener = crate::agency::socket_dial_path(path)
        .and_then(|dial| tokio::net::UnixListener::bind(&dial.path))
        .map_err(NodeError::io(what))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
        NodeError::io(format!("making {shown} the node user's only")),
    )?;
    Ok(listener)
}

/// The connections of a plaintext listener, each with `TCP_NODELAY`: small
/// answers (a Send's reply, an event) go out at once. With Nagle's algorithm
/// one written behind an unacknowledged segment (an HTTP/2 keepalive ping,
/// every heartbeat interval) waited for the client's delayed ACK, 40 ms on
/// Linux: the p99 of `truc bench steady`. tonic sets it only on listeners it
/// binds itself; the TLS listeners set it in `transport`.
fn plain_incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |r| {
        r.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    })
}

/// The REST listener, its connections with `TCP_NODELAY` as [`plain_incoming`]'s.
fn rest_listener(
    listener: TcpListener,
) -> axum::serve::TapIo<TcpListener, fn(&mut tokio::net::TcpStream)> {
    fn no_delay(s: &mut tokio::net::TcpStream) {
        let _ = s.set_nodelay(true);
    }
    axum::serve::ListenerExt::tap_io(listener, no_delay as fn(&mut tokio::net::TcpStream))
}

/// The listener the caller bound, or a new one on `addr`, with its address.
async fn bind(
    given: Option<TcpListener>,
    what: &str,
    addr: &str,
) -> Result<(TcpListener, SocketAddr), NodeError> {
    let listener = match given {
        Some(l) => l,
        None => TcpListener::bind(addr)
            .await
            .map_err(NodeError::io(format!("bind {what} {addr}")))?,
    };
    let bound = listener
        .local_addr()
        .map_err(NodeError::io(what.to_owned()))?;
    Ok((listener, bound))
}

impl RunningNode {
    /// Starts a node, binding the addresses of its config.
    pub async fn start(config: Config) -> Result<Self, NodeError> {
        Self::start_with(config, Listeners::default()).await
    }

    pub async fn start_with(config: Config, listeners: Listeners) -> Result<Self, NodeError> {
        // Read once: the TLS configurations, the node-signature verifier and
        // the `crl` alert's dates all take them from here.
        let tls_crls = load_crl_files(&config.tls.crls)?;
        let transport = transport_material(&config.tls, &tls_crls)?;
        // The certificate must name this node: a misplaced file fails here, not at the peer.
        let leaf = transport
            .chain
            .first()
            .ok_or_else(|| NodeError::Other("empty node certificate chain".into()))?;
        let named = truc_pki::identity::node_id(leaf)?;
        let own_not_after = truc_pki::identity::cert_info(leaf)?.not_after;
        if named != config.node_id {
            return Err(NodeError::Other(format!(
                "{}: certificate {} names node {named}, but the config says node_id = {}",
                config.path.display(),
                config.tls.cert.display(),
                config.node_id
            )));
        }
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        // NOT_SERVING until the store is open and the health loop says
        // otherwise; alive meanwhile (a long repair, a standby).
        set_health(&health_reporter, tonic_health::ServingStatus::NotServing).await;
        health_reporter
            .set_service_status(LIVE, tonic_health::ServingStatus::Serving)
            .await;
        // Every log line of this node's tasks and requests names it.
        let node_span = tracing::info_span!("node", node = %config.node_id);
        let trace_node = {
            let id = config.node_id.to_string();
            move |_: &http::Request<()>| tracing::info_span!("node", node = %id)
        };
        let params = params(&config);
        let (stop, stop_rx) = watch::channel(false);
        let (up_tx, parent_up) = watch::channel(false);
        let (failed_tx, failed) = watch::channel(None);
        let mut tasks = JoinSet::new();

        // The plaintext health-only port for orchestrators' probes, up first: a
        // standby hub answers NOT_SERVING there while it waits for the store.
        let mut health_addr = None;
        if let Some(addr) = &config.health_listen {
            let (listener, bound) = bind(None, "health", addr).await?;
            health_addr = Some(bound);
            let server = Server::builder()
                .trace_fn(trace_node.clone())
                .add_service(health_service.clone());
            serve_plain(
                &mut tasks,
                server,
                listener,
                stop_rx.clone(),
                node_span.clone(),
                "health server",
            );
        }

        // Opening may wait (a standby for a shared store's writer lock): off the
        // async threads.
        let state = {
            let c = config.clone();
            tokio::task::spawn_blocking(move || open_state_with(&c, &tls_crls))
                .await
                .map_err(|e| NodeError::Other(format!("opening the store: {e}")))??
        };
        state
            .telemetry
            .own_cert_not_after
            .store(own_not_after, std::sync::atomic::Ordering::Relaxed);

        // TLS configurations, replaced when the CRLs change on disk: the ports
        // this node serves, and its dialing of the parent.
        let (link_tls_tx, link_tls) = watch::channel(transport.server_config()?);
        let (operator_tls_tx, operator_tls) = watch::channel(transport.operator_server_config()?);
        let (parent_tls_tx, parent_tls) = match &config.parent {
            Some(_) => Some(watch::channel(transport.client_config()?)),
            None => None,
        }
        .unzip();
        let mut link_service = None;

        let mut link_addr = None;
        if let Some(addr) = &config.listen {
            let (listener, bound) = bind(listeners.link, "link listener", addr).await?;
            link_addr = Some(bound);
            let incoming = tls_incoming(
                listener,
                link_tls.clone(),
                params.handshake_timeout,
                config.link.max_connections,
                stop_rx.clone(),
            );
            let svc = LinkService::new(state.clone(), params.clone(), stop_rx.clone());
            link_service = Some(svc.clone());
            let server = Server::builder()
                .trace_fn(trace_node.clone())
                .http2_keepalive_interval(Some(params.heartbeat_interval))
                .http2_keepalive_timeout(Some(params.heartbeat_timeout))
                .initial_stream_window_size(Some(params.stream_window_bytes))
                .initial_connection_window_size(Some(params.stream_window_bytes.saturating_mul(2)))
                .max_concurrent_streams(Some(config.link.max_concurrent_streams))
                .add_service(
                    pb::link_server::LinkServer::new(svc)
                        .max_decoding_message_size(config.limits.max_message_bytes)
                        .max_encoding_message_size(config.limits.max_message_bytes),
                )
                .add_service(health_service.clone())
                .add_service(reflection()?);
            serve_incoming(
                &mut tasks,
                server,
                incoming,
                stop_rx.clone(),
                node_span.clone(),
                "link server",
            );
        }

        // run/ (the token, the sockets) the node user's only, before
        // anything is written there.
        if config.agency_api.is_some() || config.admin_api.is_some() {
            crate::agency::prepare_run_dir(&config.data_dir)?;
        }
        let mut agency_addr = None;
        if let Some(addr) = &config.agency_api {
            let (listener, bound) = bind(listeners.agency, "agency api", addr).await?;
            agency_addr = Some(bound);
            // Keepalive: a client whose connection died without a word (a
            // laptop asleep, a NAT that forgot it) is noticed, and what its
            // streams hold (an upload's turn) is let go.
            let server = Server::builder()
                .trace_fn(trace_node.clone())
                .http2_keepalive_interval(Some(params.heartbeat_interval))
                .http2_keepalive_timeout(Some(params.heartbeat_timeout))
                .add_service(tower::Layer::layer(
                    &crate::agency::Refusals::new(state.clone()),
                    tonic::service::interceptor::InterceptedService::new(
                        pb::agency_server::AgencyServer::new(AgencyService::new(state.clone()))
                            .max_decoding_message_size(config.limits.max_message_bytes)
                            .max_encoding_message_size(config.limits.max_message_bytes),
                        crate::agency::authorize(
                            &crate::agency::load_or_make_token(&config.data_dir)?,
                            &crate::agency::token_path(&config.data_dir),
                        ),
                    ),
                ))
                .add_service(health_service.clone())
                .add_service(reflection()?);
            // The same API on the node's Unix socket, which the CLI uses:
            // no other user can stand in for the node there.
            let socket = bind_socket(&crate::agency::socket_path(&config.data_dir), "agency API")?;
            serve_incoming(
                &mut tasks,
                server.clone(),
                tokio_stream::wrappers::UnixListenerStream::new(socket),
                stop_rx.clone(),
                node_span.clone(),
                "agency api socket server",
            );
            serve_plain(
                &mut tasks,
                server,
                listener,
                stop_rx.clone(),
                node_span.clone(),
                "agency api server",
            );
        }

        let mut rest_addr = None;
        if let Some(rest) = &config.rest {
            let (listener, bound) = bind(listeners.rest, "rest api", &rest.listen).await?;
            rest_addr = Some(bound);
            let app = crate::rest::router(state.clone(), rest.apps.clone());
            let mut s = stop_rx.clone();
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let shutdown = async move {
                        crate::stopped(&mut s).await;
                    };
                    if let Err(e) = axum::serve(rest_listener(listener), app)
                        .with_graceful_shutdown(shutdown)
                        .await
                    {
                        tracing::error!(error = %e, "rest api server failed");
                    }
                },
                node_span.clone(),
            ));
        }

        let mut admin_addr = None;
        if let Some(addr) = &config.admin_api {
            // The operator port: admin gRPC, health, reflection, /metrics and the
            // dashboard over TLS; each request authorized by who it comes from.
            let (listener, bound) = bind(listeners.admin, "admin api", addr).await?;
            admin_addr = Some(bound);
            let registry = Arc::new(crate::telemetry::Telemetry::registry(
                &state,
                config.alerts.clone(),
            ));
            let http = crate::operator::router(
                state.clone(),
                registry,
                config.admin_logins.clone(),
                config.alerts.clone(),
            );
            let routes = tonic::service::Routes::from(http)
                .add_service(pb::admin_server::AdminServer::new(AdminService::new(
                    state.clone(),
                )))
                .add_service(health_service.clone())
                .add_service(reflection()?);
            let routes = tonic::service::Routes::from(
                routes
                    .into_axum_router()
                    .layer(axum::middleware::from_fn(crate::operator::same_origin_only)),
            );
            let incoming = tls_incoming(
                listener,
                operator_tls.clone(),
                params.handshake_timeout,
                config.link.max_connections,
                stop_rx.clone(),
            );
            serve_incoming(
                &mut tasks,
                Server::builder()
                    .trace_fn(trace_node.clone())
                    .accept_http1(true)
                    .add_routes(routes),
                incoming,
                stop_rx.clone(),
                node_span.clone(),
                "operator port",
            );
            // The admin API for the node's own user (its CLI run by
            // `sudo -u truc` or `kubectl exec`), by peer credentials: no
            // operator certificate needs to live beside the node.
            let socket = bind_socket(&crate::admin::socket_path(&config.data_dir), "admin API")?;
            serve_incoming(
                &mut tasks,
                Server::builder()
                    .trace_fn(trace_node.clone())
                    .add_service(pb::admin_server::AdminServer::new(AdminService::new(
                        state.clone(),
                    )))
                    .add_service(health_service.clone()),
                tokio_stream::wrappers::UnixListenerStream::new(socket),
                stop_rx.clone(),
                node_span.clone(),
                "admin api socket server",
            );
        }

        // Health for load balancers and probes: SERVING while the store takes
        // writes (`NodeState::unwritable`: no failed flush, nothing hanging,
        // free space above the reserve). A store that is fenced (a shared
        // store's lock lost with its connection) stops the node. Checked once
        // before `start` returns (a node that says ready is SERVING), then
        // every second.
        {
            let mut last = None;
            check_health(&state, &health_reporter, &mut last).await;
            let st = state.clone();
            let reporter = health_reporter.clone();
            let mut s = stop_rx.clone();
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let every = Duration::from_secs(1);
                    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    loop {
                        tokio::select! {
                            _ = crate::stopped(&mut s) => return,
                            _ = tick.tick() => {}
                        }
                        if let Some(why) = st.store().fenced() {
                            tracing::error!(reason = %why, "the store may be another process's now: stopping");
                            set_health(&reporter, tonic_health::ServingStatus::NotServing).await;
                            let _ = failed_tx.send(Some(why));
                            return;
                        }
                        check_health(&st, &reporter, &mut last).await;
                    }
                },
                node_span.clone(),
            ));
        }

        // Throughput samples for the dashboard, and the audit chain checked now
        // and then (its result is a metric and an alert).
        {
            let st = state.clone();
            let mut s = stop_rx.clone();
            tasks.spawn(tracing::Instrument::instrument(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                // After a long audit check, no burst of samples a moment apart.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut last_audit: Option<std::time::Instant> = None;
                loop {
                    tokio::select! {
                        _ = crate::stopped(&mut s) => return,
                        _ = tick.tick() => {}
                    }
                    let c: std::collections::HashMap<&str, u64> =
                        st.counters().into_iter().collect();
                    st.telemetry.sample(crate::telemetry::Sample {
                        at_ms: crate::state::now_ms(),
                        accepted: c.get("accepted").copied().unwrap_or(0),
                        delivered: c.get("delivered").copied().unwrap_or(0),
                        refused: c.get("refused").copied().unwrap_or(0),
                    });
                    if last_audit.is_none_or(|t| t.elapsed() > AUDIT_EVERY) {
                        last_audit = Some(std::time::Instant::now());
                        let st2 = st.clone();
                        let r = tokio::task::spawn_blocking(move || {
                            crate::audit::verify(st2.store().as_ref())
                        })
                        .await;
                        // Not checked is not intact: the last "ok" would
                        // stand for a chain nobody could read.
                        let unchecked = |why: String| {
                            tracing::error!(reason = %why, "audit chain cannot be checked");
                            crate::telemetry::AuditStatus {
                                checked_at_ms: crate::state::now_ms(),
                                entries: st.telemetry.audit().map_or(0, |a| a.entries),
                                ok: false,
                                reason: format!("cannot be checked: {why}"),
                            }
                        };
                        let status = match r {
                            Ok(Ok(r)) => {
                                if let Some((seq, why)) = &r.first_bad {
                                    tracing::error!(entry = seq, reason = %why, "audit chain does not verify");
                                }
                                crate::telemetry::AuditStatus {
                                    checked_at_ms: crate::state::now_ms(),
                                    entries: r.entries,
                                    ok: r.first_bad.is_none(),
                                    reason: r.first_bad.map(|(s, w)| format!("entry {s}: {w}")).unwrap_or_default(),
                                }
                            }
                            Ok(Err(e)) => unchecked(e.to_string()),
                            Err(e) => unchecked(e.to_string()),
                        };
                        st.telemetry.set_audit(status);
                    }
                }
            }, node_span.clone()));
        }

        {
            // Attachments and envelopes past their retention are released, audit
            // entries past theirs pruned, and files nobody names any more
            // (uploads never sent, leftovers of a crash) removed.
            let st = state.clone();
            let every = Config::ms(config.delivery.sweep_interval_ms);
            let mut s = stop_rx.clone();
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut last_orphans: Option<std::time::Instant> = None;
                    loop {
                        tokio::select! {
                            _ = crate::stopped(&mut s) => return,
                            _ = tick.tick() => {}
                        }
                        let orphans =
                            last_orphans.is_none_or(|t| t.elapsed() > Duration::from_secs(3600));
                        if orphans {
                            last_orphans = Some(std::time::Instant::now());
                        }
                        let st = st.clone();
                        let r = tokio::task::spawn_blocking(move || -> Result<(), NodeError> {
                            while st.release_due()? > 0 {}
                            while st.prune_audit(10_000)? > 0 {}
                            if orphans {
                                let n = st.sweep_orphans()?;
                                if n > 0 {
                                    tracing::info!(
                                        files = n,
                                        "removed blob files no document names"
                                    );
                                }
                            }
                            Ok(())
                        })
                        .await;
                        match r {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::error!(error = %e, "retention sweep failed"),
                            Err(e) => tracing::error!(error = %e, "retention sweep panicked"),
                        }
                    }
                },
                node_span.clone(),
            ));
        }

        if state.checks_pdfs() {
            // Each arriving document with PDFs has them checked as it is
            // stored, and the verdict recorded with it (in a later batch than
            // the document's); a check missed here (a lagging subscriber, a
            // restart) is made when the document is read. Documents without
            // PDFs are passed over without reading anything.
            let st = state.clone();
            let mut events = state.subscribe();
            let mut s = stop_rx.clone();
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    // A document for several agencies of this node is one
                    // `Delivered` per agency, one after the other: checked once.
                    let mut last: Option<(truc_core::ids::OrganId, truc_core::ids::DocId)> = None;
                    loop {
                        let ev = tokio::select! {
                            _ = crate::stopped(&mut s) => return,
                            ev = events.recv() => ev,
                        };
                        let ev = match ev {
                            Ok(ev) => ev,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => return,
                        };
                        let crate::state::Event::Delivered {
                            from,
                            doc_id,
                            pdfs: true,
                            ..
                        } = ev
                        else {
                            continue;
                        };
                        if last.as_ref() == Some(&(from.clone(), doc_id)) {
                            continue;
                        }
                        last = Some((from.clone(), doc_id));
                        let st = st.clone();
                        let (f, d) = (from.to_string(), doc_id.to_string());
                        match tokio::task::spawn_blocking(move || st.check_pdfs(&f, &d)).await {
                            Ok(Ok(checks)) if !checks.is_empty() => tracing::info!(
                                %doc_id,
                                %from,
                                pdf = %crate::state::pdf_summary(&checks),
                                "PDF signatures checked"
                            ),
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::warn!(%doc_id, error = %e, "PDF check failed"),
                            Err(e) => tracing::error!(%doc_id, error = %e, "PDF check panicked"),
                        }
                    }
                },
                node_span.clone(),
            ));
        }

        if !config.children.is_empty() {
            // Overdue documents of children that stay away are parked and their
            // senders told, instead of waiting forever.
            let st = state.clone();
            let every = Config::ms(config.delivery.sweep_interval_ms);
            let mut s = stop_rx.clone();
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = crate::stopped(&mut s) => return,
                            _ = tick.tick() => {}
                        }
                        let st = st.clone();
                        match tokio::task::spawn_blocking(move || st.park_overdue()).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::error!(error = %e, "deadline sweep failed"),
                            Err(e) => tracing::error!(error = %e, "deadline sweep panicked"),
                        }
                    }
                },
                node_span.clone(),
            ));
        }

        if !config.signing_crls.is_empty() {
            tasks.spawn(tracing::Instrument::instrument(
                reload_signer_crls(
                    config.signing_crls.clone(),
                    state.clone(),
                    Config::ms(config.tls.crl_reload_ms),
                    stop_rx.clone(),
                ),
                node_span.clone(),
            ));
        }
        if !config.tls.crls.is_empty() {
            tasks.spawn(tracing::Instrument::instrument(
                reload_crls(
                    config.tls.clone(),
                    state.clone(),
                    Reloaded {
                        link: link_tls_tx,
                        operator: operator_tls_tx,
                        parent: parent_tls_tx,
                    },
                    link_service,
                    stop_rx.clone(),
                ),
                node_span.clone(),
            ));
        }

        if let (Some((address, parent)), Some(parent_tls)) = (&config.parent, parent_tls) {
            tasks.spawn(tracing::Instrument::instrument(
                dial_parent(
                    state.clone(),
                    address.clone(),
                    parent.clone(),
                    parent_tls,
                    params.clone(),
                    stop_rx.clone(),
                    up_tx,
                ),
                node_span.clone(),
            ));
        }

        let node = Self {
            config,
            state,
            link_addr,
            agency_addr,
            admin_addr,
            rest_addr,
            health_addr,
            stop,
            tasks,
            parent_up,
            failed,
        };
        node.write_endpoints()?;
        tracing::info!(node = %node.state.node_id, role = node.config.role(), link = ?node.link_addr, agency = ?node.agency_addr, "node started");
        Ok(node)
    }

    /// Records the bound addresses in `<data_dir>/run/endpoints.json` so the CLI can
    /// find a node whose config says port 0.
    fn write_endpoints(&self) -> Result<(), NodeError> {
        let dir = self.config.data_dir.join("run");
        std::fs::create_dir_all(&dir).map_err(NodeError::io(format!("{}", dir.display())))?;
        let json = serde_json::json!({
            "node_id": self.state.node_id.to_string(),
            "pid": std::process::id(),
            "link": self.link_addr.map(|a| a.to_string()),
            "agency": self.agency_addr.map(|a| a.to_string()),
            "admin": self.admin_addr.map(|a| a.to_string()),
            "rest": self.rest_addr.map(|a| a.to_string()),
            "health": self.health_addr.map(|a| a.to_string()),
        });
        let path = dir.join("endpoints.json");
        std::fs::write(&path, json.to_string())
            .map_err(NodeError::io(format!("{}", path.display())))
    }

    /// Resolves with the reason once the node cannot go on (its store was
    /// fenced); the caller shuts it down and exits with an error.
    pub async fn failure(&self) -> String {
        let mut f = self.failed.clone();
        loop {
            if let Some(why) = f.borrow_and_update().clone() {
                return why;
            }
            if f.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Turns true while the link to the parent is up.
    pub fn parent_up(&self) -> watch::Receiver<bool> {
        self.parent_up.clone()
    }

    /// Stops accepting work, lets links acknowledge what they stored, flushes the
    /// store and returns.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        let _ = self.stop.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 10 s; stopping them");
            self.tasks.abort_all();
        }
        let _ = std::fs::remove_file(self.config.data_dir.join("run").join("endpoints.json"));
        if self.agency_addr.is_some() {
            let _ = std::fs::remove_file(crate::agency::socket_path(&self.config.data_dir));
        }
        if self.admin_addr.is_some() {
            let _ = std::fs::remove_file(crate::admin::socket_path(&self.config.data_dir));
        }
        let st = self.state.clone();
        tokio::task::spawn_blocking(move || st.close())
            .await
            .map_err(|e| NodeError::Other(e.to_string()))??;
        tracing::info!(node = %self.state.node_id, "node stopped");
        Ok(())
    }
}

/// One revocation list file, read and parsed once.
struct CrlFile {
    path: std::path::PathBuf,
    /// The lists it holds, as the verifiers and TLS configurations take them.
    lists: Vec<Crl>,
    /// What each list says (revoked serials, next update); a list x509-parser
    /// cannot read is left out here, as webpki refuses it anyway.
    facts: Vec<truc_pki::identity::CrlFacts>,
}

/// The files of `tls.crls` or `signing.crls`.
type CrlFiles = Vec<CrlFile>;

type Crl = rustls::pki_types::CertificateRevocationListDer<'static>;

fn load_crl_files(paths: &[std::path::PathBuf]) -> Result<CrlFiles, truc_pki::PkiError> {
    paths
        .iter()
        .map(|p| {
            let lists = truc_pki::load_crls(p)?;
            let facts = lists
                .iter()
                .filter_map(|c| truc_pki::identity::crl_facts(c).ok())
                .collect();
            Ok(CrlFile {
                path: p.clone(),
                lists,
                facts,
            })
        })
        .collect()
}

fn all_crls(files: &CrlFiles) -> Vec<Crl> {
    files.iter().flat_map(|f| f.lists.iter().cloned()).collect()
}

/// This node's TLS material from `tls`, with its revocation lists as read
/// (each file read once, for the material and for the lists' dates).
fn transport_material(
    tls: &crate::config::TlsSection,
    crls: &CrlFiles,
) -> Result<TransportMaterial, truc_pki::PkiError> {
    let mut material =
        TransportMaterial::load(&tls.ca, &tls.cert, &tls.key, &[] as &[&std::path::Path])?;
    material.crls = all_crls(crls);
    Ok(material)
}

/// Records when each file's lists are due to be replaced (for the `crl`
/// alert), and says so in the log when one is already past it.
fn note_crl_dates(state: &NodeState, which: &str, files: &CrlFiles) {
    let now = crate::state::now_ms() / 1000;
    let due = files
        .iter()
        .map(|f| {
            let next = f
                .facts
                .iter()
                .filter_map(|c| c.next_update)
                .min()
                .unwrap_or(0);
            if next > 0 && now >= next {
                tracing::error!(list = %f.path.display(), which, "revocation list is past its next update: {} until a new one is published", crate::state::crl_stale_effect(which));
            }
            (f.path.display().to_string(), next)
        })
        .collect();
    state.telemetry.set_crls(which, due);
}

/// Calls `changed` every `every` when the bytes of `paths` differ from those
/// it last took (it returns whether it took them: a change it could not
/// apply is tried again at the next tick). Until `stop`.
async fn on_change(
    paths: &[std::path::PathBuf],
    every: Duration,
    mut stop: watch::Receiver<bool>,
    mut changed: impl FnMut() -> bool,
) {
    let read_all =
        || -> Vec<Option<Vec<u8>>> { paths.iter().map(|p| std::fs::read(p).ok()).collect() };
    let mut seen = read_all();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let now = read_all();
        if now != seen && changed() {
            seen = now;
        }
    }
}

/// Reads the signing CA's revocation lists again every `every`; when they
/// change, signatures are checked against the new ones (a list that cannot be
/// loaded keeps the previous ones, and says so).
async fn reload_signer_crls(
    paths: Vec<std::path::PathBuf>,
    state: Arc<NodeState>,
    every: Duration,
    stop: watch::Receiver<bool>,
) {
    on_change(&paths, every, stop, || {
        let applied = load_crl_files(&paths).and_then(|files| {
            let crls = all_crls(&files);
            state.verifiers.agencies.set_crls(&crls)?;
            state
                .set_pdf_crls(&crls)
                .map_err(|e| truc_pki::PkiError::BadCertificate(e.to_string()))?;
            Ok(files)
        });
        match applied {
            Ok(files) => {
                note_crl_dates(&state, "signing", &files);
                tracing::warn!("signing revocation lists reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "signing revocation lists changed but cannot be loaded; the previous ones stay in force");
                false
            }
        }
    })
    .await;
}

/// Where [`reload_crls`] puts the TLS configurations it rebuilds.
struct Reloaded {
    link: watch::Sender<Arc<rustls::ServerConfig>>,
    operator: watch::Sender<Arc<rustls::ServerConfig>>,
    /// The dialing of the parent, on a node that has one: a new list ends the
    /// link to it, and the next handshake checks the parent's certificate
    /// against the list.
    parent: Option<watch::Sender<Arc<rustls::ClientConfig>>>,
}

/// Reads the CRL files again every `tls.crl_reload_ms`. When they change, the next
/// handshakes use the new lists, children whose certificate they revoke lose
/// their link at once, and the link to the parent starts again under them. A
/// list that cannot be read or parsed keeps the previous one in force (fail
/// closed: nothing revoked becomes valid again) and says so.
async fn reload_crls(
    tls: crate::config::TlsSection,
    state: Arc<NodeState>,
    to: Reloaded,
    links: Option<LinkService>,
    stop: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(tls.crl_reload_ms);
    on_change(&tls.crls, every, stop, || {
        let loaded = load_crl_files(&tls.crls).and_then(|files| {
            let material = transport_material(&tls, &files)?;
            Ok((files, material))
        });
        let (files, material) = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "revocation lists changed but cannot be loaded; the previous ones stay in force");
                return false;
            }
        };
        let built = (|| {
            let parent = to.parent.as_ref().map(|_| material.client_config());
            Ok::<_, truc_pki::PkiError>((
                material.server_config()?,
                material.operator_server_config()?,
                parent.transpose()?,
            ))
        })();
        let (link_cfg, operator_cfg, parent_cfg) = match built {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "revocation lists changed but the TLS configuration cannot be rebuilt; the previous ones stay in force"
                );
                return false;
            }
        };
        if let Err(e) = state.verifiers.nodes.set_crls(&material.crls) {
            tracing::error!(
                error = %e,
                "revocation lists changed but node signatures cannot be checked against them; the previous ones stay in force"
            );
            return false;
        }
        let revoked: std::collections::HashSet<Vec<u8>> = files
            .iter()
            .flat_map(|f| &f.facts)
            .flat_map(|c| c.revoked.iter().cloned())
            .collect();
        note_crl_dates(&state, "tls", &files);
        let _ = to.link.send(link_cfg);
        let _ = to.operator.send(operator_cfg);
        if let (Some(tx), Some(cfg)) = (&to.parent, parent_cfg) {
            let _ = tx.send(cfg);
        }
        let closed = links
            .as_ref()
            .map(|l| l.close_revoked(&revoked))
            .unwrap_or_default();
        let closed: Vec<String> = closed.iter().map(|n| n.to_string()).collect();
        tracing::warn!(revoked = revoked.len(), closed = ?closed, "revocation lists reloaded");
        true
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed flush, which a restart cures, turns liveness (`truc.live`)
    /// NOT_SERVING with readiness; until then the node is alive and ready.
    /// (A node only short of disk space stays alive: tests/operator.rs.)
    #[tokio::test]
    async fn a_failed_flush_fails_liveness_too() {
        use std::sync::atomic::Ordering;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let f = crate::state::testing::Fixture::new();
        let (store, plan) = truc_store::FaultyStore::new(truc_store::MemoryStore::new());
        let st = f.edge(Arc::new(store));
        let (reporter, service) = tonic_health::server::health_reporter();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(plain_incoming(listener)),
        );
        let mut client = HealthClient::new(
            tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        let mut ask = async |name: &str| {
            client
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status
        };
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
        let mut last = None;
        check_health(&st, &reporter, &mut last).await;
        assert_eq!((ask("").await, ask(LIVE).await), (serving, serving));

        plan.fail_flush.store(true, Ordering::SeqCst);
        let (_, accepted) = st
            .submit(crate::state::Submission {
                from: "000.00.00.G22".into(),
                to: vec!["000.00.00.H41".into()],
                subject: "x".into(),
                ..Default::default()
            })
            .unwrap();
        assert!(st.durable(accepted.ticket()).await.is_err());
        check_health(&st, &reporter, &mut last).await;
        assert_eq!((ask("").await, ask(LIVE).await), (not_serving, not_serving));
    }

    /// The plaintext listeners' connections (agency API, health) and the REST
    /// API's send small answers at once (`TCP_NODELAY`), not after the
    /// client's delayed ACK.
    #[tokio::test]
    async fn plaintext_and_rest_connections_send_without_delay() {
        use futures::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = std::pin::pin!(plain_incoming(listener));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let conn = incoming.next().await.unwrap().unwrap();
        assert!(conn.nodelay().unwrap(), "agency API and health");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut rest = rest_listener(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (conn, _) = axum::serve::Listener::accept(&mut rest).await;
        assert!(conn.nodelay().unwrap(), "REST API");
    }
}
