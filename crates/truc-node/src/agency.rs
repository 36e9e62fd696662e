//! The agency API (gRPC): what document software and the CLI call on their edge.

use std::sync::{Arc, atomic::Ordering};

use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use truc_core::{BusinessType, DeliveryState, DocId, OrganId};
use truc_proto::v1::{self as pb, agency_server::Agency};
use truc_store::{Digest, record::SentRecord};

use crate::{
    envelope,
    error::{NodeError, Refusal, blocking},
    state::{Accepted, Body, NodeState, Reply, Submission, SubmittedAttachment},
};

#[derive(Clone)]
pub struct AgencyService {
    state: Arc<NodeState>,
}

/// Where a node keeps the token of its gRPC agency API: `run/agency.token`
/// under its data directory, made at its first start, readable and
/// writable by the node's user only. Whoever can read it may act for every
/// agency of the edge (as whoever can read their signing keys may sign for
/// them); other users of the machine cannot, although the API listens on
/// loopback. Applications of their own use the REST API with their tokens.
pub fn token_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("run").join("agency.token")
}

/// Where a node serves its gRPC agency API on a Unix socket of mode 600,
/// beside its TCP port; the CLI connects there.
pub fn socket_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("run").join("agency.sock")
}

/// A path a Unix socket at `path` may be bound or dialled by. `sun_path`
/// holds 107 bytes: a longer `path` (a deep data_dir) is reached as
/// `/proc/self/fd/N/<file name>` through its directory, opened here and held
/// open by the returned value, which the caller keeps until its bind or
/// connect has returned. The socket is the same file either way.
#[derive(Debug)]
pub struct SocketDialPath {
    pub path: std::path::PathBuf,
    _dir: Option<std::fs::File>,
}

/// [`SocketDialPath`] of `path`: itself when it fits, else through its
/// directory; an error naming both limits where `/proc` is not there (not
/// Linux) or the file name alone does not fit.
pub fn socket_dial_path(path: &std::path::Path) -> std::io::Result<SocketDialPath> {
    use std::os::fd::AsRawFd;
    const SUN_PATH_MAX: usize = 107;
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok(SocketDialPath {
            path: path.to_owned(),
            _dir: None,
        });
    }
    let too_long = |why: String| {
        std::io::Error::other(format!(
            "the socket {} is {} bytes long, over the {SUN_PATH_MAX} a Unix socket's path may have, and {why}: give the node a shorter data_dir",
            path.display(),
            path.as_os_str().len()
        ))
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(too_long("it names no file in a directory".into()));
    };
    // Not a length problem: said as it is.
    let dir = std::fs::File::open(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let short = std::path::Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    if short.as_os_str().len() > SUN_PATH_MAX || !short.parent().is_some_and(|d| d.is_dir()) {
        return Err(too_long(
            "it cannot be shortened through /proc/self/fd".into(),
        ));
    }
    Ok(SocketDialPath {
        path: short,
        _dir: Some(dir),
    })
}

/// Makes the node's `run/` (its token, its socket) a directory only its
/// user may enter, mode 700, before anything is written there. One that
/// cannot be made so (another user's: a restore by root, a volume's owner)
/// or that is not a plain directory (a symlink) is moved aside as
/// `run.stale-<unix ms>`, with a WARN line, and made anew: what it holds is
/// made again at each start.
pub fn prepare_run_dir(data_dir: &std::path::Path) -> Result<(), NodeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = data_dir.join("run");
    let private = || std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    let why = match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => match private() {
            Ok(()) => return Ok(()),
            Err(e) => Some(format!("it cannot be made the node user's only: {e}")),
        },
        Ok(_) => Some("it is not a directory".to_owned()),
        Err(_) => None,
    };
    if let Some(why) = why {
        let aside = data_dir.join(format!("run.stale-{}", crate::state::now_ms()));
        std::fs::rename(&dir, &aside).map_err(NodeError::io(format!(
            "moving {} aside ({why})",
            dir.display()
        )))?;
        tracing::warn!(dir = %dir.display(), moved_to = %aside.display(), %why, "the node's run directory was moved aside and made anew");
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(NodeError::io(format!("creating {}", dir.display())))?;
    // The mode asked for at creation is cut by the umask.
    private().map_err(NodeError::io(format!("making {} mode 700", dir.display())))
}

/// The token of the gRPC agency API (64 hex digits), from [`token_path`].
/// A token is kept across starts while its file is a plain file only the
/// node's user may read; a missing, empty or damaged one, a symlink, or one
/// others may read (a volume mounted with group rights, say) is replaced by
/// a new token, written to a temporary file of mode 600 and renamed into
/// place, so that no start leaves a half-written file behind.
pub fn load_or_make_token(data_dir: &std::path::Path) -> Result<String, NodeError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt, os::unix::fs::PermissionsExt};
    let path = token_path(data_dir);
    let shown = path.display().to_string();
    let kept = match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o077 == 0 => {
            read_token(&path).ok().map(Ok)
        }
        Ok(m) => Some(Err(if m.is_file() {
            format!(
                "others may read it (mode {:o})",
                m.permissions().mode() & 0o777
            )
        } else {
            "it is not a plain file".to_owned()
        })),
        Err(_) => None,
    };
    let why = match kept {
        Some(Ok(token)) => return Ok(token),
        Some(Err(why)) => Some(why),
        None => None,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(NodeError::io(format!("creating {}", dir.display())))?;
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| NodeError::Other("no randomness for the agency API's token".into()))?;
    let token = hex::encode(bytes);
    let tmp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(NodeError::io(format!("creating {}", tmp.display())))?;
    f.write_all(token.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(NodeError::io(format!("writing {shown}")))?;
    if let Some(why) = why {
        tracing::warn!(file = %shown, %why, "the agency API's token was replaced: clients read the new one");
    }
    Ok(token)
}

/// The token in `path` ([`token_path`]), as a client reads it: 32
/// characters at least.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let token = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = token.trim();
    if token.len() < 32 {
        return Err(format!("{} holds no token", path.display()));
    }
    Ok(token.to_owned())
}

/// The token of an `Authorization: Bearer <token>` value, the scheme in
/// any case (RFC 6750, RFC 9110 §11.1), spaces around the token dropped.
pub fn bearer(value: &str) -> Option<&str> {
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
}

/// The check of every call to the gRPC agency API: `authorization: Bearer
/// <token>` with the token of [`load_or_make_token`]; UNAUTHENTICATED
/// otherwise, before the request is read. (Digests are compared: their
/// bytes tell nothing of the token.)
pub fn authorize(
    token: &str,
    path: &std::path::Path,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
    let want = Digest::of(token.as_bytes());
    let path = path.display().to_string();
    move |req: Request<()>| {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        match given {
            Some(t) if Digest::of(t.as_bytes()) == want => Ok(req),
            Some(_) => Err(Status::unauthenticated(format!(
                "wrong token for the agency API: it is the one in {path}"
            ))),
            None => Err(Status::unauthenticated(format!(
                "the agency API takes `authorization: Bearer <token>`, the token in {path} (readable by the node's user; truc reads it there)"
            ))),
        }
    }
}

impl AgencyService {
    /// Imports an edXML package. `allowed`, when given, is the set of agencies
    /// the caller may act for: a package from any other is refused before it
    /// touches the store.
    pub async fn import(
        &self,
        package: Vec<u8>,
        allowed: Option<Vec<OrganId>>,
    ) -> Result<pb::ImportEdxmlResponse, Status> {
        let limits = truc_edxml::Limits {
            max_package_bytes: self.state.limits.max_message_bytes,
            max_attachments: self.state.limits.max_attachments,
            max_attachment_bytes: self
                .state
                .limits
                .max_attachment_bytes
                .min(self.state.limits.max_message_bytes as u64),
            // Decoded in memory before anything is stored: a package of at
            // most `max_message_bytes` may hold four times that unzipped.
            max_total_attachment_bytes: self
                .state
                .limits
                .max_document_bytes
                .min(4 * self.state.limits.max_message_bytes as u64),
            ..Default::default()
        };
        let st = self.state.clone();
        let (id, kind, ticket, accepted, from, not_kept) = blocking(move || {
            let p = truc_edxml::parse(&package, &limits).map_err(|e| {
                st.stats.edxml_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(element = %e.element, reason = %e.reason, bytes = package.len(), "edXML package refused");
                Refusal::invalid(format!("edXML {e}"))
            })?;
            let from: OrganId = p
                .from
                .organ_id
                .parse()
                .map_err(|e| Refusal::invalid(format!("edXML From/OrganId: {e}")))?;
            if let Some(allowed) = &allowed
                && !allowed.contains(&from)
            {
                return Err(NodeError::Refused(Refusal::denied(format!(
                    "this application may not act for {from}"
                ))));
            }
            let known = |from: &str, id: &DocId| st.knows_doc(from, id);
            match crate::edxml::to_truc(p, known)? {
                crate::edxml::Imported::Document(sub) => {
                    // Room for the original too, before the document is taken:
                    // a full disk then refuses the import as a whole.
                    st.blobs
                        .check_space(package.len() as u64, st.storage.min_free_bytes)?;
                    let (id, a) = st.submit(*sub)?;
                    // The original is durable with the document before
                    // "imported"; not kept, the document is taken all the same.
                    match st.keep_original(&from, &id, &package) {
                        Ok(kept) => Ok((id, "document", kept.max(a.ticket()), a, from, None)),
                        Err(e) => Ok((id, "document", a.ticket(), a, from, Some(e))),
                    }
                }
                crate::edxml::Imported::Status(reply) => {
                    let (id, a) = st.reply(reply)?;
                    Ok((id, "status", a.ticket(), a, from, None))
                }
            }
        })
        .await
        ?;
        self.state.durable(ticket).await.map_err(Status::from)?;
        if let Some(e) = not_kept {
            // Durable and queued: an error that said only "disk full" would
            // read as "not sent".
            tracing::warn!(doc_id = %id, %from, error = %e, "edXML document taken, its original package not kept");
            let why = |e: &dyn std::fmt::Display| {
                format!(
                    "{id} was taken and will be sent, but its original edXML package was not kept ({e}); import it again to keep it"
                )
            };
            return Err(match e {
                NodeError::Refused(mut r) => {
                    r.reason = why(&r.reason);
                    NodeError::Refused(r)
                }
                e => NodeError::Other(why(&e)),
            }
            .into());
        }
        tracing::info!(doc_id = %id, %from, kind, "edXML package imported");
        Ok(pb::ImportEdxmlResponse {
            doc_id: id.to_string(),
            kind: kind.into(),
            duplicate: matches!(accepted, Accepted::Duplicate(_)),
        })
    }

    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }

    fn local_organ(&self, s: &str) -> Result<OrganId, Status> {
        let organ: OrganId = parse("organ", s)?;
        if !self.state.routing().is_local(&organ) {
            return Err(Status::not_found(format!(
                "this edge does not serve agency {organ}"
            )));
        }
        Ok(organ)
    }
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, Status>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>()
        .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

