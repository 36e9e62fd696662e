//! The operator port of a node (`[admin_api] listen`): one TLS 1.3 listener
//! with the node's certificate serving the admin gRPC API, gRPC health and
//! reflection, Prometheus `/metrics` and the dashboard.
//!
//! A client certificate from the transport CA is checked when presented but
//! not required at the handshake, so that a browser can reach the login page;
//! every request is then authorized by who it comes from ([`Caller`]): an
//! operator certificate (role viewer or operator, `urn:truc:role:`), or a
//! dashboard session opened with a login token from `[[admin_api.logins]]`.
//! Node certificates and anonymous callers get nothing but the login page (and
//! gRPC health and reflection, which answer anyone). [`same_origin_only`] keeps
//! web pages from using an operator's browser against the port.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Form, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use truc_pki::identity::{Identity, Role};
use truc_store::Digest;

use crate::{
    config::{AdminLogin, AlertSection},
    state::{NodeState, now_ms},
};

/// How long a dashboard session lasts without use.
const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
/// How long it lasts at most, in use or not (an open tab polls every 2 s):
/// a working day, then a new login.
const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
const COOKIE: &str = "truc_session";
/// Failed logins an address may make in [`LOGIN_WINDOW`] before it waits for
/// the window to pass (tokens are 192 random bits: this is for the logs and
/// the CPU, not the odds).
const LOGIN_FAILURES: u32 = 10;
const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Who a request on the operator port comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator {
        name: String,
        role: Role,
        /// "certificate", "login", or "socket" (the node's own user on its
        /// admin socket).
        by: &'static str,
    },
    /// A node certificate: nodes talk over links, never to the operator port.
    Node(String),
    Anonymous,
}

impl Caller {
    /// From the client certificate of the TLS connection, if any.
    pub fn from_certs(certs: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> Self {
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return Caller::Anonymous;
        };
        match truc_pki::identity::cert_info(leaf) {
            Ok(info) => match (info.identity, info.role) {
                (Identity::Operator(name), Some(role)) => Caller::Operator {
                    name,
                    role,
                    by: "certificate",
                },
                (Identity::Node(n), _) => Caller::Node(n.to_string()),
                (Identity::Organ(o), _) => Caller::Node(format!("agency {o}")),
                (Identity::Operator(name), None) => Caller::Operator {
                    name,
                    role: Role::Viewer,
                    by: "certificate",
                },
            },
            Err(_) => Caller::Anonymous,
        }
    }

    /// A caller on the node's admin socket (mode 600 in a `run/` of mode
    /// 700), by its peer credentials as PostgreSQL's peer authentication:
    /// the node's own user, or root, who may read and write the node's
    /// store and keys anyway, is an operator named `local uid N`. Anyone
    /// else (the modes changed by hand) is anonymous.
    pub fn local(uid: Option<u32>) -> Self {
        let node_user = rustix::process::geteuid().as_raw();
        match uid {
            Some(uid) if uid == node_user || uid == 0 => Caller::Operator {
                name: format!("local uid {uid}"),
                role: Role::Operator,
                by: "socket",
            },
            _ => Caller::Anonymous,
        }
    }

    /// Allowed when it is an operator with at least `need`; otherwise the
    /// status says why.
    pub fn require(&self, need: Role) -> Result<(String, Role), tonic::Status> {
        match self {
            Caller::Operator { name, role, .. } if *role >= need => Ok((name.clone(), *role)),
            Caller::Operator { name, role, .. } => Err(tonic::Status::permission_denied(format!(
                "operator {name} has role {}; this needs {}",
                role.as_str(),
                need.as_str()
            ))),
            Caller::Node(n) => Err(tonic::Status::permission_denied(format!(
                "{n} presented a node certificate; the admin API needs an operator certificate"
            ))),
            Caller::Anonymous => Err(tonic::Status::unauthenticated(
                "the admin API needs an operator certificate (truc certs init writes operators/*.crt)",
            )),
        }
    }
}

#[derive(Debug, Clone)]
struct Session {
    name: String,
    role: Role,
    opened_ms: i64,
    last_used_ms: i64,
}

