//! The REST/JSON agency API: every operation of today's axis (see
//! `domain/VDXP.md`) over HTTP for document software, on top of the same
//! implementation as the gRPC agency API. Bearer tokens from the config name the
//! application and the agencies it may act for. Errors are JSON
//! `{"code": "NOT_FOUND", "message": "..."}` with the matching HTTP status.
//! The OpenAPI document is `openapi.json` beside this file, served at
//! `/v1/openapi.json`.

use std::{convert::Infallible, sync::Arc};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use base64::Engine;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::{Code, Request, Status};
use truc_core::{DocId, OrganId};
use truc_proto::v1::{self as pb, agency_server::Agency};
use truc_store::Digest;

use crate::{
    agency::{AgencyService, opt_organ},
    error::blocking,
    state::NodeState,
};

/// The OpenAPI document, kept in the repository beside this file.
pub const OPENAPI: &str = include_str!("openapi.json");

/// One application allowed to call the API.
pub use crate::config::RestClient as App;

#[derive(Clone)]
struct Ctx {
    svc: AgencyService,
    state: Arc<NodeState>,
    apps: Arc<Vec<App>>,
}

/// An error as the API returns it.
pub struct ApiError(Status);

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        ApiError(s)
    }
}

/// The one mapping from gRPC codes to HTTP statuses and stable error codes.
pub fn http_status(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Code::FailedPrecondition => (StatusCode::CONFLICT, "FAILED_PRECONDITION"),
        Code::Aborted => (StatusCode::CONFLICT, "ABORTED"),
        Code::OutOfRange => (StatusCode::RANGE_NOT_SATISFIABLE, "OUT_OF_RANGE"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "DATA_LOSS"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (mut status, code) = http_status(self.0.code());
        let retry_ms = self
            .0
            .metadata()
            .get(crate::error::RETRY_AFTER_MS)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        // RESOURCE_EXHAUSTED without a hint is a request over a limit, which
        // waiting will not clear: 413, not 429.
        if self.0.code() == Code::ResourceExhausted && retry_ms.is_none() {
            status = StatusCode::PAYLOAD_TOO_LARGE;
        }
        let mut r = (
            status,
            Json(json!({"code": code, "message": self.0.message()})),
        )
            .into_response();
        r.extensions_mut()
            .insert(Answered(self.0.code(), self.0.message().to_owned()));
        if let Some(ms) = retry_ms
            && let Ok(h) = ms.div_ceil(1000).to_string().parse()
        {
            r.headers_mut().insert(header::RETRY_AFTER, h);
        }
        r
    }
}

type Res = Result<Response, ApiError>;

/// A Retry-After in this node's `quotas.retry_after_ms` (rounded up to a second).
fn with_node_retry_hint(state: &NodeState, mut r: Response) -> Response {
    if r.headers().contains_key(header::RETRY_AFTER)
        && let Ok(v) = u64::from(state.quotas.retry_after_ms)
            .div_ceil(1000)
            .to_string()
            .parse()
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// What an error answer said, for [`errors`] to count and log.
#[derive(Clone)]
struct Answered(Code, String);

/// Refuses a request without a known application token (401) before its
/// handler reads the body; the handler then finds which application it is.
async fn authenticated(
    State(cx): State<Ctx>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match cx.app(req.headers()) {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The methods the API's description gives `route` (a path template), as
/// an Allow header lists them: `GET,HEAD`, `POST`.
fn methods_of(route: &str) -> String {
    static DOC: std::sync::LazyLock<Value> =
        std::sync::LazyLock::new(|| serde_json::from_str(OPENAPI).unwrap_or_default());
    let mut methods: Vec<String> = DOC["paths"][route]
        .as_object()
        .map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect())
        .unwrap_or_default();
    if methods.iter().any(|m| m == "GET") {
        methods.push("HEAD".into());
    }
    methods.join(",")
}

/// The largest request body taken: a message of `limits.max_message_bytes`
/// in base64, and room for the JSON around it.
fn body_limit(state: &NodeState) -> usize {
    state.limits.max_message_bytes / 3 * 4 + (64 << 10)
}

/// Every error answer leaves through here: counted and logged once
/// (`truc_refused_total{source="rest"}`), and axum's own plain-text rejections
/// of a malformed body, query or path turned into the JSON error every other
/// answer has.
async fn errors(
    State(state): State<Arc<NodeState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let what = format!("{} {}", req.method(), req.uri().path());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let r = next.run(req).await;
    let status = r.status();
    if !status.is_client_error() && !status.is_server_error() {
        return r;
    }
    let r = if r.extensions().get::<Answered>().is_some() {
        r
    } else {
        // axum's own rejection, plain text: the JSON error instead.
        let rejected = match status {
            StatusCode::BAD_REQUEST
            | StatusCode::UNPROCESSABLE_ENTITY
            | StatusCode::UNSUPPORTED_MEDIA_TYPE => Status::invalid_argument,
            StatusCode::PAYLOAD_TOO_LARGE => Status::resource_exhausted,
            // No such route (a handler's own 404 is an ApiError).
            StatusCode::NOT_FOUND => Status::not_found,
            // A route without this method: still 405, with its Allow.
            StatusCode::METHOD_NOT_ALLOWED => Status::unimplemented,
            _ => return r,
        };
        let text = axum::body::to_bytes(r.into_body(), 64 << 10)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        // axum adds its Allow header outside this layer: the route's
        // methods are read from the API's own description instead.
        let text = if status == StatusCode::METHOD_NOT_ALLOWED {
            format!(
                "{what}: method not allowed (allowed: {})",
                route.as_deref().map(methods_of).unwrap_or_default()
            )
        } else if status == StatusCode::PAYLOAD_TOO_LARGE && route.as_deref() == Some("/v1/edxml") {
            format!(
                "{what}: the package is over this edge's limit of {} bytes (limits.max_message_bytes)",
                body_limit(&state)
            )
        } else if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "{what}: the request body is over this edge's limit of {} bytes (limits.max_message_bytes, in base64); upload large attachments first (PUT /v1/uploads/{{uuid}}) and name them by sha256 and size",
                body_limit(&state)
            )
        } else if text.is_empty() {
            format!("no route for {what}")
        } else {
            text
        };
        let mut answer = ApiError(rejected(text)).into_response();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            *answer.status_mut() = status;
        }
        answer
    };
    if let Some(Answered(code, reason)) = r.extensions().get::<Answered>() {
        crate::agency::note_refusal(&state, "rest", &what, *code, reason);
    }
    with_node_retry_hint(&state, r)
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(Status::invalid_argument(msg))
}