/// An organ id a request may leave empty (none named).
pub(crate) fn opt_organ(what: &str, s: &str) -> Result<Option<OrganId>, Status> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse(what, s).map(Some)
    }
}

pub use crate::json::state_name;

fn state_pb(s: u32) -> i32 {
    match DeliveryState::from_u8(s as u8) {
        Some(DeliveryState::Queued) => pb::DeliveryState::Queued as i32,
        Some(DeliveryState::AtHub) => pb::DeliveryState::AtHub as i32,
        Some(DeliveryState::Delivered) => pb::DeliveryState::Delivered as i32,
        Some(DeliveryState::Acked) => pb::DeliveryState::Acked as i32,
        Some(DeliveryState::Failed) => pb::DeliveryState::Failed as i32,
        None => pb::DeliveryState::Unspecified as i32,
    }
}

/// The sent-list view of one document.
pub fn status_view(rec: SentRecord, deadline_for: impl Fn(u32) -> u64) -> pb::GetStatusResponse {
    let mut deadline = rec.created_at_ms + deadline_for(rec.priority) as i64;
    if rec.due_at_ms > 0 && rec.due_at_ms < deadline {
        deadline = rec.due_at_ms;
    }
    pb::GetStatusResponse {
        doc_id: rec.doc_id,
        from: rec.from,
        subject: rec.subject,
        created_at_ms: rec.created_at_ms,
        business_type: rec.business_type,
        target_doc_id: rec.target_doc_id,
        priority: rec.priority,
        deadline_ms: deadline,
        recipients: rec
            .recipients
            .into_iter()
            .map(|r| pb::RecipientStatus {
                organ: r.organ,
                state: state_pb(r.state),
                updated_at_ms: r.updated_at_ms,
                detail: r.detail,
                last_status: r.last_status,
                last_status_at_ms: r.last_status_at_ms,
                status_note: r.status_note,
                accepted_at_ms: r.accepted_at_ms,
                delivered_at_ms: r.delivered_at_ms,
                acked_at_ms: r.acked_at_ms,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Agency for AgencyService {
    async fn send(
        &self,
        req: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let r = req.into_inner();
        let sub = Submission {
            api_checks: true,
            from: r.from,
            to: r.to,
            subject: r.subject,
            code_number: r.code_number,
            code_notation: r.code_notation,
            priority: r.priority,
            due_at_ms: r.due_at_ms,
            attachments: r
                .attachments
                .into_iter()
                .map(|a| {
                    let body = if a.sha256.is_empty() {
                        // A size given must be the bytes carried: an upload's
                        // digest lost on the way is not a signed empty file.
                        if a.size != 0 && a.size != a.data.len() as u64 {
                            return Err(Status::invalid_argument(format!(
                                "attachment {:?} declares {} bytes but carries {} (and no sha256 of an upload)",
                                a.name,
                                a.size,
                                a.data.len()
                            )));
                        }
                        Ok(Body::Inline(a.data))
                    } else {
                        Digest::from_slice(&a.sha256)
                            .map(|d| Body::Stored(d, a.size))
                            .ok_or_else(|| {
                                Status::invalid_argument(format!(
                                    "attachment {:?}: sha256 is not 32 bytes",
                                    a.name
                                ))
                            })
                    };
                    body.map(|body| SubmittedAttachment {
                        name: a.name,
                        content_type: a.content_type,
                        body,
                    })
                })
                .collect::<Result<_, _>>()?,
            doc_id: Some(r.doc_id).filter(|s| !s.is_empty()),
            business_type: r.business_type,
            target_doc_id: r.target_doc_id,
            reason: r.reason,
            changes: r
                .recipient_changes
                .into_iter()
                .map(|c| (c.organ, c.added))
                .collect(),
            meta: Default::default(),
        };
        let st = self.state.clone();
        let (doc_id, accepted) = blocking(move || st.submit(sub)).await?;
        // Invariant 1: the application hears "sent" only once the outbox is fsynced.
        self.state
            .durable(accepted.ticket())
            .await
            .map_err(Status::from)?;
        self.state.hooks.before_ack("send reply");
        Ok(Response::new(pb::SendResponse {
            doc_id: doc_id.to_string(),
            duplicate: matches!(accepted, Accepted::Duplicate(_)),
        }))
    }

    async fn list_inbox(
        &self,
        req: Request<pb::ListInboxRequest>,
    ) -> Result<Response<pb::ListInboxResponse>, Status> {
        let r = req.into_inner();
        let organ = self.local_organ(&r.organ)?;
        if !matches!(r.kind.as_str(), "" | "document" | "status") {
            return Err(Status::invalid_argument(format!(
                "kind {:?} is not document or status",
                r.kind
            )));
        }
        let max = self.state.limits.max_list;
        let limit = if r.limit == 0 {
            max
        } else {
            (r.limit as usize).min(max)
        };
        let st = self.state.clone();
        let items = blocking(move || {
            let items = st.inbox(&organ, r.include_acked, &r.kind, limit, r.after)?;
            // What the PDF checks found so far (they run as documents arrive).
            let pdfs = items
                .iter()
                .map(|(_, e)| {
                    if e.attachments == 0 {
                        return Ok(String::new());
                    }
                    Ok(st
                        .pdf_checks_recorded(&e.from, &e.doc_id)?
                        .map(|c| crate::state::pdf_summary(&c))
                        .unwrap_or_default())
                })
                .collect::<Result<Vec<String>, NodeError>>()?;
            Ok(items.into_iter().zip(pdfs).collect::<Vec<_>>())
        })
        .await?;
        // A full page may have more after it: where the next one starts.
        let next_after = items
            .last()
            .filter(|_| items.len() >= limit)
            .map_or(0, |((seq, _), _)| *seq);
        Ok(Response::new(pb::ListInboxResponse {
            next_after,
            items: items
                .into_iter()
                .map(|((seq, e), pdf_signatures)| pb::InboxItem {
                    seq,
                    pdf_signatures,
                    doc_id: e.doc_id,
                    from: e.from,
                    organ: e.organ,
                    subject: e.subject,
                    received_at_ms: e.received_at_ms,
                    acked: e.acked,
                    priority: e.priority,
                    code_number: e.code_number,
                    code_notation: e.code_notation,
                    attachments: e.attachments,
                    kind: e.kind,
                    status_code: e.status_code,
                    for_doc_id: e.for_doc_id,
                    note: e.note,
                    business_type: e.business_type,
                    target_doc_id: e.target_doc_id,
                    replied: e.replied,
                    recalled: e.recalled,
                    nacked: e.nacked,
                })
                .collect(),
        }))
    }

    async fn get_document(
        &self,
        req: Request<pb::GetDocumentRequest>,
    ) -> Result<Response<pb::GetDocumentResponse>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from = opt_organ("from", &r.from)?;
        let st = self.state.clone();
        let without_data = r.without_data;
        let resp = blocking(move || {
            let (envelope, doc, entries) = st.received_envelope(&doc_id, from.as_ref())?;
            let header = <pb::Header as prost::Message>::decode(envelope.header_bytes.as_slice())
                .map_err(|e| NodeError::Other(format!("stored header: {e}")))?;
            let mut data = if without_data {
                Vec::new()
            } else {
                attachments_in_one_message(
                    &st,
                    &doc,
                    &header,
                    "use without_data and GetAttachment",
                )?
            };
            data.resize(header.attachments.len(), Vec::new());
            let attachments = header
                .attachments
                .iter()
                .zip(data)
                .map(|(a, data)| pb::Attachment {
                    name: a.name.clone(),
                    content_type: a.content_type.clone(),
                    data,
                    sha256: a.sha256.clone(),
                    size: a.size,
                })
                .collect();
            let document = pb::DocumentView {
                doc_id: header.doc_id.clone(),
                from: header.from.clone(),
                to: header.to.clone(),
                subject: header.subject.clone(),
                code_number: header.code_number.clone(),
                code_notation: header.code_notation.clone(),
                priority: header.priority,
                created_at_ms: header.created_at_ms,
                due_at_ms: header.due_at_ms,
                received_at_ms: doc.received_at_ms,
                attachments: header.attachments.clone(),
                signer: doc.signer.clone(),
                delivered_to: entries.iter().map(|e| e.organ.clone()).collect(),
                acked: entries.iter().all(|e| e.acked),
                // Checked on arrival; done now if that has not happened yet.
                pdf_signatures: st.check_pdfs_of(&header, doc.received_at_ms)?,
                business_type: header.business_type,
                target_doc_id: header.target_doc_id.clone(),
                kind: if header.status.is_some() {
                    "status"
                } else {
                    "document"
                }
                .into(),
                status: header.status.clone(),
            };
            Ok(pb::GetDocumentResponse {
                document: Some(document),
                envelope: Some(envelope),
                attachments,
            })
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from = opt_organ("from", &r.from)?;
        let organ = opt_organ("organ", &r.organ)?;
        let st = self.state.clone();
        let (acked, ticket) =
            blocking(move || st.ack(&doc_id, from.as_ref(), organ.as_ref())).await?;
        self.state.durable(ticket).await.map_err(Status::from)?;
        Ok(Response::new(pb::AckResponse {
            acked: acked.into_iter().map(|o| o.to_string()).collect(),
        }))
    }

    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from = opt_organ("from", &r.from)?;
        let st = self.state.clone();
        let mut records = blocking(move || st.sent_by(&doc_id, from.as_ref())).await?;
        let Some(rec) = records.pop() else {
            return Err(Status::not_found(format!(
                "no document {doc_id} was sent from this edge"
            )));
        };
        let delivery = self.state.delivery.clone();
        Ok(Response::new(status_view(rec, |p| {
            delivery.deadline_for(p)
        })))
    }

    async fn list_sent(
        &self,
        req: Request<pb::ListSentRequest>,
    ) -> Result<Response<pb::ListSentResponse>, Status> {
        let r = req.into_inner();
        let organ = self.local_organ(&r.from)?;
        let max = self.state.limits.max_list;
        let limit = if r.limit == 0 {
            max
        } else {
            (r.limit as usize).min(max)
        };
        let st = self.state.clone();
        let (records, next) = blocking(move || st.list_sent_page(&organ, limit, &r.after)).await?;
        let delivery = self.state.delivery.clone();
        Ok(Response::new(pb::ListSentResponse {
            documents: records
                .into_iter()
                .map(|r| status_view(r, |p| delivery.deadline_for(p)))
                .collect(),
            next_after: next.unwrap_or_default(),
        }))
    }

    async fn reply(
        &self,
        req: Request<pb::ReplyRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let r = req.into_inner();
        let reply = Reply {
            doc_id: r.doc_id,
            from: r.from,
            organ: r.organ,
            code: r.code,
            note: r.note,
            staff: r.staff,
            meta: Default::default(),
        };
        let st = self.state.clone();
        let (id, accepted) = blocking(move || st.reply(reply)).await?;
        self.state
            .durable(accepted.ticket())
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::SendResponse {
            doc_id: id.to_string(),
            duplicate: matches!(accepted, Accepted::Duplicate(_)),
        }))
    }

    async fn get_receipts(
        &self,
        req: Request<pb::GetReceiptsRequest>,
    ) -> Result<Response<pb::GetReceiptsResponse>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from = opt_organ("from", &r.from)?;
        let st = self.state.clone();
        let (receipts, document) = blocking(move || {
            // The named sender's record, or the one sender's, or the
            // refusal naming them; read once.
            match st.sent_by(&doc_id, from.as_ref())?.pop() {
                Some(rec) => Ok((st.receipts_of(&rec)?, Some(st.envelope_of_sent(&rec)?))),
                None => Ok((Vec::new(), None)),
            }
        })
        .await?;
        Ok(Response::new(pb::GetReceiptsResponse {
            receipts: receipt_views(receipts)?,
            document,
        }))
    }

    async fn lookup_agency(
        &self,
        req: Request<pb::LookupAgencyRequest>,
    ) -> Result<Response<pb::AgencyEntry>, Status> {
        let organ: OrganId = parse("organ", &req.into_inner().organ)?;
        self.state
            .directory()
            .get(&organ)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("unknown agency {organ}")))
    }

    async fn list_agencies(
        &self,
        req: Request<pb::ListAgenciesRequest>,
    ) -> Result<Response<pb::ListAgenciesResponse>, Status> {
        let prefix = req.into_inner().prefix;
        let d = self.state.directory();
        Ok(Response::new(pb::ListAgenciesResponse {
            version: d.version,
            agencies: d
                .entries
                .values()
                .filter(|a| a.organ.starts_with(&prefix))
                .cloned()
                .collect(),
        }))
    }

    async fn upload(
        &self,
        req: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::UploadResult>, Status> {
        upload(&self.state, req.into_inner(), None, None)
            .await
            .map(Response::new)
    }

    async fn upload_status(
        &self,
        req: Request<pb::UploadStatusRequest>,
    ) -> Result<Response<pb::UploadStatusResponse>, Status> {
        let id: uuid::Uuid = parse("upload_id", &req.into_inner().upload_id)?;
        let st = self.state.clone();
        let (offset, sha256) = blocking(move || {
            if let Some((digest, size)) = st.upload_done(&id)? {
                return Ok((size, digest.0.to_vec()));
            }
            let name = upload_name(&id);
            let recorded = st.partial_offset(&name)?;
            Ok((
                recorded.min(st.blobs.partial_len(&name).unwrap_or(0)),
                Vec::new(),
            ))
        })
        .await?;
        Ok(Response::new(pb::UploadStatusResponse { offset, sha256 }))
    }

    type GetAttachmentStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::AttachmentChunk, Status>> + Send>>;

    async fn get_attachment(
        &self,
        req: Request<pb::GetAttachmentRequest>,
    ) -> Result<Response<Self::GetAttachmentStream>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from = opt_organ("from", &r.from)?;
        let st = self.state.clone();
        let index = r.index as usize;
        let (digest, size, name) = blocking(move || {
            let sender = match st.received(&doc_id, from.as_ref()) {
                Ok((_, entries)) => entries.first().map(|e| e.from.clone()).unwrap_or_default(),
                // Not received here: perhaps sent from here. Any other error
                // (several senders, a store failure) is the answer.
                Err(NodeError::Refused(r)) if r.code == tonic::Code::NotFound => st
                    .sent_by(&doc_id, from.as_ref())?
                    .pop()
                    .map(|s| s.from)
                    .ok_or_else(|| Refusal::not_found(format!("no document {doc_id} here")))?,
                Err(e) => return Err(e),
            };
            st.attachment_of(&sender, &doc_id.to_string(), index)
        })
        .await?;
        if r.offset > size {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of {name} ({size} bytes)",
                r.offset
            )));
        }
        let mut file = crate::stream::blob_reader(&self.state, digest, r.offset, true)
            .await
            .map_err(Status::from)?;
        let chunk = self.state.limits.max_message_bytes.min(256 << 10);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut offset = r.offset;
        let state = self.state.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            while offset < size {
                let len = ((size - offset) as usize).min(chunk);
                let mut data = vec![0u8; len];
                if let Err(e) = file.read_exact(&mut data).await {
                    // Past the answer's headers: logged here, where it happens.
                    let what = format!("read {name} of {doc_id} at {offset}: {e}");
                    let s = if e.kind() == std::io::ErrorKind::InvalidData {
                        Status::data_loss(what)
                    } else {
                        Status::internal(what)
                    };
                    note_refusal(&state, "agency", "GetAttachment", s.code(), s.message());
                    let _ = tx.send(Err(s)).await;
                    return;
                }
                if tx
                    .send(Ok(pb::AttachmentChunk { offset, data }))
                    .await
                    .is_err()
                {
                    return;
                }
                offset += len as u64;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn import_edxml(
        &self,
        req: Request<pb::ImportEdxmlRequest>,
    ) -> Result<Response<pb::ImportEdxmlResponse>, Status> {
        let r = self.import(req.into_inner().package, None).await?;
        Ok(Response::new(r))
    }

    async fn export_edxml(
        &self,
        req: Request<pb::ExportEdxmlRequest>,
    ) -> Result<Response<pb::ExportEdxmlResponse>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from = opt_organ("from", &r.from)?;
        let st = self.state.clone();
        let (package, pdf_signatures) = blocking(move || {
            if r.original {
                let sender = match &from {
                    Some(f) => f.to_string(),
                    None => st.sent_by(&doc_id, None)?.pop().map(|s| s.from).ok_or_else(|| {
                        Refusal::not_found(format!("no document {doc_id} was sent from this edge"))
                    })?,
                };
                let original = st.original(&sender, &doc_id)?.ok_or_else(|| {
                    Refusal::not_found(format!(
                        "{doc_id} was not imported from an edXML package here"
                    ))
                })?;
                return Ok((original, Vec::new()));
            }
            let (env, doc, entries) = st.received_envelope(&doc_id, from.as_ref())?;
            let header = <pb::Header as prost::Message>::decode(env.header_bytes.as_slice())
                .map_err(|e| NodeError::Other(format!("stored header: {e}")))?;
            let data = attachments_in_one_message(
                &st,
                &doc,
                &header,
                "fetch the document with its attachments one by one (`truc get`), or export the imported package (--original)",
            )?;
            let here: OrganId = entries
                .first()
                .map(|e| e.organ.parse())
                .transpose()
                .map_err(|e| NodeError::Other(format!("{e}")))?
                .ok_or_else(|| Refusal::not_found("no local recipient"))?;
            let dir = st.directory();
            let names = |id: &str| {
                id.parse::<OrganId>()
                    .ok()
                    .and_then(|o| dir.get(&o).map(|e| e.name.clone()))
                    .unwrap_or_default()
            };
            let package_id = |from: &str, id: &str| st.package_document_id(from, id);
            let p = crate::edxml::from_truc(
                &header,
                data,
                &here,
                doc.received_at_ms,
                names,
                package_id,
            );
            let checks = st.check_pdfs_of(&header, doc.received_at_ms)?;
            Ok((truc_edxml::emit(&p), checks))
        })
        .await?;
        Ok(Response::new(pb::ExportEdxmlResponse {
            package,
            pdf_signatures,
        }))
    }

    async fn nack(
        &self,
        req: Request<pb::NackRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from = opt_organ("from", &r.from)?;
        let organ = opt_organ("organ", &r.organ)?;
        let st = self.state.clone();
        let (nacked, ticket) =
            blocking(move || st.nack(&doc_id, from.as_ref(), organ.as_ref(), &r.reason)).await?;
        self.state.durable(ticket).await.map_err(Status::from)?;
        Ok(Response::new(pb::AckResponse {
            acked: nacked.into_iter().map(|o| o.to_string()).collect(),
        }))
    }

    async fn counts(
        &self,
        req: Request<pb::CountsRequest>,
    ) -> Result<Response<pb::CountsResponse>, Status> {
        let organ = self.local_organ(&req.into_inner().organ)?;
        let (documents, statuses) = self.state.counts(&organ);
        Ok(Response::new(pb::CountsResponse {
            documents,
            statuses,
        }))
    }

    type EventsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::AgencyEvent, Status>> + Send>>;

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let r = req.into_inner();
        let organ = self.local_organ(&r.organ)?;
        Ok(Response::new(Box::pin(event_stream(
            self.state.clone(),
            organ,
            r.after,
        ))))
    }

    async fn trace(
        &self,
        req: Request<pb::TraceRequest>,
    ) -> Result<Response<pb::TraceResponse>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from = opt_organ("from", &r.from)?;
        let st = self.state.clone();
        let steps = blocking(move || trace(&st, &doc_id, from.as_ref())).await?;
        Ok(Response::new(pb::TraceResponse { steps }))
    }

    async fn archive_record(
        &self,
        req: Request<pb::ArchiveRecordRequest>,
    ) -> Result<Response<pb::ArchiveRecordResponse>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from = opt_organ("from", &r.from)?;
        let st = self.state.clone();
        let (envelope, sender, mut receipts, mut statuses, steps, (entries, checkpoint)) =
            blocking(move || {
                // Sent from here, or received here.
                // The sender's, when named: another agency may have used the same id.
                let envelope = match st.sent_envelope_from(&doc_id, from.as_ref())? {
                    Some(e) => e,
                    None => st.received_envelope(&doc_id, from.as_ref())?.0,
                };
                let proof =
                    st.audit_proof(&doc_id.to_string(), &Digest::of(&envelope.header_bytes))?;
                // The trace of this envelope's sender, whether named or not.
                let sender =
                    <pb::Header as prost::Message>::decode(envelope.header_bytes.as_slice())
                        .map_err(|e| NodeError::Other(format!("stored envelope: {e}")))?
                        .from;
                let organ = sender.parse::<OrganId>().ok();
                // Its receipts: those the trace read, of this sender's record.
                let (steps, receipts) =
                    trace_and_receipts(&st, &doc_id, organ.as_ref().or(from.as_ref()))?;
                Ok((
                    envelope,
                    sender,
                    receipts,
                    st.statuses_about(&doc_id)?,
                    steps,
                    proof,
                ))
            })
            .await?;
        // Another agency may have used the same doc_id: only what answers
        // this very envelope (its sender, its header bytes) goes in.
        let digest = Digest::of(&envelope.header_bytes);
        receipts.retain(|(_, e)| answers(e, &sender, &digest));
        statuses.retain(|e| answers(e, &sender, &digest));
        Ok(Response::new(pb::ArchiveRecordResponse {
            node: self.state.node_id.to_string(),
            envelope: Some(envelope),
            receipts: receipt_views(receipts)?,
            statuses,
            trace: steps,
            audit_entries: entries.iter().map(prost::Message::encode_to_vec).collect(),
            checkpoint: Some(checkpoint),
        }))
    }

    async fn archive_exported(
        &self,
        req: Request<pb::ArchiveExportedRequest>,
    ) -> Result<Response<pb::ArchiveExportedResponse>, Status> {
        let r = req.into_inner();
        let doc_id: DocId = parse("doc_id", &r.doc_id)?;
        let from: OrganId = parse("from", &r.from)?;
        if r.package_sha256.len() != 32 {
            return Err(Status::invalid_argument("package_sha256 must be 32 bytes"));
        }
        let st = self.state.clone();
        blocking(move || st.mark_archived(from.as_str(), &doc_id.to_string(), &r.package_sha256))
            .await?;
        Ok(Response::new(pb::ArchiveExportedResponse {}))
    }
}