/// Shared by the operator port's HTTP routes.
#[derive(Clone)]
struct Ctx {
    state: Arc<NodeState>,
    registry: Arc<Registry>,
    logins: Arc<Vec<AdminLogin>>,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    /// Failed logins by address: (start of the window, count).
    failed_logins: Arc<Mutex<HashMap<std::net::IpAddr, (i64, u32)>>>,
    alerts: AlertSection,
}

impl Ctx {
    fn caller(&self, tls: Option<&TlsConnectInfo<TcpConnectInfo>>, headers: &HeaderMap) -> Caller {
        let by_cert =
            Caller::from_certs(tls.and_then(|t| t.peer_certs()).as_deref().map(|v| &v[..]));
        if by_cert != Caller::Anonymous {
            return by_cert;
        }
        let Some(id) = cookie(headers, COOKIE) else {
            return Caller::Anonymous;
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        sessions.retain(|_, s| {
            now - s.last_used_ms < SESSION_IDLE.as_millis() as i64
                && now - s.opened_ms < SESSION_MAX.as_millis() as i64
        });
        match sessions.get_mut(&id) {
            Some(s) => {
                s.last_used_ms = now;
                Caller::Operator {
                    name: s.name.clone(),
                    role: s.role,
                    by: "login",
                }
            }
            None => Caller::Anonymous,
        }
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

type Tls = Option<axum::Extension<TlsConnectInfo<TcpConnectInfo>>>;

/// 401 for nobody, 403 for a node or a too-weak role; as JSON for API paths.
fn refuse(caller: &Caller, need: Role) -> Response {
    let status = caller
        .require(need)
        .err()
        .unwrap_or_else(|| tonic::Status::internal(""));
    let code = if status.code() == tonic::Code::Unauthenticated {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::FORBIDDEN
    };
    (
        code,
        Json(json!({"code": format!("{:?}", status.code()).to_uppercase(), "message": status.message()})),
    )
        .into_response()
}

macro_rules! authorize {
    ($cx:expr, $tls:expr, $headers:expr, $need:expr) => {{
        let caller = $cx.caller($tls.as_ref().map(|e| &e.0), &$headers);
        if caller.require($need).is_err() {
            return refuse(&caller, $need);
        }
        caller
    }};
}

const INDEX: &str = include_str!("dashboard/index.html");
const LOGIN: &str = include_str!("dashboard/login.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// In front of everything on the operator port. Browsers send an operator's
/// client certificate with requests any web page makes them send, so what a
/// browser marks as coming from another site is refused, and a gRPC path
/// takes only gRPC's content type, which no cross-site form or simple fetch
/// can set: the admin API cannot be driven from a web page. Pages get headers
/// that keep them out of other sites' frames.
pub async fn same_origin_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let h = req.headers();
    let path = req.uri().path().to_owned();
    let fetch_site = h.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let cross_site = fetch_site.is_some_and(|s| s != "same-origin" && s != "none");
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            h.get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let foreign_origin = origin.is_some_and(|o| o.strip_prefix("https://") != authority.as_deref());
    if cross_site || foreign_origin {
        tracing::warn!(%path, ?origin, ?fetch_site, "cross-site request to the operator port refused");
        return (
            StatusCode::FORBIDDEN,
            "cross-site requests to the operator port are refused",
        )
            .into_response();
    }
    // "/package.Service/Method"
    let mut segments = path.trim_start_matches('/').split('/');
    let grpc_path = segments.next().is_some_and(|s| s.contains('.')) && segments.next().is_some();
    if grpc_path {
        let grpc = h
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            tracing::warn!(%path, "a gRPC path asked without gRPC's content type: refused");
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "gRPC paths take application/grpc only",
            )
                .into_response();
        }
        return next.run(req).await;
    }
    let mut r = next.run(req).await;
    let headers = r.headers_mut();
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("frame-ancestors 'none'"),
    );
    r
}

/// The HTTP part of the operator port.
pub fn router(
    state: Arc<NodeState>,
    registry: Arc<Registry>,
    logins: Vec<AdminLogin>,
    alerts: AlertSection,
) -> Router {
    let cx = Ctx {
        state,
        registry,
        logins: Arc::new(logins),
        sessions: Arc::default(),
        failed_logins: Arc::default(),
        alerts,
    };
    Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route(
            "/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    APP_JS,
                )
            }),
        )
        .route(
            "/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS) }),
        )
        .route("/api/overview", get(overview))
        .route("/api/trace/{doc_id}", get(trace))
        .route("/metrics", get(metrics))
        .with_state(cx)
}

