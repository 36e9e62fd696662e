//! A node's durable state and every operation that changes it.
//!
//! One type serves all roles: a message accepted from the local agency API, the
//! parent or a child goes through [`NodeState::accept`], which checks who may send
//! it, deduplicates it permanently by (from, doc_id), routes each recipient to the
//! local inbox, a child's queue or the parent's queue, and writes all of that in one
//! atomic batch. The caller acknowledges only after [`NodeState::durable`].

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use prost::Message;
use rustls::pki_types::UnixTime;
use tokio::sync::{Notify, broadcast};
use tonic::Code;
use truc_core::{
    DeliveryState, Destination, DocId, Kind, NodeId, OrganId, ReceiptType, RouteError, RoutingTable,
};
use truc_pki::sign::{AgencySigner, SignatureVerifier};
use truc_proto::v1 as pb;
use truc_store::{
    Batch, BlobStore, Digest, GroupCommit, Space, Store, Ticket,
    keys::{Key, trailing_u64},
    record::{self, DeadEntry, DocRecord, InboxEntry, QueueEntry, RecipientRecord, SentRecord},
};

use crate::{
    config::{Limits, TestHooks},
    envelope::{self, Verified},
    error::{NodeError, Refusal},
};

/// Where a message entered this node from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The agency API of this node (or a receipt this node made).
    Local,
    Parent(NodeId),
    Child(NodeId),
}

impl Origin {
    pub fn label(&self) -> String {
        match self {
            Origin::Local => "local".into(),
            Origin::Parent(n) => format!("parent:{n}"),
            Origin::Child(n) => format!("child:{n}"),
        }
    }
}

/// The name of the queue for a destination (None for the local inbox).
pub fn queue_name(dest: &Destination) -> Option<String> {
    match dest {
        Destination::Local => None,
        Destination::Parent => Some("parent".into()),
        Destination::Child(c) => Some(format!("child:{c}")),
    }
}

/// What `accept` did.
#[derive(Debug, Clone, Copy)]
pub enum Accepted {
    /// Newly stored; durable once the ticket is.
    Stored(Ticket),
    /// Seen before with the same bytes; nothing new stored.
    Duplicate(Ticket),
}

impl Accepted {
    pub fn ticket(&self) -> Ticket {
        match self {
            Accepted::Stored(t) | Accepted::Duplicate(t) => *t,
        }
    }
}

/// Something that happened, for live views (demo, tests, later the event stream).
#[derive(Debug, Clone)]
pub enum Event {
    Delivered {
        organ: OrganId,
        from: OrganId,
        doc_id: DocId,
        subject: String,
    },
    StateChanged {
        doc_id: DocId,
        recipient: OrganId,
        state: DeliveryState,
    },
}

/// Counters for metrics and the demo.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
    pub delivered: AtomicU64,
    pub receipts: AtomicU64,
}

/// A document submitted by an application on this edge.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub code_number: String,
    pub code_notation: String,
    pub priority: u32,
    pub due_at_ms: i64,
    pub attachments: Vec<(String, String, Vec<u8>)>,
    pub doc_id: Option<String>,
}

/// A transfer ready to send on a link.
#[derive(Debug)]
pub struct Outgoing {
    pub transfer: pb::Transfer,
    pub entry: QueueEntry,
}

struct Writer {
    seqs: HashMap<String, u64>,
}

/// Effects gathered while planning one atomic batch.
#[derive(Default)]
struct Plan {
    batch: Batch,
    sent: BTreeMap<Vec<u8>, SentRecord>,
    queues: Vec<String>,
    events: Vec<Event>,
    /// Dedup entries written by this batch, not yet visible in the store.
    fresh: Vec<(Vec<u8>, [u8; 32])>,
}

/// Where a plan stood before an item, to undo that item alone.
struct Mark {
    ops: usize,
    queues: usize,
    events: usize,
    fresh: usize,
    sent: BTreeMap<Vec<u8>, SentRecord>,
}

impl Plan {
    fn mark(&self) -> Mark {
        Mark {
            ops: self.batch.len(),
            queues: self.queues.len(),
            events: self.events.len(),
            fresh: self.fresh.len(),
            sent: self.sent.clone(),
        }
    }

    fn rollback(&mut self, m: Mark) {
        self.batch.truncate(m.ops);
        self.queues.truncate(m.queues);
        self.events.truncate(m.events);
        self.fresh.truncate(m.fresh);
        self.sent = m.sent;
    }
}

pub struct NodeState {
    pub node_id: NodeId,
    pub routing: RoutingTable,
    signers: HashMap<OrganId, Arc<AgencySigner>>,
    pub verifier: SignatureVerifier,
    pub limits: Limits,
    pub hooks: TestHooks,
    commit: Arc<GroupCommit>,
    store: Arc<dyn Store>,
    pub blobs: BlobStore,
    writer: Mutex<Writer>,
    notifiers: Mutex<HashMap<String, Arc<Notify>>>,
    events: broadcast::Sender<Event>,
    pub stats: Stats,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn doc_key(from: &str, doc_id: &str) -> Vec<u8> {
    Key::new().str(from).str(doc_id).build()
}

fn sent_key(doc_id: &str, from: &str) -> Vec<u8> {
    Key::new().str(doc_id).str(from).build()
}

fn queue_prefix(queue: &str) -> Vec<u8> {
    Key::new().str(queue).build()
}

fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Other(e.to_string())
}