fn denied(msg: impl Into<String>) -> ApiError {
    ApiError(Status::permission_denied(msg))
}

impl Ctx {
    /// The application a request comes from, by its bearer token.
    fn app(&self, headers: &HeaderMap) -> Result<&App, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::agency::bearer)
            .ok_or_else(|| {
                ApiError(Status::unauthenticated(
                    "missing Authorization: Bearer <token>",
                ))
            })?;
        let d = Digest::of(token.as_bytes());
        self.apps
            .iter()
            // Digests of the token are compared: their bytes reveal nothing about it.
            .find(|a| a.token_sha256 == d.0)
            .ok_or_else(|| ApiError(Status::unauthenticated("unknown token")))
    }

    /// `attachments` read from a request, whose uploads (named by digest)
    /// the calling application made itself: another's upload, or a file an
    /// agency of this edge received, is "nothing uploaded" to it.
    async fn own_uploads(
        &self,
        app: &App,
        attachments: Vec<AttachmentIn>,
    ) -> Result<Vec<pb::Attachment>, ApiError> {
        let attachments = attachments_in(attachments)?;
        let named: Vec<(String, Digest)> = attachments
            .iter()
            .filter(|a| !a.sha256.is_empty())
            .map(|a| {
                Digest::from_slice(&a.sha256)
                    .map(|d| (a.name.clone(), d))
                    .ok_or_else(|| bad(format!("attachment {:?}: sha256 is not 32 bytes", a.name)))
            })
            .collect::<Result<_, _>>()?;
        if named.is_empty() {
            return Ok(attachments);
        }
        let app = app.name.clone();
        let st = self.state.clone();
        tokio::task::spawn_blocking(move || {
            for (name, d) in named {
                if !st.uploaded_by(&app, &d).map_err(|e| ApiError(e.into()))? {
                    return Err(ApiError(Status::not_found(format!(
                        "attachment {name:?}: application {app} uploaded nothing with sha-256 {d}"
                    ))));
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| ApiError(Status::internal(e.to_string())))??;
        Ok(attachments)
    }

    /// The application may act for `organ`.
    fn may(&self, headers: &HeaderMap, organ: &str) -> Result<&App, ApiError> {
        let app = self.app(headers)?;
        if app.organs.iter().any(|o| o.as_str() == organ) {
            Ok(app)
        } else {
            Err(denied(format!(
                "application {} may not act for {organ}",
                app.name
            )))
        }
    }

    /// The application may see and answer a received document (one of its
    /// agencies got it; `organ`, when not empty, names the one): those
    /// agencies, and the sender, which `from` names when another sender used
    /// the same doc_id for one of them. Read from the inbox, so an answer
    /// still goes once the envelope is no longer kept.
    async fn may_received(
        &self,
        headers: &HeaderMap,
        doc_id: &str,
        from: &FromQuery,
        organ: &str,
    ) -> Result<Received, ApiError> {
        let app = self.app(headers)?.clone();
        if !organ.is_empty() {
            self.may(headers, organ)?;
        }
        let organs = match opt_organ("organ", organ)? {
            Some(o) => vec![o],
            None => app.organs.clone(),
        };
        let id: DocId = doc_id.parse().map_err(|e| bad(format!("doc_id: {e}")))?;
        let sender = opt_organ("from", from.from.as_deref().unwrap_or(""))?;
        let st = self.state.clone();
        let (organs, sender) =
            blocking(move || st.received_by(&id, sender.as_ref(), &organs)).await?;
        let Some(from) = sender else {
            if !organ.is_empty() {
                return Err(ApiError(Status::not_found(format!(
                    "{doc_id} was not delivered to {organ} here"
                ))));
            }
            // As for a doc_id never seen: NOT_FOUND either way, so that an
            // application learns nothing of documents that are not its own.
            return Err(ApiError(Status::not_found(format!(
                "no document {doc_id} was delivered here to application {}'s agencies{}",
                app.name,
                from.from
                    .as_deref()
                    .map(|f| format!(" from {f}"))
                    .unwrap_or_default()
            ))));
        };
        Ok(Received {
            organs: organs.iter().map(ToString::to_string).collect(),
            from: from.to_string(),
        })
    }

    /// `app` may see a document sent from its agencies: the one
    /// its own agencies sent, when another agency here used the same doc_id.
    async fn may_sent(&self, app: &App, doc_id: &str) -> Result<pb::GetStatusResponse, ApiError> {
        let not_found = || {
            ApiError(Status::not_found(format!(
                "no document {doc_id} was sent from this edge by application {}'s agencies",
                app.name
            )))
        };
        if app.organs.is_empty() {
            return Err(not_found());
        }
        let id: truc_core::DocId = doc_id.parse().map_err(|e| bad(format!("doc_id: {e}")))?;
        // One scan of the doc_id's sent records; the first of the
        // application's agencies (in its configured order) that sent it.
        let st = self.state.clone();
        let records = crate::error::blocking(move || st.sent(&id)).await?;
        let Some(rec) = app
            .organs
            .iter()
            .find_map(|o| records.iter().find(|r| r.from == o.as_str()))
        else {
            return Err(not_found());
        };
        let delivery = &self.state.delivery;
        Ok(crate::agency::status_view(rec.clone(), |p| {
            delivery.deadline_for(p)
        }))
    }
}

/// The router for a node's REST API.
pub fn router(state: Arc<NodeState>, apps: Vec<App>) -> Router {
    let body_limit = body_limit(&state);
    let cx = Ctx {
        svc: AgencyService::new(state.clone()),
        state: state.clone(),
        apps: Arc::new(apps),
    };
    Router::new()
        .route("/v1/documents", post(send))
        .route("/v1/documents/{doc_id}", get(sent_status))
        .route("/v1/documents/{doc_id}/receipts", get(receipts))
        .route("/v1/documents/{doc_id}/edxml", get(sent_edxml))
        .route(
            "/v1/documents/{doc_id}/recall",
            change_route(pb::BusinessType::Revoke),
        )
        .route(
            "/v1/documents/{doc_id}/update",
            change_route(pb::BusinessType::Update),
        )
        .route(
            "/v1/documents/{doc_id}/replace",
            change_route(pb::BusinessType::Replace),
        )
        .route("/v1/sent", get(sent_list))
        .route("/v1/uploads/{upload_id}", get(upload_status).put(upload))
        .route("/v1/inbox", get(inbox))
        .route("/v1/inbox/{doc_id}", get(received))
        .route("/v1/inbox/{doc_id}/attachments/{index}", get(attachment))
        .route("/v1/inbox/{doc_id}/edxml", get(export_edxml))
        .route("/v1/inbox/{doc_id}/ack", post(ack))
        .route("/v1/inbox/{doc_id}/nack", post(nack))
        .route("/v1/inbox/{doc_id}/status", post(status))
        .route("/v1/counts", get(counts))
        .route("/v1/edxml", post(import_edxml))
        .route("/v1/directory", get(directory))
        .route("/v1/directory/{organ}", get(agency))
        .route("/v1/events", get(events))
        // Every route above, before its body is read: an unknown caller is
        // not worth a message's worth of memory.
        .route_layer(axum::middleware::from_fn_with_state(
            cx.clone(),
            authenticated,
        ))
        .route("/v1/openapi.json", get(openapi))
        // JSON with base64 attachments and edXML packages may be as large as a
        // message (base64 adds a third); uploads stream and are not bound by this.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state, errors))
        .with_state(cx)
}

/// Every path the router serves, for the OpenAPI check.
pub const PATHS: &[&str] = &[
    "/v1/openapi.json",
    "/v1/documents",
    "/v1/documents/{doc_id}",
    "/v1/documents/{doc_id}/receipts",
    "/v1/documents/{doc_id}/edxml",
    "/v1/documents/{doc_id}/recall",
    "/v1/documents/{doc_id}/update",
    "/v1/documents/{doc_id}/replace",
    "/v1/sent",
    "/v1/uploads/{upload_id}",
    "/v1/inbox",
    "/v1/inbox/{doc_id}",
    "/v1/inbox/{doc_id}/attachments/{index}",
    "/v1/inbox/{doc_id}/edxml",
    "/v1/inbox/{doc_id}/ack",
    "/v1/inbox/{doc_id}/nack",
    "/v1/inbox/{doc_id}/status",
    "/v1/counts",
    "/v1/edxml",
    "/v1/directory",
    "/v1/directory/{organ}",
    "/v1/events",
];

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentIn {
    name: String,
    #[serde(default)]
    content_type: String,
    /// The bytes, base64 (small attachments).
    #[serde(default)]
    data_base64: Option<String>,
    /// Or an upload, by hex SHA-256 and size.
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    size: Option<u64>,
}

fn attachments_in(list: Vec<AttachmentIn>) -> Result<Vec<pb::Attachment>, ApiError> {
    list.into_iter()
        .map(|a| {
            let (data, sha256) = match (a.data_base64, a.sha256) {
                (Some(b), None) => (
                    base64::engine::general_purpose::STANDARD
                        .decode(b.as_bytes())
                        .map_err(|e| bad(format!("attachment {:?}: data_base64: {e}", a.name)))?,
                    Vec::new(),
                ),
                (None, Some(h)) if h.trim().is_empty() => {
                    return Err(bad(format!(
                        "attachment {:?}: sha256 is empty (the upload's digest, in hex)",
                        a.name
                    )));
                }
                (None, Some(_)) if a.size.is_none() => {
                    return Err(bad(format!(
                        "attachment {:?}: give size (the upload's bytes) with its sha256",
                        a.name
                    )));
                }
                (None, Some(h)) => (
                    Vec::new(),
                    hex::decode(&h)
                        .map_err(|e| bad(format!("attachment {:?}: sha256: {e}", a.name)))?,
                ),
                _ => {
                    return Err(bad(format!(
                        "attachment {:?}: give data_base64 or sha256",
                        a.name
                    )));
                }
            };
            Ok(pb::Attachment {
                name: a.name,
                content_type: a.content_type,
                data,
                sha256,
                size: a.size.unwrap_or(0),
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendIn {
    from: String,
    to: Vec<String>,
    subject: String,
    #[serde(default)]
    code_number: String,
    #[serde(default)]
    code_notation: String,
    #[serde(default)]
    priority: u32,
    #[serde(default)]
    due_at_ms: i64,
    #[serde(default)]
    doc_id: String,
    #[serde(default)]
    attachments: Vec<AttachmentIn>,
}

fn sent_json(r: pb::SendResponse) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({"doc_id": r.doc_id, "duplicate": r.duplicate})),
    )
        .into_response()
}

async fn send(State(cx): State<Ctx>, headers: HeaderMap, Json(b): Json<SendIn>) -> Res {
    let app = cx.may(&headers, &b.from)?;
    let attachments = cx.own_uploads(app, b.attachments).await?;
    let r = cx
        .svc
        .send(Request::new(pb::SendRequest {
            from: b.from,
            to: b.to,
            subject: b.subject,
            code_number: b.code_number,
            code_notation: b.code_notation,
            priority: b.priority,
            due_at_ms: b.due_at_ms,
            attachments,
            doc_id: b.doc_id,
            ..Default::default()
        }))
        .await?;
    Ok(sent_json(r.into_inner()))
}

async fn sent_status(State(cx): State<Ctx>, headers: HeaderMap, Path(doc_id): Path<String>) -> Res {
    let s = cx.may_sent(cx.app(&headers)?, &doc_id).await?;
    Ok(Json(crate::json::sent_document(&s)).into_response())
}

async fn receipts(State(cx): State<Ctx>, headers: HeaderMap, Path(doc_id): Path<String>) -> Res {
    let s = cx.may_sent(cx.app(&headers)?, &doc_id).await?;
    let r = cx
        .svc
        .get_receipts(Request::new(pb::GetReceiptsRequest {
            doc_id,
            from: s.from,
        }))
        .await?
        .into_inner();
    let enc = |e: &Option<pb::SignedEnvelope>| {
        e.as_ref().map(|e| {
            base64::engine::general_purpose::STANDARD.encode(prost::Message::encode_to_vec(e))
        })
    };
    Ok(Json(json!({
        "document_envelope_base64": enc(&r.document),
        "receipts": r.receipts.iter().map(|v| json!({
            "organ": v.organ,
            "type": crate::envelope::receipt_type(v.r#type).map(|t| t.as_str()).unwrap_or(""),
            "at_ms": v.at_ms,
            "signer": v.signer,
            "envelope_base64": enc(&v.envelope),
        })).collect::<Vec<_>>(),
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ChangeIn {
    reason: String,
    to: Vec<String>,
    add: Vec<String>,
    remove: Vec<String>,
    subject: Option<String>,
    code_number: String,
    code_notation: String,
    attachments: Vec<AttachmentIn>,
}

async fn change(
    cx: &Ctx,
    headers: &HeaderMap,
    doc_id: String,
    business: pb::BusinessType,
    b: ChangeIn,
) -> Res {
    let app = cx.app(headers)?;
    let target = cx.may_sent(app, &doc_id).await?;
    let attachments = cx.own_uploads(app, b.attachments).await?;
    let mut changes: Vec<pb::RecipientChange> = b
        .add
        .into_iter()
        .map(|organ| pb::RecipientChange { organ, added: true })
        .collect();
    changes.extend(b.remove.into_iter().map(|organ| pb::RecipientChange {
        organ,
        added: false,
    }));
    let r = cx
        .svc
        .send(Request::new(pb::SendRequest {
            from: target.from,
            to: b.to,
            subject: b.subject.unwrap_or_else(|| target.subject.clone()),
            code_number: b.code_number,
            code_notation: b.code_notation,
            priority: target.priority,
            attachments,
            business_type: business as i32,
            target_doc_id: doc_id,
            reason: b.reason,
            recipient_changes: changes,
            ..Default::default()
        }))
        .await?;
    Ok(sent_json(r.into_inner()))
}

/// `POST /v1/documents/{doc_id}/recall|update|replace`.
fn change_route(business: pb::BusinessType) -> axum::routing::MethodRouter<Ctx> {
    post(
        move |State(cx): State<Ctx>,
              headers: HeaderMap,
              Path(doc_id): Path<String>,
              Json(b): Json<ChangeIn>| async move {
            change(&cx, &headers, doc_id, business, b).await
        },
    )
}

#[derive(Deserialize)]
struct SentQuery {
    from: String,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    after: String,
}

async fn sent_list(State(cx): State<Ctx>, headers: HeaderMap, Query(q): Query<SentQuery>) -> Res {
    cx.may(&headers, &q.from)?;
    let r = cx
        .svc
        .list_sent(Request::new(pb::ListSentRequest {
            from: q.from,
            limit: q.limit,
            after: q.after,
        }))
        .await?
        .into_inner();
    Ok(Json(json!({
        "documents": r.documents.iter().map(crate::json::sent_document).collect::<Vec<_>>(),
        "next_after": Some(r.next_after).filter(|n| !n.is_empty()),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct UploadQuery {
    size: u64,
    #[serde(default)]
    offset: u64,
    /// The file's SHA-256 in hex, when the application knows it: other bytes
    /// are refused.
    #[serde(default)]
    sha256: Option<String>,
}

/// The node's id for upload `id` of application `app`: uploads are the
/// application's own (another one naming the same id neither resumes it, nor
/// finishes it with its own bytes, nor reads its digest).
fn app_upload_id(app: &App, id: &str) -> Result<String, ApiError> {
    let id: uuid::Uuid = id
        .parse()
        .map_err(|e| bad(format!("upload id {id:?} is not a UUID: {e}")))?;
    let d = Digest::of(format!("truc-rest-upload\0{}\0{id}", app.name).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.0[..16]);
    Ok(uuid::Uuid::new_v8(b).to_string())
}

/// `PUT /v1/uploads/{id}?size=N&offset=K` with the bytes from K as the body;
/// after a cut, `GET /v1/uploads/{id}` says where to resume.
async fn upload(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(upload_id): Path<String>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Res {
    let known_as = upload_id;
    let app = cx.app(&headers)?;
    let upload_id = app_upload_id(app, &known_as)?;
    let announce = match q.sha256.as_deref().map(str::trim) {
        None | Some("") => Vec::new(),
        Some(h) => hex::decode(h).map_err(|e| bad(format!("sha256: {e}")))?,
    };
    let mut offset = q.offset;
    let id = upload_id.clone();
    let size = q.size;
    // A first chunk without bytes says what the upload is (and finishes one
    // whose body has none: a zero-byte file, or the end of an upload whose
    // bytes are all durable already); the body's bytes follow.
    let first = pb::UploadChunk {
        upload_id,
        size,
        offset,
        data: Vec::new(),
        sha256: announce,
    };
    let chunks = body.into_data_stream().filter_map(move |frame| {
        let out = match frame {
            Ok(data) if data.is_empty() => None,
            Ok(data) => {
                let c = pb::UploadChunk {
                    upload_id: id.clone(),
                    size,
                    offset,
                    data: data.to_vec(),
                    sha256: Vec::new(),
                };
                offset += data.len() as u64;
                Some(Ok(c))
            }
            Err(e) => Some(Err(Status::cancelled(format!("request body: {e}")))),
        };
        std::future::ready(out)
    });
    let chunks = futures::stream::once(std::future::ready(Ok(first))).chain(chunks);
    // Refusals name the id the application chose, not the node's own.
    let r = crate::agency::upload(
        &cx.state,
        Box::pin(chunks),
        Some(&known_as),
        Some(&app.name),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"sha256": hex::encode(r.sha256), "size": r.size})),
    )
        .into_response())
}

async fn upload_status(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(upload_id): Path<String>,
) -> Res {
    let upload_id = app_upload_id(cx.app(&headers)?, &upload_id)?;
    let r = cx
        .svc
        .upload_status(Request::new(pb::UploadStatusRequest { upload_id }))
        .await?
        .into_inner();
    Ok(Json(json!({
        "offset": r.offset,
        "sha256": if r.sha256.is_empty() { Value::Null } else { hex::encode(r.sha256).into() },
    }))
    .into_response())
}

#[derive(Deserialize)]
struct InboxQuery {
    organ: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    after: u64,
}

async fn inbox(State(cx): State<Ctx>, headers: HeaderMap, Query(q): Query<InboxQuery>) -> Res {
    cx.may(&headers, &q.organ)?;
    let items = cx
        .svc
        .list_inbox(Request::new(pb::ListInboxRequest {
            organ: q.organ,
            include_acked: q.all,
            limit: q.limit,
            kind: q.kind,
            after: q.after,
        }))
        .await?
        .into_inner();
    Ok(Json(json!({
        "items": items.items.iter().map(crate::json::inbox_item).collect::<Vec<_>>(),
        "next_after": Some(items.next_after).filter(|n| *n != 0),
    }))
    .into_response())
}

async fn received(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(doc_id): Path<String>,
    Query(f): Query<FromQuery>,
) -> Res {
    let rec = cx.may_received(&headers, &doc_id, &f, "").await?;
    let r = cx
        .svc
        .get_document(Request::new(pb::GetDocumentRequest {
            doc_id: doc_id.clone(),
            from: rec.from,
            without_data: true,
        }))
        .await?
        .into_inner();
    let d = r.document.unwrap_or_default();
    Ok(Json(json!({
        "doc_id": d.doc_id, "from": d.from, "to": d.to, "subject": d.subject,
        "code_number": d.code_number, "code_notation": d.code_notation, "priority": d.priority,
        "created_at_ms": d.created_at_ms, "due_at_ms": d.due_at_ms, "received_at_ms": d.received_at_ms,
        "signer": d.signer, "delivered_to": d.delivered_to, "acked": d.acked,
        "business_type": crate::json::business_name(d.business_type), "target_doc_id": d.target_doc_id,
        "kind": d.kind,
        "status": d.status.as_ref().map(|s| json!({
            "code": s.code, "for_from": s.for_from, "for_doc_id": s.for_doc_id, "note": s.note, "staff": s.staff,
        })),
        "attachments": d.attachments.iter().enumerate().map(|(i, a)| json!({
            "index": i, "name": a.name, "content_type": a.content_type, "size": a.size,
            "sha256": hex::encode(&a.sha256),
            // With the sender: another may have used the same doc_id.
            "href": format!("/v1/inbox/{doc_id}/attachments/{i}?from={}", d.from),
        })).collect::<Vec<_>>(),
        "pdf_signatures": crate::json::pdf_checks(&d.pdf_signatures),
        "envelope_base64": r.envelope.map(|e| base64::engine::general_purpose::STANDARD.encode(prost::Message::encode_to_vec(&e))),
    }))
    .into_response())
}

async fn attachment(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path((doc_id, index)): Path<(String, u32)>,
    Query(f): Query<FromQuery>,
) -> Res {
    let rec = cx.may_received(&headers, &doc_id, &f, "").await?;
    let doc = cx
        .svc
        .get_document(Request::new(pb::GetDocumentRequest {
            doc_id: doc_id.clone(),
            from: rec.from.clone(),
            without_data: true,
        }))
        .await?
        .into_inner()
        .document
        .unwrap_or_default();
    let a = doc
        .attachments
        .get(index as usize)
        .cloned()
        .ok_or_else(|| {
            ApiError(Status::not_found(format!(
                "{doc_id} has no attachment {index}"
            )))
        })?;
    // A download cut part way resumes where it stopped (`Range: bytes=N-`).
    let range = match byte_range(&headers, a.size) {
        Ok(r) => r,
        Err(()) => {
            let mut r = ApiError(Status::out_of_range(format!(
                "the range asked starts past the end of {:?} ({} bytes)",
                a.name, a.size
            )))
            .into_response();
            if let Ok(v) = format!("bytes */{}", a.size).parse() {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let (start, len) = range.unwrap_or((0, a.size));
    let stream = cx
        .svc
        .get_attachment(Request::new(pb::GetAttachmentRequest {
            doc_id,
            from: rec.from,
            index,
            offset: start,
        }))
        .await?
        .into_inner()
        .scan(len, |left, c| {
            let out = match c {
                Ok(_) if *left == 0 => None,
                Ok(c) => {
                    let mut b = Bytes::from(c.data);
                    b.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= b.len() as u64;
                    Some(Ok(b))
                }
                Err(s) => Some(Err(std::io::Error::other(s.message().to_owned()))),
            };
            futures::future::ready(out)
        });
    // Checked where documents come in; one from before that check still downloads.
    let content_type = match crate::envelope::check_content_type(&a.content_type) {
        Ok(()) if !a.content_type.is_empty() => a.content_type.clone(),
        _ => "application/octet-stream".to_owned(),
    };
    let mut r = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::ACCEPT_RANGES, "bytes".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename*=UTF-8''{}",
                    urlencode(&truc_core::plain_file_name(&a.name))
                ),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = format!("bytes {start}-{}/{}", start + len - 1, a.size).parse() {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(r)
}

/// The one byte range a `Range` header asks of `size` bytes, as (start,
/// length): `bytes=N-`, `bytes=N-M`, `bytes=-K` (the last K). None for no
/// header or one this does not serve (several ranges, another unit): the
/// whole file, as HTTP allows. Err for a range past the end (416).
fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .filter(|s| !s.contains(','))
    else {
        return Ok(None);
    };
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(s), Ok(e)) if e >= s => (s, e.min(size.saturating_sub(1))),
        (Ok(s), Err(_)) if b.is_empty() => (s, size.saturating_sub(1)),
        // The last k bytes; none of them (k = 0) is unsatisfiable.
        (Err(_), Ok(0)) if a.is_empty() => return Err(()),
        (Err(_), Ok(k)) if a.is_empty() => (size.saturating_sub(k), size.saturating_sub(1)),
        _ => return Ok(None),
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end - start + 1)))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The package a document sent from here was imported from, byte for byte.
async fn sent_edxml(State(cx): State<Ctx>, headers: HeaderMap, Path(doc_id): Path<String>) -> Res {
    let s = cx.may_sent(cx.app(&headers)?, &doc_id).await?;
    let r = cx
        .svc
        .export_edxml(Request::new(pb::ExportEdxmlRequest {
            doc_id,
            from: s.from,
            original: true,
        }))
        .await?
        .into_inner();
    Ok((
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        r.package,
    )
        .into_response())
}

async fn export_edxml(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(doc_id): Path<String>,
    Query(f): Query<FromQuery>,
) -> Res {
    let rec = cx.may_received(&headers, &doc_id, &f, "").await?;
    let r = cx
        .svc
        .export_edxml(Request::new(pb::ExportEdxmlRequest {
            doc_id,
            from: rec.from,
            original: false,
        }))
        .await?
        .into_inner();
    Ok((
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        r.package,
    )
        .into_response())
}

/// `?from=`: the sender, when two used one doc_id for this application's
/// agencies.
#[derive(Deserialize, Default)]
#[serde(default)]
struct FromQuery {
    from: Option<String>,
}

/// A received document an application may read and answer.
struct Received {
    /// Its agencies that received it.
    organs: Vec<String>,
    /// Who sent it.
    from: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct AckIn {
    organ: String,
    reason: String,
}

fn json_or_default<T: Default + for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    // No body, `null` and `{}` all mean "the defaults".
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice::<Option<T>>(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| bad(format!("body: {e}")))
}

async fn ack(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(doc_id): Path<String>,
    Query(f): Query<FromQuery>,
    body: Bytes,
) -> Res {
    let b: AckIn = json_or_default(&body)?;
    let rec = cx.may_received(&headers, &doc_id, &f, &b.organ).await?;
    let mut acked = Vec::new();
    for organ in &rec.organs {
        acked.extend(
            cx.svc
                .ack(Request::new(pb::AckRequest {
                    doc_id: doc_id.clone(),
                    from: rec.from.clone(),
                    organ: organ.clone(),
                }))
                .await?
                .into_inner()
                .acked,
        );
    }
    Ok(Json(json!({"acked": acked})).into_response())
}

async fn nack(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(doc_id): Path<String>,
    Query(f): Query<FromQuery>,
    body: Bytes,
) -> Res {
    let b: AckIn = json_or_default(&body)?;
    let rec = cx.may_received(&headers, &doc_id, &f, &b.organ).await?;
    let mut nacked = Vec::new();
    for organ in &rec.organs {
        nacked.extend(
            cx.svc
                .nack(Request::new(pb::NackRequest {
                    doc_id: doc_id.clone(),
                    from: rec.from.clone(),
                    organ: organ.clone(),
                    reason: b.reason.clone(),
                }))
                .await?
                .into_inner()
                .acked,
        );
    }
    Ok(Json(json!({"nacked": nacked})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusIn {
    code: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    staff: String,
    #[serde(default)]
    organ: String,
}

/// A business status about a document: 01–06, 15, 16 by a recipient (the document
/// is in its inbox), 13 by the original sender (the document is in its sent list).
async fn status(
    State(cx): State<Ctx>,
    headers: HeaderMap,
    Path(doc_id): Path<String>,
    Query(f): Query<FromQuery>,
    Json(b): Json<StatusIn>,
) -> Res {
    let (organ, from) = if b.code == "13" {
        (
            cx.may_sent(cx.app(&headers)?, &doc_id).await?.from,
            String::new(),
        )
    } else {
        let rec = cx.may_received(&headers, &doc_id, &f, &b.organ).await?;
        let organ = rec.organs.into_iter().next().unwrap_or_default();
        (organ, rec.from)
    };
    let r = cx
        .svc
        .reply(Request::new(pb::ReplyRequest {
            doc_id,
            from,
            organ,
            code: b.code,
            note: b.note,
            staff: b.staff,
        }))
        .await?
        .into_inner();
    Ok(sent_json(r))
}

#[derive(Deserialize)]
struct OrganQuery {
    organ: String,
}

async fn counts(State(cx): State<Ctx>, headers: HeaderMap, Query(q): Query<OrganQuery>) -> Res {
    cx.may(&headers, &q.organ)?;
    let r = cx
        .svc
        .counts(Request::new(pb::CountsRequest { organ: q.organ }))
        .await?
        .into_inner();
    Ok(Json(json!({"documents": r.documents, "statuses": r.statuses})).into_response())
}

async fn import_edxml(State(cx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Res {
    let app = cx.app(&headers)?.clone();
    let r = cx.svc.import(body.to_vec(), Some(app.organs)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"doc_id": r.doc_id, "kind": r.kind, "duplicate": r.duplicate})),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PrefixQuery {
    prefix: String,
}

fn agency_json(a: &pb::AgencyEntry) -> Value {
    json!({"organ": a.organ, "name": a.name, "parent": a.parent, "node": a.node})
}

async fn directory(State(cx): State<Ctx>, headers: HeaderMap, Query(q): Query<PrefixQuery>) -> Res {
    cx.app(&headers)?;
    let r = cx
        .svc
        .list_agencies(Request::new(pb::ListAgenciesRequest { prefix: q.prefix }))
        .await?
        .into_inner();
    Ok(Json(json!({"version": r.version, "agencies": r.agencies.iter().map(agency_json).collect::<Vec<_>>()})).into_response())
}

async fn agency(State(cx): State<Ctx>, headers: HeaderMap, Path(organ): Path<String>) -> Res {
    cx.app(&headers)?;
    let a = cx
        .svc
        .lookup_agency(Request::new(pb::LookupAgencyRequest { organ }))
        .await?
        .into_inner();
    Ok(Json(agency_json(&a)).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    organ: String,
    #[serde(default)]
    after: Option<u64>,
}

/// Server-sent events: `id:` is the event id; reconnect with `Last-Event-ID`.
async fn events(State(cx): State<Ctx>, headers: HeaderMap, Query(q): Query<EventsQuery>) -> Res {
    cx.may(&headers, &q.organ)?;
    let organ: OrganId = q.organ.parse().map_err(|e| bad(format!("organ: {e}")))?;
    // A cursor that cannot be read would replay everything: refused.
    let after = match headers.get("last-event-id").filter(|v| !v.is_empty()) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| bad("Last-Event-ID: not an event id (a whole number)"))?,
        None => q.after.unwrap_or(0),
    };
    let stream = crate::agency::event_stream(cx.state.clone(), organ, after).map(|r| {
        Ok::<_, Infallible>(match r {
            Ok(e) => {
                let data = json!({
                    "id": e.id, "at_ms": e.at_ms, "organ": e.organ, "kind": e.kind, "doc_id": e.doc_id,
                    "from": e.from, "detail": e.detail, "subject": e.subject, "recipient": e.recipient,
                    // A document's own: of an arrival only.
                    "business_type": (e.kind == "arrived" && e.detail == "document").then(|| crate::json::business_name(e.business_type)),
                    "target_doc_id": e.target_doc_id,
                });
                Event::default()
                    .id(e.id.to_string())
                    .event(e.kind.clone())
                    .data(data.to_string())
            }
            // The last event of the stream: why it ends (reconnect to resume).
            Err(s) => {
                let (_, code) = http_status(s.code());
                Event::default()
                    .event("error")
                    .data(json!({"code": code, "message": s.message()}).to_string())
            }
        })
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;
    use tonic::Status;

    use super::{App, AttachmentIn, app_upload_id, attachments_in};
    use crate::error::{NodeError, Refusal};
    use crate::state::testing::Fixture;

    /// Upload ids are mapped per application (the REST process test
    /// `an_upload_is_its_applications_own` shows two applications apart).
    #[test]
    fn upload_ids_are_mapped_per_application() {
        let app = |name: &str| App {
            name: name.into(),
            token_sha256: [0; 32],
            organs: Vec::new(),
        };
        let id = "0196f1d2-7c3a-7e21-9a4b-5c6d7e8f9012";
        let id_of = |name: &str| app_upload_id(&app(name), id).ok().unwrap();
        let a = id_of("qlvb-vpcp");
        assert_eq!(a, id_of("qlvb-vpcp"));
        assert_ne!(a, id_of("qlvb-khac"));
        assert!(app_upload_id(&app("qlvb-vpcp"), "../x").is_err());
    }

    /// An attachment naming an upload by an empty digest is refused, not
    /// sent as an empty file.
    #[test]
    fn an_empty_upload_digest_is_refused() {
        let e = attachments_in(vec![AttachmentIn {
            name: "qd.pdf".into(),
            content_type: String::new(),
            data_base64: None,
            sha256: Some(String::new()),
            size: Some(5_000_000),
        }])
        .err()
        .unwrap();
        assert!(
            e.0.message().contains("sha256 is empty"),
            "{}",
            e.0.message()
        );
    }

    #[test]
    fn a_quota_is_429_with_retry_after_and_a_request_over_a_limit_413() {
        let answer = |e: NodeError| super::ApiError(Status::from(e)).into_response();
        let quota = answer(Refusal::exhausted("outbox full (quotas.max_outbox)").into());
        assert_eq!(quota.status(), 429);
        assert_eq!(quota.headers()["retry-after"], "1");
        let over = answer(Refusal::over_limit("too big (limits.max_document_bytes)").into());
        assert_eq!(over.status(), 413);
        assert!(!over.headers().contains_key("retry-after"));
    }

    #[test]
    fn the_openapi_document_describes_every_path_served() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in super::PATHS {
            assert!(
                paths.contains_key(*p),
                "{p} is served but not in openapi.json"
            );
        }
        assert_eq!(
            paths.len(),
            super::PATHS.len(),
            "openapi.json lists paths that are not served"
        );
    }

    #[test]
    fn every_schema_reference_in_the_openapi_document_resolves() {
        fn walk(v: &serde_json::Value, doc: &serde_json::Value, n: &mut usize) {
            match v {
                serde_json::Value::Object(o) => {
                    if let Some(r) = o.get("$ref").and_then(|r| r.as_str()) {
                        let target = r
                            .strip_prefix("#/")
                            .unwrap()
                            .split('/')
                            .fold(doc, |at, k| &at[k]);
                        assert!(target.is_object(), "{r} does not resolve");
                        *n += 1;
                    }
                    o.values().for_each(|x| walk(x, doc, n));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, doc, n)),
                _ => {}
            }
        }
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let mut n = 0;
        walk(&doc, &doc, &mut n);
        assert!(n > 20, "{n} references");
    }

    /// Mistakes an integrator makes in a request's body are refused with
    /// what to do, and nothing is sent: a misspelt field (which would have
    /// sent the document without what it named), an upload named without
    /// its size, a body over the limit.
    #[tokio::test]
    async fn a_misspelt_field_an_upload_without_its_size_and_an_oversize_body_are_refused_clearly()
    {
        use tower::ServiceExt;
        let mut f = Fixture::new();
        f.limits.max_message_bytes = 1024;
        let edge = f.edge(std::sync::Arc::new(truc_store::MemoryStore::new()));
        let app = App {
            name: "qlvb".into(),
            token_sha256: truc_store::Digest::of(b"t0k3n").0,
            organs: vec!["000.00.00.G22".parse().unwrap()],
        };
        let router = super::router(edge.clone(), vec![app]);
        let post = |body: String| {
            axum::http::Request::post("/v1/documents")
                // The scheme in any case.
                .header("authorization", "bearer t0k3n")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .unwrap()
        };
        let answer = |r: axum::response::Response| async move {
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        let ask = |body: String| {
            let router = router.clone();
            async move { answer(router.oneshot(post(body)).await.unwrap()).await }
        };
        let doc = |extra: &str| {
            format!(
                r#"{{"from": "000.00.00.G22", "to": ["000.00.00.H41"], "subject": "Công văn"{extra}}}"#
            )
        };
        let (status, body) = ask(doc(
            r#", "attachment": [{"name": "a.pdf", "data_base64": "JVBERg=="}]"#,
        ))
        .await;
        assert_eq!(status, axum::http::StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("unknown field `attachment`"), "{body}");
        let (status, body) = ask(doc(
            r#", "attachments": [{"name": "a.pdf", "data_base64": "JVBERg==", "sise": 4}]"#,
        ))
        .await;
        assert_eq!(status, axum::http::StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("unknown field `sise`"), "{body}");
        let (status, body) = ask(doc(&format!(
            r#", "attachments": [{{"name": "a.pdf", "sha256": "{}"}}]"#,
            "ab".repeat(32)
        )))
        .await;
        assert_eq!(status, axum::http::StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body.contains(
                r#"attachment \"a.pdf\": give size (the upload's bytes) with its sha256"#
            ),
            "{body}"
        );
        let (status, body) = ask(doc(&format!(
            r#", "code_number": "{}""#,
            "1".repeat(200_000)
        )))
        .await;
        assert_eq!(status, axum::http::StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(
            body.contains("over this edge's limit of 66900 bytes")
                && body.contains("PUT /v1/uploads/{uuid}"),
            "{body}"
        );
        let sent = edge
            .list_sent(&"000.00.00.G22".parse().unwrap(), 10)
            .unwrap();
        assert!(sent.is_empty(), "{sent:?}");
        // A verb the route does not have names those it has.
        let r = router
            .clone()
            .oneshot(
                axum::http::Request::delete("/v1/counts")
                    .header("authorization", "Bearer t0k3n")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let allow = r.headers().get("allow").cloned();
        let (status, body) = answer(r).await;
        assert_eq!(status, axum::http::StatusCode::METHOD_NOT_ALLOWED, "{body}");
        assert_eq!(allow.unwrap(), "GET,HEAD");
        assert!(
            body.contains("method not allowed (allowed: GET,HEAD)"),
            "{body}"
        );
    }

    #[test]
    fn a_range_header_is_read_as_one_byte_range_or_the_whole_file() {
        let range = |v: &str, size| {
            let mut h = axum::http::HeaderMap::new();
            h.insert("range", v.parse().unwrap());
            super::byte_range(&h, size)
        };
        assert_eq!(range("bytes=10-", 100), Ok(Some((10, 90))));
        assert_eq!(range("bytes=10-19", 100), Ok(Some((10, 10))));
        assert_eq!(range("bytes=90-500", 100), Ok(Some((90, 10))));
        assert_eq!(range("bytes=-5", 100), Ok(Some((95, 5))));
        assert_eq!(range("bytes=100-", 100), Err(()));
        assert_eq!(range("bytes=-0", 100), Err(()));
        // Served whole: several ranges, another unit, nonsense.
        for whole in ["bytes=0-1,5-6", "items=1-2", "bytes=5-2", "bytes=x-"] {
            assert_eq!(range(whole, 100), Ok(None), "{whole}");
        }
        assert_eq!(
            super::byte_range(&axum::http::HeaderMap::new(), 100),
            Ok(None)
        );
    }

    /// A caller without a known token is refused before its body is read: a
    /// body that never ends does not hold the answer.
    #[tokio::test]
    async fn an_unknown_caller_is_refused_before_its_body_is_read() {
        use tower::ServiceExt;
        let f = Fixture::new();
        let edge = f.edge(std::sync::Arc::new(truc_store::MemoryStore::new()));
        let router = super::router(edge, Vec::new());
        let endless = axum::body::Body::from_stream(futures::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >());
        let req = axum::http::Request::post("/v1/documents")
            .header("authorization", "Bearer not-a-token")
            .header("content-type", "application/json")
            .body(endless)
            .unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(60), router.oneshot(req))
            .await
            .expect("answered without the body")
            .unwrap();
        assert_eq!(r.status(), axum::http::StatusCode::UNAUTHORIZED);
        // The API's description stays open to anyone.
        let f = Fixture::new();
        let edge = f.edge(std::sync::Arc::new(truc_store::MemoryStore::new()));
        let req = axum::http::Request::get("/v1/openapi.json")
            .body(axum::body::Body::empty())
            .unwrap();
        let r = super::router(edge, Vec::new()).oneshot(req).await.unwrap();
        assert_eq!(r.status(), axum::http::StatusCode::OK);
    }
}