fn login_page(status: StatusCode, error: &str) -> Response {
    let body = LOGIN.replace(
        "<!--error-->",
        &if error.is_empty() {
            String::new()
        } else {
            format!("<p class=\"error\" id=\"error\">{}</p>", html_escape(error))
        },
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn index(State(cx): State<Ctx>, tls: Tls, headers: HeaderMap) -> Response {
    let caller = cx.caller(tls.as_ref().map(|e| &e.0), &headers);
    match &caller {
        Caller::Operator { .. } => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            INDEX,
        )
            .into_response(),
        Caller::Node(n) => login_page(
            StatusCode::FORBIDDEN,
            &format!("{n} is a node certificate; operators only"),
        ),
        Caller::Anonymous => login_page(StatusCode::UNAUTHORIZED, ""),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(cx): State<Ctx>, tls: Tls, Form(f): Form<LoginForm>) -> Response {
    let from = tls
        .and_then(|t| t.0.get_ref().remote_addr())
        .map(|a| a.ip());
    let now = now_ms();
    let window = LOGIN_WINDOW.as_millis() as i64;
    let d = Digest::of(f.token.trim().as_bytes());
    // Digests are compared, so the comparison says nothing about the token.
    let Some(l) = cx.logins.iter().find(|l| l.token_sha256 == d.0) else {
        // An address that keeps guessing waits a minute. The right token
        // still gets in meanwhile: one guesser behind an office's shared
        // address must not lock its operators out (and 192 random bits are
        // not guessed at any rate).
        if let Some(ip) = from {
            let mut failed = cx.failed_logins.lock().unwrap_or_else(|p| p.into_inner());
            failed.retain(|_, (start, _)| now - *start < window);
            let n = &mut failed.entry(ip).or_insert((now, 0)).1;
            *n += 1;
            if *n > LOGIN_FAILURES {
                tracing::warn!(from = ?from, "dashboard login with an unknown token; this address waits a minute");
                return login_page(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Đăng nhập sai quá nhiều lần; chờ một phút · Too many failed logins; wait a minute",
                );
            }
        }
        tracing::warn!(from = ?from, "dashboard login with an unknown token");
        return login_page(
            StatusCode::UNAUTHORIZED,
            "Mã đăng nhập không đúng · Unknown login token",
        );
    };
    let mut raw = [0u8; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness").into_response();
    }
    let id = hex::encode(raw);
    cx.sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id.clone(),
            Session {
                name: l.name.clone(),
                role: l.role,
                opened_ms: now_ms(),
                last_used_ms: now_ms(),
            },
        );
    tracing::info!(operator = %l.name, role = l.role.as_str(), "dashboard login");
    (
        [(
            header::SET_COOKIE,
            format!(
                "{COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
                SESSION_MAX.as_secs()
            ),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

async fn logout(State(cx): State<Ctx>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        cx.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

async fn metrics(State(cx): State<Ctx>, tls: Tls, headers: HeaderMap) -> Response {
    authorize!(cx, tls, headers, Role::Viewer);
    let registry = cx.registry.clone();
    match tokio::task::spawn_blocking(move || crate::telemetry::render(&registry)).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// An error as the REST API answers it (status, stable code, message): not
/// found is 404, a store that fails is not.
fn error_json(s: tonic::Status) -> Response {
    let (status, code) = crate::rest::http_status(s.code());
    (status, Json(json!({"code": code, "message": s.message()}))).into_response()
}

/// Everything the dashboard shows, in one document.
async fn overview(State(cx): State<Ctx>, tls: Tls, headers: HeaderMap) -> Response {
    let caller = authorize!(cx, tls, headers, Role::Viewer);
    let st = cx.state.clone();
    let alerts_cfg = cx.alerts.clone();
    let r = tokio::task::spawn_blocking(move || {
        // Queues that cannot be read (a store that hangs or fails): the rest
        // of the page, whose store alert says why the queues are missing.
        let read = st.read_within(crate::state::READ_WAIT, crate::NodeState::queue_snapshot);
        let alerts = st.alerts(&alerts_cfg, &read);
        let snap = read.unwrap_or_default();
        let (n, p50, p90, p99) = st.telemetry.latency_percentiles();
        Ok::<_, crate::NodeError>(json!({
            "node": st.node_id.to_string(),
            "role": st.role(),
            "version": env!("CARGO_PKG_VERSION"),
            "now_ms": now_ms(),
            "tree": st.node_tree().iter().map(crate::json::node_view).collect::<Vec<_>>(),
            "queues": snap.recipients.iter().map(|q| json!({
                "recipient": q.organ, "depth": q.depth, "oldest_ms": q.oldest_ms,
            })).collect::<Vec<_>>(),
            "overdue": snap.overdue.iter().map(|o| json!({
                "doc_id": o.doc_id, "from": o.from, "recipient": o.recipient,
                "priority": o.priority, "deadline_ms": o.deadline_ms, "parked": o.parked,
                "queue": o.queue,
            })).collect::<Vec<_>>(),
            "overdue_total": snap.overdue_total(),
            "dead": snap.dead.iter().map(|d| json!({
                "doc_id": d.doc_id, "from": d.from, "recipients": d.recipients,
                "queue": d.queue, "code": d.code, "reason": d.reason, "at_ms": d.at_ms,
            })).collect::<Vec<_>>(),
            "dead_total": snap.dead_total,
            "samples": st.telemetry.samples(),
            "certificates": st.certificates().into_iter().map(|(s, t)| json!({"subject": s, "not_after_ms": t * 1000})).collect::<Vec<_>>(),
            "alerts": alerts,
            "latency": {"count": n, "p50_s": p50, "p90_s": p90, "p99_s": p99},
            "counters": st.counters().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "audit": st.telemetry.audit(),
        }))
    })
    .await;
    match r {
        // The queues could not be read: say so, not "no queues".
        Ok(Err(e)) => error_json(tonic::Status::unavailable(format!("queues: {e}"))),
        Ok(Ok(mut v)) => {
            if let Caller::Operator { name, role, by } = caller {
                v["operator"] = json!({"name": name, "role": role.as_str(), "by": by});
            }
            ([(header::CACHE_CONTROL, "no-store")], Json(v)).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct TraceQuery {
    from: Option<String>,
}

async fn trace(
    State(cx): State<Ctx>,
    tls: Tls,
    headers: HeaderMap,
    Path(doc_id): Path<String>,
    Query(q): Query<TraceQuery>,
) -> Response {
    authorize!(cx, tls, headers, Role::Viewer);
    let bad = |e: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": "INVALID_ARGUMENT", "message": e})),
        )
            .into_response()
    };
    let doc_id: truc_core::DocId = match doc_id.trim().parse() {
        Ok(d) => d,
        Err(e) => return bad(format!("doc_id: {e}")),
    };
    // The sender, when several agencies of this edge used the doc_id.
    let from = match crate::agency::opt_organ("from", q.from.as_deref().unwrap_or("").trim()) {
        Ok(f) => f,
        Err(e) => return bad(e.message().to_owned()),
    };
    let st = cx.state.clone();
    match tokio::task::spawn_blocking(move || crate::agency::trace(&st, &doc_id, from.as_ref()))
        .await
    {
        Ok(Ok(steps)) => Json(json!({
            "doc_id": doc_id.to_string(),
            "node": cx.state.node_id.to_string(),
            "steps": steps.iter().map(|s| json!({
                "at_ms": s.at_ms, "node": s.node, "step": s.step, "detail": s.detail,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Ok(Err(e)) => error_json(tonic::Status::from(e)),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the admin socket, the node's own user (or root) is an operator
    /// known by its uid; another user, or a peer whose credentials could not
    /// be read, is nobody.
    #[test]
    fn the_admin_socket_lets_in_the_nodes_user_only() {
        let me = rustix::process::geteuid().as_raw();
        let (name, role) = Caller::local(Some(me)).require(Role::Operator).unwrap();
        assert_eq!((name, role), (format!("local uid {me}"), Role::Operator));
        assert!(Caller::local(Some(0)).require(Role::Operator).is_ok());
        let other = if me == 0 { 4242 } else { me + 1 };
        let e = Caller::local(Some(other))
            .require(Role::Viewer)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        let e = Caller::local(None).require(Role::Viewer).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    }
}