impl NodeState {
    #[allow(clippy::too_many_arguments)] // assembled once, by Node::start and tests
    pub fn new(
        node_id: NodeId,
        routing: RoutingTable,
        signers: Vec<AgencySigner>,
        verifier: SignatureVerifier,
        limits: Limits,
        hooks: TestHooks,
        store: Arc<dyn Store>,
        blobs: BlobStore,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        Arc::new(Self {
            node_id,
            routing,
            signers: signers
                .into_iter()
                .map(|s| (s.organ().clone(), Arc::new(s)))
                .collect(),
            verifier,
            limits,
            hooks,
            commit: GroupCommit::start(store.clone()),
            store,
            blobs,
            writer: Mutex::new(Writer {
                seqs: HashMap::new(),
            }),
            notifiers: Mutex::default(),
            events,
            stats: Stats::default(),
        })
    }

    pub fn commit(&self) -> &Arc<GroupCommit> {
        &self.commit
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn notifier(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.notifiers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(queue.to_owned()).or_default().clone()
    }

    pub async fn durable(&self, ticket: Ticket) -> Result<(), NodeError> {
        Ok(self.commit.durable(ticket).await?)
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_seq(&self, w: &mut Writer, plan: &mut Plan, name: &str) -> Result<u64, NodeError> {
        let meta_key = Key::new().str("seq").str(name).build();
        let cur = match w.seqs.get(name) {
            Some(n) => *n,
            None => match self.store.get(Space::Meta, &meta_key)? {
                Some(v) => trailing_u64(&v).unwrap_or(0),
                None => 0,
            },
        };
        let next = cur + 1;
        w.seqs.insert(name.to_owned(), next);
        plan.batch
            .put(Space::Meta, meta_key, next.to_be_bytes().to_vec());
        Ok(next)
    }

    /// Who may send `from` through `origin` (DESIGN invariant 3: identity is the
    /// certificate intersected with the directory; `from` alone is never trusted).
    fn authorize(&self, v: &Verified, origin: &Origin) -> Result<(), Refusal> {
        match origin {
            Origin::Local => {
                if !self.routing.is_local(&v.from) {
                    return Err(Refusal::denied(format!(
                        "this node does not serve agency {}",
                        v.from
                    )));
                }
            }
            Origin::Child(child) => {
                if self.routing.child_of(&v.from) != Some(child) {
                    return Err(Refusal::denied(format!(
                        "node {child} may not send from agency {}: the directory does not bind it to {child}",
                        v.from
                    )));
                }
            }
            Origin::Parent(parent) => {
                if self.routing.is_local(&v.from) || self.routing.child_of(&v.from).is_some() {
                    return Err(Refusal::denied(format!(
                        "parent {parent} sent a message from {}, which is served below this node",
                        v.from
                    )));
                }
            }
        }
        Ok(())
    }

    /// Accepts a verified message: authorize, dedup, route, store in one batch.
    /// `recipients` is the part of `to` this node is asked to serve (all of it when
    /// `None`); a peer forwards each recipient once, along one path.
    pub fn accept(
        &self,
        v: Verified,
        origin: &Origin,
        recipients: Option<&[OrganId]>,
    ) -> Result<Accepted, NodeError> {
        let r = recipients.map(<[OrganId]>::to_vec);
        match self.accept_batch(vec![(v, r)], origin)?.pop() {
            Some(Ok(a)) => Ok(a),
            Some(Err(r)) => Err(r.into()),
            None => Err(NodeError::Other("empty batch".into())),
        }
    }

    /// Accepts many messages from one origin in one atomic write. Each is refused or
    /// accepted on its own; an error of the store fails the whole batch. Every
    /// accepted one (new or duplicate) is durable once the returned ticket is.
    pub fn accept_batch(
        &self,
        items: Vec<(Verified, Option<Vec<OrganId>>)>,
        origin: &Origin,
    ) -> Result<Vec<Result<Accepted, Refusal>>, NodeError> {
        let now = now_ms();
        let mut w = self.lock();
        let mut plan = Plan::default();
        let mut verdicts: Vec<Result<bool, Refusal>> = Vec::with_capacity(items.len()); // Ok(is_new)
        let (mut new, mut dups) = (0u64, 0u64);
        for (v, recipients) in &items {
            if let Err(r) = self.authorize(v, origin) {
                verdicts.push(Err(r));
                continue;
            }
            let dkey = doc_key(v.from.as_str(), &v.doc_id.to_string());
            let seen = match plan.fresh.iter().find(|(k, _)| *k == dkey) {
                Some((_, d)) => Some(d.to_vec()),
                None => self.store.get(Space::Dedup, &dkey)?,
            };
            if let Some(existing) = seen {
                if existing == v.header_sha256.0 {
                    dups += 1;
                    verdicts.push(Ok(false));
                } else {
                    verdicts.push(Err(Refusal::new(
                        Code::AlreadyExists,
                        format!(
                            "doc_id {} was already used by {} for different content",
                            v.doc_id, v.from
                        ),
                    )));
                }
                continue;
            }
            let mark = plan.mark();
            match self.plan_message(&mut w, &mut plan, v, origin, recipients.as_deref(), now) {
                Ok(()) => {
                    plan.fresh.push((dkey, v.header_sha256.0));
                    new += 1;
                    verdicts.push(Ok(true));
                }
                Err(NodeError::Refused(r)) => {
                    plan.rollback(mark);
                    verdicts.push(Err(r));
                }
                Err(e) => return Err(e),
            }
        }
        let ticket = if plan.batch.is_empty() {
            drop(w);
            self.commit.current()
        } else {
            self.finish(w, plan)?
        };
        let refused = verdicts.iter().filter(|v| v.is_err()).count() as u64;
        self.stats.accepted.fetch_add(new, Ordering::Relaxed);
        self.stats.duplicates.fetch_add(dups, Ordering::Relaxed);
        self.stats.refused.fetch_add(refused, Ordering::Relaxed);
        Ok(verdicts
            .into_iter()
            .map(|v| match v {
                Ok(true) => Ok(Accepted::Stored(ticket)),
                Ok(false) => Ok(Accepted::Duplicate(ticket)),
                Err(r) => Err(r),
            })
            .collect())
    }

    fn finish(&self, w: MutexGuard<'_, Writer>, mut plan: Plan) -> Result<Ticket, NodeError> {
        for (key, rec) in std::mem::take(&mut plan.sent) {
            plan.batch.put(Space::Sent, key, record::encode(&rec));
        }
        let ticket = match self.commit.apply(std::mem::take(&mut plan.batch)) {
            Ok(t) => t,
            Err(e) => {
                // Sequences handed out for the failed batch are simply skipped.
                drop(w);
                return Err(e.into());
            }
        };
        drop(w);
        plan.queues.sort();
        plan.queues.dedup();
        for q in &plan.queues {
            self.notifier(q).notify_one();
        }
        for e in plan.events {
            if matches!(e, Event::Delivered { .. }) {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            let _ = self.events.send(e);
        }
        Ok(ticket)
    }

    fn sent_record(&self, plan: &mut Plan, key: &[u8]) -> Result<Option<SentRecord>, NodeError> {
        if let Some(r) = plan.sent.get(key) {
            return Ok(Some(r.clone()));
        }
        match self.store.get(Space::Sent, key)? {
            Some(bytes) => Ok(Some(record::decode(Space::Sent, key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn plan_message(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        v: &Verified,
        origin: &Origin,
        recipients: Option<&[OrganId]>,
        now: i64,
    ) -> Result<(), NodeError> {
        let to = recipients.unwrap_or(&v.to);
        if let Some(extra) = to.iter().find(|r| !v.to.contains(r)) {
            return Err(Refusal::invalid(format!(
                "recipient {extra} is not in the signed recipient list"
            ))
            .into());
        }
        let routes = self.routing.route(to).map_err(|e| match e {
            RouteError::UnknownRecipient(_) => Refusal::not_found(e.to_string()),
            other => Refusal::invalid(other.to_string()),
        })?;
        if let Origin::Parent(p) = origin
            && routes.contains_key(&Destination::Parent)
        {
            return Err(Refusal::not_found(format!(
                "parent {p} sent a message for agencies not served below this node"
            ))
            .into());
        }
        let doc_id = v.doc_id.to_string();
        let dkey = doc_key(v.from.as_str(), &doc_id);
        plan.batch.put(
            Space::Docs,
            dkey.clone(),
            record::encode(&DocRecord {
                envelope: v.envelope.encode_to_vec(),
                header_sha256: v.header_sha256.0.to_vec(),
                origin: origin.label(),
                received_at_ms: now,
                attachments: v.attachments.iter().map(|d| d.0.to_vec()).collect(),
                signer: v.signer.clone(),
            }),
        );
        plan.batch
            .put(Space::Dedup, dkey, v.header_sha256.0.to_vec());

        if *origin == Origin::Local && v.kind == Kind::Document {
            plan.sent.insert(
                sent_key(&doc_id, v.from.as_str()),
                SentRecord {
                    doc_id: doc_id.clone(),
                    from: v.from.to_string(),
                    subject: v.header.subject.clone(),
                    created_at_ms: v.header.created_at_ms,
                    header_sha256: v.header_sha256.0.to_vec(),
                    recipients: v
                        .to
                        .iter()
                        .map(|o| RecipientRecord {
                            organ: o.to_string(),
                            state: DeliveryState::Queued as u32,
                            updated_at_ms: now,
                            detail: String::new(),
                        })
                        .collect(),
                },
            );
        }

        for (dest, recipients) in routes {
            match queue_name(&dest) {
                Some(queue) => {
                    let seq = self.next_seq(w, plan, &queue)?;
                    plan.batch.put(
                        Space::Queue,
                        Key::new().str(&queue).u64(seq).build(),
                        record::encode(&QueueEntry {
                            from: v.from.to_string(),
                            doc_id: doc_id.clone(),
                            recipients: recipients.iter().map(|o| o.to_string()).collect(),
                            enqueued_at_ms: now,
                            kind: v.header.kind,
                        }),
                    );
                    plan.queues.push(queue);
                }
                None => match (&v.kind, &v.receipt) {
                    (Kind::Receipt, Some(r)) => self.plan_receipt(plan, v, r, now)?,
                    _ => {
                        for organ in recipients {
                            self.plan_delivery(w, plan, v, &organ, now)?;
                        }
                    }
                },
            }
        }
        Ok(())
    }

    /// Puts a document into a local agency's inbox and answers with a signed
    /// DELIVERED receipt in the same batch, so neither exists without the other.
    fn plan_delivery(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        v: &Verified,
        organ: &OrganId,
        now: i64,
    ) -> Result<(), NodeError> {
        let seq = self.next_seq(w, plan, &format!("inbox:{organ}"))?;
        let doc_id = v.doc_id.to_string();
        plan.batch.put(
            Space::Inbox,
            Key::new().str(organ.as_str()).u64(seq).build(),
            record::encode(&InboxEntry {
                from: v.from.to_string(),
                doc_id: doc_id.clone(),
                organ: organ.to_string(),
                subject: v.header.subject.clone(),
                received_at_ms: now,
                acked: false,
                acked_at_ms: 0,
                priority: v.header.priority,
                code_number: v.header.code_number.clone(),
                code_notation: v.header.code_notation.clone(),
                attachments: v.attachments.len() as u32,
            }),
        );
        plan.batch.put(
            Space::InboxIndex,
            Key::new()
                .str(&doc_id)
                .str(v.from.as_str())
                .str(organ.as_str())
                .build(),
            seq.to_be_bytes().to_vec(),
        );
        plan.events.push(Event::Delivered {
            organ: organ.clone(),
            from: v.from.clone(),
            doc_id: v.doc_id,
            subject: v.header.subject.clone(),
        });
        self.plan_new_receipt(
            w,
            plan,
            organ,
            ReceiptType::Delivered,
            &v.from,
            &v.doc_id,
            &v.header_sha256,
            now,
        )
    }

    #[allow(clippy::too_many_arguments)] // the fields of a receipt
    fn plan_new_receipt(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        recipient: &OrganId,
        kind: ReceiptType,
        for_from: &OrganId,
        for_doc_id: &DocId,
        digest: &Digest,
        now: i64,
    ) -> Result<(), NodeError> {
        let signer = self.signers.get(recipient).ok_or_else(|| {
            NodeError::Other(format!("no signing key for local agency {recipient}"))
        })?;
        let header = envelope::receipt_header(recipient, kind, for_from, for_doc_id, digest, now);
        let sealed = envelope::seal(&header, signer)?;
        let receipt = Verified {
            header_sha256: Digest::of(&sealed.header_bytes),
            envelope: sealed,
            doc_id: header.doc_id.parse().map_err(internal)?,
            kind: Kind::Receipt,
            from: recipient.clone(),
            to: vec![for_from.clone()],
            signer: recipient.to_string(),
            attachments: Vec::new(),
            receipt: Some(envelope::ReceiptFacts {
                kind,
                for_from: for_from.clone(),
                for_doc_id: *for_doc_id,
                envelope_sha256: *digest,
            }),
            header,
        };
        self.stats.receipts.fetch_add(1, Ordering::Relaxed);
        self.plan_message(w, plan, &receipt, &Origin::Local, None, now)
    }

    /// A receipt reached the sender's node: advance that recipient's state.
    fn plan_receipt(
        &self,
        plan: &mut Plan,
        v: &Verified,
        r: &envelope::ReceiptFacts,
        now: i64,
    ) -> Result<(), NodeError> {
        let key = sent_key(&r.for_doc_id.to_string(), r.for_from.as_str());
        let Some(mut rec) = self.sent_record(plan, &key)? else {
            tracing::warn!(doc_id = %r.for_doc_id, from = %v.from, "receipt for a document this node has no record of sending");
            return Ok(());
        };
        if rec.header_sha256 != r.envelope_sha256.0 {
            tracing::error!(doc_id = %r.for_doc_id, recipient = %v.from,
                "receipt acknowledges different envelope bytes than were sent; not counted");
            if let Some(rr) = rec
                .recipients
                .iter_mut()
                .find(|x| x.organ == v.from.as_str())
            {
                rr.detail =
                    "receipt names different envelope bytes (possible tampering in transit)".into();
            }
            plan.sent.insert(key, rec);
            return Ok(());
        }
        let Some(rr) = rec
            .recipients
            .iter_mut()
            .find(|x| x.organ == v.from.as_str())
        else {
            tracing::warn!(doc_id = %r.for_doc_id, recipient = %v.from, "receipt from an agency that was not a recipient");
            return Ok(());
        };
        let old = DeliveryState::from_u8(rr.state as u8).unwrap_or(DeliveryState::Queued);
        let new = old.advance(r.kind.into());
        if new != old {
            rr.state = new as u32;
            rr.updated_at_ms = now;
            plan.events.push(Event::StateChanged {
                doc_id: r.for_doc_id,
                recipient: v.from.clone(),
                state: new,
            });
        }
        plan.sent.insert(key, rec);
        Ok(())
    }

    /// Signs and accepts a document from a local application. Attachments are
    /// written (fsynced) first; blocking IO, call from a blocking context.
    pub fn submit(&self, s: Submission) -> Result<(DocId, Accepted), NodeError> {
        let from: OrganId = s
            .from
            .parse()
            .map_err(|e| Refusal::invalid(format!("from: {e}")))?;
        let signer = self
            .signers
            .get(&from)
            .ok_or_else(|| Refusal::denied(format!("this edge does not serve agency {from}")))?
            .clone();
        let doc_id = match &s.doc_id {
            Some(id) if !id.is_empty() => id
                .parse::<DocId>()
                .map_err(|e| Refusal::invalid(e.to_string()))?,
            _ => DocId::new_v7(),
        };
        // The same doc_id again is a retry: answer as before, queue nothing.
        if self
            .store
            .get(Space::Dedup, &doc_key(from.as_str(), &doc_id.to_string()))?
            .is_some()
        {
            return Ok((doc_id, Accepted::Duplicate(self.commit.current())));
        }
        if s.to.is_empty() {
            return Err(Refusal::invalid("no recipients").into());
        }
        if s.priority > 4 {
            return Err(Refusal::invalid(format!("priority {} is not 0-4", s.priority)).into());
        }
        if s.attachments.len() > self.limits.max_attachments {
            return Err(Refusal::exhausted(format!(
                "{} attachments exceed the limit of {} (limits.max_attachments)",
                s.attachments.len(),
                self.limits.max_attachments
            ))
            .into());
        }
        let mut manifest = Vec::with_capacity(s.attachments.len());
        for (name, _, data) in &s.attachments {
            envelope::check_attachment_name(name).map_err(Refusal::invalid)?;
            if data.len() as u64 > self.limits.max_attachment_bytes {
                return Err(Refusal::exhausted(format!(
                    "attachment {name:?} is {} bytes, over the limit of {} (limits.max_attachment_bytes)",
                    data.len(),
                    self.limits.max_attachment_bytes
                ))
                .into());
            }
        }
        for (name, content_type, data) in &s.attachments {
            let digest = self.blobs.put(data)?;
            manifest.push(pb::AttachmentRef {
                name: name.clone(),
                content_type: if content_type.is_empty() {
                    "application/octet-stream".into()
                } else {
                    content_type.clone()
                },
                size: data.len() as u64,
                sha256: digest.0.to_vec(),
            });
        }
        let header = pb::Header {
            format_version: envelope::FORMAT_VERSION,
            doc_id: doc_id.to_string(),
            kind: pb::Kind::Document as i32,
            from: from.to_string(),
            to: s.to.clone(),
            created_at_ms: now_ms(),
            business_type: pb::BusinessType::New as i32,
            target_doc_id: String::new(),
            subject: s.subject,
            code_number: s.code_number,
            code_notation: s.code_notation,
            priority: s.priority,
            due_at_ms: s.due_at_ms,
            attachments: manifest,
            receipt: None,
        };
        let sealed = envelope::seal(&header, &signer)?;
        // Verify our own bytes like anyone else's: an expired signing certificate is
        // refused here, at the source, not three hops later.
        let v = envelope::verify(sealed, &self.verifier, &self.limits, UnixTime::now())?;
        let accepted = self.accept(v, &Origin::Local, None)?;
        Ok((doc_id, accepted))
    }

    /// Up to `limit` entries of `queue` after `after`, in order.
    pub fn queue_peek(
        &self,
        queue: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, QueueEntry)>, NodeError> {
        let prefix = queue_prefix(queue);
        let after_key = after.map(|s| Key::new().str(queue).u64(s).build());
        let rows = self
            .store
            .scan(Space::Queue, &prefix, after_key.as_deref(), limit)?;
        rows.into_iter()
            .map(|(k, v)| {
                let seq = trailing_u64(&k).ok_or_else(|| internal("queue key without sequence"))?;
                Ok((seq, record::decode(Space::Queue, &k, &v)?))
            })
            .collect()
    }

    /// Entries waiting in `queue`.
    pub fn queue_depth(&self, queue: &str) -> Result<usize, NodeError> {
        Ok(self
            .store
            .scan(Space::Queue, &queue_prefix(queue), None, usize::MAX)?
            .len())
    }

    fn load_doc(&self, from: &str, doc_id: &str) -> Result<DocRecord, NodeError> {
        let key = doc_key(from, doc_id);
        let bytes = self.store.get(Space::Docs, &key)?.ok_or_else(|| {
            NodeError::Other(format!("document {from}/{doc_id} is queued but not stored"))
        })?;
        Ok(record::decode(Space::Docs, &key, &bytes)?)
    }

    /// Builds the transfer for a queue entry (reads blobs: blocking IO).
    pub fn load_transfer(&self, seq: u64, entry: &QueueEntry) -> Result<pb::Transfer, NodeError> {
        let doc = self.load_doc(&entry.from, &entry.doc_id)?;
        let mut env = pb::SignedEnvelope::decode(doc.envelope.as_slice())
            .map_err(|e| NodeError::Other(format!("stored envelope {}: {e}", entry.doc_id)))?;
        if self.hooks.corrupt_forwarded_headers
            && let Some(b) = env.header_bytes.last_mut()
        {
            *b ^= 0x01;
        }
        let mut attachments = Vec::with_capacity(doc.attachments.len());
        for d in &doc.attachments {
            let digest =
                Digest::from_slice(d).ok_or_else(|| internal("stored digest is not 32 bytes"))?;
            attachments.push(pb::AttachmentData {
                sha256: d.clone(),
                data: self.blobs.read(&digest)?,
            });
        }
        Ok(pb::Transfer {
            seq,
            envelope: Some(env),
            attachments,
            recipients: entry.recipients.clone(),
        })
    }

    /// The peer stored everything up to `upto`: drop those entries from `queue`.
    pub fn queue_ack(&self, queue: &str, upto: u64) -> Result<usize, NodeError> {
        let w = self.lock();
        let mut plan = Plan::default();
        let now = now_ms();
        let mut n = 0;
        let mut after = None;
        'scan: loop {
            // Acknowledged entries are the head of the queue: stop at the first one past `upto`.
            let rows = self.queue_peek(queue, after, 256)?;
            if rows.is_empty() {
                break;
            }
            for (seq, entry) in rows {
                if seq > upto {
                    break 'scan;
                }
                after = Some(seq);
                plan.batch
                    .delete(Space::Queue, Key::new().str(queue).u64(seq).build());
                n += 1;
                if queue == "parent" && entry.kind == pb::Kind::Document as i32 {
                    self.plan_state(&mut plan, &entry, DeliveryState::AtHub, "", now)?;
                }
            }
        }
        if n > 0 {
            self.finish(w, plan)?;
        }
        Ok(n)
    }

    fn plan_state(
        &self,
        plan: &mut Plan,
        entry: &QueueEntry,
        state: DeliveryState,
        detail: &str,
        now: i64,
    ) -> Result<(), NodeError> {
        let key = sent_key(&entry.doc_id, &entry.from);
        let Some(mut rec) = self.sent_record(plan, &key)? else {
            return Ok(());
        };
        let doc_id: DocId = entry.doc_id.parse().map_err(internal)?;
        for rr in rec
            .recipients
            .iter_mut()
            .filter(|r| entry.recipients.contains(&r.organ))
        {
            let old = DeliveryState::from_u8(rr.state as u8).unwrap_or(DeliveryState::Queued);
            let new = old.advance(state);
            if new != old {
                rr.state = new as u32;
                rr.updated_at_ms = now;
                if !detail.is_empty() {
                    rr.detail = detail.to_owned();
                }
                plan.events.push(Event::StateChanged {
                    doc_id,
                    recipient: rr.organ.parse().map_err(internal)?,
                    state: new,
                });
            }
        }
        plan.sent.insert(key, rec);
        Ok(())
    }

    /// The peer refused `seq` for good: keep it as a dead letter with the reason and
    /// mark the recipients failed for the sender to see.
    pub fn queue_reject(
        &self,
        queue: &str,
        seq: u64,
        code: i32,
        reason: &str,
    ) -> Result<(), NodeError> {
        let w = self.lock();
        let key = Key::new().str(queue).u64(seq).build();
        let Some(bytes) = self.store.get(Space::Queue, &key)? else {
            return Ok(());
        };
        let entry: QueueEntry = record::decode(Space::Queue, &key, &bytes)?;
        let now = now_ms();
        let mut plan = Plan::default();
        plan.batch.delete(Space::Queue, key.clone());
        plan.batch.put(
            Space::Dead,
            key,
            record::encode(&DeadEntry {
                entry: Some(entry.clone()),
                code,
                reason: reason.to_owned(),
                at_ms: now,
            }),
        );
        let code_name = format!("{:?}", Code::from_i32(code));
        self.plan_state(
            &mut plan,
            &entry,
            DeliveryState::Failed,
            &format!("{code_name}: {reason}"),
            now,
        )?;
        self.finish(w, plan)?;
        Ok(())
    }

    /// Inbox entries of a local agency, oldest first.
    pub fn inbox(
        &self,
        organ: &OrganId,
        include_acked: bool,
        limit: usize,
    ) -> Result<Vec<InboxEntry>, NodeError> {
        let prefix = Key::new().str(organ.as_str()).build();
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        while out.len() < limit {
            let rows = self
                .store
                .scan(Space::Inbox, &prefix, after.as_deref(), 512)?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            for (k, v) in rows {
                let e: InboxEntry = record::decode(Space::Inbox, &k, &v)?;
                if include_acked || !e.acked {
                    out.push(e);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Inbox entries (one per local recipient) of a received document.
    fn inbox_entries(
        &self,
        doc_id: &DocId,
        from: Option<&OrganId>,
    ) -> Result<Vec<(Vec<u8>, InboxEntry)>, NodeError> {
        let mut prefix = Key::new().str(&doc_id.to_string());
        if let Some(f) = from {
            prefix = prefix.str(f.as_str());
        }
        let mut out = Vec::new();
        for (k, v) in self
            .store
            .scan(Space::InboxIndex, &prefix.build(), None, usize::MAX)?
        {
            let seq = trailing_u64(&v).ok_or_else(|| internal("inbox index without sequence"))?;
            let organ = truc_store::keys::str_parts(&k, 3)
                .and_then(|p| p.into_iter().nth(2))
                .ok_or_else(|| internal("malformed inbox index key"))?;
            let ikey = Key::new().str(&organ).u64(seq).build();
            if let Some(bytes) = self.store.get(Space::Inbox, &ikey)? {
                out.push((ikey.clone(), record::decode(Space::Inbox, &ikey, &bytes)?));
            }
        }
        Ok(out)
    }

    /// A received document: its stored record and the inbox entries it has here.
    pub fn received(
        &self,
        doc_id: &DocId,
        from: Option<&OrganId>,
    ) -> Result<(DocRecord, Vec<InboxEntry>), NodeError> {
        let entries = self.inbox_entries(doc_id, from)?;
        let Some((_, first)) = entries.first() else {
            return Err(Refusal::not_found(format!("no received document {doc_id}")).into());
        };
        if entries.iter().any(|(_, e)| e.from != first.from) {
            return Err(Refusal::invalid(format!(
                "doc_id {doc_id} was used by several senders; name one with --from"
            ))
            .into());
        }
        let doc = self.load_doc(&first.from, &first.doc_id)?;
        Ok((doc, entries.into_iter().map(|(_, e)| e).collect()))
    }

    /// The application took the document: mark it acked for `organ` (or every local
    /// recipient) and send the sender a signed ACKED receipt.
    pub fn ack(
        &self,
        doc_id: &DocId,
        from: Option<&OrganId>,
        organ: Option<&OrganId>,
    ) -> Result<(Vec<OrganId>, Ticket), NodeError> {
        let mut w = self.lock();
        let entries = self.inbox_entries(doc_id, from)?;
        if entries.is_empty() {
            return Err(Refusal::not_found(format!("no received document {doc_id}")).into());
        }
        let now = now_ms();
        let mut plan = Plan::default();
        let mut acked = Vec::new();
        for (key, mut e) in entries {
            if organ.is_some_and(|o| o.as_str() != e.organ) || e.acked {
                continue;
            }
            let sender: OrganId = e.from.parse().map_err(internal)?;
            let recipient: OrganId = e.organ.parse().map_err(internal)?;
            let doc = self.load_doc(&e.from, &e.doc_id)?;
            let digest =
                Digest::from_slice(&doc.header_sha256).ok_or_else(|| internal("stored digest"))?;
            e.acked = true;
            e.acked_at_ms = now;
            plan.batch.put(Space::Inbox, key, record::encode(&e));
            self.plan_new_receipt(
                &mut w,
                &mut plan,
                &recipient,
                ReceiptType::Acked,
                &sender,
                doc_id,
                &digest,
                now,
            )?;
            acked.push(recipient);
        }
        let ticket = if plan.batch.is_empty() {
            drop(w);
            self.commit.current()
        } else {
            self.finish(w, plan)?
        };
        Ok((acked, ticket))
    }

    /// Per-recipient state of a document sent from this node.
    pub fn sent(&self, doc_id: &DocId) -> Result<Vec<SentRecord>, NodeError> {
        let prefix = Key::new().str(&doc_id.to_string()).build();
        self.store
            .scan(Space::Sent, &prefix, None, 64)?
            .into_iter()
            .map(|(k, v)| Ok(record::decode(Space::Sent, &k, &v)?))
            .collect()
    }

    /// Dead letters of `queue`.
    pub fn dead(&self, queue: &str) -> Result<Vec<DeadEntry>, NodeError> {
        self.store
            .scan(Space::Dead, &queue_prefix(queue), None, usize::MAX)?
            .into_iter()
            .map(|(k, v)| Ok(record::decode(Space::Dead, &k, &v)?))
            .collect()
    }

    pub fn is_healthy(&self) -> bool {
        self.commit.healthy()
    }

    /// Flushes and stops the flusher.
    pub fn close(&self) -> Result<(), NodeError> {
        Ok(self.commit.close()?)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A node state over any store, with a throwaway signing CA and agencies.
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    use truc_core::{NodeId, OrganId, RoutingTable};
    use truc_pki::{
        dev::DevCa,
        sign::{AgencySigner, SignatureVerifier},
    };
    use truc_store::{BlobStore, Store};

    use super::NodeState;
    use crate::config::{Limits, TestHooks};

    pub struct Fixture {
        pub ca: DevCa,
        pub blobs_dir: tempfile::TempDir,
    }

    impl Fixture {
        pub fn new() -> Self {
            Self {
                ca: DevCa::generate("test signing").unwrap(),
                blobs_dir: tempfile::tempdir().unwrap(),
            }
        }

        pub fn signer(&self, organ: &str) -> AgencySigner {
            let o: OrganId = organ.parse().unwrap();
            let issued = self.ca.agency_cert(&o, organ).unwrap();
            AgencySigner::from_der(
                &o,
                vec![CertificateDer::from(issued.cert_der)],
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
            )
            .unwrap()
        }

        /// A hub with children `vpcp` (G22) and `nghean` (H41).
        pub fn hub(&self, store: Arc<dyn Store>) -> Arc<NodeState> {
            let mut routing = RoutingTable::new(false);
            routing.add_child_organ("000.00.00.G22".parse().unwrap(), "vpcp".parse().unwrap());
            routing.add_child_organ("000.00.00.H41".parse().unwrap(), "nghean".parse().unwrap());
            self.state("hub", routing, vec![], store)
        }

        /// An edge serving G22 under a parent.
        pub fn edge(&self, store: Arc<dyn Store>) -> Arc<NodeState> {
            let mut routing = RoutingTable::new(true);
            routing.add_local("000.00.00.G22".parse().unwrap());
            self.state("vpcp", routing, vec![self.signer("000.00.00.G22")], store)
        }

        fn state(
            &self,
            id: &str,
            routing: RoutingTable,
            signers: Vec<AgencySigner>,
            store: Arc<dyn Store>,
        ) -> Arc<NodeState> {
            let ca = CertificateDer::from_pem_slice(self.ca.cert_pem().as_bytes()).unwrap();
            NodeState::new(
                id.parse::<NodeId>().unwrap(),
                routing,
                signers,
                SignatureVerifier::new(&[ca]).unwrap(),
                Limits::default(),
                TestHooks::default(),
                store,
                BlobStore::open(self.blobs_dir.path()).unwrap(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::UnixTime;
    use tonic::Code;
    use truc_store::{MemoryStore, SledStore};

    use super::{testing::Fixture, *};
    use crate::envelope;

    fn verified(f: &Fixture, from: &str, to: &[&str]) -> Verified {
        let header = pb::Header {
            format_version: envelope::FORMAT_VERSION,
            doc_id: DocId::new_v7().to_string(),
            kind: pb::Kind::Document as i32,
            from: from.into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            subject: "Công văn".into(),
            ..Default::default()
        };
        let env = envelope::seal(&header, &f.signer(from)).unwrap();
        envelope::verify(
            env,
            &f.hub(Arc::new(MemoryStore::new())).verifier,
            &Limits::default(),
            UnixTime::now(),
        )
        .unwrap()
    }

    fn child(n: &str) -> Origin {
        Origin::Child(n.parse().unwrap())
    }

    #[test]
    fn from_is_accepted_only_from_the_node_the_directory_binds_it_to() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let v = verified(&f, "000.00.00.G22", &["000.00.00.H41"]);
        let err = hub.accept(v.clone(), &child("nghean"), None).unwrap_err();
        assert!(
            matches!(err, NodeError::Refused(ref r) if r.code == Code::PermissionDenied),
            "{err}"
        );
        assert_eq!(
            hub.queue_depth("child:nghean").unwrap(),
            0,
            "a refused message queued nothing"
        );
        assert!(matches!(
            hub.accept(v, &child("vpcp"), None).unwrap(),
            Accepted::Stored(_)
        ));
        assert_eq!(hub.queue_depth("child:nghean").unwrap(), 1);
    }

    #[tokio::test]
    async fn dedup_is_permanent_across_restarts() {
        let f = Fixture::new();
        let dir = tempfile::tempdir().unwrap();
        let v = verified(&f, "000.00.00.G22", &["000.00.00.H41"]);
        {
            let hub = f.hub(Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap()));
            let a = hub.accept(v.clone(), &child("vpcp"), None).unwrap();
            hub.durable(a.ticket()).await.unwrap();
            hub.close().unwrap();
        }
        let hub = f.hub(Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap()));
        assert!(matches!(
            hub.accept(v, &child("vpcp"), None).unwrap(),
            Accepted::Duplicate(_)
        ));
        assert_eq!(hub.queue_depth("child:nghean").unwrap(), 1, "queued once");
    }

    #[test]
    fn the_same_doc_id_with_other_bytes_is_a_conflict_not_a_duplicate() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let v = verified(&f, "000.00.00.G22", &["000.00.00.H41"]);
        hub.accept(v.clone(), &child("vpcp"), None).unwrap();
        let mut header = v.header.clone();
        header.subject = "something else".into();
        let other = envelope::verify(
            envelope::seal(&header, &f.signer("000.00.00.G22")).unwrap(),
            &hub.verifier,
            &Limits::default(),
            UnixTime::now(),
        )
        .unwrap();
        let err = hub.accept(other, &child("vpcp"), None).unwrap_err();
        assert!(
            matches!(err, NodeError::Refused(ref r) if r.code == Code::AlreadyExists),
            "{err}"
        );
    }

    #[test]
    fn a_multi_recipient_document_is_stored_once_and_queued_per_child() {
        let f = Fixture::new();
        let store = Arc::new(MemoryStore::new());
        let mut routing = RoutingTable::new(false);
        routing.add_child_organ("000.00.00.G22".parse().unwrap(), "vpcp".parse().unwrap());
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            routing.add_child_organ(
                format!("000.00.00.H{i}").parse().unwrap(),
                n.parse().unwrap(),
            );
        }
        let hub = NodeState::new(
            "hub".parse().unwrap(),
            routing,
            vec![],
            f.hub(Arc::new(MemoryStore::new())).verifier.clone(),
            Limits::default(),
            TestHooks::default(),
            store.clone(),
            BlobStore::open(f.blobs_dir.path()).unwrap(),
        );
        let v = verified(
            &f,
            "000.00.00.G22",
            &["000.00.00.H0", "000.00.00.H1", "000.00.00.H2"],
        );
        hub.accept(v, &child("vpcp"), None).unwrap();
        assert_eq!(store.scan(Space::Docs, b"", None, 100).unwrap().len(), 1);
        for n in ["a", "b", "c"] {
            assert_eq!(hub.queue_depth(&format!("child:{n}")).unwrap(), 1);
        }
    }

    #[tokio::test]
    async fn an_edge_answers_send_only_after_its_outbox_is_durable() {
        let f = Fixture::new();
        let (store, plan) = truc_store::FaultyStore::new(MemoryStore::new());
        let edge = f.edge(Arc::new(store));
        plan.fail_flush.store(true, Ordering::SeqCst);
        let (_, accepted) = edge
            .submit(Submission {
                from: "000.00.00.G22".into(),
                to: vec!["000.00.00.H41".into()],
                subject: "x".into(),
                ..Default::default()
            })
            .unwrap();
        // The write is applied but not durable: the caller must not be told "sent".
        assert!(edge.durable(accepted.ticket()).await.is_err());
        assert!(!edge.is_healthy());
        let err = edge
            .submit(Submission {
                from: "000.00.00.G22".into(),
                to: vec!["000.00.00.H41".into()],
                subject: "y".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            matches!(err, NodeError::Store(_)),
            "a failed store refuses new work: {err}"
        );
    }
}