/// Every attachment of a received document, read whole for one answer
/// (GetDocument, ExportEdxml): refused before anything is read when
/// together they would not fit in a message (`hint` says what to do
/// instead), and when one is no longer kept here.
fn attachments_in_one_message(
    st: &NodeState,
    doc: &truc_store::record::DocRecord,
    header: &pb::Header,
    hint: &str,
) -> Result<Vec<Vec<u8>>, NodeError> {
    if header.attachments.is_empty() {
        return Ok(Vec::new());
    }
    // Half the limit: room for base64 (edXML) and the rest of the answer.
    let total = header
        .attachments
        .iter()
        .fold(0u64, |t, a| t.saturating_add(a.size));
    if total > st.limits.max_message_bytes as u64 / 2 {
        return Err(Refusal::over_limit(format!(
            "attachments total {total} bytes, too large for one message (limits.max_message_bytes {}): {hint}",
            st.limits.max_message_bytes
        ))
        .into());
    }
    st.attachments_kept(doc, &header.doc_id)?;
    header
        .attachments
        .iter()
        .map(|a| {
            let d = Digest::from_slice(&a.sha256)
                .ok_or_else(|| NodeError::Other("stored attachment digest".into()))?;
            Ok(st.blobs.read(&d)?)
        })
        .collect()
}

/// `env` is a receipt or a status about the document `sender` sent whose
/// header bytes hash to `digest`.
fn answers(env: &pb::SignedEnvelope, sender: &str, digest: &Digest) -> bool {
    let Ok(h) = <pb::Header as prost::Message>::decode(env.header_bytes.as_slice()) else {
        return false;
    };
    let (for_from, sha) = match (&h.receipt, &h.status) {
        (Some(r), _) => (&r.for_from, &r.envelope_sha256),
        (_, Some(s)) => (&s.for_from, &s.envelope_sha256),
        _ => return false,
    };
    for_from == sender && sha.as_slice() == digest.0.as_slice()
}

/// Receipts as the API shows them: whom each concerns, its type, time and signer.
fn receipt_views(
    receipts: Vec<(String, pb::SignedEnvelope)>,
) -> Result<Vec<pb::ReceiptView>, Status> {
    let mut out = Vec::new();
    for (organ, env) in receipts {
        let header = <pb::Header as prost::Message>::decode(env.header_bytes.as_slice())
            .map_err(|e| Status::internal(format!("stored receipt: {e}")))?;
        let r = header.receipt.clone().unwrap_or_default();
        out.push(pb::ReceiptView {
            organ,
            r#type: r.r#type,
            at_ms: r.at_ms,
            signer: if header.from.is_empty() {
                format!("node:{}", header.from_node)
            } else {
                header.from.clone()
            },
            envelope: Some(env),
        });
    }
    Ok(out)
}

/// The events of `organ` after `after`: what is kept, then live ones as they are
/// written; each id once, in order, across the switch from one to the other and
/// whenever the reader falls behind the live feed. A store that cannot be read
/// ends the stream with its error (logged).
pub fn event_stream(
    state: Arc<NodeState>,
    organ: OrganId,
    after: u64,
) -> impl futures::Stream<Item = Result<pb::AgencyEvent, Status>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        // Subscribe first so nothing written while the backlog is read is missed.
        let mut live = state.subscribe_agency();
        let mut last = after;
        if send_kept(&state, &organ, &mut last, &tx).await.is_err() {
            return;
        }
        loop {
            match live.recv().await {
                Ok(e) if e.organ == organ.as_str() && e.id > last => {
                    last = e.id;
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // Fell behind the live feed: what it dropped is in the store.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if send_kept(&state, &organ, &mut last, &tx).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Sends every stored event of `organ` after `*last`, batch after batch, up to
/// the last durable one. Err once the stream is over: the reader left, or the
/// store failed (the reader is told why).
async fn send_kept(
    state: &Arc<NodeState>,
    organ: &OrganId,
    last: &mut u64,
    tx: &tokio::sync::mpsc::Sender<Result<pb::AgencyEvent, Status>>,
) -> Result<(), ()> {
    loop {
        let (st, o, after) = (state.clone(), organ.clone(), *last);
        let batch = match blocking(move || st.agency_events_after(&o, after, 512)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(organ = %organ, after, error = %e.message(), "events stream ended: the stored events cannot be read");
                let _ = tx.send(Err(e)).await;
                return Err(());
            }
        };
        if batch.is_empty() {
            return Ok(());
        }
        for e in batch {
            *last = e.id;
            if tx.send(Ok(e)).await.is_err() {
                return Err(());
            }
        }
    }
}

/// One document's path as this node knows it: its own audit entries, and for a
/// document it sent, the signed receipts and statuses of every hop and recipient.
///
/// When several agencies of this edge sent a document under `doc_id`, `from`
/// names whose; without it that is refused, naming them (as `GetStatus` does).
/// With `from`, the audit entries are that sender's only, on any node (a hub
/// or relay, a recipient edge, the sending edge); unless `from` alone sent
/// that doc_id here and no other sender's document came in under it, entries
/// naming neither (a receipt's or status's own line, named by its signer)
/// cannot be told apart and are left out: the sender's record still shows its
/// signed receipts and statuses.
pub fn trace(
    state: &NodeState,
    doc_id: &DocId,
    from: Option<&OrganId>,
) -> Result<Vec<pb::TraceStep>, NodeError> {
    Ok(trace_and_receipts(state, doc_id, from)?.0)
}

/// Signed receipts: (recipient, envelope).
type Receipts = Vec<(String, pb::SignedEnvelope)>;

/// [`trace`], and the signed receipts it read for it.
fn trace_and_receipts(
    state: &NodeState,
    doc_id: &DocId,
    from: Option<&OrganId>,
) -> Result<(Vec<pb::TraceStep>, Receipts), NodeError> {
    let here = state.node_id.to_string();
    let sent = state.sent(doc_id)?;
    let senders = sent.len();
    let records = crate::state::pick_sender(sent, doc_id, from)?;
    let mut audit = state.audit_trail(&doc_id.to_string())?;
    // Every document here under `doc_id` is `from`'s: sent by it, and none
    // of another sender's came in or was sent from here (its arrival's audit
    // line: a refused one has no inbox entry; its inbox entry: the audit line
    // may be pruned sooner), or none was named.
    let keep_all = match from {
        None => true,
        Some(f) => {
            senders > 0
                && records.len() == senders
                && !audit.iter().any(|e| {
                    matches!(e.event.as_str(), "received" | "refused" | "submitted")
                        && e.from != f.as_str()
                })
                && state.received_only_from(doc_id, f)?
        }
    };
    if let (Some(f), false) = (from, keep_all) {
        audit.retain(|e| e.from == f.as_str());
    }
    let mut steps: Vec<pb::TraceStep> = audit
        .into_iter()
        .map(|e| pb::TraceStep {
            at_ms: e.at_ms,
            node: here.clone(),
            step: e.event,
            detail: e.detail,
        })
        .collect();
    let mut receipts = Vec::new();
    for rec in &records {
        receipts.extend(state.receipts_of(rec)?);
    }
    for (organ, env) in &receipts {
        let Ok(header) = <pb::Header as prost::Message>::decode(env.header_bytes.as_slice()) else {
            continue;
        };
        let Some(r) = header.receipt else { continue };
        let kind = envelope::receipt_type(r.r#type)
            .map(|k| k.as_str())
            .unwrap_or("receipt");
        let (node, signer) = if header.from.is_empty() {
            (
                header.from_node.clone(),
                format!("signed by node {}", header.from_node),
            )
        } else {
            (organ.clone(), format!("signed by {}", header.from))
        };
        steps.push(pb::TraceStep {
            at_ms: r.at_ms,
            node,
            step: kind.to_owned(),
            detail: if r.detail.is_empty() {
                format!("{organ}, {signer}")
            } else {
                format!("{organ}, {signer}: {}", r.detail)
            },
        });
    }
    for rec in records {
        for r in rec.recipients {
            if !r.last_status.is_empty() {
                let meaning = r
                    .last_status
                    .parse::<truc_core::StatusCode>()
                    .map(|c| c.meaning())
                    .unwrap_or("status");
                steps.push(pb::TraceStep {
                    at_ms: r.last_status_at_ms,
                    node: r.organ.clone(),
                    step: format!("status {}", r.last_status),
                    detail: format!(
                        "{meaning}{}",
                        if r.status_note.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", r.status_note)
                        }
                    ),
                });
            }
        }
        if rec.business_type != BusinessType::New as i32 {
            steps.push(pb::TraceStep {
                at_ms: rec.created_at_ms,
                node: here.clone(),
                step: BusinessType::from_i32(rec.business_type)
                    .map(|b| b.as_str())
                    .unwrap_or("change")
                    .to_owned(),
                detail: format!("of {}", rec.target_doc_id),
            });
        }
    }
    steps.sort_by_key(|s| s.at_ms);
    Ok((steps, receipts))
}

fn upload_name(id: &uuid::Uuid) -> String {
    format!("upload-{id}")
}

/// Receives an attachment in chunks into a resumable partial file, then into the
/// content-addressed store. Size limits and free space are checked before a byte
/// is written; a cut leaves a durable prefix to resume from.
///
/// Refusals name the upload `known_as`, the id its client chose, when the
/// chunks carry another (REST derives one per application); else their own.
/// A REST application's uploads are recorded as its `owner`'s.
pub async fn upload<S>(
    state: &Arc<NodeState>,
    mut stream: S,
    known_as: Option<&str>,
    owner: Option<&str>,
) -> Result<pb::UploadResult, Status>
where
    S: futures::Stream<Item = Result<pb::UploadChunk, Status>> + Unpin,
{
    let first = stream
        .next()
        .await
        .transpose()?
        .ok_or_else(|| Status::invalid_argument("empty upload"))?;
    let id: uuid::Uuid = parse("upload_id", &first.upload_id)?;
    let shown = known_as.map_or_else(|| id.to_string(), str::to_owned);
    let size = first.size;
    if size > state.limits.max_attachment_bytes {
        return Err(Status::resource_exhausted(format!(
            "an attachment of {size} bytes is over the limit of {} (limits.max_attachment_bytes)",
            state.limits.max_attachment_bytes
        )));
    }
    let expected = if first.sha256.is_empty() {
        None
    } else {
        Some(
            Digest::from_slice(&first.sha256)
                .ok_or_else(|| Status::invalid_argument("sha256 is not 32 bytes"))?,
        )
    };
    let claim = state.claim_upload(id).await;
    if let Some((digest, done_size, legacy)) = state.finished_upload(&id).map_err(Status::from)? {
        // The same upload again (a retry that missed the answer): the same
        // answer, if it announces the same content.
        if done_size != size || expected.is_some_and(|e| e != digest) {
            return Err(Status::invalid_argument(format!(
                "upload {shown} already finished as {done_size} bytes with sha256 {digest}; \
                 a different attachment needs a new upload_id"
            )));
        }
        // Finished before uploads named their application: its now (a
        // REST upload id is its application's own).
        if let Some(owner) = owner.filter(|_| legacy)
            && let Some(ticket) = state.own_upload(owner, &digest).map_err(Status::from)?
        {
            state.durable(ticket).await.map_err(Status::from)?;
        }
        return Ok(pb::UploadResult {
            sha256: digest.0.to_vec(),
            size: done_size,
        });
    }
    let name = upload_name(&id);
    let recorded = state.partial_offset(&name).map_err(Status::from)?;
    let resume = recorded.min(state.blobs.partial_len(&name).unwrap_or(0));
    if size < resume {
        return Err(Status::invalid_argument(format!(
            "upload {shown} already holds {resume} bytes, more than the {size} announced now; \
             a different attachment needs a new upload_id"
        )));
    }
    if first.offset != resume {
        return Err(Status::failed_precondition(format!(
            "upload {shown} continues at byte {resume}, not {}",
            first.offset
        )));
    }
    state
        .blobs
        .check_space(size.saturating_sub(resume), state.storage.min_free_bytes)
        .map_err(|e| Status::from(NodeError::from(e)))?;
    let io = |e: truc_store::BlobError| Status::from(NodeError::from(e));
    let mut partial =
        tokio::task::block_in_place(|| state.blobs.partial(&name, size, resume)).map_err(io)?;
    let every = state.storage.sync_every_bytes.max(1);
    let mut next = Some(first);
    while let Some(chunk) = next.take() {
        if chunk.upload_id != id.to_string() && !chunk.upload_id.is_empty() {
            return Err(Status::invalid_argument("one upload per stream"));
        }
        // Said of the upload, not of the partial file that holds it.
        tokio::task::block_in_place(|| partial.write(chunk.offset, &chunk.data)).map_err(|e| {
            match e {
                truc_store::BlobError::OutOfOrder { have, got, .. } => {
                    Status::invalid_argument(format!(
                        "upload {shown}: data at offset {got} does not continue the {have} bytes received"
                    ))
                }
                truc_store::BlobError::TooLong { size, got, .. } => {
                    Status::invalid_argument(format!(
                        "upload {shown}: {got} bytes exceed the announced size of {size}"
                    ))
                }
                other => io(other),
            }
        })?;
        if partial.offset() - partial.synced() >= every && !partial.is_complete() {
            let durable = tokio::task::block_in_place(|| partial.sync()).map_err(io)?;
            let t = state.record_partial(&name, durable).map_err(Status::from)?;
            state.durable(t).await.map_err(Status::from)?;
        }
        let gone = tokio::select! {
            m = stream.next() => match m.transpose() {
                Ok(m) => {
                    next = m;
                    None
                }
                // The client went away.
                Err(status) => Some(status),
            },
            // A newer stream for this upload: the client retried, and this
            // stream's connection is dead or about to be.
            () = claim.taken_over() => Some(Status::aborted(format!(
                "upload {shown} was taken over by a newer stream"
            ))),
        };
        if let Some(status) = gone {
            // Keep what is on disk for a resume.
            let durable = tokio::task::block_in_place(|| partial.sync()).map_err(io)?;
            let t = state.record_partial(&name, durable).map_err(Status::from)?;
            state.durable(t).await.map_err(Status::from)?;
            return Err(status);
        }
    }
    if !partial.is_complete() {
        let durable = tokio::task::block_in_place(|| partial.sync()).map_err(io)?;
        let t = state.record_partial(&name, durable).map_err(Status::from)?;
        state.durable(t).await.map_err(Status::from)?;
        return Err(Status::failed_precondition(format!(
            "upload {shown} stopped at byte {durable} of {size}; resume from there"
        )));
    }
    let digest =
        match tokio::task::block_in_place(|| partial.finish(&state.blobs, expected.as_ref())) {
            Ok(d) => d,
            Err(e @ truc_store::BlobError::Mismatch { .. }) => {
                let _ = state.clear_partial(&name);
                return Err(Status::invalid_argument(format!("upload {shown}: {e}")));
            }
            Err(e) => return Err(io(e)),
        };
    let ticket = state
        .finish_upload(&id, &name, &digest, size, owner)
        .map_err(Status::from)?;
    state.durable(ticket).await.map_err(Status::from)?;
    tracing::info!(upload = %id, sha256 = %digest, size, "upload complete");
    Ok(pb::UploadResult {
        sha256: digest.0.to_vec(),
        size,
    })
}

/// Counts and logs every error the gRPC agency API answers, in one place for
/// all its methods: `truc_refused_total{source="agency"}` (`"edxml"` for
/// imports) and a log line with the method, the code and the reason.
#[derive(Clone)]
pub struct Refusals {
    state: Arc<NodeState>,
}

impl Refusals {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }
}

impl<S> tower::Layer<S> for Refusals {
    type Service = RefusalsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RefusalsService {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RefusalsService<S> {
    inner: S,
    state: Arc<NodeState>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for RefusalsService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tower::Service<http::Request<B>> for RefusalsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let state = self.state.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let mut r = answer.await?;
            // An error answered at once travels in the headers (trailers only).
            if let Some(s) = Status::from_header_map(r.headers())
                && s.code() != tonic::Code::Ok
            {
                // What waiting may clear says when to try again: this node's
                // `quotas.retry_after_ms`.
                let ms = state.quotas.retry_after_ms.to_string();
                if r.headers().contains_key(crate::error::RETRY_AFTER_MS)
                    && let Ok(v) = http::HeaderValue::from_str(&ms)
                {
                    r.headers_mut().insert(crate::error::RETRY_AFTER_MS, v);
                }
                let source = if method.ends_with("/ImportEdxml") {
                    "edxml"
                } else {
                    "agency"
                };
                note_refusal(&state, source, &method, s.code(), s.message());
            }
            Ok(r)
        })
    }
}

/// One refusal an application hears: counted by its code if it is the
/// caller's (bad input, a limit, a quota), and logged with what was asked.
pub fn note_refusal(state: &NodeState, source: &str, what: &str, code: tonic::Code, reason: &str) {
    use tonic::Code::*;
    match code {
        InvalidArgument | NotFound | PermissionDenied | ResourceExhausted | AlreadyExists
        | FailedPrecondition | Unauthenticated | OutOfRange | Aborted
        // A method (or REST verb) this node does not have: the caller's mistake.
        | Unimplemented => {
            state.telemetry.refused(source, code);
            tracing::warn!(source, what, ?code, %reason, "request refused");
        }
        Cancelled => {}
        _ => tracing::error!(source, what, ?code, %reason, "request failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Code;
    use truc_store::MemoryStore;

    use super::*;
    use crate::state::{Origin, Verdict, testing::Fixture};

    type Chunks = mpsc::Sender<Result<pb::UploadChunk, Status>>;

    /// A new document without a subject, or due before now (a date in
    /// seconds is one of 1970), is refused saying why; a change may leave
    /// its subject to its target's.
    #[test]
    fn a_send_without_a_subject_or_due_in_the_past_is_refused() {
        let now = 1_796_300_000_000;
        let send = |subject: &str, due_at_ms: i64, business: pb::BusinessType| {
            (business as i32, subject.to_owned(), due_at_ms)
        };
        let check = |(b, s, d): (i32, String, i64), now| {
            crate::state::check_send(b, &s, d, now).map_err(|r| Status::from(NodeError::Refused(r)))
        };
        let new = pb::BusinessType::New;
        assert!(check(send("Công văn", 0, new), now).is_ok());
        assert!(check(send("Công văn", now + 86_400_000, new), now).is_ok());
        assert!(check(send("", 0, pb::BusinessType::Revoke), now).is_ok());
        for blank in ["", "   "] {
            let e = check(send(blank, 0, new), now).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().starts_with("subject is empty"), "{e:?}");
        }
        let e = check(send("Công văn", now / 1000, new), now).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains(
                "is in the past (1970/01/22 01:58:20 in Vietnam): Unix time in milliseconds"
            ),
            "{e:?}"
        );
    }

    /// A retry of a document taken before is answered as a duplicate even
    /// when it would not pass today's checks (its due date passed since).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_after_its_due_date_is_a_duplicate_not_a_refusal() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let id = DocId::new_v7().to_string();
        let due = crate::state::now_ms() - 3_600_000;
        // Taken while its due date was ahead (the check is the API's).
        edge.submit(crate::state::Submission {
            from: "000.00.00.G22".into(),
            to: vec!["000.00.00.H41".into()],
            subject: "Công văn".into(),
            due_at_ms: due,
            doc_id: Some(id.clone()),
            ..Default::default()
        })
        .unwrap();
        let svc = AgencyService::new(edge);
        let retry = pb::SendRequest {
            from: "000.00.00.G22".into(),
            to: vec!["000.00.00.H41".into()],
            subject: "Công văn".into(),
            due_at_ms: due,
            doc_id: id.clone(),
            ..Default::default()
        };
        let r = svc
            .send(Request::new(retry.clone()))
            .await
            .unwrap()
            .into_inner();
        assert!(r.duplicate, "{r:?}");
        // A new document due then is refused.
        let e = svc
            .send(Request::new(pb::SendRequest {
                doc_id: String::new(),
                ..retry
            }))
            .await
            .unwrap_err();
        assert!(e.message().contains("is in the past"), "{e:?}");
    }

    /// The agency API's token is made once, for the node's user only, and
    /// kept across starts; a copy others may read, an empty one or a
    /// symlink is replaced, never served with.
    #[test]
    fn the_token_is_made_once_for_the_nodes_user_and_a_readable_one_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = load_or_make_token(dir.path()).unwrap();
        assert_eq!(token.len(), 64);
        let path = token_path(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_make_token(dir.path()).unwrap(), token, "kept");

        let mut check = authorize(&token, &path);
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("authorization", v.parse().unwrap());
            r
        };
        assert!(check(with(&format!("Bearer {token}"))).is_ok());
        let e = check(with("Bearer 1234")).unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(
            check(Request::new(()))
                .unwrap_err()
                .message()
                .contains("agency.token")
        );

        assert!(check(with(&format!("bearer {token}"))).is_ok(), "any case");

        // A copy others may read (a volume mounted with group rights), an
        // empty one, a symlink: replaced by a new token of mode 600.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
        let second = load_or_make_token(dir.path()).unwrap();
        assert_ne!(second, token, "a token others may have read is not kept");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "\n").unwrap();
        let third = load_or_make_token(dir.path()).unwrap();
        assert_eq!(third.len(), 64);
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, &third).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let fourth = load_or_make_token(dir.path()).unwrap();
        assert_ne!(fourth, third);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(read_token(&path).unwrap(), fourth);
    }

    /// An archive takes a receipt or status only for its own document: not
    /// for another sender's under the same doc_id, nor another version.
    #[test]
    fn only_what_answers_the_envelope_goes_into_an_archive() {
        let digest = Digest::of(b"header bytes");
        let receipt = |for_from: &str, sha: &[u8]| pb::SignedEnvelope {
            header_bytes: prost::Message::encode_to_vec(&pb::Header {
                receipt: Some(pb::Receipt {
                    for_from: for_from.into(),
                    envelope_sha256: sha.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = pb::SignedEnvelope {
            header_bytes: prost::Message::encode_to_vec(&pb::Header {
                status: Some(pb::Status {
                    for_from: "000.00.00.G22".into(),
                    envelope_sha256: digest.0.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let g22 = "000.00.00.G22";
        assert!(answers(&receipt(g22, &digest.0), g22, &digest));
        assert!(answers(&status, g22, &digest));
        assert!(!answers(&receipt("000.00.00.H41", &digest.0), g22, &digest));
        assert!(!answers(&receipt(g22, &[0; 32]), g22, &digest));
        assert!(!answers(&status, "000.00.00.H41", &digest));
    }

    /// An upload running on its own task, fed chunk by chunk.
    fn uploading(
        state: &Arc<NodeState>,
    ) -> (
        Chunks,
        tokio::task::JoinHandle<Result<pb::UploadResult, Status>>,
    ) {
        let (tx, rx) = mpsc::channel(4);
        let st = state.clone();
        let task =
            tokio::spawn(async move { upload(&st, ReceiverStream::new(rx), None, None).await });
        (tx, task)
    }

    fn chunk(id: &str, size: u64, offset: u64, data: &[u8], sha256: &[u8]) -> pb::UploadChunk {
        pb::UploadChunk {
            upload_id: id.into(),
            size,
            offset,
            data: data.to_vec(),
            sha256: sha256.to_vec(),
        }
    }

    /// Two agencies of one edge used one doc_id: the trace does not mix their
    /// records; unnamed, it refuses to guess and names both senders; with the
    /// sender named, it shows that sender's document only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trace_of_a_doc_id_two_agencies_used_names_the_sender() {
        let (g22, g21) = ("000.00.00.G22", "000.00.00.G21");
        let (h41, h14) = ("000.00.00.H41", "000.00.00.H14");
        let f = Fixture::new();
        let mut routing = truc_core::RoutingTable::new(true);
        for o in [g22, g21] {
            routing.add_local(o.parse().unwrap());
        }
        let edge = f.state(
            "vpcp",
            routing,
            vec![f.signer(g22), f.signer(g21)],
            // The key that signs an archival package's audit checkpoint.
            Some(f.node_signer("vpcp")),
            Arc::new(MemoryStore::new()),
        );
        let id = DocId::new_v7();
        for (from, to) in [(g22, h41), (g21, h14)] {
            submit_as(&edge, id, from, to);
        }
        let svc = AgencyService::new(edge);
        let trace = |from: &str| {
            svc.trace(Request::new(pb::TraceRequest {
                doc_id: id.to_string(),
                from: from.into(),
            }))
        };
        let e = trace("").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(
            e.message().contains(g22) && e.message().contains(g21),
            "{e}"
        );
        for (from, mine, theirs) in [(g21, h14, h41), (g22, h41, h14)] {
            let steps = trace(from).await.unwrap().into_inner().steps;
            // An archival package of the document carries the same trace.
            let archived = svc
                .archive_record(Request::new(pb::ArchiveRecordRequest {
                    doc_id: id.to_string(),
                    from: from.into(),
                }))
                .await
                .unwrap()
                .into_inner()
                .trace;
            assert_eq!(archived, steps, "{from}");
            let shown = format!("{steps:?}");
            assert!(
                steps.iter().any(|s| s.step == "submitted"),
                "{from}: {shown}"
            );
            assert_eq!(
                steps.iter().filter(|s| s.step == "submitted").count(),
                1,
                "{from}: one document: {shown}"
            );
            assert!(
                shown.contains(mine) && !shown.contains(theirs),
                "{from}: {shown}"
            );
        }
    }

    /// `from` sends a document to `to` under the doc_id `id` from `edge`.
    fn submit_as(edge: &NodeState, id: DocId, from: &str, to: &str) {
        edge.submit(crate::state::Submission {
            from: from.into(),
            to: vec![to.into()],
            subject: "Công văn".into(),
            doc_id: Some(id.to_string()),
            ..Default::default()
        })
        .unwrap();
    }

    /// The trace of `id` on the node behind `svc`, named by `from` ("": none).
    async fn trace_of(svc: &AgencyService, id: DocId, from: &str) -> Vec<pb::TraceStep> {
        svc.trace(Request::new(pb::TraceRequest {
            doc_id: id.to_string(),
            from: from.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .steps
    }

    /// On a sending edge, a document another agency sent later under the
    /// same doc_id adds nothing to its sender's trace, received or refused.
    #[tokio::test]
    async fn a_trace_with_from_leaves_out_a_document_received_under_the_same_doc_id() {
        let (g22, h41, h14) = ("000.00.00.G22", "000.00.00.H41", "000.00.00.H14");
        let g21 = "000.00.00.G21";
        let f = Fixture::new();
        let edge = f.edge_of("vpcp", g22);
        let id = DocId::new_v7();
        submit_as(&edge, id, g22, h41);
        let svc = AgencyService::new(edge.clone());
        let trace = async || trace_of(&svc, id, g22).await;
        let before = trace().await;
        assert!(before.iter().any(|s| s.step == "submitted"), "{before:?}");

        let arrives = |from: &str, to: &str| {
            let v = f.verified_as(&id, from, &[to]);
            let r = edge
                .accept_batch(vec![(v, None)], &Origin::Parent("hub".parse().unwrap()))
                .unwrap();
            let lines = edge.audit_trail(&id.to_string()).unwrap();
            assert!(
                lines.iter().any(|e| e.from == from),
                "the document from {from} has lines of its own: {r:?} {lines:?}"
            );
            r
        };
        // Refused: not for an agency of this edge.
        let r = arrives(g21, h41);
        assert!(matches!(r.0[..], [Verdict::Refused(_)]), "{r:?}");
        assert_eq!(trace().await, before);
        let r = arrives(h14, g22);
        assert!(matches!(r.0[..], [Verdict::Stored]), "{r:?}");
        assert_eq!(trace().await, before);
    }

    /// Another agency's document received under the doc_id is told by its
    /// inbox entry too: its arrival's audit lines may be pruned before the
    /// later ones (its acknowledgement here).
    #[tokio::test]
    async fn a_trace_with_from_leaves_out_a_received_document_whose_arrival_was_pruned() {
        let (g22, h41, h14) = ("000.00.00.G22", "000.00.00.H41", "000.00.00.H14");
        let mut f = Fixture::new();
        f.storage.audit_retention_ms = Some(0);
        let edge = f.edge_of("vpcp", g22);
        let id = DocId::new_v7();
        edge.accept_batch(
            vec![(f.verified_as(&id, h14, &[g22]), None)],
            &Origin::Parent("hub".parse().unwrap()),
        )
        .unwrap();
        edge.ack(&id, Some(&h14.parse().unwrap()), None).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(edge.prune_audit(usize::MAX).unwrap() > 0);
        let lines = edge.audit_trail(&id.to_string()).unwrap();
        assert!(
            lines.iter().any(|e| e.event == "acked")
                && !lines.iter().any(|e| e.event == "received"),
            "{lines:?}"
        );
        submit_as(&edge, id, g22, h41);
        let steps = trace_of(&AgencyService::new(edge), id, g22).await;
        assert!(steps.iter().any(|s| s.step == "submitted"), "{steps:?}");
        assert!(!steps.iter().any(|s| s.step == "acked"), "{steps:?}");
    }

    /// On a hub, which sent nothing itself, `from` still keeps that sender's
    /// entries only, when two senders used one doc_id.
    #[tokio::test]
    async fn a_trace_with_from_on_a_hub_shows_that_senders_document_only() {
        let (g22, h41) = ("000.00.00.G22", "000.00.00.H41");
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let id = DocId::new_v7();
        for (from, to, child) in [(g22, h41, "vpcp"), (h41, g22, "nghean")] {
            let v = f.verified_as(&id, from, &[to]);
            hub.accept(v, &Origin::Child(child.parse().unwrap()), None)
                .unwrap();
        }
        let svc = AgencyService::new(hub);
        let trace = async |from: &str| trace_of(&svc, id, from).await;
        let all = trace("").await;
        let (g, h) = (trace(g22).await, trace(h41).await);
        assert!(!g.is_empty() && !h.is_empty(), "{g:?} {h:?}");
        assert_eq!(
            g.len() + h.len(),
            all.len(),
            "each sender's entries, and no other's: {g:?} {h:?} {all:?}"
        );
    }

    /// Every error the gRPC API answers passes the layer: counted, and a retry
    /// hint given in this node's `quotas.retry_after_ms`.
    #[tokio::test]
    async fn a_document_too_large_for_one_answer_is_refused_before_it_is_read() {
        let mut f = Fixture::new();
        f.limits.max_message_bytes = 64 << 10;
        let edge = f.edge_of("nghean", "000.00.00.H41");
        let v = f.with_attachment(&edge, &vec![1u8; 40 << 10]);
        let id = v.doc_id.to_string();
        edge.accept(v, &Origin::Parent("hub".parse().unwrap()), None)
            .unwrap();
        let svc = AgencyService::new(edge);
        let e = svc
            .export_edxml(Request::new(pb::ExportEdxmlRequest {
                doc_id: id.clone(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("too large for one message"), "{e}");
        let e = svc
            .get_document(Request::new(pb::GetDocumentRequest {
                doc_id: id.clone(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        let d = svc
            .get_document(Request::new(pb::GetDocumentRequest {
                doc_id: id,
                without_data: true,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.attachments.len(), 1, "described without its bytes");
        assert!(d.attachments[0].data.is_empty());
    }

    /// An attachment that declares a size it does not carry (an upload's
    /// digest lost on the way) is refused, not signed as an empty file.
    #[tokio::test]
    async fn an_attachment_without_the_bytes_it_declares_is_refused() {
        let f = Fixture::new();
        let svc = AgencyService::new(f.edge(Arc::new(MemoryStore::new())));
        let e = svc
            .send(Request::new(pb::SendRequest {
                from: "000.00.00.G22".into(),
                to: vec!["000.00.00.H41".into()],
                subject: "Quyết định".into(),
                attachments: vec![pb::Attachment {
                    name: "qd.pdf".into(),
                    size: 5_000_000,
                    ..Default::default()
                }],
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("declares 5000000 bytes"), "{e}");
    }

    /// A stored attachment whose bytes no longer hash to its name is not
    /// served as if whole: the stream ends with DATA_LOSS in place of its
    /// last chunk.
    #[tokio::test]
    async fn a_damaged_attachment_is_not_served_as_whole() {
        let f = Fixture::new();
        let edge = f.edge_of("nghean", "000.00.00.H41");
        let data = vec![5u8; 600 << 10];
        let v = f.with_attachment(&edge, &data);
        let (id, file) = (v.doc_id.to_string(), edge.blobs.path(&v.attachments[0]));
        edge.accept(v, &Origin::Parent("hub".parse().unwrap()), None)
            .unwrap();
        let svc = AgencyService::new(edge);
        let fetch = |offset: u64| {
            let svc = svc.clone();
            let id = id.clone();
            async move {
                let mut s = svc
                    .get_attachment(Request::new(pb::GetAttachmentRequest {
                        doc_id: id,
                        offset,
                        ..Default::default()
                    }))
                    .await
                    .unwrap()
                    .into_inner();
                let mut got = 0u64;
                while let Some(c) = s.next().await {
                    match c {
                        Ok(c) => got += c.data.len() as u64,
                        Err(e) => return Err((got, e)),
                    }
                }
                Ok(got)
            }
        };
        assert_eq!(fetch(0).await.unwrap(), data.len() as u64, "whole");
        let mut damaged = data.clone();
        damaged[1000] ^= 0xff;
        std::fs::write(&file, &damaged).unwrap();
        let (got, e) = fetch(0).await.unwrap_err();
        assert_eq!(e.code(), Code::DataLoss, "{e}");
        assert!(e.message().contains("damaged"), "{e}");
        assert!(got < data.len() as u64, "the last bytes withheld");
    }

    #[tokio::test]
    async fn the_refusal_layer_counts_and_gives_the_nodes_retry_hint() {
        use tower::{Layer, Service};
        let mut f = Fixture::new();
        f.quotas.retry_after_ms = 2500;
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let quota_full = tower::service_fn(|_req: http::Request<()>| async {
            let s = crate::error::to_status(Refusal::exhausted("outbox full").into());
            Ok::<_, std::convert::Infallible>(s.into_http::<()>())
        });
        let mut svc = Refusals::new(edge.clone()).layer(quota_full);
        let req = http::Request::builder()
            .uri("/truc.v1.Agency/Send")
            .body(())
            .unwrap();
        let r = svc.call(req).await.unwrap();
        assert_eq!(r.headers()["retry-after-ms"], "2500");
        let counted = crate::telemetry::render(&crate::telemetry::Telemetry::registry(
            &edge,
            crate::config::AlertSection::default(),
        ));
        assert!(
            counted
                .contains("truc_refused_total{source=\"agency\",reason=\"resource_exhausted\"} 1"),
            "{counted}"
        );
    }

    /// An upload finished over the gRPC API (no application) under an id a
    /// REST application then retries answers the same, but does not become
    /// that application's to send.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_does_not_make_anothers_upload_its_own() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let id = uuid::Uuid::now_v7().to_string();
        let data = vec![5u8; 2048];
        let once = |owner: Option<&'static str>| {
            let edge = edge.clone();
            let c = chunk(&id, data.len() as u64, 0, &data, &[]);
            async move {
                upload(&edge, futures::stream::iter([Ok(c)]), None, owner)
                    .await
                    .unwrap()
            }
        };
        let first = once(None).await;
        let d = Digest::from_slice(&first.sha256).unwrap();
        assert!(!edge.uploaded_by("qlvb", &d).unwrap());
        let again = once(Some("qlvb")).await;
        assert_eq!(again.sha256, first.sha256);
        assert!(!edge.uploaded_by("qlvb", &d).unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_takes_one_stream_at_a_time_and_its_answer_only_for_the_same_content() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let id = uuid::Uuid::now_v7().to_string();
        let (half, rest) = (vec![7u8; 4096], vec![9u8; 4096]);

        // The first stream has written its first half, and its connection
        // then goes quiet (it is never closed).
        let (a, first) = uploading(&edge);
        a.send(Ok(chunk(&id, 8192, 0, &half, &[]))).await.unwrap();
        let name = upload_name(&id.parse().unwrap());
        while edge.blobs.partial_len(&name) != Some(4096) {
            tokio::task::yield_now().await;
        }

        // The client's retry takes the upload over: the first stream lets go
        // (keeping its bytes), then the second writes, never both at once,
        // which would mix their bytes under one stream's running digest.
        let (b, second) = uploading(&edge);
        b.send(Ok(chunk(&id, 8192, 4096, &rest, &[])))
            .await
            .unwrap();
        let let_go = first.await.unwrap().unwrap_err();
        assert_eq!(let_go.code(), Code::Aborted, "{let_go:?}");
        assert!(let_go.message().contains("taken over"), "{let_go:?}");
        drop(b);
        let done = second.await.unwrap().unwrap();
        drop(a);
        let whole = [half.as_slice(), rest.as_slice()].concat();
        let digest = ring::digest::digest(&ring::digest::SHA256, &whole);
        assert_eq!(done.sha256, digest.as_ref());
        assert_eq!(
            edge.blobs
                .read(&Digest::from_slice(&done.sha256).unwrap())
                .unwrap(),
            whole
        );

        // The same upload again gets the same answer; one announcing other
        // content is told to use a new upload_id.
        let again = |size, sha256: Vec<u8>| {
            let (c, task) = uploading(&edge);
            let id = id.clone();
            async move {
                c.send(Ok(chunk(&id, size, 0, &[], &sha256))).await.unwrap();
                drop(c);
                task.await.unwrap()
            }
        };
        assert_eq!(
            again(8192, digest.as_ref().to_vec()).await.unwrap().sha256,
            done.sha256
        );
        for (size, sha256) in [(8192, vec![1u8; 32]), (100, vec![])] {
            let e = again(size, sha256).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains("new upload_id"), "{e:?}");
        }
    }

    /// A reader that falls behind the live feed by more than one read of the
    /// store (a burst after a weekend offline) still gets every event, once
    /// each and in order.
    #[tokio::test]
    async fn a_reader_far_behind_the_live_feed_gets_every_event_once() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let g22: OrganId = "000.00.00.G22".parse().unwrap();
        let parent = Origin::Parent("hub".parse().unwrap());
        let arrive = |n: usize| {
            let docs = (0..n)
                .map(|_| (f.verified("000.00.00.H41", &["000.00.00.G22"]), None))
                .collect();
            let (verdicts, ticket) = edge.accept_batch(docs, &parent).unwrap();
            assert!(
                verdicts.iter().all(|v| matches!(v, Verdict::Stored)),
                "{verdicts:?}"
            );
            ticket
        };
        let t = arrive(1);
        edge.durable(t).await.unwrap();
        type Events =
            std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::AgencyEvent, Status>> + Send>>;
        let mut events: Events = Box::pin(event_stream(edge.clone(), g22.clone(), 0));
        let next = async |events: &mut Events| {
            tokio::time::timeout(std::time::Duration::from_secs(60), events.next())
                .await
                .expect("an event")
                .expect("the stream goes on")
                .expect("no error")
        };
        let first = next(&mut events).await;
        // Far more than the live feed keeps, while the reader reads nothing.
        for _ in 0..9 {
            let t = arrive(100);
            edge.durable(t).await.unwrap();
        }
        // Announced (and readable) once the announcer has seen the flush.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let kept = loop {
            let kept = edge.agency_events_after(&g22, 0, 10_000).unwrap();
            if kept.len() == 901 {
                break kept;
            }
            assert!(std::time::Instant::now() < deadline, "{}", kept.len());
            tokio::task::yield_now().await;
        };
        let mut ids = vec![first.id];
        while ids.len() < kept.len() {
            let e = next(&mut events).await;
            ids.push(e.id);
        }
        let want: Vec<u64> = kept.iter().map(|e| e.id).collect();
        assert_eq!(ids, want);
    }

    /// An edXML document taken whose original package then cannot be kept
    /// (a write refused) says it was taken: "disk full" alone would read as
    /// "not sent", while the document goes out. Importing it again keeps it.
    #[tokio::test]
    async fn an_import_whose_original_is_not_kept_says_the_document_was_taken() {
        let f = Fixture::new();
        let (store, plan) = truc_store::FaultyStore::new(MemoryStore::new());
        let edge = f.edge(Arc::new(store));
        let svc = AgencyService::new(edge.clone());
        let package = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/edxml/new-document.xml"
        ))
        .unwrap();
        // The document's own write goes through; the original's is refused.
        let next = plan.applies.load(Ordering::SeqCst) + 2;
        plan.fail_apply_from.store(next, Ordering::SeqCst);
        let e = svc.import(package.clone(), None).await.unwrap_err();
        assert!(e.message().contains("was taken and will be sent"), "{e:?}");
        assert!(e.message().contains("import it again"), "{e:?}");
        assert_eq!(edge.queue_depth("parent"), 1, "queued all the same");
        plan.fail_apply_from.store(0, Ordering::SeqCst);
        let again = svc.import(package, None).await.unwrap();
        assert!(again.duplicate, "{again:?}");
        let id: DocId = again.doc_id.parse().unwrap();
        let from: OrganId = "000.00.00.G22".parse().unwrap();
        assert!(edge.original(from.as_str(), &id).unwrap().is_some());
    }
}
